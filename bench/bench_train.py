"""Seconds per training iteration (BPTT forward + backward + Adam), batch 8, 72x72,
fixed rollout N=80: train.bptt with the paper's synchronous grid, train.bptt with
the wires in the loop (train.links: exponential latency of mean 1.5 steps, 10%
bursty loss, 10% clock spread, as the latency-robust recipe trains), the same on
the boards' relay links (--links relay), and a plain
eager PyTorch CPU version of the synchronous model (when `import torch` works),
side by side.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_train.py [--reps 5] [--steps 80]
        [--model weights/lizard_persistent.npz] [--no-torch]

The state is a realistic pool batch. With a trained model (--model, default the
shipped persistent lizard when present): 8 seeds grown for 0..300 steps, two of
them cut by a circle, as in the regenerating pool. Without one: 1 seed plus 7
lizard silhouettes with random hidden channels (3 of them cut by circles) under
a fixture model whose alpha never changes, so the live region is the same at
every step and the timing does not depend on where random weights drift.
Each figure is the median of --reps iterations after one warm-up iteration.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from sim import fixture, grid, spec, weights  # noqa: E402
from sim import model as M  # noqa: E402
from sim.pictures import load_target, pad_target  # noqa: E402
from train import bptt as core  # noqa: E402
from train import links  # noqa: E402
from train.loop import make_circle_masks  # noqa: E402

H = W = 72
B = 8


def pool_batch(model_path: Path | None) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """(x0 (8,72,72,16), params, description)."""
    g = np.random.default_rng(0)
    seed = M.seed_state(H, W)
    if model_path is not None and model_path.is_file():
        m = weights.load(model_path)
        p = spec.Params.from_model(m)
        ages = [0, 40, 60, 80, 120, 200, 300, 300]
        x = np.stack([grid.run_sync(seed, p, a, seed=i) for i, a in enumerate(ages)])
        x[-2:] *= (~make_circle_masks(g, 2, H, W))[..., None]
        return x, m.params, f"{model_path.name}: seeds grown {ages} steps, 2 cut by circles"
    t = pad_target(load_target("lizard"), (H - 40) // 2)
    alive = t[..., 3] > 0.1
    x = g.uniform(-1, 1, (B, H, W, M.CHANNELS)).astype(np.float32) * alive[None, ..., None]
    x[..., :4] = t
    x[0] = seed
    x[-3:] *= (~make_circle_masks(g, 3, H, W))[..., None]
    m = fixture.frozen_pattern_model()
    return x, m.params, "1 seed + 7 lizard silhouettes (3 cut), fixture model with frozen alpha"


WIRES = links.LinkSpec("exp", 1.5, msg_loss=0.1, burst=5.0, drift=0.1)


def time_ours(x0, params, target, steps, reps, wires: links.LinkSpec | None = None) -> tuple[float, float]:
    ws = core.Workspace()
    p = {k: v.copy() for k, v in params.items()}
    adam = core.Adam(p)
    kxy = M.gradient_kernels(0.0)
    gen = np.random.default_rng(1)
    times, rows = [], 0
    for i in range(reps + 1):
        t0 = time.perf_counter()
        w = links.Wires(wires, i, x0.shape[:3]) if wires is not None else None
        _, _, grads, rows = core.loss_and_grads(x0, target, p, steps, gen if w is None else w.fire, kxy,
                                                np.float32, ws, wires=w)
        adam.step(p, core.normalize_grads(grads), 0.0)   # lr 0: same state every rep
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), rows / (B * H * W * steps)


def time_torch(x0, params, target, steps, reps) -> float | None:
    try:
        import torch
    except Exception:
        return None
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 2)
    w1 = torch.tensor(params["w1"], requires_grad=True)
    b1 = torch.tensor(params["b1"], requires_grad=True)
    w2 = torch.tensor(params["w2"], requires_grad=True)
    b2 = torch.tensor(params["b2"], requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=0.0, betas=(0.9, 0.999), eps=1e-7)
    k = torch.tensor(M.gradient_kernels(0.0))                 # (2, 3, 3)
    kx = k[0].expand(M.CHANNELS, 1, 3, 3).contiguous()
    ky = k[1].expand(M.CHANNELS, 1, 3, 3).contiguous()
    tgt = torch.tensor(target).permute(2, 0, 1)[None]         # (1, 4, H, W)
    xs = torch.tensor(x0).permute(0, 3, 1, 2).contiguous()    # NCHW

    def alive(x):
        return F.max_pool2d(x[:, 3:4], 3, 1, 1) > M.ALIVE_THRESHOLD

    def step(x):
        pre = alive(x)
        per = torch.cat([x, F.conv2d(x, kx, padding=1, groups=M.CHANNELS),
                         F.conv2d(x, ky, padding=1, groups=M.CHANNELS)], 1)   # p[16k+c]
        h = torch.relu(per.permute(0, 2, 3, 1) @ w1 + b1)
        dx = (h @ w2 + b2).permute(0, 3, 1, 2)
        fire = (torch.rand(x.shape[0], 1, H, W) <= M.FIRE_RATE).to(x.dtype)
        x = x + dx * fire
        return x * (pre & alive(x)).to(x.dtype)

    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        x = xs
        for _ in range(steps):
            x = step(x)
        loss = ((x[:, :4] - tgt) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for t in (w1, b1, w2, b2):
                t.grad /= t.grad.norm() + 1e-8
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--model", default=str(ROOT / "weights" / "lizard_persistent.npz"))
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    x0, params, desc = pool_batch(Path(args.model) if args.model else None)
    target = pad_target(load_target("lizard"), (H - 40) // 2)
    live = float(np.mean(M.alive_mask(x0[..., 3])))
    print(f"state: {desc}; pre-alive {live:.1%} of {B}x{H}x{W}; N={args.steps}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    ours, frac = time_ours(x0, params, target, args.steps, args.reps)
    print(f"{'implementation':34s} {'s/iter':>8s}")
    print(f"{'numba + BLAS, live&fired rows':34s} {ours:8.3f}   (dense rows: {frac:.1%} of cells x steps)")
    wired, wfrac = time_ours(x0, params, target, args.steps, args.reps, WIRES)
    print(f"{'  the same, wires in the loop':34s} {wired:8.3f}   (dense rows: {wfrac:.1%}; "
          f"ratio wired/plain = {wired / ours:.2f}x)")
    relay, rfrac = time_ours(x0, params, target, args.steps, args.reps, replace(WIRES, links="relay"))
    print(f"{'  the same, relay links':34s} {relay:8.3f}   (dense rows: {rfrac:.1%}; "
          f"ratio relay/plain = {relay / ours:.2f}x)")
    theirs = None if args.no_torch else time_torch(x0, params, target, args.steps, args.reps)
    if theirs is None:
        print(f"{'torch eager CPU':34s} {'skipped':>8s}   (torch not importable or --no-torch)")
    else:
        import torch
        print(f"{'torch ' + torch.__version__ + ' eager CPU':34s} {theirs:8.3f}   "
              f"(ratio torch/ours = {theirs / ours:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
