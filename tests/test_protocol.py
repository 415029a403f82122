"""The cell link protocol on the host build of the board firmware (libnca_link.so,
the same C parser, dispatcher and A/B genome slots as the boards, flash kept in
RAM with NOR semantics): the generated header, flashing, every error reply,
atomicity at every chunk boundary, faults on the link, and the parser fuzzed
under AddressSanitizer + UndefinedBehaviorSanitizer."""
from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess
from collections import Counter
from typing import Any

import numpy as np
import pytest
from conftest import other_model
from test_firmware_host import adversarial_cells, golden_update

import boards.client
import boards.errors
import boards.swarm
import boards.transport
from codegen import golden as G
from boards import protocol as L
from codegen.quantize import quantized
from sim.fixture import blob_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")


@pytest.fixture(scope="module")
def qa():
    return quantized(blob_model())


@pytest.fixture(scope="module")
def qb():
    return quantized(other_model(blob_model()))


@pytest.fixture
def host():
    return boards.transport.HostLink()


class RequestCounter:
    """A transport that passes everything through and counts the host's requests by name."""

    NAMES = {mid: name for name, mid in L.MSG.items()}

    def __init__(self, inner: Any):
        self.inner = inner
        self.instant = getattr(inner, "instant", False)
        self.sent: Counter[str] = Counter()
        self._wbuf = bytearray()

    def write(self, data: bytes) -> int:
        self._wbuf += data
        for f in boards.transport._split_frames(self._wbuf):
            if len(f) > 1:
                try:
                    self.sent[self.NAMES.get(L.decode_frame(f[:-1])[0], "?")] += 1
                except L.FrameError:
                    self.sent["?"] += 1
        return self.inner.write(data)

    def read(self, n: int = 1) -> bytes:
        return self.inner.read(n)

    @property
    def in_waiting(self) -> int:
        return self.inner.in_waiting

    def reset_input_buffer(self) -> None:
        self.inner.reset_input_buffer()

    def close(self) -> None:
        self.inner.close()


def check_cells(board: boards.client.Board, q, n: int = 60, seed: int = 0, angle=None) -> None:
    """n cells through CELL requests equal the golden model bit for bit."""
    xs, nbs = adversarial_cells(n, seed=seed)
    pick = np.r_[0:n, len(xs) - 20:len(xs)]
    xs, nbs = xs[pick], nbs[pick]
    gc, go = golden_update(q, xs, nbs, angle)
    rot = None if angle is None else L.F.rotation_q14(angle)
    for k in range(len(xs)):
        c, s = board.cell(xs[k], nbs[k], rot=rot)
        assert c == gc[k] and np.array_equal(s, go[k]), k


def test_generated_header_equals_the_python_definition():
    assert L.HEADER_PATH.read_text() == L.c_header()
    text = L.c_header()
    for name, mid, _, _ in L.MESSAGES:
        assert f"#define NCA_MSG_{name} 0x{mid:02X}\n" in text
    for name, code, _ in L.ERRORS:
        assert f"#define NCA_{name} {code}\n" in text
    assert f"#define NCA_GENOME_BYTES {L.F.GENOME_BYTES}\n" in text
    # the shift ranges a board accepts are the quantiser's
    for k, (lo, hi) in L.SHIFT_LIMITS.items():
        if k != "OUT":
            args = {"GRAD": (lo, 0, 0, 1), "HIDDEN": (0, lo, 0, 1), "BIAS": (0, 0, lo, 1), "ACC": (0, 0, 0, lo)}[k]
            L.F.ModelFormat(*args, L.F.LEGACY_STATE_FRACS).check()
            with pytest.raises(ValueError):
                L.F.ModelFormat(*[a + (hi - lo + 1 if a == lo and i == "GRAD HIDDEN BIAS ACC".split().index(k)
                                       else 0) for i, a in enumerate(args)], L.F.LEGACY_STATE_FRACS).check()


