"""Backpropagation through time for the Growing-NCA model, without a framework.

Why hand-written: on a 2-core CPU the frameworks run the update network on
every cell of the grid, while at most the live cells matter and only half of
those fire. Here the dense layers run as float32 BLAS GEMMs on the gathered
rows of the cells that are alive before the step AND fired ("rows"), and
everything else (alive max-pool, index build, perception gather, update
scatter, transposed stencil) is a numba kernel, parallel over batch*rows.
bench/bench_train.py measures it against an eager PyTorch CPU version.

Model semantics are those of sim.grid (docs/design.md, "The model"):
    p[16k+c] = [x, Kx*x, Ky*x] (zero padding, cross-correlation)
    dx = relu(p @ W1 + b1) @ W2 + b2
    pre = maxpool3x3(alpha) > 0.1;  x' = x + dx * fire
    post = maxpool3x3(alpha') > 0.1;  x = x' * (pre & post)

Rollout memory: per step we keep only the row indices, the compact perception
rows P (with a ones column, so b1 folds into the W1 GEMM), the hidden rows h
(after ReLU) and the keep mask (pre & post). The states themselves are not
needed in the backward pass (P already holds what the dense layers read, and
the stencil is linear), so they are not stored: memory is ~0.7 kB per row,
i.e. a few hundred MB for a batch-8, 72x72, 95-step rollout.

Backward: masks (fire, alive) are held constant, as in the paper's TF code
(their gradient is zero almost everywhere). Dead cells have no rows, so they
cost nothing in either pass.

With `wires` (train.links) a cell perceives its neighbours as they were some steps
ago: the forward keeps a ring of the last states, the backward a ring of their
gradients, and each perception tap's gradient goes to the step it read.

Everything is dtype-generic (float32 for training, float64 for the gradient
check).
"""
from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numba as nb
import numpy as np

from sim.jit import compiled_variant
from sim.model import ALIVE_THRESHOLD, ALPHA, CHANNELS, FIRE_RATE, HIDDEN, PARAM_SHAPES, PERCEPTION

from . import links as L


class Rounding(Protocol):
    """A fixed-point cell's dense layers (train.qat.FakeQuant): from perception rows
    P (n, 49) it sets dx (n, 16) to the exact state change and rewrites P's inputs and
    h (n, 128) to the values the integer arithmetic used, for the backward pass. With
    error_feedback the states carry more bits than the cells see: perception and the
    alive rule read `view(x)`, and dense gets the own states of its rows."""

    error_feedback: bool

    def dense(self, P: np.ndarray, h: np.ndarray, dx: np.ndarray, own: np.ndarray | None = None) -> None: ...

    def view(self, x: np.ndarray) -> np.ndarray:
        """What the cells see of states x (error feedback only)."""

    def on_grid(self, x: np.ndarray) -> np.ndarray:
        """States rounded onto the fixed-point grid (where rollouts must start)."""


ROW = PERCEPTION + 1            # perception row plus the ones column (bias of layer 1)


