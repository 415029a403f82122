"""codegen/golden.py: the integer model equals an independent numpy reading of
the formats, follows the alive rules of sim.rules.cell_wakeup, rotates as
the float model does, and stays close to the float model over a swarm's run."""
from __future__ import annotations

import numpy as np
import pytest

from codegen import formats as F
from codegen import golden as G
from codegen.quantize import quantize
from sim.fixture import blob_model
from sim.model import ALPHA, NEIGHBOUR_OFFSETS, seed_state
from sim.spec import Params
from sim.grid import SyncGrid

OFFS = NEIGHBOUR_OFFSETS


@pytest.fixture(scope="module")
def q():
    return quantize(blob_model())


def spec_tentative(q, x, nbs, rot=None):
    """The formats' arithmetic written out again with numpy, vectorised over cells:
    x (n, 16), nbs (n, 8, 16) int -> new x (n, 16)."""
    x = x.astype(np.int64)
    nb = nbs.astype(np.int64)
    gx = np.einsum("s,nsc->nc", F.SOBEL_X_SLOTS, nb)
    gy = np.einsum("s,nsc->nc", F.SOBEL_Y_SLOTS, nb)
    if rot is not None:
        c, s = rot
        gx, gy = (c * gx - s * gy + 8192) >> 14, (s * gx + c * gy + 8192) >> 14
    S = q.fmt.grad_shift
    rnd = (1 << S) >> 1
    p = np.concatenate([x, np.clip((gx + rnd) >> S, -128, 127), np.clip((gy + rnd) >> S, -128, 127)], axis=1)
    a = p @ q.w1.astype(np.int64)
    K = q.fmt.hidden_shift
    h = np.clip(((a + ((1 << K) >> 1)) >> K) + (q.b1.astype(np.int64) << q.fmt.bias_shift), 0, 255)
    w2 = q.w2.astype(np.int64)
    acc = np.tile(q.b2.astype(np.int64), (len(x), 1))
    for g in range(32):
        t = h[:, 4 * g:4 * g + 4] @ w2[4 * g:4 * g + 4]
        acc += t >> q.fmt.acc_shift
    assert np.all(np.abs(acc) <= 32767)
    T = q.tsh.astype(np.int64)
    dx = (acc * q.mult.astype(np.int64) + (1 << (T - 1))) >> T
    return np.clip(x + dx, -128, 127)


def random_cells(n, seed=0, lo=-128, hi=128):
    r = np.random.default_rng(seed)
    return r.integers(lo, hi, (n, 16)).astype(np.int8), r.integers(lo, hi, (n, 8, 16)).astype(np.int8)


@pytest.mark.parametrize("angle", [None, 30.0, 90.0, -170.0])
def test_golden_equals_the_spec_written_with_numpy(q, angle):
    xs, nbs = random_cells(2000, seed=1)
    small = random_cells(2000, seed=2, lo=-10, hi=40)
    xs = np.concatenate([xs, small[0]])
    nbs = np.concatenate([nbs, small[1]])
    out = np.zeros_like(xs)
    G.tentative_batch(xs, nbs, *q.arrays(), G.rotation_array(angle), out)
    rot = None if angle is None else F.rotation_q14(angle)
    np.testing.assert_array_equal(out, spec_tentative(q, xs, nbs, rot))


def test_rotation_by_zero_is_no_rotation_and_90_turns_the_gradients(q):
    xs, nbs = random_cells(500, seed=4)
    a = np.zeros_like(xs)
    b = np.zeros_like(xs)
    G.tentative_batch(xs, nbs, *q.arrays(), G.NO_ROTATION, a)
    G.tentative_batch(xs, nbs, *q.arrays(), np.array([1, 16384, 0], np.int64), b)
    np.testing.assert_array_equal(a, b)
    xs, nbs = random_cells(1, seed=5, lo=-12, hi=12)         # small: no saturation
    p0 = np.zeros(48, np.int64)
    p90 = np.zeros(48, np.int64)
    G.perceive(xs[0], nbs[0], np.array([0, 0, 0], np.int64), 0, p0)
    G.perceive(xs[0], nbs[0], G.rotation_array(90.0), 0, p90)
    assert np.abs(p0).max() < 127
    np.testing.assert_array_equal(p90[16:32], -p0[32:48])    # Kx = cos Sx - sin Sy = -Sy
    np.testing.assert_array_equal(p90[32:48], p0[16:32])     # Ky = sin Sx + cos Sy = Sx


