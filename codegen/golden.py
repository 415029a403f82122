"""The golden model: the firmware's exact integer arithmetic in numba.

The C core (firmware/core/nca_cell.c) and its assembly kernels must equal this
bit for bit on every input; the "fixed" swarm backend runs it. The steps and
their formats are specified in codegen/formats.py. All arithmetic is int64 here
(but the first layer's sums, int32 as on ARM: exact within formats.ACC1_LIMIT);
the formats' bounds guarantee that the firmware's narrower registers (int32,
AVR __int24, int16 accumulators) never overflow, so the results are equal.

Arrays of a quantised model (`QModel.arrays()`):
  w1 int8 (48, 128)  b1 int8 (128,)  w2 int8 (128, 16)  b2 int16 (16,)
  mult int16 (16,) (a multiple of 32)   tsh uint8 (16,)
  consts int64 [grad_shift, hidden_shift, bias_shift, acc_shift, then the 16 channels'
  state fraction bits, then the error-feedback bits E] (the integer arithmetic reads
  the shifts and E; the conversions from and to the swarm's float arrays read the
  fraction bits)
A cell's own state x is in units of 2^-E state steps: the int8 state itself when
E = 0 (int8 arrays), q * 2^E + r with error feedback (int16 arrays), whose view
x >> E is the int8 state that the network, the alive rule and the neighbours see.
A rotation is int64 [on, cos_q14, sin_q14] (on = 0: none).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from sim import rng
from sim.model import ALPHA, CHANNELS, FIRE_RATE, HIDDEN, NEIGHBOUR_OFFSETS, PERCEPTION

from . import formats as F

_OFFS = np.array(NEIGHBOUR_OFFSETS, np.int64)
_SX = F.SOBEL_X_SLOTS.copy()
_SY = F.SOBEL_Y_SLOTS.copy()
_ALIVE_Q = F.ALIVE_Q
_GROUP = F.GROUP
_HMAX = F.HIDDEN_MAX
_ROT_HALF = 1 << (F.ROT_FRAC - 1)
_ROT_FRAC = F.ROT_FRAC
_FRACS = 4                                                 # consts[_FRACS + c]: channel c's fraction bits
_EF = _FRACS + CHANNELS                                    # consts[_EF]: error-feedback bits
DORMANT, ZEROED, UPDATED = 0, 1, 2
NO_ROTATION = np.zeros(3, np.int64)


def rotation_array(angle_deg: float | None) -> np.ndarray:
    """int64 [on, cos_q14, sin_q14] for the kernels below (None or 0 degrees: off,
    which equals a rotation by 0 exactly)."""
    if angle_deg is None or angle_deg == 0:
        return NO_ROTATION.copy()
    c, s = F.rotation_q14(angle_deg)
    return np.array([1, c, s], np.int64)


@nb.njit(cache=True, inline="always")
def _rshift(v, n):
    """Round half up, then arithmetic shift right by n >= 0."""
    return (v + ((np.int64(1) << n) >> 1)) >> n


@nb.njit(cache=True, inline="always")
def _sat8(v):
    return -128 if v < -128 else (min(v, 127))


@nb.njit(cache=True)
def perceive(x, nbs, rot, grad_shift, p, ef=0):
    """p[0..47] (int64) = [x, gx, gy] of own state x (16; its view x >> ef) and neighbour
    states nbs (8, 16)."""
    for c in range(CHANNELS):
        gx = np.int64(0)
        gy = np.int64(0)
        for s in range(8):
            v = np.int64(nbs[s, c])
            gx += _SX[s] * v
            gy += _SY[s] * v
        if rot[0] != 0:
            rx = rot[1] * gx - rot[2] * gy
            ry = rot[2] * gx + rot[1] * gy
            gx = (rx + _ROT_HALF) >> _ROT_FRAC
            gy = (ry + _ROT_HALF) >> _ROT_FRAC
        p[c] = np.int64(x[c]) >> ef
        p[CHANNELS + c] = _sat8(_rshift(gx, grad_shift))
        p[2 * CHANNELS + c] = _sat8(_rshift(gy, grad_shift))


@nb.njit(cache=True)
def work_arrays() -> tuple[np.ndarray, ...]:
    """The integer scratch of one update, reused from one to the next by the *_into
    functions (allocating it each time costs as much as the arithmetic): own state x
    (int16), neighbour states (int8), the new state (int16), perception, output
    accumulators, hidden values (int64) and first-layer sums (int32)."""
    return (np.empty(CHANNELS, np.int16), np.empty((8, CHANNELS), np.int8), np.empty(CHANNELS, np.int16),
            np.empty(PERCEPTION, np.int64), np.empty(CHANNELS, np.int64), np.empty(HIDDEN, np.int64),
            np.empty(HIDDEN, np.int32))


@nb.njit(cache=True)
def dense(p, w1, b1, w2, b2, consts, acc, h):
    """acc[16] (int64) = the int16 output accumulators after all 32 groups; h[128] gets
    the hidden values (for inspection)."""
    dense_into(p, w1, b1, w2, b2, consts, acc, h, np.empty(HIDDEN, np.int32))


@nb.njit(cache=True)
def dense_into(p, w1, b1, w2, b2, consts, acc, h, a):
    """dense() with the first-layer sums' scratch a (int32, 128)."""
    ks = consts[1]
    bs = consts[2]
    rs = consts[3]
    # The first layer in int32, rows outer: the sums are exact and within 2^23
    # (formats.ACC1_LIMIT), so neither the width nor the order changes them, and the
    # narrow products vectorise.
    a[:] = 0
    for i in range(PERCEPTION):
        pi = np.int32(p[i])
        for j in range(HIDDEN):
            a[j] += np.int32(w1[i, j]) * pi
    for m in range(CHANNELS):
        acc[m] = np.int64(b2[m])
    for g in range(HIDDEN // _GROUP):
        for u in range(_GROUP):
            j = g * _GROUP + u
            v = _rshift(np.int64(a[j]), ks) + (np.int64(b1[j]) << bs)
            h[j] = 0 if v < 0 else (min(v, _HMAX))
        for m in range(CHANNELS):
            t = np.int64(0)
            for u in range(_GROUP):
                j = g * _GROUP + u
                t += np.int64(w2[j, m]) * h[j]
            acc[m] += t >> rs          # floor (formats: the mean rounding is in b2)


@nb.njit(cache=True)
def apply_delta(x, acc, mult, tsh, out, ef=0):
    """out[m] = sat8(x[m] + (acc[m]*M[m] + 2^(T-1)) >> T); with ef error-feedback bits
    the same at 2^ef times the resolution: clamp(x[m] + (acc*M + 2^(T-1-ef)) >> (T-ef),
    -128 << ef, (128 << ef) - 1)."""
    lo = np.int64(-128) << ef
    hi = (np.int64(128) << ef) - 1
    for m in range(CHANNELS):
        t = np.int64(tsh[m]) - ef
        dx = (acc[m] * np.int64(mult[m]) + (np.int64(1) << (t - 1))) >> t
        v = np.int64(x[m]) + dx
        out[m] = lo if v < lo else (min(v, hi))


@nb.njit(cache=True)
def tentative(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, out):
    """out (16, x's type) = x + dx of a cell with own state x and neighbour states nbs
    (8, 16), no alive rule (lockstep phase A, and the core of an update)."""
    ws = work_arrays()
    tentative_into(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, out, ws[3], ws[4], ws[5], ws[6])


@nb.njit(cache=True)
def tentative_into(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, out, p, acc, h, a):
    """tentative() with the scratch of `work_arrays` (p, acc, h, a)."""
    ef = consts[_EF]
    perceive(x, nbs, rot, consts[0], p, ef)
    dense_into(p, w1, b1, w2, b2, consts, acc, h, a)
    apply_delta(x, acc, mult, tsh, out, ef)


@nb.njit(cache=True)
def update(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot):
    """One wake-up (sim.rules.cell_wakeup's rules on int8 states), x updated
    in place (int8, or int16 with error feedback). Returns 0 dormant, 1 zeroed, 2 updated."""
    ws = work_arrays()
    return update_into(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, np.empty_like(x), ws[3], ws[4], ws[5],
                       ws[6])


@nb.njit(cache=True)
def update_into(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, out, p, acc, h, a):
    """update() with the scratch of `work_arrays` (out of x's type, p, acc, h, a)."""
    ef = consts[_EF]
    nbr = False
    for s in range(8):
        if nbs[s, ALPHA] > _ALIVE_Q:
            nbr = True
    if nbr or (np.int64(x[ALPHA]) >> ef) > _ALIVE_Q:
        tentative_into(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, out, p, acc, h, a)
        keep = nbr or (np.int64(out[ALPHA]) >> ef) > _ALIVE_Q
        for c in range(CHANNELS):
            x[c] = out[c] if keep else 0
        return UPDATED
    r = DORMANT
    for c in range(CHANNELS):
        if x[c] != 0:
            r = ZEROED
        x[c] = 0
    return r


@nb.njit(cache=True)
def update_batch(xs, nbss, w1, b1, w2, b2, mult, tsh, consts, rot, codes):
    """update() on n independent cells: xs (n, 16) int8 in place, nbss (n, 8, 16)."""
    for k in range(xs.shape[0]):
        codes[k] = update(xs[k], nbss[k], w1, b1, w2, b2, mult, tsh, consts, rot)


@nb.njit(cache=True)
def tentative_batch(xs, nbss, w1, b1, w2, b2, mult, tsh, consts, rot, outs):
    for k in range(xs.shape[0]):
        tentative(xs[k], nbss[k], w1, b1, w2, b2, mult, tsh, consts, rot, outs[k])


# ---------------------------------------------------------------- whole grid (synchronous)
@nb.njit(cache=True)
def _alive_grid(x, out, ef=0):
    h, w = x.shape[0], x.shape[1]
    for y in range(h):
        for xx in range(w):
            m = False
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    yy = y + dy
                    xj = xx + dx
                    if 0 <= yy < h and 0 <= xj < w and (np.int64(x[yy, xj, ALPHA]) >> ef) > _ALIVE_Q:
                        m = True
            out[y, xx] = m


@nb.njit(cache=True, nogil=True)   # train.tune.rollout_losses runs seeds in threads
def sync_step(x, seed, step, fire_rate, w1, b1, w2, b2, mult, tsh, consts, rot):
    """One synchronous step of an (H, W, 16) grid of own states (int8, or int16 with
    error feedback; sim.grid.SyncGrid's semantics: pre-alive, fire mask
    u(seed, FIRE, y*W+x, step) < rate, x + dx, post-alive on the new alphas, zero
    padding). Returns the new grid."""
    h, w = x.shape[0], x.shape[1]
    ef = consts[_EF]
    pre = np.empty((h, w), np.bool_)
    post = np.empty((h, w), np.bool_)
    _alive_grid(x, pre, ef)
    out = x.copy()
    nbs = np.zeros((8, CHANNELS), np.int8)
    for y in range(h):
        for xx in range(w):
            if not rng.uniform(seed, rng.FIRE, y * w + xx, step) < fire_rate:
                continue
            for s in range(8):
                yy = y + _OFFS[s, 0]
                xj = xx + _OFFS[s, 1]
                for c in range(CHANNELS):
                    nbs[s, c] = (np.int64(x[yy, xj, c]) >> ef) if (0 <= yy < h and 0 <= xj < w) else 0
            tentative(x[y, xx], nbs, w1, b1, w2, b2, mult, tsh, consts, rot, out[y, xx])
    _alive_grid(out, post, ef)
    for y in range(h):
        for xx in range(w):
            if not (pre[y, xx] and post[y, xx]):
                for c in range(CHANNELS):
                    out[y, xx, c] = 0
    return out


def sync_run(x: np.ndarray, seed: int, steps: int, arrays: tuple[np.ndarray, ...],
             step0: int = 0) -> np.ndarray:
    """The (H, W, 16) grid x of own states (`formats.quantize_fine`) after synchronous
    steps step0 .. step0 + steps - 1 with the FIRE draws of seed, unrotated (arrays:
    `QModel.arrays()`): how the quantiser, the bias tuning and the tests grow a
    fixed-point pattern."""
    for k in range(step0, step0 + int(steps)):
        x = sync_step(x, seed, k, FIRE_RATE, *arrays, NO_ROTATION)
    return x


# ---------------------------------------------------------------- per-cell on float swarm arrays
@nb.njit(cache=True)
def _gather(c, state, inbox, consts, x, nbs):
    """Own state x (in 2^-E steps) and neighbour states nbs (int8: a neighbour's message
    is its whole state, of which a cell sees the int8 view)."""
    ef = consts[_EF]
    lo = np.int64(-128) << ef
    hi = (np.int64(128) << ef) - 1
    for ch in range(CHANNELS):
        one = np.float64(np.int64(1) << (consts[_FRACS + ch] + ef))
        v = np.rint(np.float64(state[c, ch]) * one)
        x[ch] = lo if v < lo else (hi if v > hi else np.int64(v))
        for s in range(8):
            v = np.rint(np.float64(inbox[c, s, ch]) * one)
            nbs[s, ch] = (lo if v < lo else (hi if v > hi else np.int64(v))) >> ef


@nb.njit(cache=True, inline="always")
def _to_f32(q, consts, ch):
    return np.float32(q) / np.float32(np.int64(1) << (consts[_FRACS + ch] + consts[_EF]))   # exact


@nb.njit(cache=True)
def wakeup_f32(c, state, inbox, w1, b1, w2, b2, mult, tsh, consts, rot):
    """update() of cell c of a swarm's float32 arrays (state (N, 16), inbox (N, 8, 16)),
    whose values are on the state grid (formats.quantize_state rounds any other)."""
    return wakeup_f32_into(c, state, inbox, w1, b1, w2, b2, mult, tsh, consts, rot, work_arrays())


@nb.njit(cache=True)
def wakeup_f32_into(c, state, inbox, w1, b1, w2, b2, mult, tsh, consts, rot, ws):
    """wakeup_f32() with the scratch ws of `work_arrays`."""
    x, nbs = ws[0], ws[1]
    _gather(c, state, inbox, consts, x, nbs)
    r = update_into(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, ws[2], ws[3], ws[4], ws[5], ws[6])
    if r != DORMANT:
        for ch in range(CHANNELS):
            state[c, ch] = _to_f32(x[ch], consts, ch)
    return r


@nb.njit(cache=True)
def tentative_f32(c, state, inbox, w1, b1, w2, b2, mult, tsh, consts, rot, out):
    """out[c] = state[c] + dx (no alive rule), on the swarm's float32 arrays."""
    x = np.empty(CHANNELS, np.int16)
    nbs = np.empty((8, CHANNELS), np.int8)
    y = np.empty(CHANNELS, np.int16)
    _gather(c, state, inbox, consts, x, nbs)
    tentative(x, nbs, w1, b1, w2, b2, mult, tsh, consts, rot, y)
    for ch in range(CHANNELS):
        out[c, ch] = _to_f32(y[ch], consts, ch)


@nb.njit(cache=True)
def wakeup_event(c, state, inbox, w1, b1, w2, b2, rest, nbhd, p, dx):
    """wakeup_f32 with `sim.rules.cell_wakeup`'s arguments, for the async engine's event
    loop (`sim.events`): rest = (mult, tsh, consts, rot, the scratch of `work_arrays`); the
    float scratch nbhd, p and dx go unused."""
    return wakeup_f32_into(c, state, inbox, w1, b1, w2, b2, rest[0], rest[1], rest[2], rest[3], rest[4])


def rgb(state: np.ndarray) -> np.ndarray:
    """LED colour of int8 states (..., 16) -> uint8 (..., 3): clamp(q, 0, 2^f) * 255 / 2^f,
    f = RGBA_FRAC, rounded half up (firmware nca_cell_rgb; 0.992, RGBA's largest value,
    gives 253)."""
    q = np.clip(np.asarray(state, np.int64)[..., :3], 0, 1 << F.RGBA_FRAC)
    return ((q * 255 + (1 << (F.RGBA_FRAC - 1))) >> F.RGBA_FRAC).astype(np.uint8)
