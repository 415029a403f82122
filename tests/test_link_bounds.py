"""The board re-checks at FLASH_VERIFY (and at every slot scan) the arithmetic bounds the
quantiser proves: a CRC-valid genome that could overflow the cell's int16 output
accumulators (or whose output shift or multiplier is out of range) is refused with
ERR_FORMAT, every genome the quantiser makes is accepted, and an accepted genome
never overflows, checked against an exact int16 worst case (AVR's int is 16 bits) and
against the golden model (int64) on inputs that reach that worst case."""
from __future__ import annotations

import dataclasses
import shutil
import struct

import numpy as np
import pytest

import boards.client
import boards.transport
from boards import protocol as L
from codegen import formats as F
from codegen import golden as G
from codegen.quantize import QModel, _acc_bound, quantized
from sim import paths
from sim.fixture import blob_model
from sim.weights import load

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")

W2_AT = F.GROUP_W1 + F.GROUP                 # W2[m][u] within a group
B2_AT = F.GROUPS * F.GROUP_BYTES             # out_bias[16] int16, then out_mt[16] uint16
MT_AT = B2_AT + 2 * F.CHANNELS
FAST = ("fixture_blob", "lizard_regenerating_ef", "lizard_regenerating_qat")   # formats recorded: no calibration


@pytest.fixture(scope="module")
def qa() -> QModel:
    return quantized(blob_model())


def verify(b: boards.client.Board, img: L.Image) -> int:
    """BEGIN, every chunk, VERIFY: the board's status (the genome is not activated)."""
    begin = img.header() + struct.pack("<IB", L.crc32(img.genome), 0)
    assert b.request("FLASH_BEGIN", begin)[0] == L.ERR["OK"]
    for off, chunk in img.chunks():
        assert b.request("FLASH_WRITE", struct.pack("<I", off) + chunk)[0] == L.ERR["OK"]
    return b.request("FLASH_VERIFY")[0]