def test_wakeup_alive_rules(q):
    a = q.arrays()
    zero = np.zeros(16, np.int8)
    nbs = np.zeros((8, 16), np.int8)
    assert G.update(zero.copy(), nbs, *a, G.NO_ROTATION) == G.DORMANT
    x = zero.copy()
    x[5] = 7                                     # a dead cell with leftovers: zeroed
    assert G.update(x, nbs, *a, G.NO_ROTATION) == G.ZEROED and not x.any()
    x = zero.copy()
    x[ALPHA] = F.ALIVE_Q                         # alpha 12/128 < 0.1: not alive
    assert G.update(x, nbs, *a, G.NO_ROTATION) == G.ZEROED
    x = zero.copy()
    x[ALPHA] = F.ALIVE_Q + 1                     # 13/128 > 0.1: alive, the network runs
    assert G.update(x, nbs, *a, G.NO_ROTATION) == G.UPDATED
    x = zero.copy()
    nb = nbs.copy()
    nb[6, ALPHA] = 32                            # a living neighbour (south) makes a dead cell compute
    out = np.zeros(16, np.int8)
    G.tentative(x, nb, *a, G.NO_ROTATION, out)
    assert G.update(x, nb, *a, G.NO_ROTATION) == G.UPDATED
    np.testing.assert_array_equal(x, out)        # and it stays alive through its neighbour


def test_rgb(q):
    s = np.zeros((5, 16), np.int8)
    assert F.RGBA_FRAC == 7                       # Q0.7: 1.0 is not representable, 127/128 is the top
    s[:, 0] = [-5, 0, 64, 127, 100]
    s[:, 1] = [1, 31, 33, 8, 4]
    np.testing.assert_array_equal(G.rgb(s)[:, 0], [0, 0, 128, 253, 199])
    np.testing.assert_array_equal(G.rgb(s)[:, 1], [2, 62, 66, 16, 8])


def test_sync_step_is_the_reference_rules_on_int8(q):
    """sync_step: pre-alive, counter-based fire mask, x + dx, post-alive - checked on a
    grid against cells recomputed one by one with tentative()."""
    a = q.arrays()
    x = F.quantize_state(seed_state(12, 12), q.fmt)
    for k in range(15):
        x = G.sync_step(x, 7, k, 0.5, *a, G.NO_ROTATION)
    y = G.sync_step(x, 7, 15, 0.5, *a, G.NO_ROTATION)
    from sim import rng
    H, W = x.shape[:2]
    pad = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    tent = x.copy()
    for i in range(H):
        for j in range(W):
            if rng.uniform(7, rng.FIRE, i * W + j, 15) < 0.5:
                nbs = np.array([pad[i + 1 + dy, j + 1 + dx] for dy, dx in OFFS], np.int8)
                G.tentative(x[i, j].copy(), nbs, *a, G.NO_ROTATION, tent[i, j])

    def alive(z):
        p = np.pad(z[..., ALPHA] > F.ALIVE_Q, 1)
        return np.any([p[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)], axis=0)
    want = np.where((alive(x) & alive(tent))[..., None], tent, 0)
    np.testing.assert_array_equal(y, want)
    assert (y[..., ALPHA] > F.ALIVE_Q).sum() > 9          # it grew


def test_fixed_point_swarm_stays_close_to_the_float_one(q):
    """Blob fixture, 40x40, 300 synchronous steps from the seed with the same fire
    masks: the fixed-point state's error stays bounded and the living region agrees."""
    g = SyncGrid(seed_state(40, 40), Params.from_model(blob_model()), 0)
    x = F.quantize_state(seed_state(40, 40), q.fmt)
    a = q.arrays()
    errs = []
    for k in range(300):
        x = G.sync_step(x, 0, k, 0.5, *a, G.NO_ROTATION)
        g.run(1)
        if k % 50 == 49:
            errs.append(float(np.mean(np.abs(F.dequantize_state(x, q.fmt) - g.state))))
    alive_f = g.state[..., ALPHA] > 0.1
    alive_q = x[..., ALPHA] > F.ALIVE_Q
    assert max(errs) < 0.12, errs
    assert errs[-1] < errs[-3] * 1.5 + 0.01            # bounded, not growing
    assert abs(int(alive_q.sum()) - int(alive_f.sum())) < 0.1 * alive_f.sum()
    assert np.mean(alive_q == alive_f) > 0.9