def test_protocol_md_states_the_definitions_figures():
    """PROTOCOL.md's figures are the ones boards/protocol.py defines (they drifted once)."""
    text = (L.FIRMWARE / "PROTOCOL.md").read_text()
    for figure in (f"`NCA_LINK_RX_BUFFER` = {L.RX_BUFFER} bytes", f"`NCA_SLOT_BYTES` = {L.SLOT_BYTES:,} B",
                   f"the header at {L.SLOT_HEADER_OFFSET:,}", f"`GENOME_BYTES` = {L.F.GENOME_BYTES:,} B",
                   f"genome's last {L.F.GENOME_BYTES - 8 * 1024} bytes"):
        assert figure in text, figure


def test_frames_roundtrip_and_reject_damage():
    f = L.encode_frame(0x09, 200, bytes(range(256))[:150])
    assert f.endswith(b"\x00") and b"\x00" not in f[:-1]
    assert L.decode_frame(f[:-1]) == (0x09, 200, bytes(range(256))[:150])
    bad = bytearray(f[:-1])
    bad[5] ^= 0x40
    with pytest.raises(L.FrameError):
        L.decode_frame(bytes(bad))
    with pytest.raises(L.FrameError):
        L.decode_frame(f[:3])
    with pytest.raises(ValueError):
        L.encode_frame(1, 0, bytes(L.MAX_PAYLOAD))


def test_flash_then_cells_equal_golden(host, qa):
    b = boards.client.Board(host)
    h = b.hello()
    assert (h.board, h.active_slot, h.capacity, h.max_payload) == ("host", None, L.F.GENOME_BYTES, L.MAX_PAYLOAD)
    r = b.flash(L.image_of(qa))
    assert (r.slot, r.generation, r.model_hash, r.retries) == (0, 1, qa.model_hash, 0)
    h = b.hello()
    assert h.model_hash == qa.model_hash and h.shifts == (qa.fmt.grad_shift, qa.fmt.hidden_shift,
                                                           qa.fmt.bias_shift, qa.fmt.acc_shift)
    check_cells(b, qa, 300, seed=1)
    check_cells(b, qa, 100, seed=2, angle=45.0)


def test_separate_commands_tentative_rgb_and_reset(host, qa):
    b = boards.client.Board(host)
    b.flash(L.image_of(qa))
    xs, nbs = adversarial_cells(40, seed=3)
    gc, go = golden_update(qa, xs, nbs)
    for k in range(40):
        b.set_state(xs[k])
        b.set_neighbours(nbs[k])
        assert np.array_equal(b.get_state(), xs[k])
        c, s = b.step()
        assert c == gc[k] and np.array_equal(s, go[k])
        assert np.array_equal(b.rgb(), G.rgb(go[k]))
        assert host.led() == tuple(G.rgb(go[k]))          # the port's LED hook saw the same colour
        b.set_state(xs[k])
        c, s = b.step(fire=False)
        assert c == 3 and np.array_equal(s, xs[k]) and host.led() == tuple(G.rgb(xs[k]))
    gt = np.zeros_like(xs)
    G.tentative_batch(xs, nbs, *qa.arrays(), G.rotation_array(30.0), gt)
    for k in range(40):
        c, s = b.cell(xs[k], nbs[k], op="tentative", rot=L.F.rotation_q14(30.0))
        assert np.array_equal(s, gt[k])
    b.reset()
    assert not b.get_state().any()
    assert b.hello().model_hash == qa.model_hash


def test_hello_says_how_the_board_writes_and_a_board_that_cannot_refuses(qa):
    """HELLO's last byte (appended: a 24-byte reply from an older board still parses, and
    a longer one from a newer board too); a board without a writer refuses FLASH_BEGIN
    with ERR_NO_WRITER and the client raises NoWriter before sending it."""
    h = boards.client.Board(boards.transport.HostLink()).hello()
    assert h.writer == "native" and h.active_slot is None
    raw = struct.pack("<BBBBHIBII4BB", 2, 1, 3, 4, 161, 8384, 0xFF, 0, 0, 0, 0, 0, 0, 0)
    assert L.Hello.parse(raw).writer is None
    assert L.Hello.parse(raw + b"\x02").writer == "boot" and L.Hello.parse(raw + b"\x03\x07").writer == "optiboot"
    with pytest.raises(L.FrameError):
        L.Hello.parse(raw[:-1])
    link = boards.transport.HostLink(writer="none")
    b = boards.client.Board(link)
    assert b.hello().writer == "none"
    begin = L.image_of(qa).header() + struct.pack("<IB", 1, 0)
    assert b.request("FLASH_BEGIN", begin)[0] == L.ERR["ERR_NO_WRITER"]
    with pytest.raises(boards.errors.NoWriter, match="no SPM routine"):
        b.flash(L.image_of(qa))
    assert boards.client.Board(boards.transport.HostLink()).hello().writer == "native"


