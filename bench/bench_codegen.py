"""Benchmark of the fixed-point firmware: per target, ROM (weights, code), RAM
(nca_cell_t + rotation + .data/.bss + worst stack), stack and cycles per cell
update, for the hand-written assembly kernels (the budget builds) and the
portable C core alone; then the speed of the golden model and of the host build
in cell updates per second (batches, and one call per wake-up in the SimPy swarm);
last the output-bias search (`nca-train --tune-biases`) with and without pruning.

    python bench/bench_codegen.py [--model weights/....npz] [--quick]

Numbers come from the toolchains (size, -fstack-usage) and the emulators (simavr's
cycle counter; QEMU's -icount instruction count and its instruction trace timed
with the Cortex-M0 cycle table). Targets whose tools are missing are skipped.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codegen import emit
from codegen import formats as F
from codegen import golden as G
from codegen import toolchain as T
from codegen.quantize import quantize
from sim.errors import UserError
from sim.fixture import blob_model
from sim.weights import load


def cells(n: int, seed: int = 0, ef_bits: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n cells' own states (int16 with ef_bits random low bits) and int8 neighbour states."""
    r = np.random.default_rng(seed)
    xs = r.integers(-128, 128, (n, 16)).astype(np.int16)
    xs[:, 3] = 32                                   # alpha 1.0: every update runs the network
    xs = (xs << ef_bits) + r.integers(0, 1 << ef_bits, xs.shape).astype(np.int16)
    return xs, r.integers(-128, 128, (n, 8, 16)).astype(np.int8)


def board_rows(q, root: Path) -> list[tuple]:
    rows = []
    xs, nbs = cells(16, 1, q.fmt.ef_bits)
    for target in ("cortex-m0", "avr"):
        if T.missing_tools(target, run=True):
            print(f"  ({target}: skipped, tools missing: {T.APT_COMMAND})")
            continue
        for kernel in ("asm", "c"):
            d = root / f"{target}-{kernel}"
            emit.write_project(q, target, d)
            subprocess.run(["make", "-s", "-C", str(d), f"TARGET={target}", f"KERNEL={kernel}"], check=True,
                           capture_output=True)
            b = T.Build(target, d, q.fmt.ef_bits)
            m = T.measure(b) if kernel == "asm" else _measure_c(b)
            ram = m["cell_struct"] + m["rotation"] + m["ram_static"] + m["stack_static"]
            r = T.run_cells(b, xs, nbs, F.rotation_q14(30.0))
            if target == "avr":
                cyc, extra = int(r.cycles.max()), "exact (simavr)"
            else:
                tr = T.m0_trace_update(b, xs[0], nbs[0], F.rotation_q14(30.0))
                cyc = tr["cycles"]
                extra = f"{float(np.mean(r.ticks)) / T.M0_TICKS_PER_INSTRUCTION:,.0f} instructions (QEMU -icount)"
            rows.append((f"{target} {kernel}", m["rom_code"], m["rom_weights"], m["rom_total"], ram,
                         m["stack_static"], cyc, extra))
    return rows


def _measure_c(b: T.Build) -> dict:
    """measure() for a KERNEL=c build: the same objects without the assembly."""
    size_tool = "arm-none-eabi-size" if b.target == "cortex-m0" else "avr-size"
    code = weights = 0
    for name in ("nca_cell.o", "nca_model.o"):
        sec = T._size_sections(size_tool, b.build_dir / name)
        n = sum(v for k, v in sec.items() if k.startswith((".text", ".rodata", ".progmem", ".data")))
        if name == "nca_model.o":
            weights += n
        else:
            code += n
    su = T._stack_usage(b.build_dir)
    ret = 2 if b.target == "avr" else 0
    leaf = max(su.get("perceive", 0), su.get("nca_dense", 0), su.get("apply", 0), su.get("feedback", 0)) + ret
    stack = ret + su.get("nca_cell_update", 0) + ret + su.get("nca_cell_tentative", 0) + leaf
    return {"rom_code": code, "rom_weights": weights, "rom_total": code + weights, "ram_static": 0,
            "cell_struct": T.cell_struct_bytes(b.ef_bits), "rotation": T.ROTATION_BYTES, "stack_static": stack}


