"""Side-by-side speed of the numba references against plain numpy (and PyTorch
CPU when installed), on a grown pattern, in one run.

    python bench/bench_reference.py [--seconds 2] [--model weights/lizard_regenerating.npz]

The pattern: the shipped regenerating lizard grown for 300 steps when that
model exists; otherwise the lizard target's silhouette filled with random
hidden channels under a fixture model whose alpha never changes (same
sparsity as a grown lizard). Grids larger than 40x40 hold the pattern in their
centre; batches repeat it. Each figure is the median of 5 timed repetitions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from sim import events, fixture, rng, rules, spec, weights  # noqa: E402
from sim.grid import SyncGrid, run_sync  # noqa: E402
from sim import model as M  # noqa: E402
from sim.pictures import load_target  # noqa: E402

CASES = [("40x40 B1", 40, 1), ("72x72 B8", 72, 8), ("256x256 B1", 256, 1)]


def grown_pattern(model_path: Path | None) -> tuple[np.ndarray, spec.Params, str]:
    if model_path is not None and model_path.is_file():
        m = weights.load(model_path)
        params = spec.Params.from_model(m)
        x = run_sync(M.seed_state(40, 40), params, 300, seed=0)
        return x, params, f"{model_path.name} grown 300 steps"
    target = load_target("lizard")
    alive = target[..., 3] > 0.1
    r = np.random.default_rng(0)
    x = r.uniform(-1, 1, (40, 40, M.CHANNELS)).astype(np.float32) * alive[..., None]
    x[..., :4] = target
    params = spec.Params.from_model(fixture.frozen_pattern_model())
    return x, params, "lizard silhouette, fixture model with frozen alpha"


def place(x: np.ndarray, size: int, batch: int) -> np.ndarray:
    g = np.zeros((size, size, M.CHANNELS), np.float32)
    o = (size - x.shape[0]) // 2
    g[o:o + x.shape[0], o:o + x.shape[1]] = x
    return np.repeat(g[None], batch, 0)


def timed(fn, seconds: float) -> float:
    """Median seconds per call over 5 repetitions of at least seconds/5 each."""
    fn()
    reps = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds / 5:
                break
        reps.append(dt / n)
    return statistics.median(reps)


# ------------------------------------------------------------------ plain numpy (BLAS) baseline
def numpy_step(x: np.ndarray, p: spec.Params, step: int) -> np.ndarray:
    B, H, W, C = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            sl = xp[:, i:i + H, j:j + W]
            gx += p.kxy[0, i, j] * sl
            gy += p.kxy[1, i, j] * sl
    per = np.concatenate([x, gx, gy], -1).reshape(-1, 3 * C)
    h = np.maximum(per @ p.w1 + p.b1, 0)
    dx = (h @ p.w2 + p.b2).reshape(x.shape)
    fire = np.stack([rng.fire_mask(b, step, H, W, 0.5) for b in range(B)])[..., None]
    pre = M.alive_mask(x[..., 3])
    y = x + dx * fire
    return y * (pre & M.alive_mask(y[..., 3]))[..., None]


# ------------------------------------------------------------------ numba gather + BLAS variant
@nb.njit(cache=True)
def _gather(x, active, seeds, step, rate, kxy, rows, P):
    """Perception rows of the active, fired cells (zero padding), in P."""
    B, H, W, C = x.shape
    n = 0
    for b in range(B):
        for y in range(H):
            for xx in range(W):
                if not active[b, y, xx] or not rng.uniform(seeds[b], rng.FIRE, y * W + xx, step) < rate:
                    continue
                rows[n] = (b * H + y) * W + xx
                for c in range(C):
                    P[n, c] = x[b, y, xx, c]
                    gx = np.float32(0.0)
                    gy = np.float32(0.0)
                    for i in range(3):
                        yy = y + i - 1
                        if yy < 0 or yy >= H:
                            continue
                        for j in range(3):
                            xj = xx + j - 1
                            if 0 <= xj < W:
                                gx += kxy[0, i, j] * x[b, yy, xj, c]
                                gy += kxy[1, i, j] * x[b, yy, xj, c]
                    P[n, C + c] = gx
                    P[n, 2 * C + c] = gy
                n += 1
    return n


@nb.njit(cache=True)
def _scatter(x, out, active, rows, dx, n):
    B, H, W, C = x.shape
    flat_x = x.reshape(-1, C)
    flat_o = out.reshape(-1, C)
    act = active.reshape(-1)
    for q in range(flat_x.shape[0]):
        for c in range(C):
            flat_o[q, c] = flat_x[q, c] if act[q] else 0.0
    for k in range(n):
        for c in range(C):
            flat_o[rows[k], c] += dx[k, c]


def gathered_blas_stepper(grid: SyncGrid):
    """The synchronous step with the dense layers as BLAS GEMMs on the gathered
    active-and-fired cells (the alternative to the per-cell kernel)."""
    w1, b1, w2, b2, kxy = grid.params.astuple()
    ncell = grid.x[..., 0].size
    rows = np.empty(ncell, np.int64)
    P = np.empty((ncell, 3 * M.CHANNELS), np.float32)
    k = grid._k

    def step():
        k["_alive_masks"](grid.x, grid._pre, grid._active, True, grid._post)
        n = _gather(grid.x, grid._active, grid.seeds, grid.step_count, 0.5, kxy, rows, P)
        h = np.maximum(P[:n] @ w1 + b1, 0.0)
        dx = h @ w2 + b2
        _scatter(grid.x, grid._out, grid._active, rows, dx, n)
        k["_finalise"](grid._out, grid._pre, grid._post)
        grid.x, grid._out = grid._out, grid.x
        grid.step_count += 1
    return step


def torch_stepper(x0: np.ndarray, p: spec.Params):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    C = M.CHANNELS
    k = np.stack([M.IDENTITY.astype(np.float32), p.kxy[0], p.kxy[1]])       # (3, 3, 3)
    kern = torch.tensor(np.tile(k[:, None], (C, 1, 1, 1)))                     # (3C, 1, 3, 3), out = 3c+k
    order = torch.tensor([3 * c + kk for kk in range(3) for c in range(C)])   # to p[16k+c]
    w1, b1 = torch.tensor(p.w1), torch.tensor(p.b1)
    w2, b2 = torch.tensor(p.w2), torch.tensor(p.b2)
    state = {"x": torch.tensor(x0).permute(0, 3, 1, 2).contiguous()}
    pool = torch.nn.functional.max_pool2d

    @torch.inference_mode()
    def step():
        x = state["x"]
        B, _, H, W = x.shape
        per = torch.nn.functional.conv2d(x, kern, padding=1, groups=C)[:, order]
        per = per.permute(0, 2, 3, 1).reshape(-1, 3 * C)
        dx = (torch.relu(per @ w1 + b1) @ w2 + b2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        fire = (torch.rand(B, 1, H, W) < 0.5).float()
        pre = pool(x[:, 3:4], 3, 1, 1) > 0.1
        y = x + dx * fire
        state["x"] = y * (pre & (pool(y[:, 3:4], 3, 1, 1) > 0.1)).float()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="timing budget per figure")
    ap.add_argument("--model", type=Path, default=ROOT / "weights" / "lizard_regenerating.npz")
    args = ap.parse_args(argv)
    pattern, params, what = grown_pattern(args.model)
    print(f"pattern: {what}; {int((pattern[..., 3] > 0.1).sum())} alive cells of 1600")
    print(f"{'grid':<12}{'numba sync':>12}{'gather+BLAS':>13}{'plain numpy':>13}{'torch CPU':>11}"
          f"{'vs gather':>11}{'vs numpy':>10}{'vs torch':>10}")
    for name, size, batch in CASES:
        x0 = place(pattern, size, batch)
        grid = SyncGrid(x0, params, np.arange(batch))

        def ours():
            grid.x[:] = x0
            grid.run(10)
        t_ours = timed(ours, args.seconds) / 10
        g2 = SyncGrid(x0, params, np.arange(batch))
        gstep = gathered_blas_stepper(g2)

        def gathered():
            g2.x[:] = x0
            for _ in range(10):
                gstep()
        t_gb = timed(gathered, args.seconds) / 10
        holder = {"x": x0}

        def plain():
            holder["x"] = numpy_step(x0, params, 0)
        t_np = timed(plain, args.seconds)
        ts = torch_stepper(x0, params)
        t_torch = timed(ts, args.seconds) if ts else float("nan")
        print(f"{name:<12}{1 / t_ours:>10.0f}/s{1 / t_gb:>11.0f}/s{1 / t_np:>11.0f}/s"
              f"{(1 / t_torch if ts else float('nan')):>9.0f}/s{t_gb / t_ours:>10.1f}x"
              f"{t_np / t_ours:>9.1f}x{(t_torch / t_ours if ts else float('nan')):>9.1f}x")
    print("(steps/s; 'vs X' = how many times faster the numba sync reference is than X)")

    print("\nasynchronous reference, 40x40, mean wake-up interval 2 (cell updates/s: updates that ran the network)")
    for label, cfg in [("latency 0", rules.AsyncConfig()),
                       ("latency 0.1", rules.AsyncConfig(latency=0.1)),
                       ("latency exp 0.2, loss 0.1", rules.AsyncConfig(
                           latency_kind=rules.LAT_EXPONENTIAL, latency=0.2, loss=0.1))]:
        sw = events.AsyncSwarm(pattern, params, seed=1, config=cfg)
        sw.run(2.0)
        u0, t0 = sw.stats[rules.ST_UPDATES], time.perf_counter()
        until = 2.0
        while time.perf_counter() - t0 < args.seconds:
            until += 50.0
            sw.run(until)
        dt = time.perf_counter() - t0
        ups = (sw.stats[rules.ST_UPDATES] - u0) / dt
        print(f"  {label:<28}{ups / 1e6:8.2f} M cell updates/s  ({(until - 2.0) / dt:8.0f} time units/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