def status_of(b: boards.client.Board, name: str, body: bytes = b"") -> int:
    return b.request(name, body)[0]


def test_every_error_is_a_reply_with_a_code(host, qa):
    b = boards.client.Board(host)
    E = L.ERR
    step = struct.pack("<BBBhh", 0, 1, 0, 0, 0)
    assert status_of(b, "STEP", step) == E["ERR_NO_GENOME"]
    with pytest.raises(boards.errors.BoardRefused, match="ERR_NO_GENOME"):
        b.step()
    assert status_of(b, "HELLO", b"x") == E["ERR_LENGTH"]
    assert status_of(b, "STATE_SET", bytes(15)) == E["ERR_LENGTH"]
    assert status_of(b, "NEIGHBOURS_SET", bytes(129)) == E["ERR_LENGTH"]
    assert status_of(b, "STEP", struct.pack("<BBBhh", 2, 1, 0, 0, 0)) == E["ERR_ARG"]
    assert status_of(b, "FLASH_WRITE", bytes(8)) == E["ERR_NO_SESSION"]
    assert status_of(b, "FLASH_VERIFY") == E["ERR_NO_SESSION"]
    assert status_of(b, "FLASH_ACTIVATE") == E["ERR_NO_SESSION"]
    img = L.image_of(qa)
    hdr = bytearray(img.header())
    hdr[5] = 99                                               # format version
    assert status_of(b, "FLASH_BEGIN", bytes(hdr) + bytes(5)) == E["ERR_FORMAT"]
    assert status_of(b, "FLASH_BEGIN", img.header()[:-1] + bytes(6)) == E["ERR_FORMAT"]   # header CRC
    assert status_of(b, "FLASH_BEGIN", img.header()) == E["ERR_LENGTH"]
    st, d = b.request("FLASH_BEGIN", img.header() + bytes(5))
    assert st == E["OK"] and d == bytes(4)
    st, d = b.request("FLASH_WRITE", struct.pack("<I", 256) + img.genome[256:384])
    assert st == E["ERR_OFFSET"] and struct.unpack("<I", d)[0] == 0
    assert status_of(b, "FLASH_WRITE", struct.pack("<I", 3) + bytes(128)) == E["ERR_ARG"]
    assert status_of(b, "FLASH_WRITE", struct.pack("<I", 0) + bytes(100)) == E["ERR_LENGTH"]
    assert status_of(b, "FLASH_WRITE", struct.pack("<I", 0) + img.genome[:128]) == E["OK"]
    assert status_of(b, "FLASH_VERIFY") == E["ERR_INCOMPLETE"]
    assert status_of(b, "FLASH_ACTIVATE") == E["ERR_NOT_VERIFIED"]
    # unknown types, replies sent to the board, and unreadable frames
    for t in (0x00, 0x0D, 0x7F, 0x81):
        b.ser.write(L.encode_frame(t, 7))
        assert L.decode_frame(b.ser.read(100)[:-1])[2][0] == E["ERR_UNKNOWN"]
    raw = bytearray(L.encode_frame(1, 5))
    raw[2] ^= 0x10
    for junk, code in ((bytes(raw), E["ERR_FRAME_CRC"]), (b"\x02\x01\x00", E["ERR_FRAME_SHORT"]),
                       (b"\x05\x01\x00", E["ERR_FRAME_COBS"]), (b"\x01" * 400 + b"\x00", E["ERR_FRAME_LONG"])):
        b.ser.write(junk)
        t, s, body = L.decode_frame(b.ser.read(100)[:-1])
        assert (t, s, body[0]) == (L.NAK, 0, code)
    assert b.ser.in_waiting == 0
    b.ser.write(b"\x00\x00\x00")               # empty frames: silence
    assert b.ser.in_waiting == 0
    assert b.hello().active_slot is None


