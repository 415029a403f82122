"""The SimPy swarm against the numba event-driven reference, side by side in one run:
cell updates per second (updates that ran the network) with messaging on the 40x40
grid, and the wall time of a 40x40 run of `--until` (default 1,000) time units.

    python bench/bench_swarm.py [--until 1000] [--configs zero,0.1] [--backend fixed]

`--backend fixed` runs both engines on the firmware's integer arithmetic (the golden
model, `codegen.golden`) with the firmware's model (`lizard_regenerating_ef` unless
--model says otherwise).

Both engines start from the same grown pattern (bench_reference.grown_pattern: the
shipped regenerating lizard grown 300 steps, or the lizard silhouette under a
fixture model with frozen alpha) with the same seed and configuration, and the
run checks that they end bit-identical. Each figure is one timed run (numba
caches are loaded by a small warm-up run first); the SimPy figure is what a
user of `--engine simpy` waits for.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from bench_reference import grown_pattern  # noqa: E402

from codegen.fixed_cells import fixed_backend  # noqa: E402
from sim import rules  # noqa: E402
from sim.cell_backends import float_backend  # noqa: E402
from sim.events import AsyncSwarm  # noqa: E402
from sim.model import seed_state  # noqa: E402
from sim.swarm import SimPySwarm  # noqa: E402

CONFIGS = {
    "zero": ("latency 0", rules.AsyncConfig()),
    "0.1": ("latency 0.1", rules.AsyncConfig(latency=0.1)),
    "exp": ("latency exp 0.2, loss 0.1", rules.AsyncConfig(latency_kind=rules.LAT_EXPONENTIAL,
                                                       latency=0.2, loss=0.1)),
    "burst": ("latency 0.1, loss 0.1 in bursts of 5", rules.AsyncConfig(latency=0.1, loss=0.1, burst=5.0)),
}


def timed_run(sw, until: float) -> tuple[float, int]:
    """(wall seconds, cell updates) of sw.run(until) from its start."""
    u0 = int(sw.stats[rules.ST_UPDATES])
    t0 = time.perf_counter()
    sw.run(until)
    return time.perf_counter() - t0, int(sw.stats[rules.ST_UPDATES]) - u0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--until", type=float, default=1000.0, help="time units per run")
    ap.add_argument("--configs", default="zero,0.1", help=f"comma list of {','.join(CONFIGS)}")
    ap.add_argument("--model", type=Path, help="weights .npz (default: weights/lizard_regenerating.npz, "
                                                "with --backend fixed weights/lizard_regenerating_ef.npz)")
    ap.add_argument("--backend", choices=("float", "fixed"), default="float", help="what computes the cells")
    args = ap.parse_args(argv)
    name = "lizard_regenerating_ef" if args.backend == "fixed" else "lizard_regenerating"
    pattern, params, what = grown_pattern(args.model or ROOT / "weights" / f"{name}.npz")
    backend = fixed_backend if args.backend == "fixed" else float_backend
    print(f"pattern: {what}; {int((pattern[..., 3] > 0.1).sum())} alive cells of 1600; "
          f"mean wake-up interval 2; {args.until:g} time units per run; cells: {args.backend}")
    for cfg in (rules.AsyncConfig(), rules.AsyncConfig(latency=0.1)):      # load numba caches
        SimPySwarm(seed_state(8, 8), backend(params), 0, cfg).run(4.0)
        AsyncSwarm(seed_state(8, 8), params, 0, cfg, backend(params)).run(4.0)
    print(f"{'config':<28}{'SimPy':>16}{'numba async':>18}{'ratio':>8}{'SimPy wall':>12}"
          f"{'ref wall':>10}  identical")
    for key in args.configs.split(","):
        label, cfg = CONFIGS[key]
        sw = SimPySwarm(pattern, backend(params), 1, cfg)
        ref = AsyncSwarm(pattern, params, 1, cfg, backend(params))
        t_sw, u_sw = timed_run(sw, args.until)
        t_ref, u_ref = timed_run(ref, args.until)
        same = np.array_equal(sw.grid, ref.grid) and u_sw == u_ref
        print(f"{label:<28}{u_sw / t_sw / 1e3:>10.0f} k/s{u_ref / t_ref / 1e6:>12.2f} M/s"
              f"{t_sw / t_ref:>7.0f}x{t_sw:>11.2f}s{t_ref:>9.2f}s  {'yes' if same else 'NO'}")
    print("(cell updates/s: wake-ups that ran the network; ratio = how many times faster the "
          "numba reference is)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
