"""The micro:bit v1 (nRF51822) link firmware on real-silicon terms, under
qemu-system-arm -M microbit: bytes streaming into the UART while the board boots
(cold, and rebooting with a genome, when the slot scan takes longest) do not stop
it answering; a HardFault reboots it with its genome kept; every vector resets;
a flash operation whose NVMC never gets ready ends in ERR_FLASH instead of a hang;
the linker keeps the program below the genome slots; the LED matrix shows the
cell's alpha. Skipped where arm-none-eabi-gcc or qemu-system-arm is missing."""
from __future__ import annotations

import random
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_firmware_host import adversarial_cells, golden_update

import boards.emulator as E
from boards import protocol as L
from boards.client import Board
from boards.swarm import ensure_model
from codegen import toolchain as T
from sim.paths import FIRMWARE

PORT = FIRMWARE / "ports" / "cortex-m0"
SLOT_A, SLOT_B = 0x10000, 0x14000        # firmware/PROTOCOL.md
needs_qemu = pytest.mark.skipif(bool(E.emulator_tools("cortex-m0")), reason="no qemu-system-arm / arm-none-eabi-gcc")
needs_gcc = pytest.mark.skipif(bool(T.missing_tools("cortex-m0")), reason="no arm-none-eabi-gcc")


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Flood:
    """A thread writing garbage and partial frames into a socket at about 115200 baud
    (64 bytes every 5 ms) until stopped: random bytes (0x00 among them, so frames
    end), a HELLO frame cut short, a COBS code running past the delimiter and frames
    longer than the board's buffer."""

    def __init__(self, sock: socket.socket, seed: int):
        self.sock, self.rng, self.stop_ = sock, random.Random(seed), threading.Event()
        hello = L.encode_frame(L.MSG["HELLO"], 1)
        self.pieces = [hello[:len(hello) // 2], b"\x09\x01\x02\x00", bytes(range(1, 256)) * 2]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_.is_set():
            piece = self.rng.choice(self.pieces)
            start = self.rng.randrange(len(piece))
            chunk = bytes(self.rng.randrange(256) for _ in range(48)) + piece[start:start + 16]
            try:
                self.sock.sendall(chunk)
            except OSError:
                return
            time.sleep(0.005)

    def stop(self) -> None:
        self.stop_.set()
        self.thread.join()


def cell_equals_golden(b: Board, q) -> None:
    xs, nbs = adversarial_cells(3, seed=5)
    gc, go = golden_update(q, xs[:3], nbs[:3])
    for k in range(3):
        c, s = b.cell(xs[k], nbs[k])
        assert c == gc[k] and np.array_equal(s, go[k])


@needs_qemu
def test_board_answers_after_bytes_stream_into_its_boot(models):
    """Cold boot: QEMU (wait=on) starts the CPU when the first client connects, so the
    flood reaches the UART from the first instruction. Warm boots: with a genome in
    flash (the slot scan, the longest start-up), three system resets from QEMU's
    monitor while the flood runs. Each time the board then answers, genome intact."""
    qa = models[2]
    mport = E.free_port()
    emu = E.Emulator("cortex-m0", qemu_args=["-monitor", f"tcp:127.0.0.1:{mport},server=on,wait=off"])
    port = E.free_port()
    proc = subprocess.Popen(emu.command(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with connect(port) as s:
            f = Flood(s, seed=1)
            time.sleep(0.3)
            f.stop()
        url = f"socket://127.0.0.1:{port}"
        with Board(url, timeout=1) as b:
            assert b.hello().board == "cortex-m0"
            ensure_model(b, L.image_of(qa))
        with connect(mport) as mon:
            for k in range(3):
                with connect(port) as s:
                    f = Flood(s, seed=2 + k)
                    time.sleep(0.02)
                    mon.sendall(b"system_reset\n")
                    time.sleep(0.2)
                    f.stop()
        with Board(url, timeout=1) as b:
            assert b.hello().model_hash == qa.model_hash
            cell_equals_golden(b, qa)
    finally:
        proc.kill()
        proc.wait(timeout=10)


class Gdb:
    """Just enough of GDB's remote protocol to stop QEMU's CPU, set its PC and detach."""

    def __init__(self, port: int):
        self.s = connect(port)
        self.s.settimeout(5)
        self.s.sendall(b"\x03")                      # interrupt: the stop reply follows
        self._reply()

    def _reply(self) -> str:
        buf = b""
        while not re.search(rb"\$([^#]*)#[0-9a-f]{2}", buf):
            buf += self.s.recv(4096)
        self.s.sendall(b"+")
        return re.search(rb"\$([^#]*)#[0-9a-f]{2}", buf).group(1).decode()

    def packet(self, data: str) -> str:
        self.s.sendall(f"${data}#{sum(data.encode()) & 0xFF:02x}".encode())
        return self._reply()

    def set_pc(self, pc: int) -> None:
        regs = self.packet("g")
        assert self.packet("G" + regs[:15 * 8] + pc.to_bytes(4, "little").hex() + regs[16 * 8:]) == "OK"

    def detach(self) -> None:
        self.packet("D")
        self.s.close()


@needs_qemu
def test_hard_fault_reboots_the_board_with_its_genome(models):
    """The CPU is sent to an address where nothing is mapped (a HardFault, as a wild
    pointer would): the board reboots (its cell state is cleared) and answers with the
    genome it had. The firmware before this start-up code spun in its fault handler."""
    qa = models[2]
    gport = E.free_port()
    with E.Emulator("cortex-m0", qemu_args=["-gdb", f"tcp:127.0.0.1:{gport}"]) as emu:
        with emu.board(timeout=1) as b:
            ensure_model(b, L.image_of(qa))
            b.set_state(np.arange(1, 17, dtype=np.int8))
            assert b.get_state().tolist() == list(range(1, 17))
        g = Gdb(gport)
        g.set_pc(0x30000000)
        g.detach()
        with emu.board(timeout=1) as b:
            assert b.hello().model_hash == qa.model_hash
            assert not b.get_state().any()
            cell_equals_golden(b, qa)


def _objdump(elf: Path, *args: str) -> str:
    return subprocess.run(["arm-none-eabi-objdump", *args, str(elf)], capture_output=True, text=True,
                          check=True).stdout


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (ln.split() for ln in out.splitlines()) if len(p) == 3}


@needs_gcc
def test_every_vector_resets_and_interrupts_are_masked_first():
    """All 15 system and 32 nRF51 vectors are filled: Reset_Handler, and for every other
    one a handler that writes SYSRESETREQ to AIRCR; Reset_Handler's first instruction
    after its prologue's push masks interrupts."""
    elf = T.link_firmware("cortex-m0")
    sym = _symbols(elf)
    raw = _objdump(elf, "-s", "-j", ".text", "--stop-address=0xc0")
    words = struct.unpack("<48I", bytes.fromhex("".join(
        "".join(ln.split()[1:5]) for ln in raw.splitlines() if re.match(r"^ [0-9a-f]{4} ", ln))))
    assert words[0] == 0x20004000 and words[1] == sym["Reset_Handler"] | 1
    assert set(words[2:]) == {sym["Default_Handler"] | 1}
    dis = _objdump(elf, "-d", f"--start-address={sym['Default_Handler']}",
                   f"--stop-address={sym['Default_Handler'] + 32}")
    assert "0x05fa0004" in dis and "0xe000ed0c" in dis      # the literals it stores
    reset = _objdump(elf, "-d", f"--start-address={sym['Reset_Handler']}",
                     f"--stop-address={sym['Reset_Handler'] + 64}").splitlines()
    body = [ln.split("\t")[2] for ln in reset if ln.count("\t") >= 2]
    assert "cpsid" in body[:2], body[:4]


@needs_qemu
def test_stuck_nvmc_ends_in_err_flash_not_a_hang(tmp_path, models):
    """A build whose NVMC READY never reads 1 (NRF51_NVMC_READY_ADDR on a RAM word that
    stays 0): FLASH_BEGIN's erase and every write give up after their bounded wait,
    the chunk's read-back differs and the board answers ERR_FLASH; it keeps answering
    and activates nothing."""
    T.make(FIRMWARE, "cortex-m0", variables=("APP=link", f"BUILD={tmp_path}",
                                             "M0_DEFS=-DNRF51_NVMC_READY_ADDR=0x20002000u"))
    qa = models[2]
    img = L.image_of(qa)
    with E.Emulator("cortex-m0", elf=tmp_path / "nca_link_m0.elf") as emu, emu.board(timeout=3) as b:
        t0 = time.monotonic()
        assert b.request("FLASH_BEGIN", img.header() + struct.pack("<IB", 9, 0))[0] == L.ERR["OK"]
        off, chunk = img.chunks()[0]
        assert b.request("FLASH_WRITE", struct.pack("<I", off) + chunk)[0] == L.ERR["ERR_FLASH"]
        assert time.monotonic() - t0 < 3
        h = b.hello()
        assert h.board == "cortex-m0" and h.active_slot is None


def _link_test_program(tmp_path: Path, nbytes: int) -> subprocess.CompletedProcess:
    src = tmp_path / "big.c"
    src.write_text("#include <stdint.h>\n"
                   f"const uint8_t big[{nbytes}] = {{1}};\n"
                   "int main(void) { return big[0]; }\n")
    return subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m0", "-mthumb", "-Os", "-std=c99", "-ffreestanding",
                           "-I", str(PORT),
                           str(src), str(PORT / "startup.c"), "-nostdlib", "-nostartfiles", "-T",
                           str(PORT / "nrf51.ld"), "-o", str(tmp_path / "big.elf")],
                          capture_output=True, text=True, check=False)


def _load_segments(elf: Path) -> list[tuple[int, int]]:
    """(physical address, file size) of every PT_LOAD: what QEMU or a flasher writes."""
    out = subprocess.run(["arm-none-eabi-readelf", "-lW", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    return [(int(pa, 16), int(n, 16)) for pa, n in
            re.findall(r"^\s*LOAD\s+\S+\s+\S+\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", out, re.M)]


@needs_gcc
def test_linker_keeps_the_program_below_the_genome_slots(tmp_path):
    """nrf51.ld: the slots are NOLOAD sections at 0x10000 and 0x14000 large enough for
    a slot (genome + header), in no loadable segment (QEMU's loader would zero-fill
    them); a program whose image would reach slot A fails to link with the script's
    message, one just below it links."""
    elf = T.link_firmware("cortex-m0")
    sym = _symbols(elf)
    assert (sym["nca_slot_a"], sym["nca_slot_b"]) == (SLOT_A, SLOT_B)
    for s in ("a", "b"):
        size = sym[f"nca_slot_{s}_end"] - sym[f"nca_slot_{s}"]
        assert size >= L.SLOT_BYTES and size % 1024 == 0
        assert L.SLOT_HEADER_OFFSET + L.HEADER_BYTES <= size
    assert all(addr + n <= SLOT_A for addr, n in _load_segments(elf))
    r = _link_test_program(tmp_path, 70_000)
    assert r.returncode != 0 and "reaches into genome slot A" in r.stderr, r.stderr
    r = _link_test_program(tmp_path, 60_000)
    assert r.returncode == 0, r.stderr
    assert all(addr + n <= SLOT_A for addr, n in _load_segments(tmp_path / "big.elf"))


def lit_leds(alpha: int) -> np.ndarray:
    """The pattern the firmware shows (firmware/README.md): round(25 alpha / 128) LEDs,
    in reading order, for alpha > 0."""
    n = (25 * alpha + 64) >> 7 if alpha > 0 else 0
    return (np.arange(25) < n).reshape(5, 5)


@needs_qemu
def test_led_matrix_shows_the_cells_alpha(models):
    """The LED drive read back from QEMU's GPIO trace (rows P0.13-15, columns P0.04-12,
    through the micro:bit's wiring) after STATE_SET and after a STEP."""
    qa = models[2]

    def shown(want: np.ndarray) -> np.ndarray | None:
        deadline, img = time.monotonic() + 3, None
        while time.monotonic() < deadline:
            img = emu.leds()
            if img is not None and np.array_equal(img, want):
                break
            time.sleep(0.02)
        return img

    with E.Emulator("cortex-m0", leds=True) as emu, emu.board(timeout=2) as b:
        ensure_model(b, L.image_of(qa))
        for alpha in (127, 0, 64, 13, -90, 100, 1):
            st = np.zeros(16, np.int8)
            st[3] = alpha
            b.set_state(st)
            img = shown(lit_leds(alpha))
            assert img is not None and np.array_equal(img, lit_leds(alpha)), (alpha, img)
        xs, nbs = adversarial_cells(40, seed=2)
        k = next(i for i in range(len(xs)) if 20 < golden_update(qa, xs[i:i + 1], nbs[i:i + 1])[1][0, 3] < 120)
        _, s = b.cell(xs[k], nbs[k])
        assert np.array_equal(shown(lit_leds(int(s[3]))), lit_leds(int(s[3])))