def test_a_repeated_request_is_answered_not_run_twice(host, qa):
    b = boards.client.Board(host)
    b.flash(L.image_of(qa))
    xs, nbs = adversarial_cells(5, seed=9)
    b.set_state(xs[0])
    b.set_neighbours(nbs[0])
    frame = L.encode_frame(L.MSG["STEP"], 77, struct.pack("<BBBhh", 0, 1, 0, 0, 0))
    host.write(frame + frame)
    r1, r2 = host.read(1000).split(b"\x00")[:2]
    assert r1 == r2
    _, go = golden_update(qa, xs[:1], nbs[:1])
    assert np.array_equal(b.get_state(), go[0])             # stepped once


@pytest.mark.parametrize("partial", [b"", b"\x05\x09\x2a"])
def test_a_new_session_is_not_answered_from_the_last_ones_cache(host, qa, partial):
    """A new Board whose first request repeats the previous session's last one byte for
    byte (same type, seq and body: a random seq repeats 1 in 256) gets it run again, also
    when the previous session left a partial frame on the line."""
    xs, nbs = adversarial_cells(60, seed=11)
    _, once = golden_update(qa, xs, nbs)
    _, twice = golden_update(qa, once, nbs)
    k = int(np.argmax(np.any(once != twice, axis=1)))
    assert np.any(once[k] != twice[k])                      # a cell that a second step changes
    b = boards.client.Board(host)
    b.flash(L.image_of(qa))
    b.set_state(xs[k])
    b.set_neighbours(nbs[k])
    b._seq = 42
    assert np.array_equal(b.step()[1], once[k])
    b.close()
    host.write(partial)                                      # the link was cut mid-frame
    b = boards.client.Board(host)
    b._seq = 42
    assert np.array_equal(b.step()[1], twice[k])             # run, not the cached reply
    assert b.request("STEP", struct.pack("<BBBhh", 0, 1, 0, 0, 0))[0] == 0


def test_bad_crc_genome_is_never_activated(host, qa, qb):
    b = boards.client.Board(host)
    b.flash(L.image_of(qa))
    good = L.image_of(qb)
    bad = L.Image(good.genome[:1000] + bytes([good.genome[1000] ^ 1]) + good.genome[1001:], good.shifts,
                  good.model_hash)
    # the header promises the good genome's CRC, the data is another
    evil = L.Image(bad.genome, bad.shifts, bad.model_hash)
    object.__setattr__(evil, "genome", bad.genome)
    hdr = good.header()
    st, _ = b.request("FLASH_BEGIN", hdr + struct.pack("<IB", 1, 0))
    for off, chunk in evil.chunks():
        assert b.request("FLASH_WRITE", struct.pack("<I", off) + chunk)[0] == 0
    st, d = b.request("FLASH_VERIFY")
    assert st == L.ERR["ERR_VERIFY"] and struct.unpack("<I", d)[0] == L.crc32(bad.genome)
    assert b.request("FLASH_ACTIVATE")[0] == L.ERR["ERR_NOT_VERIFIED"]
    assert b.hello().model_hash == qa.model_hash
    host.power_cycle()
    b = boards.client.Board(host)
    assert b.hello().model_hash == qa.model_hash
    check_cells(b, qa, 20, seed=4)
    # a genome whose output shifts are out of range verifies its CRC but is refused
    g = bytearray(good.genome)
    g[L.F.GROUPS * L.F.GROUP_BYTES + 32] &= 0xE0                 # T = 0
    zero_t = L.Image(bytes(g), good.shifts, good.model_hash)
    with pytest.raises(boards.errors.BoardRefused, match="FLASH_VERIFY refused: ERR_FORMAT"):
        b.flash(zero_t)
    assert b.hello().model_hash == qa.model_hash
    # ... and so is one whose output multiplier M is 2^15 or more (acc*M would overflow int32)
    g = bytearray(good.genome)
    g[L.F.GROUPS * L.F.GROUP_BYTES + 32 + 2 * 5 + 1] |= 0x80
    big_m = L.Image(bytes(g), good.shifts, good.model_hash)
    with pytest.raises(boards.errors.BoardRefused, match="ERR_FORMAT"):
        b.flash(big_m)
    assert b.hello().model_hash == qa.model_hash