class StateNoise:
    """Uniform noise widths[c] wide added in place to each float state change of
    channel c (forward's `noise`): training through it makes the float model robust to
    errors of the fixed-point state's size (the width in state steps of codegen's
    formats). The noise is additive, so the backward pass is the float one.
    `samples` (B,) bool, when set: only those samples' cells get noise (the draws are
    the same either way, so a run's other random numbers do not depend on it)."""

    def __init__(self, widths: np.ndarray, rng: np.random.Generator) -> None:
        self.widths = np.asarray(widths, np.float32).reshape(1, CHANNELS)
        self.rng = rng
        self.samples: np.ndarray | None = None

    def __call__(self, dx: np.ndarray, rows: np.ndarray | None = None, cells: int = 1) -> None:
        """dx: the state changes of the updated cells, rows their flat indices into the
        (B, H, W) grid of `cells` = H * W cells per sample."""
        r = (self.rng.random(dx.shape, dtype=np.float32) - np.float32(0.5)) * self.widths
        if self.samples is not None:
            r *= self.samples[rows // cells][:, None]
        dx += r


# ------------------------------------------------------------------------------ numba kernels

def _alive(x, out, tmp):
    """out[b,y,x] = max over the zero-padded 3x3 neighbourhood of alpha > threshold
    (separable: a row pass into tmp, then a column pass)."""
    B, H, W, _ = x.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            m = x[b, y, xx, ALPHA] > ALIVE_THRESHOLD
            if xx > 0 and x[b, y, xx - 1, ALPHA] > ALIVE_THRESHOLD:
                m = True
            if xx + 1 < W and x[b, y, xx + 1, ALPHA] > ALIVE_THRESHOLD:
                m = True
            tmp[b, y, xx] = m
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            out[b, y, xx] = (tmp[b, y, xx] or (y > 0 and tmp[b, y - 1, xx])
                             or (y + 1 < H and tmp[b, y + 1, xx]))


def _index(pre, fire, counts):
    """Flat cell indices (b*H + y)*W + x of the cells that are pre-alive and fired,
    in increasing order (count per grid row in parallel, prefix sum, fill)."""
    B, H, W = pre.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        n = 0
        for xx in range(W):
            if pre[b, y, xx] and fire[b, y, xx]:
                n += 1
        counts[r] = n
    offs = np.empty(B * H + 1, np.int64)
    total = 0
    for r in range(B * H):
        offs[r] = total
        total += counts[r]
    offs[B * H] = total
    idx = np.empty(total, np.int64)
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        k = offs[r]
        for xx in range(W):
            if pre[b, y, xx] and fire[b, y, xx]:
                idx[k] = r * W + xx
                k += 1
    return idx


def _gather_perception(x, idx, kxy, P):
    """P[r] = [x, Kx*x, Ky*x, 1] of cell idx[r] (zero padding, cross-correlation)."""
    B, H, W, C = x.shape
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        xx = q % W
        y = (q // W) % H
        b = q // (W * H)
        for c in range(C):
            P[r, c] = x[b, y, xx, c]
            P[r, C + c] = 0.0
            P[r, 2 * C + c] = 0.0
        for i in range(3):
            yy = y + i - 1
            if yy < 0 or yy >= H:
                continue
            for j in range(3):
                xj = xx + j - 1
                if xj < 0 or xj >= W:
                    continue
                kx = kxy[0, i, j]
                ky = kxy[1, i, j]
                for c in range(C):
                    v = x[b, yy, xj, c]
                    P[r, C + c] += kx * v
                    P[r, 2 * C + c] += ky * v
        P[r, 3 * C] = 1.0


def _relu(h):
    for r in nb.prange(h.shape[0]):
        for j in range(h.shape[1]):
            if not h[r, j] > 0.0:
                h[r, j] = 0.0


def _mask_only(x, keep):
    """In place: x *= keep (the alive rule applied to the updated state)."""
    B, H, W, C = x.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            if not keep[b, y, xx]:
                for c in range(C):
                    x[b, y, xx, c] = 0.0


def _add_rows(x, idx, dx, b2):
    B, H, W, C = x.shape
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        xx = q % W
        y = (q // W) % H
        b = q // (W * H)
        for c in range(C):
            x[b, y, xx, c] += dx[r, c] + b2[c]


def _bwd_mask_gather(g, keep, idx, gdx):
    """In place g *= keep (gradient w.r.t. x' of x = x' * keep); gdx[r] = g at row r's cell."""
    B, H, W, C = g.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            if not keep[b, y, xx]:
                for c in range(C):
                    g[b, y, xx, c] = 0.0
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        xx = q % W
        y = (q // W) % H
        b = q // (W * H)
        for c in range(C):
            gdx[r, c] = g[b, y, xx, c]


def _relu_bwd(gh, h):
    """h <- gh where h > 0 else 0 (overwrites the stored activations: no longer needed)."""
    for r in nb.prange(h.shape[0]):
        for j in range(h.shape[1]):
            h[r, j] = gh[r, j] if h[r, j] > 0.0 else 0.0


def _stencil_transpose(g, idx, gp, kxy, rowmap):
    """g += d(perception)/dx^T gp: identity part to the cell itself, gradient parts
    scattered to the 3x3 neighbours with the kernel taps (zero padding: taps that
    fell outside the grid read nothing, so they send nothing back). Written as a
    gather over the receiving cells, so the threads never write the same cell."""
    B, H, W, C = g.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            rowmap[b, y, xx] = -1
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        xx = q % W
        y = (q // W) % H
        b = q // (W * H)
        rowmap[b, y, xx] = r
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            for i in range(3):
                py = y - (i - 1)          # cell p reads q = p + (i-1, j-1) with tap k[i, j]
                if py < 0 or py >= H:
                    continue
                for j in range(3):
                    px = xx - (j - 1)
                    if px < 0 or px >= W:
                        continue
                    rp = rowmap[b, py, px]
                    if rp < 0:
                        continue
                    kx = kxy[0, i, j]
                    ky = kxy[1, i, j]
                    for c in range(C):
                        g[b, y, xx, c] += kx * gp[rp, C + c] + ky * gp[rp, 2 * C + c]
            rq = rowmap[b, y, xx]
            if rq >= 0:
                for c in range(C):
                    g[b, y, xx, c] += gp[rq, c]


# Every kernel compiled twice: waking the worker threads costs more than a small
# grid's work (the gradient check runs ~10^5 tiny rollouts).
_KERNELS = (_alive, _index, _gather_perception, _relu, _mask_only, _add_rows,
            _bwd_mask_gather, _relu_bwd, _stencil_transpose)
_SERIAL = types.SimpleNamespace(**{f.__name__: compiled_variant(f, "_serial", False) for f in _KERNELS})
_PARALLEL = types.SimpleNamespace(**{f.__name__: compiled_variant(f, "_parallel", True) for f in _KERNELS})
PARALLEL_MIN_CELLS = 16384


def _kernels(cells: int) -> types.SimpleNamespace:
    """The serial kernels for small grids, the threaded ones for training-sized batches."""
    return _PARALLEL if cells >= PARALLEL_MIN_CELLS else _SERIAL


def _link_kernels(cells: int) -> type:
    """train.links' kernels, serial or threaded by the same rule."""
    return L.PARALLEL if cells >= PARALLEL_MIN_CELLS else L.SERIAL


# ------------------------------------------------------------------------------ rollout

@dataclass
class Workspace:
    """The P and h arenas (all steps' rows back to back), reused across iterations:
    growing them is rare, and reusing them avoids page-faulting a few hundred MB
    per iteration."""
    dtype: np.dtype = np.dtype(np.float32)
    P: np.ndarray = field(default_factory=lambda: np.empty((0, ROW), np.float32))
    h: np.ndarray = field(default_factory=lambda: np.empty((0, HIDDEN), np.float32))

    def ensure(self, rows: int) -> None:
        """Make room for `rows` rows, keeping the contents (grows by 1.5x)."""
        if rows <= self.P.shape[0] and self.P.dtype == self.dtype:
            return
        cap = max(rows, int(self.P.shape[0] * 1.5), 4096)
        P = np.empty((cap, ROW), self.dtype)
        h = np.empty((cap, HIDDEN), self.dtype)
        if self.P.dtype == self.dtype and self.P.shape[0]:
            n = self.P.shape[0]
            P[:n] = self.P
            h[:n] = self.h
        self.P, self.h = P, h


@dataclass
class Rollout:
    """What the backward pass needs from a forward rollout (and its final state)."""
    x: np.ndarray                 # final state (B, H, W, 16)
    offsets: list[int]            # rows of step t are arena rows offsets[t]:offsets[t+1]
    idx: list[np.ndarray]         # flat cell index of each row, per step
    keep: np.ndarray              # (N, B, H, W) bool: pre & post of each step
    pre: np.ndarray               # (N, B, H, W) bool: pre-alive of each step
    kxy: np.ndarray               # (2, 3, 3) gradient kernels used
    ws: Workspace
    ages: np.ndarray | None = None   # (N, B, H, W, 8) uint8: link ages of each step (train.links)
    depth: int = 0                # states kept for the delayed perception
    snaps: dict[int, np.ndarray] = field(default_factory=dict)   # s -> RGBA of x_s (snap_every)

    @property
    def steps(self) -> int:
        return len(self.idx)

    @property
    def rows(self) -> int:
        """Total dense-layer rows (live and fired cells) over the rollout."""
        return self.offsets[-1]


def cast_params(params: dict[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
    """Contiguous copies of the four tensors in `dtype`, plus 'w1aug' = [W1; b1]."""
    p = {k: np.ascontiguousarray(params[k], dtype) for k in PARAM_SHAPES}
    p["w1aug"] = np.ascontiguousarray(np.vstack([p["w1"], p["b1"][None]]))
    return p


def _fire_fn(fire, shape: tuple[int, int, int]) -> Callable[[int], np.ndarray]:
    if isinstance(fire, np.random.Generator):
        g = fire
        return lambda t: g.random(shape, dtype=np.float32) <= FIRE_RATE
    if callable(fire):
        return fire
    arr = np.asarray(fire, np.bool_)
    return lambda t: arr[t]


def forward(x0: np.ndarray, params: dict[str, np.ndarray], steps: int, fire,
            kxy: np.ndarray, dtype=np.float32, ws: Workspace | None = None,
            masks: tuple[np.ndarray, np.ndarray] | None = None,
            rounding: Rounding | None = None, noise: StateNoise | None = None,
            wires: L.Wires | None = None, snap_every: int = 0) -> Rollout:
    """Run `steps` CA steps from x0 (B, H, W, 16), keeping what backward needs.

    fire: (N, B, H, W) bool array, a callable t -> (B, H, W) bool, or a numpy
    Generator (u <= 0.5 per cell, the paper's test). masks: optional fixed
    (pre, keep) arrays of shape (N, B, H, W) to use instead of the alive rule
    (the gradient check holds them constant so finite differences cannot flip
    them). rounding: a fixed-point cell's arithmetic for the dense layers
    (quantisation-aware training, train.qat.FakeQuant; x0 must then be on the
    state grid, and stays on it); the backward pass treats its rounding as the
    identity (straight-through). noise: added to each float state change (with the
    bias; not with rounding, which has the real errors). wires: the links between the
    cells (train.links): each cell perceives its neighbours as they were `age` steps
    ago, and only fired cells apply the alive rule, on what they know. snap_every: keep
    the RGBA of every snap_every-th state before the last (for the path loss). x0 is
    not modified.
    """
    dtype = np.dtype(dtype)
    x = np.array(x0, dtype=dtype, copy=True, order="C")
    if x.ndim != 4 or x.shape[-1] != CHANNELS:
        raise ValueError(f"state must be (B, H, W, {CHANNELS}), got {x.shape}")
    if noise is not None and rounding is not None:
        raise ValueError("noise is for the float cell; the rounding has its own errors")
    B, H, W, _ = x.shape
    p = cast_params(params, dtype)
    k = np.ascontiguousarray(kxy, dtype)
    ws = ws if ws is not None else Workspace(dtype)
    if ws.dtype != dtype:
        ws.dtype = dtype
    firef = _fire_fn(fire, (B, H, W))
    K = _kernels(B * H * W)
    keep = np.empty((steps, B, H, W), np.bool_)
    pre = np.empty((steps, B, H, W), np.bool_)
    tmp = np.empty((B, H, W), np.bool_)
    counts = np.empty(B * H, np.int64)
    offsets = [0]
    idxs: list[np.ndarray] = []
    dxbuf = np.empty((0, CHANNELS), dtype)
    zero_b2 = np.zeros(CHANNELS, dtype)
    ef = rounding is not None and rounding.error_feedback
    snaps: dict[int, np.ndarray] = {}
    if wires is not None:
        KL = _link_kernels(B * H * W)
        hist = np.zeros((wires.depth, B, H, W, CHANNELS), dtype)   # what the cells saw, per step
        alive = np.zeros((wires.depth, B, H, W), np.bool_)          # and its alpha > threshold
        ages = np.empty((steps, B, H, W, 8), np.uint8)
    for t in range(steps):
        v = rounding.view(x) if ef else x     # error feedback: the cells see int8 views
        if wires is not None:
            hist[t % wires.depth] = v
            np.greater(v[..., ALPHA], ALIVE_THRESHOLD, out=alive[t % wires.depth])
            wires.advance(t, ages[t])
        if masks is not None:
            pre[t] = masks[0][t]
        elif wires is None:
            K._alive(v, pre[t], tmp)
        else:
            KL._alive_delayed(alive, t, ages[t], v, pre[t])
        fire_t = np.ascontiguousarray(firef(t), np.bool_)
        if wires is not None:
            wires.fired(t, fire_t)
        idx = K._index(pre[t], fire_t, counts)
        n = idx.shape[0]
        o = offsets[-1]
        ws.ensure(o + n)
        P = ws.P[o:o + n]
        h = ws.h[o:o + n]
        if wires is None:
            K._gather_perception(v, idx, k, P)
        else:
            KL._gather_delayed(hist, t, ages[t], idx, k, P)
        if dxbuf.shape[0] < n:
            dxbuf = np.empty((max(n, 2 * dxbuf.shape[0]), CHANNELS), dtype)
        dx = dxbuf[:n]
        if rounding is None:
            np.matmul(P, p["w1aug"], out=h)
            K._relu(h)
            np.matmul(h, p["w2"], out=dx)
            b2 = p["b2"]
            if noise is not None:
                dx += b2
                noise(dx, idx, H * W)
                b2 = zero_b2
        else:
            rounding.dense(P, h, dx, x.reshape(-1, CHANNELS)[idx] if ef else None)
            b2 = zero_b2
        K._add_rows(x, idx, dx, b2)
        if masks is not None:
            keep[t] = masks[1][t]
        elif wires is None:           # keep = pre & post, post read on the updated alphas
            K._alive(rounding.view(x) if ef else x, keep[t], tmp)
            np.logical_and(keep[t], pre[t], out=keep[t])
        else:
            KL._post_keep(rounding.view(x) if ef else x, alive, t, ages[t], pre[t], fire_t, keep[t])
        K._mask_only(x, keep[t])
        idxs.append(idx)
        offsets.append(o + n)
        if snap_every > 0 and (t + 1) % snap_every == 0 and t + 1 < steps:
            snaps[t + 1] = x[..., :ALPHA + 1].copy()
    if wires is not None:
        return Rollout(x, offsets, idxs, keep, pre, k, ws, ages, wires.depth, snaps)
    return Rollout(x, offsets, idxs, keep, pre, k, ws, snaps=snaps)


def backward(ro: Rollout, params: dict[str, np.ndarray], grad_x: np.ndarray,
             grad_snaps: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Gradients of the four tensors given dL/dx_N (and dL/dx_s of the RGBA of earlier
    states: grad_snaps, s -> (B, H, W, 4)). Consumes the rollout (the stored
    activations h are overwritten with their gradients)."""
    dtype = ro.ws.dtype
    p = cast_params(params, dtype)
    w1t = np.ascontiguousarray(p["w1"].T)        # (128, 48)
    w2t = np.ascontiguousarray(p["w2"].T)        # (16, 128)
    g = np.array(grad_x, dtype=dtype, copy=True, order="C")
    B, H, W, C = g.shape
    rowmap = np.empty((B, H, W), np.int64)
    K = _kernels(B * H * W)
    gw2 = np.zeros((HIDDEN, CHANNELS), dtype)
    gb2 = np.zeros(CHANNELS, dtype)
    nmax = max((ro.offsets[t + 1] - ro.offsets[t] for t in range(ro.steps)), default=0)
    gdx_buf = np.empty((nmax, C), dtype)
    gh_buf = np.empty((nmax, HIDDEN), dtype)
    gp_buf = np.empty((nmax, PERCEPTION), dtype)
    tmp16 = np.empty((HIDDEN, CHANNELS), dtype)
    if ro.ages is not None:     # gradients of the states of the last depth + 1 steps, a ring
        KL = _link_kernels(B * H * W)
        G = np.zeros((ro.depth + 1, B, H, W, C), dtype)
        G[ro.steps % G.shape[0]] = g
    for t in range(ro.steps - 1, -1, -1):
        if grad_snaps and t + 1 in grad_snaps:   # g is dL/dx_{t+1} here
            (g if ro.ages is None else G[(t + 1) % G.shape[0]])[..., :ALPHA + 1] += grad_snaps[t + 1]
        o, o2 = ro.offsets[t], ro.offsets[t + 1]
        n = o2 - o
        idx = ro.idx[t]
        gdx = gdx_buf[:n]
        if ro.ages is None:
            K._bwd_mask_gather(g, ro.keep[t], idx, gdx)
        else:
            KL._chain_keep(G, t, ro.keep[t], idx, gdx)
        if n == 0:
            continue
        h = ro.ws.h[o:o2]
        np.matmul(h.T, gdx, out=tmp16)
        gw2 += tmp16
        gb2 += gdx.sum(axis=0)
        gh = gh_buf[:n]
        np.matmul(gdx, w2t, out=gh)
        K._relu_bwd(gh, h)                          # h now holds dL/d(pre-activation)
        gp = gp_buf[:n]
        np.matmul(h, w1t, out=gp)
        if ro.ages is None:
            K._stencil_transpose(g, idx, gp, ro.kxy, rowmap)
        else:
            KL._stencil_transpose_delayed(G, t, idx, gp, ro.kxy, rowmap, ro.ages[t])
    R = ro.rows
    gw1aug = ro.ws.P[:R].T @ ro.ws.h[:R] if R else np.zeros((ROW, HIDDEN), dtype)
    return {"w1": np.ascontiguousarray(gw1aug[:PERCEPTION]), "b1": gw1aug[PERCEPTION].copy(),
            "w2": gw2, "b2": gb2}


# ------------------------------------------------------------------------------ loss

def loss_per_sample(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The paper's loss: mean over H, W and RGBA of (x[..., :4] - target)^2, per sample."""
    d = x[..., :4].astype(np.float64) - target[..., :4]
    return np.mean(d * d, axis=(-3, -2, -1))


def loss_grad(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """dL/dx of the batch-mean loss (zero in the hidden channels)."""
    B, H, W, C = x.shape
    g = np.zeros_like(x)
    g[..., :4] = (2.0 / (B * H * W * 4)) * (x[..., :4] - target[..., :4].astype(x.dtype))
    return g


def loss_and_grads(x0: np.ndarray, target: np.ndarray, params: dict[str, np.ndarray], steps: int,
                   fire, kxy: np.ndarray, dtype=np.float32, ws: Workspace | None = None,
                   masks: tuple[np.ndarray, np.ndarray] | None = None,
                   rounding: Rounding | None = None, noise: StateNoise | None = None,
                   teacher: dict[str, np.ndarray] | None = None, teacher_weight: float = 0.0,
                   wires: L.Wires | None = None, range_weight: float = 0.0,
                   hidden_range: float = np.inf, path_weight: float = 0.0, path_every: int = 10,
                   path_mask: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
    """One BPTT evaluation: (per-sample loss, final state, gradients, dense rows used).

    teacher: float parameters whose rollout from x0, with the same fire masks and
    without rounding, the final state is also pulled towards, in all 16 channels,
    with the loss teacher_weight * mean((x_N - x_teacher)^2) (distillation: the
    integer rollout learns the float model's hidden channels, not only its picture).
    range_weight: the final state's hidden channels are also pushed back inside
    +-hidden_range, with the loss range_weight * mean(excess^2) over all 16 channels
    (the excess beyond the range, zero inside it). The returned losses are the
    picture's alone. wires: see forward (the teacher runs on the same wires and fire
    decisions). path_weight: the picture of every path_every-th state before the last
    is also compared with the target, on the cells of path_mask (B, H, W) (all if None),
    with the loss path_weight * the mean over those states of the picture loss's sum
    over those cells (normalised as the picture loss): a pattern held all along the
    rollout, not only at its end."""
    if teacher is not None and teacher_weight > 0:
        B, H, W, _ = np.shape(x0)
        if not isinstance(fire, np.ndarray):   # the masks forward() would draw, in its order
            fire = np.stack([_fire_fn(fire, (B, H, W))(t) for t in range(steps)])
        x_teacher = forward(x0, teacher, steps, fire, kxy, dtype, ws, masks,
                            wires=None if wires is None else wires.fresh()).x.copy()
    path = path_weight > 0 and path_every > 0
    ro = forward(x0, params, steps, fire, kxy, dtype, ws, masks, rounding, noise, wires,
                 snap_every=path_every if path else 0)
    grad_snaps = None
    if path and ro.snaps:
        B, H, W, _ = ro.x.shape
        scale = path_weight * 2.0 / (len(ro.snaps) * B * H * W * 4)
        w = 1.0 if path_mask is None else path_mask[..., None].astype(ro.x.dtype)
        t4 = target[..., :ALPHA + 1].astype(ro.x.dtype)
        grad_snaps = {s: (scale * w * (v - t4)).astype(ro.x.dtype) for s, v in ro.snaps.items()}
    losses = loss_per_sample(ro.x, target)
    g = loss_grad(ro.x, target)
    if teacher is not None and teacher_weight > 0:
        g += (teacher_weight * 2.0 / ro.x.size) * (ro.x - x_teacher.astype(ro.x.dtype))
    if range_weight > 0:
        g[..., ALPHA + 1:] += (range_weight * 2.0 / ro.x.size) * range_excess(ro.x[..., ALPHA + 1:], hidden_range)
    grads = backward(ro, params, g, grad_snaps)
    return losses, ro.x, grads, ro.rows


def range_excess(x: np.ndarray, bound: float) -> np.ndarray:
    """How far each value lies beyond +-bound (zero inside)."""
    return x - np.clip(x, -bound, bound)


# ------------------------------------------------------------------------------ optimiser

def normalize_grads(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The paper's per-tensor normalisation g / (||g||_2 + 1e-8): the step size no
    longer depends on the (widely varying) BPTT gradient magnitude."""
    return {k: (g / (np.sqrt(np.sum(g.astype(np.float64) ** 2)) + 1e-8)).astype(g.dtype)
            for k, g in grads.items()}


class Adam:
    """Adam as in Keras (b1 .9, b2 .999, eps 1e-7 added to sqrt(v), bias correction
    folded into the step size), the paper's optimiser. State is plain arrays so it
    can be checkpointed."""

    def __init__(self, params: dict[str, np.ndarray], beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-7):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.t = 0
        self.m = {k: np.zeros_like(v, np.float32) for k, v in params.items() if k in PARAM_SHAPES}
        self.v = {k: np.zeros_like(v, np.float32) for k, v in params.items() if k in PARAM_SHAPES}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update params in place."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = lr * np.sqrt(1.0 - b2 ** self.t) / (1.0 - b1 ** self.t)
        for k in self.m:
            g = grads[k].astype(np.float32)
            self.m[k] = (b1 * self.m[k] + (1.0 - b1) * g).astype(np.float32)
            self.v[k] = (b2 * self.v[k] + (1.0 - b2) * g * g).astype(np.float32)
            params[k] -= (lr_t * self.m[k] / (np.sqrt(self.v[k]) + self.eps)).astype(params[k].dtype)
