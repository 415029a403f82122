"""nca-flash, the command: over a socket:// URL to the host build of the link
firmware (served by a thread here), the one-line results and errors, resume,
--list, and the uploader wrapping of --image."""
from __future__ import annotations

import dataclasses
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial

import boards.client
import boards.emulator
import boards.transport
from boards import flash as FL
from boards import protocol as L

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")


class HostServer:
    """The host link firmware behind a TCP port: what pyserial's socket:// reaches."""

    def __init__(self, host: Any = None):
        self.host = host if host is not None else boards.transport.HostLink()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"socket://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = False
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.settimeout(0.1)
            with c:
                while not self.stop:
                    try:
                        d = c.recv(4096)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                    if not d:
                        break
                    self.host.write(d)
                    out = self.host.read(1 << 20)
                    if out:
                        c.sendall(out)

    def close(self) -> None:
        self.stop = True
        self.t.join(timeout=5)
        self.sock.close()


@pytest.fixture
def server():
    s = HostServer()
    yield s
    s.close()


def test_flash_verify_activate_one_line(server, models, capsys):
    pa, pb, qa, qb = models
    assert FL.main(["--port", server.url, "--model", str(pa), "--timeout", "2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and f"model 0x{qa.model_hash:08x}" in out and "verified" in out
    assert "slot A, generation 1" in out
    assert FL.main(["--port", server.url, "--model", str(pa)]) == 0
    assert "already runs" in capsys.readouterr().out
    assert FL.main(["--port", server.url, "--model", str(pb), "--progress"]) == 0
    cap = capsys.readouterr()
    assert "slot B, generation 2" in cap.out and "100%" in cap.err
    with boards.client.Board(server.url) as b:
        assert b.hello().model_hash == qb.model_hash
        xs = np.zeros(16, np.int8)
        xs[3:] = 32
        from test_firmware_host import golden_update
        c, s = b.cell(xs, np.zeros((8, 16), np.int8))
        gc, go = golden_update(qb, xs[None], np.zeros((1, 8, 16), np.int8))
        assert c == gc[0] and np.array_equal(s, go[0])


def test_flash_resumes_after_a_cut(server, models, capsys):
    pa, _, qa, _ = models
    with boards.client.Board(server.url) as b:
        b.flash(L.image_of(qa), stop_after=20)
    assert FL.main(["--port", server.url, "--model", str(pa)]) == 0
    out = capsys.readouterr().out
    assert f"resumed at {20 * L.CHUNK:,} B" in out


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("nca-flash: error: ") and err.count("\n") == 0, err
    for w in words:
        assert w in err, err


def test_bad_inputs_are_one_line_errors(models, capsys, tmp_path):
    pa = models[0]
    assert FL.main(["--model", str(pa)]) == 2
    one_line_error(capsys, "--port")
    assert FL.main(["--port", "socket://127.0.0.1:1"]) == 2
    one_line_error(capsys, "--model")
    assert FL.main(["--port", "loop://", "--model", str(tmp_path / "none.npz")]) == 2
    one_line_error(capsys, "does not exist")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert FL.main(["--port", "loop://", "--model", str(bad)]) == 2
    one_line_error(capsys, "bad.npz")
    assert FL.main(["--port", "/dev/nonexistent-tty", "--model", str(pa)]) == 2
    one_line_error(capsys, "cannot open /dev/nonexistent-tty")
    # loop:// echoes the requests back: no board answers
    assert FL.main(["--port", "loop://", "--model", str(pa), "--timeout", "0.05", "--retries", "1",
                    "--attempts", "1"]) == 2
    one_line_error(capsys, "no reply", "HELLO", "previous genome")
    assert FL.main(["--port", "loop://", "--baud", "0", "--model", str(pa)]) == 2
    one_line_error(capsys, "--baud")
    for bad in ("-1", "nan"):
        assert FL.main(["--port", "loop://", "--connect-timeout", bad, "--model", str(pa)]) == 2
        one_line_error(capsys, "--connect-timeout")


class CountingOpens:
    """open_port wrapped: counts the opens; the first `fail` of them fail as a board that is
    resetting does (nothing listens), and socket:// opens are tried once instead of for 10 s."""

    def __init__(self, fail: int = 0):
        self.real, self.calls, self.fail, self.connect_timeouts = boards.client.open_port, 0, fail, []

    def __call__(self, port: str, baud: int = 115200, connect_timeout: float = 10.0) -> Any:
        self.calls += 1
        self.connect_timeouts.append(connect_timeout)
        if self.calls <= self.fail:
            return self.real(f"socket://127.0.0.1:{boards.emulator.free_port()}", baud, 0.0)
        return self.real(port, baud, 0.0)


@pytest.mark.parametrize("port", ["socket://127.0.0.1:{free}", "/dev/nonexistent-tty"])
def test_a_port_that_cannot_be_opened_is_retried(port, models, capsys, monkeypatch):
    opens = CountingOpens()
    monkeypatch.setattr(boards.client, "open_port", opens)
    port = port.format(free=boards.emulator.free_port())                  # nothing listens there
    assert FL.main(["--port", port, "--model", str(models[0]), "--attempts", "3", "--timeout", "0.05"]) == 2
    one_line_error(capsys, f"cannot open {port}", "gave up after 3 attempts", "previous genome stays active")
    assert opens.calls == 3 and opens.connect_timeouts == [10.0] * 3
    opens.calls, opens.connect_timeouts = 0, []
    assert FL.main(["--port", port, "--model", str(models[0]), "--attempts", "2", "--timeout", "0.05",
                    "--connect-timeout", "0.5"]) == 2
    one_line_error(capsys, f"cannot open {port}", "gave up after 2 attempts")
    assert opens.connect_timeouts == [0.5, 0.5]


def test_a_board_back_after_a_failed_open_is_flashed(server, models, capsys, monkeypatch):
    opens = CountingOpens(fail=1)
    monkeypatch.setattr(boards.client, "open_port", opens)
    assert FL.main(["--port", server.url, "--model", str(models[0]), "--timeout", "0.05"]) == 0
    assert "verified" in capsys.readouterr().out and opens.calls == 2


def test_a_refusal_is_not_retried(server, models, capsys, monkeypatch):
    """The board refuses the genome (an output shift T = 0): one attempt, its message, exit 2."""
    real = L.image_of

    def zero_t(q: Any) -> L.Image:
        img = real(q)
        g = bytearray(img.genome)
        g[L.F.GROUPS * L.F.GROUP_BYTES + 32] &= 0xE0
        return dataclasses.replace(img, genome=bytes(g))

    opens = CountingOpens()
    monkeypatch.setattr(boards.client, "open_port", opens)
    monkeypatch.setattr(L, "image_of", zero_t)
    assert FL.main(["--port", server.url, "--model", str(models[0]), "--attempts", "3"]) == 2
    one_line_error(capsys, "FLASH_VERIFY refused: ERR_FORMAT", "previous genome stays active")
    assert opens.calls == 1
    with boards.client.Board(server.url) as b:
        assert b.hello().active_slot is None


def test_a_flash_sends_one_hello(models, capsys):
    from test_protocol import RequestCounter
    link = RequestCounter(boards.transport.HostLink())
    server = HostServer(link)
    try:
        assert FL.main(["--port", server.url, "--model", str(models[0])]) == 0
        assert "verified" in capsys.readouterr().out
        assert (link.sent["HELLO"], link.sent["FLASH_BEGIN"], link.sent["FLASH_ACTIVATE"]) == (1, 1, 1)
        assert FL.main(["--port", server.url, "--model", str(models[0])]) == 0
        assert "already runs" in capsys.readouterr().out
        assert link.sent["HELLO"] == 2 and link.sent["FLASH_BEGIN"] == 1
    finally:
        server.close()


@pytest.mark.parametrize("windows", [True, False])
def test_ports_are_opened_without_a_reset_edge(windows, models, capsys, monkeypatch):
    """Every open (nca-flash's attempts too) creates the port unopened and opens it with DTR
    and RTS deasserted where the OS applies that before the open (Windows); elsewhere the
    OS raises them in the open itself and they are left raised (see DEASSERT_AT_OPEN)."""
    monkeypatch.setattr(boards.transport, "DEASSERT_AT_OPEN", windows)
    seen = []
    real = serial.serial_for_url

    def recording(url: str, *a: Any, **k: Any) -> Any:
        ser = real(url, *a, **k)
        really_open = ser.open

        def open_() -> None:
            seen.append((url, ser.is_open, ser.dtr, ser.rts))
            really_open()
        ser.open = open_
        return ser

    monkeypatch.setattr(serial, "serial_for_url", recording)
    assert FL.main(["--port", "loop://", "--model", str(models[0]), "--timeout", "0.05", "--retries", "0",
                    "--attempts", "2"]) == 2
    one_line_error(capsys, "no reply", "gave up after 2 attempts")
    assert seen == [("loop://", False, not windows, not windows)] * 2


def test_a_board_that_cannot_write_is_told_the_two_ways_out(models, capsys):
    """nca-flash on a board whose boot section has no SPM routine: one line naming the
    harness image with the genome built in and the ISP command that installs Optiboot."""
    server = HostServer(boards.transport.HostLink(writer="none"))
    try:
        assert FL.main(["--port", server.url, "--model", str(models[0]), "--attempts", "3"]) == 2
    finally:
        server.close()
    one_line_error(capsys, f"the board at {server.url} cannot write genomes", "nca-codegen --model M.npz --target avr",
                   "nca-flash --image DIR/build/avr/nca_avr.elf --board uno", "avrdude -c PROGRAMMER -P ISP_PORT -p "
                   "atmega328p -e -U lock:w:0x3F:m -U efuse:w:0xFC:m -U hfuse:w:0xDE:m -U lfuse:w:0xFF:m "
                   "-U flash:w:OPTIBOOT_HEX:i -U lock:w:0x2F:m", "--image nca_link_avr.hex")


@pytest.mark.skipif(bool(boards.emulator.emulator_tools("avr")), reason="needs avr-gcc")
def test_image_with_a_boot_section_is_not_sent_to_a_serial_boot_loader(capsys):
    from codegen.toolchain import link_firmware
    elf = link_firmware("avr")
    assert FL.main(["--image", str(elf), "--board", "uno", "--port", "/dev/ttyACM0", "--dry-run"]) == 2
    one_line_error(capsys, "boot-section routine", "nca_link_avr.hex", "nca_link_avr_isp.hex")
    hexfile = elf.with_name("nca_link_avr.hex")
    assert FL.main(["--image", str(hexfile), "--board", "uno", "--port", "/dev/ttyACM0", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-U flash:w:{hexfile}")


def test_list_ports(capsys):
    assert FL.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert out.strip()


def test_image_wraps_the_boards_uploader(tmp_path, capsys, monkeypatch):
    fw = tmp_path / "fw.elf"
    fw.write_bytes(b"\x7fELF")
    assert FL.main(["--image", str(fw), "--board", "uno", "--port", "/dev/ttyACM0", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"avrdude -p atmega328p -c arduino -P /dev/ttyACM0 -b 115200 -D -U flash:w:{fw}")
    assert FL.main(["--image", str(fw), "--board", "microbit", "--dry-run"]) == 0
    assert "openocd -f interface/cmsis-dap.cfg -f target/nrf51.cfg -c" in capsys.readouterr().out
    monkeypatch.setenv("PATH", str(tmp_path))
    assert FL.main(["--image", str(fw), "--board", "uno", "--port", "/dev/ttyACM0"]) == 2
    one_line_error(capsys, "avrdude", "apt-get install -y --no-install-recommends avrdude")
    assert FL.main(["--image", str(fw), "--board", "microbit"]) == 2
    one_line_error(capsys, "openocd", "apt-get install")
    assert FL.main(["--image", str(fw), "--board", "uno"]) == 2
    one_line_error(capsys, "needs --port")
    assert FL.main(["--image", str(fw)]) == 2
    one_line_error(capsys, "--board")
    assert FL.main(["--image", str(Path(tmp_path) / "missing.elf"), "--board", "uno"]) == 2
    one_line_error(capsys, "does not exist")