def test_flash_cut_at_every_chunk_boundary_keeps_the_previous_genome(host, qa, qb):
    """Cut after k chunks, for every k: by closing the link (the board keeps its session
    and the next flash resumes there) or by restarting the board (RAM lost)."""
    img_a, img_b = L.image_of(qa), L.image_of(qb)
    boards.client.Board(host).flash(img_a)
    n = len(img_b.chunks())
    xs, nbs = adversarial_cells(3, seed=5)
    gc, go = golden_update(qa, xs, nbs)
    for k in range(n + 1):
        for restart in (False, True):
            b = boards.client.Board(host)
            b.flash(img_b, stop_after=k, resume=False)
            b.close()
            if restart:
                host.power_cycle()
            b = boards.client.Board(host)
            h = b.hello()
            assert h.model_hash == qa.model_hash, (k, restart)
            c, s = b.cell(xs[k % 3], nbs[k % 3])
            assert c == gc[k % 3] and np.array_equal(s, go[k % 3])
    b = boards.client.Board(host)
    b.flash(img_b, stop_after=7, resume=False)
    b = boards.client.Board(host)
    r = b.flash(img_b)                      # the link was closed, the board kept its session
    assert r.resumed_from == 7 * L.CHUNK and r.model_hash == qb.model_hash
    check_cells(b, qb, 20, seed=6)
    # and an activation cut short (a torn header write) leaves the previous genome too
    host.power_cycle()
    b = boards.client.Board(host)
    assert b.hello().model_hash == qb.model_hash
    active = b.hello().active_slot
    b.flash(img_a, stop_after=len(img_a.chunks()))
    assert b.request("FLASH_VERIFY")[0] == 0
    slot = host.flash(1 - active)
    header = img_a.header(generation=3)
    for i in range(16):                     # the first half of the header reached the flash
        slot[L.SLOT_HEADER_OFFSET + i] &= header[i]
    host.power_cycle()
    assert boards.client.Board(host).hello().model_hash == qb.model_hash


def test_corrupt_active_slot_falls_back_to_the_previous_genome(host, qa, qb):
    boards.client.Board(host).flash(L.image_of(qa))
    b = boards.client.Board(host)
    b.flash(L.image_of(qb))
    h = b.hello()
    assert h.model_hash == qb.model_hash and h.generation == 2
    host.flash(h.active_slot)[4000] ^= 0x55          # a flipped byte in the active genome
    host.power_cycle()
    h2 = boards.client.Board(host).hello()
    assert h2.model_hash == qa.model_hash and h2.active_slot == 1 - h.active_slot


@pytest.mark.parametrize("seed", range(6))
def test_flash_completes_through_a_faulty_link(qa, qb, seed):
    host = boards.transport.HostLink()
    boards.client.Board(host).flash(L.image_of(qa))
    ft = boards.transport.FaultyTransport(host, seed=seed, corrupt=0.06, truncate=0.06, duplicate=0.06, reorder=0.06,
                           drop=0.06)
    b = boards.client.Board(ft, retries=30)
    r = b.flash(L.image_of(qb))
    assert r.model_hash == qb.model_hash and r.retries > 0
    assert all(v > 0 for v in ft.faults.values()), ft.faults
    check_cells(b, qb, 30, seed=seed)


def test_a_dead_link_fails_cleanly_and_keeps_the_genome(qa, qb):
    host = boards.transport.HostLink()
    boards.client.Board(host).flash(L.image_of(qa))
    b = boards.client.Board(boards.transport.FaultyTransport(host, seed=1, drop=0.5), retries=2)
    with pytest.raises(boards.errors.LinkError, match=r"no reply from .* after 3 tries") as e:
        for _ in range(20):
            b.flash(L.image_of(qb))
    assert not isinstance(e.value, boards.errors.BoardRefused)          # a lost link is worth another try
    assert boards.client.Board(host).hello().model_hash == qa.model_hash


