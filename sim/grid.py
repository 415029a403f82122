"""The paper's synchronous grid in numba (`SyncGrid`, `run_sync`): every cell
steps at once. `sim.spec.step64` is the readable float64 statement of the same
step; `sim.lockstep` reaches the same result with message-passing cells.

Synchronous step (docs/design.md, "The model"), per batch element b with seed s_b:
  pre  = maxpool3x3(alpha) > 0.1
  fire = u(s_b, FIRE, y*W+x, step) < fire_rate
  x'   = x + dx  where fired, else x
  post = maxpool3x3(alpha') > 0.1
  x    = x' where pre & post, else 0
Dead-region skip: only cells within one cell of a pre-alive cell can matter
(their own pre or a pre-alive neighbour's post reads them), so every other cell
is set to zero without computing; this equals the dense path bit for bit.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import rng
from .cell import alive_value, cell_delta
from .jit import compiled_variant
from .model import ALPHA, CHANNELS, FIRE_RATE, PERCEPTION
from .spec import Params


# The dilation passes are written out in each kernel (here and in train.bptt): a
# shared njit helper taking the arrays made them ~15x slower (per-call reference counting).
def _alive_masks(x, pre, active, skip_dead, tmp):
    """pre-alive mask; `active` = cells within one cell of a pre-alive cell.
    Both 3x3 dilations are separable: a row pass into tmp, then a column pass."""
    B, H, W, _ = x.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            m = alive_value(x[b, y, xx, ALPHA])
            if xx > 0 and alive_value(x[b, y, xx - 1, ALPHA]):
                m = True
            if xx + 1 < W and alive_value(x[b, y, xx + 1, ALPHA]):
                m = True
            tmp[b, y, xx] = m
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            pre[b, y, xx] = (tmp[b, y, xx] or (y > 0 and tmp[b, y - 1, xx])
                             or (y + 1 < H and tmp[b, y + 1, xx]))
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            tmp[b, y, xx] = (not skip_dead or pre[b, y, xx] or (xx > 0 and pre[b, y, xx - 1])
                             or (xx + 1 < W and pre[b, y, xx + 1]))
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            active[b, y, xx] = (tmp[b, y, xx] or (y > 0 and tmp[b, y - 1, xx])
                                or (y + 1 < H and tmp[b, y + 1, xx]))


def _tentative(x, out, active, seeds, step, fire_rate, w1, b1, w2, b2, kxy):
    B, H, W, C = x.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        nbhd = np.empty((3, 3, C), np.float32)
        p = np.empty(PERCEPTION, np.float32)
        dx = np.empty(C, np.float32)
        seed = seeds[b]
        for xx in range(W):
            if not active[b, y, xx]:
                for c in range(C):
                    out[b, y, xx, c] = 0.0
                continue
            if not rng.uniform(seed, rng.FIRE, y * W + xx, step) < fire_rate:
                for c in range(C):
                    out[b, y, xx, c] = x[b, y, xx, c]
                continue
            for i in range(3):
                yy = y + i - 1
                for j in range(3):
                    xj = xx + j - 1
                    if 0 <= yy < H and 0 <= xj < W:
                        for c in range(C):
                            nbhd[i, j, c] = x[b, yy, xj, c]
                    else:
                        for c in range(C):
                            nbhd[i, j, c] = 0.0
            cell_delta(nbhd, kxy, w1, b1, w2, b2, p, dx)
            for c in range(C):
                out[b, y, xx, c] = x[b, y, xx, c] + dx[c]


def _finalise(out, pre, post):
    """post-alive mask (separable dilation of the tentative alphas, row pass in
    `post`, column pass fused with the zeroing) and out = 0 where not pre & post."""
    B, H, W, C = out.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            m = alive_value(out[b, y, xx, ALPHA])
            if xx > 0 and alive_value(out[b, y, xx - 1, ALPHA]):
                m = True
            if xx + 1 < W and alive_value(out[b, y, xx + 1, ALPHA]):
                m = True
            post[b, y, xx] = m
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            keep = pre[b, y, xx] and (post[b, y, xx] or (y > 0 and post[b, y - 1, xx])
                                      or (y + 1 < H and post[b, y + 1, xx]))
            if not keep:
                for c in range(C):
                    out[b, y, xx, c] = 0.0


# Each pass compiled twice: thread start-up costs more than a small grid's work.
_PASSES = (_alive_masks, _tentative, _finalise)
_SERIAL = {f.__name__: compiled_variant(f, "_serial", False) for f in _PASSES}
_PARALLEL = {f.__name__: compiled_variant(f, "_parallel", True) for f in _PASSES}
PARALLEL_MIN_CELLS = 16384


class SyncGrid:
    """A batch of grids stepped synchronously; buffers are reused between steps."""

    def __init__(self, state: np.ndarray, params: Params, seeds, step: int = 0,
                 fire_rate: float = FIRE_RATE, skip_dead: bool = True):
        x = np.ascontiguousarray(state, np.float32)
        self.single = x.ndim == 3
        if self.single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != CHANNELS:
            raise ValueError(f"state must be (H, W, {CHANNELS}) or (B, H, W, {CHANNELS}), got {state.shape}")
        self.x = x.copy()
        self._out = np.empty_like(self.x)
        B, H, W, _ = x.shape
        self.seeds = np.broadcast_to(np.asarray(seeds, np.int64), (B,)).copy()
        self.params = params
        self.step_count = int(step)
        self.fire_rate = float(fire_rate)
        self.skip_dead = bool(skip_dead)
        self._pre = np.empty((B, H, W), np.bool_)
        self._post = np.empty((B, H, W), np.bool_)
        self._active = np.empty((B, H, W), np.bool_)
        self.cell_updates = 0   # cells whose update network ran
        self._k = _PARALLEL if B * H * W >= PARALLEL_MIN_CELLS else _SERIAL

    @property
    def state(self) -> np.ndarray:
        return self.x[0] if self.single else self.x

    def run(self, steps: int, count_updates: bool = False) -> np.ndarray:
        w1, b1, w2, b2, kxy = self.params.astuple()
        k = self._k
        for _ in range(int(steps)):
            k["_alive_masks"](self.x, self._pre, self._active, self.skip_dead, self._post)
            k["_tentative"](self.x, self._out, self._active, self.seeds, self.step_count,
                            self.fire_rate, w1, b1, w2, b2, kxy)
            if count_updates:
                self.cell_updates += _count_fired(self._active, self.seeds, self.step_count, self.fire_rate)
            k["_finalise"](self._out, self._pre, self._post)
            self.x, self._out = self._out, self.x
            self.step_count += 1
        return self.state


@nb.njit(cache=True)
def _count_fired(active, seeds, step, fire_rate):
    B, H, W = active.shape
    n = 0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if active[b, y, x] and rng.uniform(seeds[b], rng.FIRE, y * W + x, step) < fire_rate:
                    n += 1
    return n


def run_sync(state: np.ndarray, params: Params, steps: int, seed=0, step0: int = 0,
             fire_rate: float = FIRE_RATE, skip_dead: bool = True) -> np.ndarray:
    """Step a (H, W, 16) or (B, H, W, 16) state `steps` times; returns the new state."""
    g = SyncGrid(state, params, seed, step0, fire_rate, skip_dead)
    return g.run(steps).copy()
