"""Emulated boards with the link firmware: a Cortex-M0 under qemu-system-arm -M
microbit and an ATmega328P under simavr (firmware/tools/simavr_bridge.c), both
reached by pyserial over socket://.  nca-flash writes a genome, then >= 200 step
requests equal the golden model bit for bit; flashes cut off at chunk boundaries
(the link closed, or the AVR emulator killed and restarted with its flash file)
leave the previous genome answering; a genome with a bad CRC is never activated;
boards inside the SimPy swarm equal the all-"fixed" run.  The AVR board as the chip
runs it (the bridge's checks, tests/test_avr_boot.py): its genome writes go through
the boot section with interrupts never off for more than 1 ms, its LED shows the
cell's colour, it works with Optiboot's do_spm instead, and without either it says
how to get one.  One emulator per board type is shared by the module; skipped where
the tools are missing."""
from __future__ import annotations

import re
import struct
import time

import numpy as np
import pytest
from test_firmware_host import adversarial_cells, golden_update

import boards.client
import boards.emulator
import boards.swarm
import boards.transport
import sim.assemble
import sim.run
import sim.simulate
from boards import flash as FL
from codegen import golden as G
from boards import protocol as L
from codegen.fixed_cells import FixedBackend
from sim.fixture import blob_model
from sim.model import seed_state
from sim.spec import Params
from sim.swarm import SimPySwarm
from sim.weights import load as load_model


def needs(target: str):
    miss = boards.emulator.emulator_tools(target)
    return pytest.mark.skipif(bool(miss), reason=f"{target} board needs {', '.join(e for e, _ in miss)}")


@pytest.fixture(scope="module")
def m0():
    if boards.emulator.emulator_tools("cortex-m0"):
        pytest.skip("no qemu-system-arm / arm-none-eabi-gcc")
    with boards.emulator.Emulator("cortex-m0") as e:
        yield e


@pytest.fixture(scope="module")
def avr(tmp_path_factory):
    if boards.emulator.emulator_tools("avr"):
        pytest.skip("no simavr / avr-gcc")
    d = tmp_path_factory.mktemp("avr")
    with boards.emulator.Emulator("avr", flash_file=d / "flash.bin", log=d / "bridge.log") as e:
        yield e


def bridge_log(emu: boards.emulator.Emulator) -> str:
    """What the simavr bridge reported on stderr (its checks, interrupts off, the LED)."""
    assert emu._log is not None
    return emu._log.read_text(errors="replace")


def irq_off_max(log: str) -> int:
    return max(int(n) for n in re.findall(r"^irq-off (\d+) cycles", log, re.MULTILINE))


def check_200_steps(board: boards.client.Board, q) -> None:
    xs, nbs = adversarial_cells(150, seed=11)
    pick = np.r_[0:150, len(xs) - 60:len(xs)]
    xs, nbs = xs[pick], nbs[pick]
    gc, go = golden_update(q, xs, nbs)
    codes = np.zeros(len(xs), np.int64)
    out = np.zeros_like(xs)
    for k in range(len(xs)):
        codes[k], out[k] = board.cell(xs[k], nbs[k])
    np.testing.assert_array_equal(codes, gc)
    np.testing.assert_array_equal(out, go)
    # rotation, tentative steps, separate requests, the LED colour
    gc, go = golden_update(q, xs[:20], nbs[:20], 60.0)
    gt = np.zeros_like(xs[:20])
    G.tentative_batch(xs[:20], nbs[:20], *q.arrays(), G.rotation_array(None), gt)
    for k in range(20):
        assert board.cell(xs[k], nbs[k], rot=L.F.rotation_q14(60.0))[1].tolist() == go[k].tolist()
        assert board.cell(xs[k], nbs[k], op="tentative")[1].tolist() == gt[k].tolist()
    for k in range(5):
        board.set_state(xs[k])
        board.set_neighbours(nbs[k])
        c, s = board.step()
        assert np.array_equal(board.get_state(), s) and np.array_equal(board.rgb(), G.rgb(s))