class Unplugged:
    """A port whose device went away: pyserial raises SerialException (an OSError)."""

    def write(self, data: bytes) -> int:
        import serial
        raise serial.SerialException("write failed: [Errno 5] Input/output error")


def test_a_port_that_fails_is_a_link_error_not_a_traceback(host):
    with pytest.raises(boards.errors.LinkError, match="lost the link to Unplugged: write failed") as e:
        boards.client.Board(Unplugged())
    assert not isinstance(e.value, boards.errors.BoardRefused)
    b = boards.client.Board(host)
    b.ser = Unplugged()
    with pytest.raises(boards.errors.LinkError, match="lost the link to HostLink during HELLO") as e:
        b.hello()
    assert not isinstance(e.value, boards.errors.BoardRefused)


def test_what_the_board_refuses_is_board_refused(host, qa, qb):
    """Every answer that the same request would get again raises BoardRefused."""
    b = boards.client.Board(host)
    img_a, img_b = L.image_of(qa), L.image_of(qb)
    b.flash(img_a)
    h = b.hello()
    with pytest.raises(boards.errors.BoardRefused, match=r"the board holds genomes of 100 B, this one has \d+ B"):
        b.flash(img_b, hello=dataclasses.replace(h, capacity=100))
    with pytest.raises(boards.errors.BoardRefused, match=f"the board runs fixed-point format {h.format_version + 1}, "):
        b.flash(img_b, hello=dataclasses.replace(h, format_version=h.format_version + 1))
    hdr = bytearray(img_b.header())
    hdr[4] = 99                                                  # image version: FLASH_BEGIN says ERR_FORMAT
    with pytest.raises(boards.errors.BoardRefused, match="FLASH_BEGIN refused by the board at HostLink: ERR_FORMAT"):
        b.call("FLASH_BEGIN", bytes(hdr) + bytes(5))
    # every chunk written, then a bit flipped in the slot: the resumed flash fails its verify
    b.flash(img_b, stop_after=len(img_b.chunks()))
    host.flash(1 - h.active_slot)[1234] ^= 0x10
    with pytest.raises(boards.errors.BoardRefused, match=r"verify failed: .* not activated"):
        b.flash(img_b)
    assert b.hello().model_hash == qa.model_hash


def test_a_flash_asks_hello_once(qa, qb):
    """Board.flash asks HELLO itself only when the caller did not pass the reply it has."""
    link = RequestCounter(boards.transport.HostLink())
    b = boards.client.Board(link)
    b.flash(L.image_of(qa))
    assert link.sent["HELLO"] == 1 and link.sent["FLASH_ACTIVATE"] == 1
    h = b.hello()
    r = b.flash(L.image_of(qb), hello=h)
    assert link.sent["HELLO"] == 2 and link.sent["FLASH_BEGIN"] == 2 and r.model_hash == qb.model_hash
    boards.swarm.ensure_model(b, L.image_of(qa))              # HELLO says "not this model", then the flash
    assert link.sent["HELLO"] == 3 and link.sent["FLASH_ACTIVATE"] == 3
    assert b.hello().model_hash == qa.model_hash


def run_fuzz(count: int, seed: int) -> str:
    exe = boards.transport.link_firmware("fuzz")
    r = subprocess.run([str(exe), str(count), str(seed)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr
    return r.stdout


def test_parser_fuzzed_under_asan_and_ubsan_100k():
    out = run_fuzz(100_000, 3)
    fields = dict(zip(out.split()[::2], map(int, out.split()[1::2])))
    assert fields["inputs"] == 100_000 and fields["steps"] > 1000 and fields["naks"] > 1000
    assert fields["ok"] > 1000 and fields["active_slot"] in (0, 1)
    # whole flashes of random genomes: both verdicts, and steps at a reachable worst case
    assert fields["genomes"] == 1000 and 200 < fields["accepted"] < 900 and fields["worst_cases"] > 100


@pytest.mark.slow
def test_parser_fuzzed_under_asan_and_ubsan_1m():
    out = run_fuzz(1_000_000, 2)
    assert out.startswith("inputs 1000000 ")