def w2_b2(genome: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(W2 (128, 16) int64, b2 (16,) int64) read back from genome bytes."""
    g = np.frombuffer(genome[:B2_AT], np.int8).reshape(F.GROUPS, F.GROUP_BYTES)
    w2 = g[:, W2_AT:].reshape(F.GROUPS, F.CHANNELS, F.GROUP).transpose(0, 2, 1).reshape(F.HIDDEN, F.CHANNELS)
    return w2.astype(np.int64), np.frombuffer(genome[B2_AT:MT_AT], "<i2").astype(np.int64)


def host_proof_accepts(genome: bytes, acc_shift: int, ef_bits: int) -> bool:
    """What the board must decide: the quantiser's accumulator bound (quantize._acc_bound)
    and the output shift and multiplier ranges (protocol.SHIFT_LIMITS, MULT_HIGH_BYTE)."""
    w2, b2 = w2_b2(genome)
    mt = np.frombuffer(genome[MT_AT:], "<u2").astype(np.int64)
    lo, hi = L.SHIFT_LIMITS["OUT"]
    t_ok = np.all((mt & 31) >= lo + ef_bits) and np.all((mt & 31) <= hi)
    m_ok = np.all((mt >> 8) >= L.MULT_HIGH_BYTE[0]) and np.all((mt >> 8) <= L.MULT_HIGH_BYTE[1])
    acc_ok = all(_acc_bound(w2[:, m], int(b2[m]), acc_shift) <= F.ACC_MAX for m in range(F.CHANNELS))
    return bool(t_ok and m_ok and acc_ok)


def int16_worst_case(genome: bytes, acc_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact extremes (lo, hi) per output of every partial sum of the int16 accumulator
    over all hidden values h in 0..255 - a 16-bit-int emulation independent of the |w| bound:
    acc = b2 + sum_g floor(t_g / 2^R), t_g between 255 * (sum of the group's negative weights)
    and 255 * (sum of its positive ones)."""
    w2, b2 = w2_b2(genome)
    g = w2.reshape(F.GROUPS, F.GROUP, F.CHANNELS)
    t_hi = (np.maximum(g, 0).sum(axis=1) * F.HIDDEN_MAX) >> acc_shift    # floor, per group and output
    t_lo = (np.minimum(g, 0).sum(axis=1) * F.HIDDEN_MAX) >> acc_shift
    hi = b2[None, :] + np.cumsum(t_hi, axis=0)
    lo = b2[None, :] + np.cumsum(t_lo, axis=0)
    return np.minimum(lo.min(axis=0), b2), np.maximum(hi.max(axis=0), b2)


def random_genome(r: np.random.Generator, q: QModel) -> tuple[QModel, bytes, int]:
    """A CRC-valid genome the quantiser did not make, built so that the worst case of one
    output m is reachable: W1 is zero but for input 0 (the own state's channel 0), with
    the sign of W2[j][m], so an own channel 0 of +127 (-128) drives every hidden unit with a
    positive (negative) W2[j][m] to 255 and the others to 0. Random shifts, W2 magnitudes,
    output biases, multipliers and output shifts (mostly, not always, in range)."""
    m = int(r.integers(F.CHANNELS))
    cap = int(np.exp(r.uniform(0, np.log(129))))
    w2 = np.clip(r.integers(-cap, cap + 1, (F.HIDDEN, F.CHANNELS)), -128, 127)
    w1 = np.zeros((F.PERCEPTION, F.HIDDEN), np.int64)
    w1[0] = np.where(w2[:, m] > 0, 127, -127)
    b2 = np.clip(np.rint(r.standard_normal(F.CHANNELS) * 2.0 ** r.uniform(0, 16)), -32768, 32767)
    tsh = r.integers(0, 32, F.CHANNELS) if r.random() < 0.1 else r.integers(5, 31, F.CHANNELS)
    mult = r.integers(1 << 14, 1 << 15, F.CHANNELS) & ~31
    if r.random() < 0.1:
        mult[r.integers(F.CHANNELS)] = r.integers(0, 1 << 16) & ~31
    fmt = F.ModelFormat(int(r.integers(0, 5)), 0, int(r.integers(0, 8)), int(r.integers(1, 16)), q.fmt.state_fracs,
                        int(r.choice([0, F.EF_BITS])))
    q2 = dataclasses.replace(q, w1=w1.astype(np.int8), b1=np.zeros(F.HIDDEN, np.int8), w2=w2.astype(np.int8),
                             b2=b2.astype(np.int16), mult=mult.astype(np.uint16).view(np.int16),
                             tsh=tsh.astype(np.uint8), fmt=fmt)
    return q2, q2.genome(), m


def image(q: QModel, genome: bytes) -> L.Image:
    f = q.fmt
    return L.Image(genome, (f.grad_shift, f.hidden_shift, f.bias_shift, f.acc_shift), L.crc32(genome),
                   ef_bits=f.ef_bits)


def test_random_genomes_are_refused_or_never_overflow(qa):
    """400 CRC-valid random genomes: the board accepts exactly those the quantiser's proof
    accepts; every accepted one fits int16 in the exact worst case, reaches it on the
    board, and the board's step equals the golden model's (which has no int16 to wrap)."""
    r = np.random.default_rng(20)
    host = boards.transport.HostLink()
    b = boards.client.Board(host)
    seen = {"accepted": 0, "refused": 0, "refused_overflow": 0}
    for k in range(400):
        q2, genome, m = random_genome(r, qa)
        img = image(q2, genome)
        st = verify(b, img)
        want = host_proof_accepts(genome, q2.fmt.acc_shift, q2.fmt.ef_bits)
        assert st == (L.ERR["OK"] if want else L.ERR["ERR_FORMAT"]), k
        lo, hi = int16_worst_case(genome, q2.fmt.acc_shift)
        fits = bool(np.all(lo >= F.ACC_MIN) and np.all(hi <= F.ACC_MAX))
        if st != L.ERR["OK"]:
            seen["refused"] += 1
            seen["refused_overflow"] += not fits
            continue
        seen["accepted"] += 1
        assert fits, k                                   # the check is sound for 16-bit int
        assert b.request("FLASH_ACTIVATE")[0] == L.ERR["OK"]
        ef = q2.fmt.ef_bits
        for x0 in (127, -128):
            x = np.zeros(F.CHANNELS, np.int64)
            x[0] = x0
            p = np.empty(F.PERCEPTION, np.int64)
            acc = np.empty(F.CHANNELS, np.int64)
            G.perceive(x, np.zeros((8, 16), np.int64), G.NO_ROTATION, 0, p)
            G.dense(p, *q2.arrays()[:4], q2.arrays()[6], acc, np.empty(F.HIDDEN, np.int64))
            assert acc[m] == (hi[m] if x0 > 0 else lo[m]), (k, x0)      # the inputs reach the worst case
            own = (x << ef).astype(np.int16 if ef else np.int8)
            nbs = np.zeros((8, 16), np.int8)
            _, s = b.cell(own, nbs, op="tentative", ef_bits=ef)
            gt = np.zeros((1, 16), own.dtype)
            G.tentative_batch(own[None], nbs[None], *q2.arrays(), G.NO_ROTATION, gt)
            assert np.array_equal(s, gt[0]), (k, x0)
    # both outcomes occur, and the refusals include genomes that really overflow
    assert seen["accepted"] > 60 and seen["refused_overflow"] > 60, seen


@pytest.mark.parametrize("acc_shift", [4, 9, 15])
def test_the_bound_is_exact_at_its_edge(qa, acc_shift):
    """A quantiser genome with one output bias moved to put its bound at 32,767 is
    accepted, at 32,768 refused: the board's check is the quantiser's, not a looser one."""
    b = boards.client.Board(boards.transport.HostLink())
    fmt = dataclasses.replace(qa.fmt, acc_shift=acc_shift)
    for m, sign in ((0, 1), (7, -1), (15, 1)):
        edge = F.ACC_MAX - (_acc_bound(qa.w2[:, m], 0, acc_shift))
        assert 0 < edge < F.ACC_MAX
        for extra, want in ((0, "OK"), (1, "ERR_FORMAT")):
            b2 = qa.b2.copy()
            b2[m] = sign * (edge + extra)
            q2 = dataclasses.replace(qa, b2=b2, fmt=fmt)
            assert _acc_bound(q2.w2[:, m], int(q2.b2[m]), acc_shift) == F.ACC_MAX + extra
            assert verify(b, image(q2, q2.genome())) == L.ERR[want], (m, sign, extra)


def test_a_flipped_weight_in_flash_is_refused_at_start_up(qa):
    """The slot scan runs the same check: a genome pushed over its bound behind the board's
    back (CRC and header rewritten to match) is not activated at the next start."""
    host = boards.transport.HostLink()
    b = boards.client.Board(host)
    b.flash(L.image_of(qa))
    assert b.hello().active_slot == 0
    b2 = qa.b2.copy()
    b2[3] = F.ACC_MAX - _acc_bound(qa.w2[:, 3], 0, qa.fmt.acc_shift) + 1
    q2 = dataclasses.replace(qa, b2=b2)
    img = image(q2, q2.genome())
    slot = host.flash(0)
    slot[:len(img.genome)] = img.genome
    slot[L.SLOT_HEADER_OFFSET:L.SLOT_HEADER_OFFSET + L.HEADER_BYTES] = img.header(generation=1)
    host.power_cycle()
    assert boards.client.Board(host).hello().active_slot is None
    slot[B2_AT + 6:B2_AT + 8] = struct.pack("<h", int(b2[3]) - 1)        # back on the bound
    img = image(q2, bytes(slot[:len(img.genome)]))
    slot[L.SLOT_HEADER_OFFSET:L.SLOT_HEADER_OFFSET + L.HEADER_BYTES] = img.header(generation=1)
    host.power_cycle()
    assert boards.client.Board(host).hello().active_slot == 0


def shipped_models_pass_verify(names: list[str]) -> None:
    host = boards.transport.HostLink()
    b = boards.client.Board(host)
    for name in names:
        q = quantized(load(paths.model_path(name)))
        assert verify(b, L.image_of(q)) == L.ERR["OK"], name
        assert b.request("FLASH_ACTIVATE")[0] == L.ERR["OK"], name


def test_the_quantisers_genomes_pass_verify():
    """The fixture and the shipped models whose format is recorded (no calibration run):
    the board's check accepts what the quantiser makes (every shipped model: the slow test)."""
    shipped_models_pass_verify(list(FAST))


@pytest.mark.slow
def test_every_shipped_model_passes_verify():
    names = [p.stem for p in paths.shipped_models()]
    assert len(names) >= 7
    shipped_models_pass_verify(names)