def speed_rows(q, quick: bool) -> list[tuple]:
    n = 2000 if quick else 20000
    xs, nbs = cells(n, 2, q.fmt.ef_bits)
    a = q.arrays()
    rows = []
    out = xs.copy()
    codes = np.zeros(n, np.int64)
    G.update_batch(out[:10], nbs[:10], *a, G.NO_ROTATION, codes[:10])   # compile
    t = time.perf_counter()
    G.update_batch(out, nbs, *a, G.NO_ROTATION, codes)
    rows.append(("golden model (numba), batch", n / (time.perf_counter() - t)))
    try:
        from codegen.host_cells import HostFirmware
        hf = HostFirmware(q)
        t = time.perf_counter()
        hf.update(xs, nbs)
        rows.append(("host firmware (C, ctypes), batch", n / (time.perf_counter() - t)))
    except (OSError, RuntimeError, UserError) as e:   # no compiler
        print(f"  (host firmware skipped: {e})")
    from sim.assemble import make_backend
    from sim.model import seed_state
    from sim.swarm import SimPySwarm
    steps = 60 if quick else 200
    for name in ("float", "fixed", "firmware"):
        try:
            sw = SimPySwarm(seed_state(40, 40), make_backend(name, q.meta.get("_model")), seed=0)
        except (OSError, RuntimeError, UserError) as e:
            print(f"  ({name} swarm skipped: {e})")
            continue
        sw.run(2)
        u0 = sw.metrics()["cell_updates"]
        t = time.perf_counter()
        sw.run(steps)
        dt = time.perf_counter() - t
        rows.append((f"SimPy async swarm 40x40, '{name}' backend", (sw.metrics()["cell_updates"] - u0) / dt))
    return rows


def tuning_row(quick: bool) -> str:
    """The output-bias search on the shipped fine-tuned lizard with and without pruning
    (a candidate's seeds stop once its pattern loss cannot win): time and same result."""
    from train.tune import DEFAULT_DELTAS, DEFAULT_SEEDS, tune_output_biases
    from sim.pictures import load_target
    path = Path(__file__).resolve().parent.parent / "weights" / "lizard_regenerating_qat.npz"
    model, target = load(path), load_target("lizard")
    kw = dict(sweeps=1, channels=(0, 3) if quick else (0, 3, 6, 10))   # the tuning's seeds and steps
    tune_output_biases(model, target, sweeps=1, seeds=(1000,), checkpoints=(2,), regrow=(1,),
                       channels=(0,), deltas=(1,))                             # compile
    times, entries = [], []
    for prune in (True, False):
        t = time.perf_counter()
        entries.append(tune_output_biases(model, target, prune=prune, **kw)[1])
        times.append(time.perf_counter() - t)
    n = len(kw["channels"]) * len(DEFAULT_DELTAS)
    return (f"bias search, {n} candidates ({len(DEFAULT_SEEDS)} seeds): pruned {times[0]:.1f} s, "
            f"full {times[1]:.1f} s, {times[1] / times[0]:.1f}x; same result: "
            f"{'yes' if entries[0] == entries[1] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="weights .npz (default: the blob fixture)")
    ap.add_argument("--quick", action="store_true", help="fewer cells and steps")
    args = ap.parse_args(argv)
    model = load(args.model) if args.model else blob_model()
    q = quantize(model)
    q.meta["_model"] = model
    os.environ.setdefault("NCA_CODEGEN_CACHE", tempfile.mkdtemp(prefix="nca-bench-cache-"))
    print(f"model: {args.model or 'sim.fixture.blob_model()'}  hash {q.model_hash:08x}  "
          f"formats {q.report['format']}")
    print(F.describe(q.fmt))
    with tempfile.TemporaryDirectory() as tmp:
        rows = board_rows(q, Path(tmp))
    head = ("target kernel", "ROM code", "ROM wts", "ROM total", "RAM", "stack", "cycles/update", "note")
    fmt = "{:<18}{:>10}{:>10}{:>11}{:>6}{:>7}{:>15}  {}"
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(r[0], f"{r[1]:,}", f"{r[2]:,}", f"{r[3]:,}", r[4], r[5], f"{r[6]:,}", r[7]))
    print("budgets: " + "; ".join(f"{t}: " + ", ".join(f"{k} <= {v:,}" for k, v in b.items())
                                  for t, b in T.BUDGETS.items()))
    print()
    for name, rate in speed_rows(q, args.quick):
        print(f"{name:<45} {rate:>12,.0f} cell updates/s")
    print()
    print(tuning_row(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