def flash_cli(url: str, model, capsys) -> str:
    assert FL.main(["--port", url, "--model", str(model), "--force", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out
    return out


def flash_then_steps(emu, name: str, models, capsys) -> None:
    """nca-flash a genome over the emulated board's socket, then 200 CELL steps == golden."""
    pa, _, qa, _ = models
    out = flash_cli(emu.url, pa, capsys)
    assert f"({name})" in out
    with emu.board(timeout=5) as b:
        h = b.hello()
        assert (h.board, h.model_hash) == (name, qa.model_hash)
        check_200_steps(b, qa)


@needs("cortex-m0")
def test_cortex_m0_nca_flash_then_steps_equal_golden(m0, models, capsys):
    flash_then_steps(m0, "cortex-m0", models, capsys)


@needs("avr")
def test_avr_nca_flash_then_steps_equal_golden(avr, models, capsys):
    with avr.board(timeout=5) as b:
        assert b.hello().writer == "boot"           # the firmware's own routine in the boot section
    flash_then_steps(avr, "avr", models, capsys)


def cut_then_check(emu: boards.emulator.Emulator, qa, qb, cuts, kill: bool = False) -> None:
    """For each k: flash B for k chunks, cut (close the link, or kill and restart the emulator),
    then the board must still run A."""
    with emu.board(timeout=5) as b:
        boards.swarm.ensure_model(b, L.image_of(qa))
    xs, nbs = adversarial_cells(4, seed=13)
    gc, go = golden_update(qa, xs, nbs)
    for k in cuts:
        with emu.board(timeout=5) as b:
            b.flash(L.image_of(qb), stop_after=k, resume=False)
        if kill:
            emu.restart()
        with emu.board(timeout=5) as b:
            assert b.hello().model_hash == qa.model_hash, k
            c, s = b.cell(xs[k % 4], nbs[k % 4])
            assert c == gc[k % 4] and np.array_equal(s, go[k % 4]), k


@needs("cortex-m0")
def test_cortex_m0_flash_cut_at_every_chunk_boundary(m0, models):
    _, _, qa, qb = models
    cut_then_check(m0, qa, qb, range(len(L.image_of(qb).chunks()) + 1))
    with m0.board(timeout=5) as b:
        r = b.flash(L.image_of(qb))           # and then a whole flash goes through
        assert r.model_hash == qb.model_hash and b.hello().model_hash == qb.model_hash


@needs("avr")
def test_avr_flash_cut_by_closing_the_link_and_by_killing_the_emulator(avr, models):
    _, _, qa, qb = models
    n = len(L.image_of(qb).chunks())
    cut_then_check(avr, qa, qb, (0, 1, n // 2, n - 1, n))
    cut_then_check(avr, qa, qb, (0, 17, n), kill=True)
    avr.restart()                              # the flash file kept the genome across restarts
    with avr.board(timeout=5) as b:
        assert b.hello().model_hash == qa.model_hash


@pytest.mark.slow
@needs("avr")
def test_avr_flash_cut_at_every_chunk_boundary(avr, models):
    _, _, qa, qb = models
    n = len(L.image_of(qb).chunks())
    cut_then_check(avr, qa, qb, range(n + 1))
    cut_then_check(avr, qa, qb, range(0, n + 1, 5), kill=True)


@needs("cortex-m0")
def test_cortex_m0_bad_crc_genome_is_never_activated(m0, models):
    _, _, qa, qb = models
    with m0.board(timeout=5) as b:
        boards.swarm.ensure_model(b, L.image_of(qa))
        good = L.image_of(qb)
        assert b.request("FLASH_BEGIN", good.header() + struct.pack("<IB", 5, 0))[0] == 0
        for off, chunk in good.chunks():
            data = bytes([chunk[0] ^ 0xFF]) + chunk[1:] if off == 4096 else chunk
            assert b.request("FLASH_WRITE", struct.pack("<I", off) + data)[0] == 0
        assert b.request("FLASH_VERIFY")[0] == L.ERR["ERR_VERIFY"]
        assert b.request("FLASH_ACTIVATE")[0] == L.ERR["ERR_NOT_VERIFIED"]
        assert b.hello().model_hash == qa.model_hash
        b.reset()                                    # rescans the slots: A is still the valid one
        assert b.hello().model_hash == qa.model_hash


@needs("cortex-m0")
@needs("avr")
@pytest.mark.parametrize("mode,until", [("lockstep", 12), ("async", 14.0)])
def test_swarm_with_boards_equals_fixed_backend(m0, avr, models, mode, until):
    _, _, qa, _ = models
    params = Params.from_model(blob_model())
    x0 = seed_state(8, 8)
    ref = SimPySwarm(x0, FixedBackend(qa), seed=3, mode=mode)
    ref.run(until)
    with m0.board(timeout=5) as b1, avr.board(timeout=5) as b2:
        cells = boards.swarm.board_cells(params, {3 * 8 + 4: b1, 4 * 8 + 3: b2})
        sw = SimPySwarm(x0, cells, seed=3, mode=mode)
        sw.run(until)
    assert cells.calls >= 6
    assert (ref.grid[..., 3] > 0.1).sum() > 9
    np.testing.assert_array_equal(sw.grid, ref.grid)


@needs("cortex-m0")
def test_sim_run_with_a_board_equals_the_fixed_backend(m0, models, tmp_path, capsys):
    pa = models[0]
    common = ["--model", str(pa), "--size", "8", "--steps", "12", "--seed", "2", "--engine", "simpy",
              "--backend", "fixed", "--target", "lizard"]
    assert sim.run.main(common + ["--save-state", str(tmp_path / "ref.npy")]) == 0
    assert sim.run.main(common + ["--board", f"4,3={m0.url}", "--board", "3,4=emu:cortex-m0",
                            "--save-state", str(tmp_path / "hil.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "ref.npy"), np.load(tmp_path / "hil.npy"))
    capsys.readouterr()
    assert sim.run.main(common + ["--board", "9,9=emu:cortex-m0"]) == 2
    assert "outside the 8x8 grid" in capsys.readouterr().err
    assert sim.run.main(common + ["--board", "1,1=emu:z80"]) == 2
    assert "no emulated board" in capsys.readouterr().err
    assert sim.run.main(common[:-6] + ["--engine", "sync", "--board", "1,1=emu:avr"]) == 2
    assert "--engine simpy" in capsys.readouterr().err


@needs("cortex-m0")
def test_simulate_reports_its_boards_and_always_stops_its_emulators(m0, models, monkeypatch):
    """simulate() counts the board requests, and stops the emulators it started even
    when a metric after the last step raises."""
    started: list[boards.emulator.Emulator] = []

    class Recorded(boards.emulator.Emulator):
        def start(self) -> boards.emulator.Emulator:
            started.append(self)
            return super().start()

    monkeypatch.setattr(boards.swarm, "Emulator", Recorded)
    model = load_model(models[0])
    kw = dict(engine="simpy", backend="fixed", steps=6, size=8, seed=2, warm_up=False)
    res = sim.assemble.simulate(model, boards={(4, 3): m0.url, (3, 4): "emu:cortex-m0"}, **kw)
    assert res.metrics["boards"]["cells"] == 2 and res.metrics["boards"]["requests"] > 0
    assert len(started) == 1 and started[0].proc is None

    def broken(_swarm_metrics):
        raise RuntimeError("metric failed")

    monkeypatch.setattr(sim.simulate, "message_metrics", broken)
    with pytest.raises(RuntimeError, match="metric failed"):
        sim.assemble.simulate(model, boards={(3, 4): "emu:cortex-m0"}, **kw)
    assert len(started) == 2 and started[1].proc is None


@needs("avr")
def test_avr_bridge_pty_mode(models):
    """The simavr bridge's pty mode: pyserial opens the pseudo-terminal as a serial port."""
    with boards.emulator.Emulator("avr", pty=True) as e:
        assert e.url.startswith("/dev/")
        with boards.client.Board(e.url, timeout=5) as b:
            h = b.hello()
            assert h.board == "avr" and h.capacity == L.F.GENOME_BYTES
            b.set_state(np.arange(16, dtype=np.int8))
            assert b.get_state().tolist() == list(range(16))


@needs("cortex-m0")
def test_cortex_m0_flash_through_a_faulty_link(m0, models):
    """Frames corrupted, truncated, duplicated, reordered and dropped between pyserial and
    QEMU: the flash completes (timeouts and NAKs retransmit) and the genome answers."""
    _, _, qa, qb = models
    with m0.board(timeout=5) as b:
        boards.swarm.ensure_model(b, L.image_of(qa))
    ft = boards.transport.FaultyTransport(boards.client.open_port(m0.url), seed=7, corrupt=0.03, truncate=0.03, duplicate=0.03,
                           reorder=0.03, drop=0.03)
    with boards.client.Board(ft, timeout=0.1, slow_timeout=0.5, retries=30) as b:
        r = b.flash(L.image_of(qb))
        assert r.model_hash == qb.model_hash and r.retries > 0
        assert sum(ft.faults.values()) > 5, ft.faults
    with m0.board(timeout=5) as b:
        assert b.hello().model_hash == qb.model_hash
        xs, nbs = adversarial_cells(10, seed=3)
        gc, go = golden_update(qb, xs, nbs)
        for k in range(10):
            c, s = b.cell(xs[k], nbs[k])
            assert c == gc[k] and np.array_equal(s, go[k])


@needs("cortex-m0")
@needs("avr")
def test_error_feedback_on_boards_equals_the_golden_model_and_the_fixed_swarm(m0, avr):
    """A genome with error feedback over the link: the own state crosses it whole (int8
    channels and remainders), the boards answer as the golden model does, and a swarm
    with two board cells equals the all-"fixed" one bit for bit."""
    from test_backends_fixed import with_error_feedback
    from test_firmware_host import with_remainders

    from codegen.quantize import quantized
    m = with_error_feedback(blob_model())
    q = quantized(m)
    e = q.fmt.ef_bits
    assert e == L.F.EF_BITS
    xs8, nbs = adversarial_cells(60, seed=12)
    xs = with_remainders(xs8, 12)[:80]
    nbs = nbs[:80]
    gc, go = golden_update(q, xs, nbs)
    for emu in (m0, avr):
        with emu.board(timeout=5) as b:
            boards.swarm.ensure_model(b, L.image_of(q))
            assert b.hello().ef_bits == e
            for k in range(len(xs)):
                c, s = b.cell(xs[k], nbs[k], ef_bits=e)
                assert c == gc[k] and np.array_equal(s, go[k]), k
            b.set_state(xs[1], ef_bits=e)
            assert np.array_equal(b.get_state(ef_bits=e), xs[1])
    x0 = seed_state(8, 8)
    ref = SimPySwarm(x0, FixedBackend(q), seed=4)
    ref.run(14.0)
    with m0.board(timeout=5) as b1, avr.board(timeout=5) as b2:
        cells = boards.swarm.board_cells(Params.from_model(m), {3 * 8 + 4: b1, 4 * 8 + 3: b2})
        sw = SimPySwarm(x0, cells, seed=4)
        sw.run(14.0)
        # a genome without error feedback refuses remainders
        boards.swarm.ensure_model(b1, L.image_of(quantized(blob_model())))
        assert b1.request("STATE_SET", bytes(16) + bytes([1]) + bytes(7))[0] == L.ERR["ERR_ARG"]
    assert cells.calls >= 6
    np.testing.assert_array_equal(sw.grid, ref.grid)


# ---------------------------------------------------------------- the AVR as the chip runs it
@needs("avr")
def test_avr_writes_through_the_boot_section_with_interrupts_on(avr, models):
    """Two whole flashes, a restart (the boot scan of both slots), a request that arrives
    while a slot is erased, and steps: no SPM outside the boot section, the RWW section
    never executed while busy (the bridge would have stopped), the byte received during
    the erase by the boot section's own vector (IVSEL), and interrupts never off for more
    than 16,000 cycles (1 ms at 16 MHz)."""
    _, _, qa, qb = models
    with avr.board(timeout=5) as b:
        boards.swarm.ensure_model(b, L.image_of(qb))
        boards.swarm.ensure_model(b, L.image_of(qa))
    avr.restart()
    with avr.board(timeout=5) as b:
        assert b.hello().model_hash == qa.model_hash      # the boot scan is over: the board waits
    ser = boards.client.open_port(avr.url)
    try:
        begin = L.image_of(qb).header() + struct.pack("<IB", 99, 0)
        # 200 empty frames (silence) after the BEGIN: 17 ms of bytes, most of them arrive during the erase
        ser.write(b"\x00" + L.encode_frame(L.MSG["FLASH_BEGIN"], 1, begin) + bytes(200)
                  + L.encode_frame(L.MSG["HELLO"], 2))
        raw, deadline = b"", time.monotonic() + 20
        while raw.count(b"\x00") < 2 and time.monotonic() < deadline:
            raw += ser.read(ser.in_waiting or 1)
        replies = [L.decode_frame(f) for f in raw.split(b"\x00")[:2]]
    finally:
        ser.close()
    assert [(t, seq, body[0]) for t, seq, body in replies] == [(0x82, 1, 0), (0x81, 2, 0)]
    with avr.board(timeout=5) as b:
        b.reset()
        xs, nbs = adversarial_cells(3, seed=5)
        gc, go = golden_update(qa, xs, nbs)
        for k in range(3):
            c, st = b.cell(xs[k], nbs[k])
            assert c == gc[k] and np.array_equal(st, go[k])
    log = bridge_log(avr)
    assert "FAIL" not in log and "spm outside" not in log
    assert "interrupt 18 taken in the boot section" in log        # USART RX during the erase
    assert 1000 < irq_off_max(log) <= 16_000, irq_off_max(log)


def last_led(emu: boards.emulator.Emulator) -> list[int]:
    return [int(v) for v in re.findall(r"^led (-?\d+) (-?\d+) (-?\d+)$", bridge_log(emu), re.MULTILINE)[-1]]


@needs("avr")
def test_avr_led_shows_the_cells_colour_after_every_step(avr, models):
    """The PWM drive of D9/D10/D11 (OCR1A, OCR1B, OCR2A, read from the emulated chip) is
    the golden model's RGB of the state after each step; a colour of 0 is the pin off."""
    _, _, qa, _ = models
    xs, nbs = adversarial_cells(30, seed=21)
    xs[:, :3] = np.random.default_rng(4).integers(-40, 128, (len(xs), 3))
    seen = set()
    with avr.board(timeout=5) as b:
        boards.swarm.ensure_model(b, L.image_of(qa))
        for k in range(0, len(xs), 3):
            if k % 2:
                b.set_state(xs[k])
                b.set_neighbours(nbs[k])
                _, s = b.step()
            else:
                _, s = b.cell(xs[k], nbs[k])
            want = G.rgb(s[None])[0].tolist()
            assert last_led(avr) == want, k
            seen |= {v == 0 for v in want}
    assert seen == {True, False}          # both a channel off and channels on were shown


@needs("avr")
def test_avr_without_a_boot_spm_routine_refuses_and_says_how(models, capsys, tmp_path):
    """A boot loader without do_spm (the Uno's own): HELLO says so, FLASH_BEGIN is refused,
    and nca-flash names both ways out in one line."""
    with boards.emulator.Emulator("avr", flash_file=tmp_path / "flash.bin", boot="none") as e:
        with e.board(timeout=5) as b:
            assert b.hello().writer == "none"
            st, _ = b.request("FLASH_BEGIN", L.image_of(models[2]).header() + struct.pack("<IB", 1, 0))
            assert st == L.ERR["ERR_NO_WRITER"]
        assert FL.main(["--port", e.url, "--model", str(models[0]), "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nca-flash: error: the board at socket://")
    for w in ("cannot write genomes", "--target avr --out DIR --build", "--image DIR/build/avr/nca_avr.elf",
              "avrdude -c PROGRAMMER", "-U hfuse:w:0xDE:m", "-U efuse:w:0xFC:m", "flash:w:OPTIBOOT_HEX:i",
              "-U lock:w:0x2F:m"):
        assert w in err, w


@needs("avr")
def test_avr_flashes_through_optiboots_do_spm(models, tmp_path):
    """With Optiboot >= 8 in the boot section (the tests' stand-in: its do_spm and version
    word) the firmware finds do_spm and flashes through it, bit-exact as before; each page
    erase or write then keeps interrupts off for its 4.5 ms (Optiboot waits inside with the
    vectors in the unreadable application), which the measurement sees."""
    _, _, qa, _ = models
    log = tmp_path / "bridge.log"
    with boards.emulator.Emulator("avr", flash_file=tmp_path / "flash.bin", log=log, boot="optiboot") as e:
        with e.board(timeout=5) as b:
            assert b.hello().writer == "optiboot"
            r = b.flash(L.image_of(qa))
            assert r.model_hash == qa.model_hash
            xs, nbs = adversarial_cells(5, seed=8)
            gc, go = golden_update(qa, xs, nbs)
            for k in range(5):
                c, s = b.cell(xs[k], nbs[k])
                assert c == gc[k] and np.array_equal(s, go[k])
        text = log.read_text()
    assert "FAIL" not in text and "spm outside" not in text
    assert 72_000 <= irq_off_max(text) < 73_000, irq_off_max(text)
