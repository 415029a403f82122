"""The grid of emulated boards against the SimPy swarm, side by side in one run: the
wall time of growing the lizard from one seed on the N x N grid to `--until` time units
(default 40x40 and 1,000), with the same model (the shipped error-feedback lizard) on
each: the SimPy swarm computing its cells with the firmware's integer arithmetic (the
golden model), and the mesh running the firmware ELF on every emulated ATmega2560.

    python bench/bench_mesh.py [--size 40] [--until 1000] [--wake-ms 100] [--threads 2]

Printed: wall seconds of each, their ratio, the mesh's emulated seconds, its aggregate
emulated cycles per second (every board's clock, asleep or awake) and awake cycles per
second (instructions executed), the cycles per wake (the cell update and the rest: the
links), and both final losses.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boards.mesh import Mesh, MeshConfig  # noqa: E402
from codegen.fixed_cells import fixed_backend  # noqa: E402
from codegen.quantize import quantized  # noqa: E402
from sim.model import seed_state  # noqa: E402
from sim.paths import BOARD_MODEL  # noqa: E402
from sim.pictures import fit_target, load_target  # noqa: E402
from sim.rules import AsyncConfig  # noqa: E402
from sim.simulate import loss_vs  # noqa: E402
from sim.spec import Params  # noqa: E402
from sim.swarm import SimPySwarm  # noqa: E402
from sim.weights import load  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--until", type=float, default=1000.0, help="time units")
    ap.add_argument("--wake-ms", type=float, default=100.0, help="the boards' mean wake interval")
    ap.add_argument("--threads", type=int, default=2, help="emulator threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = load(BOARD_MODEL)
    params = Params.from_model(model)
    q = quantized(params)
    target = fit_target(load_target("lizard"), args.size, args.size)
    n = args.size
    x0 = seed_state(n, n)

    SimPySwarm(seed_state(8, 8), fixed_backend(params), 0, AsyncConfig()).run(4.0)   # numba caches
    sw = SimPySwarm(x0, fixed_backend(params), args.seed, AsyncConfig())
    t0 = time.perf_counter()
    sw.run(args.until)
    t_simpy = time.perf_counter() - t0
    loss_simpy = loss_vs(sw.grid, target)

    t0 = time.perf_counter()
    with Mesh(q, n, n, args.seed, (n // 2, n // 2), MeshConfig(wake_ms=args.wake_ms, threads=args.threads),
              log=False) as m:
        m.advance(args.until)
        t_mesh = time.perf_counter() - t0
        loss_mesh = loss_vs(m.float_states(), target)
        wakes = int(m.status["wakes"].sum())
        emu_s = (m.now_ns - m.t0_ns) / 1e9
        print(f"{n}x{n} grid to {args.until:g} time units, model {BOARD_MODEL.name}, seed {args.seed}")
        print(f"  SimPy swarm (fixed-point cells): {t_simpy:8.1f} s   loss {loss_simpy:.3g}")
        print(f"  mesh of {n * n} emulated ATmega2560 ({args.threads} threads, wake {args.wake_ms:g} ms): "
              f"{t_mesh:8.1f} s   loss {loss_mesh:.3g}   ({t_mesh / t_simpy:.1f}x the SimPy swarm)")
        print(f"  emulated {emu_s:.1f} s; {m.sim_cycles / m.wall_ns * 1e3:,.0f} M emulated cycles/s "
              f"(all boards' clocks), {m.active_cycles / m.wall_ns * 1e3:,.0f} M awake cycles/s")
        if wakes:
            print(f"  per wake: {m.active_cycles / wakes:,.0f} cycles awake, of which the cell update "
                  f"{m.update_cycles / wakes:,.0f} ({wakes:,} wakes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
