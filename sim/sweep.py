"""`python -m sim.sweep`: robustness maps of a model on an unreliable swarm.

For every message latency x message loss rate (x failure setting: mtbf list, one mttr)
and several seeds, grow the swarm from one seed cell for N steps and measure the
paper's loss against the target and the living cells. Writes

    OUT/sweep.csv   one row per run: latency, msg_loss, mtbf, mttr, seed,
                    loss_vs_target, alive_cells, wall_seconds
    OUT/sweep.png   heat map of loss_vs_target (mean over seeds), latency down,
                    loss rate across, one panel per failure setting

Runs are independent and each is a pure function of its arguments (`sim.simulate.simulate`;
the counter-based generator of sim/rng.py), so they go to parallel worker processes
(`--workers`, default all cores) and give the same numbers in any process, on any
machine, in any order. The executor is pluggable: `process` (ProcessPoolExecutor) or
`dask` (a dask.distributed cluster at `--scheduler ADDRESS`, or a LocalCluster of
`--workers` processes without one; `pip install "dask[distributed]"`). A job carries
the model's arrays and the fitted target, so remote workers need the `sim` package
but no files. The default engine is the numba event loop (`async`, fast); `--engine
simpy` gives the same numbers, slower.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import ArgParser, UserError, cli_entry
from .outputs import check_output_dir
from .pictures import load_target_for
from .progress import Progress
from .rules import AsyncConfig
from .simulate import MAX_SIZE, simulate
from .weights import Model, load_model

PROG = "python -m sim.sweep"
COLUMNS = ("latency", "msg_loss", "burst", "mtbf", "mttr", "seed", "loss_vs_target", "alive_cells", "wall_seconds")
ENGINES = ("async", "simpy")
EXECUTORS = ("process", "dask")
DASK_HINT = 'pip install "dask[distributed]"'


@dataclass(frozen=True)
class Job:
    """One run of the sweep: everything a worker needs, picklable, no file access."""
    params: dict[str, np.ndarray]
    target: np.ndarray
    engine: str
    steps: int
    size: int
    latency: float
    msg_loss: float
    mtbf: float
    mttr: float
    seed: int
    burst: float = 0.0        # mean run length of lost messages (0: independent losses)

    def config(self) -> AsyncConfig:
        return AsyncConfig(latency=self.latency, loss=self.msg_loss, burst=self.burst if self.msg_loss else 0.0,
                           mtbf=self.mtbf, mttr=self.mttr)


def run_job(job: Job) -> dict[str, Any]:
    """Run one job (in a worker) and return its CSV row."""
    t0 = time.perf_counter()
    r = simulate(Model(job.params), engine=job.engine, steps=job.steps, size=job.size, seed=job.seed,
                 target=job.target, async_config=job.config())
    loss = r.loss
    return {"latency": job.latency, "msg_loss": job.msg_loss, "burst": job.burst, "mtbf": job.mtbf, "mttr": job.mttr,
            "seed": job.seed, "loss_vs_target": math.nan if loss is None else loss,
            "alive_cells": r.alive, "wall_seconds": time.perf_counter() - t0}


def make_jobs(model: Model, target: np.ndarray, *, engine: str = "async", steps: int = 200, size: int = 40,
              latencies: Sequence[float] = (0.0,), losses: Sequence[float] = (0.0,),
              mtbfs: Sequence[float] = (0.0,), mttr: float = 1.0, seeds: int = 1,
              burst: float = 0.0) -> list[Job]:
    """The grid of runs, failure setting outermost, then latency, loss, seed; with `burst`,
    every lossy link loses messages in runs of that mean length (Gilbert-Elliott)."""
    params = {k: np.asarray(v, np.float32) for k, v in model.params.items()}
    tgt = np.asarray(target, np.float32)
    return [Job(params, tgt, engine, int(steps), int(size), float(lat), float(loss), float(mtbf),
                float(mttr), int(seed), float(burst))
            for mtbf, lat, loss, seed in itertools.product(mtbfs, latencies, losses, range(seeds))]


# ---------------------------------------------------------------- executors
@contextmanager
def executor(kind: str = "process", workers: int | None = None,
             scheduler: str | None = None) -> Iterator[tuple[Callable, Callable]]:
    """(submit, as_completed) of a process pool or a dask cluster: submit(fn, arg) returns a
    future with .result(); as_completed(futures) yields them as they finish."""
    workers = workers or os.cpu_count() or 1
    if kind == "process":
        import concurrent.futures as cf
        import multiprocessing as mp

        # forkserver: workers start from a clean process (no inherited numba/OpenMP threads
        # of the caller, e.g. a test runner) but do not re-import Python for every worker.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["sim.simulate"])
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            yield ex.submit, cf.as_completed
        return
    if kind != "dask":
        raise UserError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserError(f"--executor dask needs dask.distributed, which is not installed "
                        f"({DASK_HINT})") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="20s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
    except (OSError, TimeoutError) as e:
        raise UserError(f"--scheduler {scheduler}: cannot reach the dask scheduler ({e})") from None
    try:
        yield (lambda fn, arg: client.submit(fn, arg, pure=False)), as_completed
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_sweep(jobs: Sequence[Job], kind: str = "process", workers: int | None = None,
              scheduler: str | None = None, progress: Callable[[int], None] | None = None
              ) -> list[dict[str, Any]]:
    """Run the jobs on the executor; rows come back in the jobs' order."""
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    with executor(kind, workers, scheduler) as (submit, as_completed):
        futures = {submit(run_job, job): i for i, job in enumerate(jobs)}
        for done, fut in enumerate(as_completed(list(futures)), 1):
            rows[futures[fut]] = fut.result()
            if progress:
                progress(done)
    return [r for r in rows if r is not None]


# ---------------------------------------------------------------- outputs
def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV with a header line (COLUMNS; NaN written as nan)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items() if k in COLUMNS})
    return buf.getvalue()


def mean_grid(rows: Sequence[dict[str, Any]], latencies: Sequence[float], losses: Sequence[float],
              mtbf: float) -> np.ndarray:
    """(latencies, losses) mean loss_vs_target over the seeds of one failure setting
    (NaN where every seed diverged)."""
    g = np.full((len(latencies), len(losses)), np.nan)
    for i, lat in enumerate(latencies):
        for j, loss in enumerate(losses):
            v = [r["loss_vs_target"] for r in rows
                 if r["latency"] == lat and r["msg_loss"] == loss and r["mtbf"] == mtbf]
            v = [x for x in v if math.isfinite(x)]
            if v:
                g[i, j] = float(np.mean(v))
    return g


def plot_heatmap(rows: Sequence[dict[str, Any]], latencies: Sequence[float], losses: Sequence[float],
                 mtbfs: Sequence[float], mttr: float, title: str):
    """Figure: one heat-map panel per failure setting, a shared colour scale."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    grids = [mean_grid(rows, latencies, losses, m) for m in mtbfs]
    vals = np.concatenate([g[np.isfinite(g)] for g in grids]) if grids else np.zeros(0)
    if vals.size and vals.min() > 0 and vals.max() > 10 * vals.min():
        norm = LogNorm(vals.min(), vals.max())
    elif vals.size:
        norm = Normalize(vals.min(), max(vals.max(), vals.min() + 1e-12))
    else:
        norm = Normalize(0, 1)
    n = len(mtbfs)
    fig = Figure(figsize=(1.2 + n * (0.9 * len(losses) + 1.4), 1.6 + 0.6 * len(latencies)),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    im = None
    for ax, g, m in zip(axes, grids, mtbfs):
        im = ax.imshow(g, cmap="viridis_r", norm=norm, aspect="auto")
        ax.set_xticks(range(len(losses)), [f"{v:g}" for v in losses])
        ax.set_yticks(range(len(latencies)), [f"{v:g}" for v in latencies])
        ax.set_xlabel("message loss rate")
        ax.set_ylabel("latency (steps)")
        ax.set_title("no failures" if m == 0 else f"mtbf {m:g}, mttr {mttr:g}", fontsize=10)
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                v = g[i, j]
                text = "diverged" if not np.isfinite(v) else f"{v:.3g}"
                light = np.isfinite(v) and norm(v) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if light else "black")
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="loss vs target (mean over seeds)", shrink=0.9)
    fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------- command line
def parse_list(text: str, flag: str, low: float = 0.0, high: float = math.inf,
               high_open: bool = False) -> list[float]:
    """A comma-separated list of numbers within [low, high] (or [low, high)); one-line errors."""
    form = f"expected a comma-separated list of numbers, e.g. {flag} 0,0.25,0.5"
    parts = [p.strip() for p in str(text).split(",")]
    if not text.strip() or any(p == "" for p in parts):
        raise UserError(f"{flag} {text!r}: empty entry ({form})")
    out: list[float] = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise UserError(f"{flag} {text!r}: {p!r} is not a number ({form})") from None
        if not math.isfinite(v) or v < low or v > high or (high_open and v == high):
            rng = f"[{low:g}, {high:g}{')' if high_open else ']'}" if math.isfinite(high) else f">= {low:g}"
            raise UserError(f"{flag} {text!r}: {p} is outside {rng}")
        if v in out:
            raise UserError(f"{flag} {text!r}: {p} appears twice")
        out.append(v)
    return out


def _parser() -> ArgParser:
    ap = ArgParser(
        prog=PROG, allow_abbrev=False,
        description="Robustness map of a model: loss vs target after --steps steps over a grid of "
                    "message latency x loss rate (x failure rate), several seeds, in parallel; "
                    "writes OUT/sweep.csv (one row per run) and OUT/sweep.png (heat maps).",
        epilog="Example: python -m sim.sweep --model weights/fixture_blob.npz --steps 200 "
               "--latencies 0,0.25,0.5,1 --losses 0,0.1,0.3 --mtbf 0,200 --seeds 3 --out sweep/")
    ap.add_argument("--model", help="weights .npz (default: the default model of python -m sim.run)")
    ap.add_argument("--target", help="target name or image path (default: the model's, else lizard)")
    ap.add_argument("--steps", type=int, default=200, help="time units per run (default: %(default)s)")
    ap.add_argument("--size", type=int, default=40, help="grid is N x N cells (default: %(default)s)")
    ap.add_argument("--latencies", default="0,0.25,0.5,1", metavar="LIST",
                    help="constant message latencies in steps (default: %(default)s)")
    ap.add_argument("--losses", default="0,0.1,0.3", metavar="LIST",
                    help="message loss probabilities (default: %(default)s)")
    ap.add_argument("--burst", type=float, default=0.0, metavar="L",
                    help="lost messages come in runs of mean length L on each link (Gilbert-Elliott; "
                         "--losses are the mean losses; default: 0, each message lost independently)")
    ap.add_argument("--mtbf", default="0", metavar="LIST",
                    help="mean times between a cell's failures, 0 = none; one panel each "
                         "(default: %(default)s)")
    ap.add_argument("--mttr", type=float, default=1.0, help="mean time to restart a failed cell "
                                                            "(default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per grid point (default: %(default)s)")
    ap.add_argument("--engine", choices=ENGINES, default="async",
                    help="async: numba event loop (fast); simpy: SimPy processes (same numbers, slower) "
                         "(default: %(default)s)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="worker processes (default: the number of CPUs, %(default)s)")
    ap.add_argument("--executor", choices=EXECUTORS, default="process",
                    help=f"process: a local process pool; dask: a dask.distributed cluster "
                         f"({DASK_HINT}) (default: %(default)s)")
    ap.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler, e.g. tcp://10.0.0.5:8786 "
                    "(default with --executor dask: a local cluster of --workers processes)")
    ap.add_argument("--out", default="sweep", metavar="DIR", help="output folder (default: %(default)s)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress line on stderr (default: only when stderr is a terminal)")
    return ap


def _main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate (one-line errors, exit 2), run the sweep, write CSV and heat map."""
    a = _parser().parse_args(argv)
    latencies = parse_list(a.latencies, "--latencies")
    losses = parse_list(a.losses, "--losses", 0.0, 1.0)
    mtbfs = parse_list(a.mtbf, "--mtbf")
    if a.burst != 0.0:
        if not (math.isfinite(a.burst) and a.burst >= 1.0):
            raise UserError(f"--burst must be a mean run length >= 1 (messages) or 0, got {a.burst}")
        if max(losses) > a.burst / (a.burst + 1.0):
            raise UserError(f"--losses {max(losses):g} is too high for bursts of mean length {a.burst:g} "
                            f"(at most {a.burst / (a.burst + 1.0):.3g})")
    if not (math.isfinite(a.mttr) and a.mttr > 0):
        raise UserError(f"--mttr must be a finite number > 0, got {a.mttr}")
    if a.steps < 1:
        raise UserError(f"--steps must be an integer >= 1, got {a.steps}")
    if not 3 <= a.size <= MAX_SIZE:
        raise UserError(f"--size must be within [3, {MAX_SIZE}], got {a.size}")
    if a.seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {a.seeds}")
    if a.workers < 1:
        raise UserError(f"--workers must be an integer >= 1, got {a.workers}")
    if a.scheduler and a.executor != "dask":
        raise UserError("--scheduler needs --executor dask")
    check_output_dir(a.out, "--out")
    model, model_path = load_model(a.model)
    target, target_name = load_target_for(model, a.target)
    jobs = make_jobs(model, target, engine=a.engine, steps=a.steps, size=a.size, latencies=latencies,
                     losses=losses, mtbfs=mtbfs, mttr=a.mttr, seeds=a.seeds, burst=a.burst)
    bar = Progress(len(jobs), "runs") if Progress.wanted(a.progress) else None
    t0 = time.perf_counter()
    try:
        rows = run_sweep(jobs, a.executor, a.workers, a.scheduler, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    wall = time.perf_counter() - t0
    out = Path(a.out)
    title = (f"{Path(model_path).name} vs {target_name}: loss after {a.steps} steps, {a.size}x{a.size} "
             f"cells, {a.engine} engine, mean of {a.seeds} seed{'s' if a.seeds > 1 else ''}")
    fig = plot_heatmap(rows, latencies, losses, mtbfs, a.mttr, title)
    text = csv_text(rows)
    try:
        atomic_write(out / "sweep.csv", lambda f: f.write(text), binary=False)
        atomic_write(out / "sweep.png", lambda f: fig.savefig(f, format="png", dpi=100))
    except OSError as e:
        raise UserError(f"--out {a.out}: cannot write ({e.strerror or e})") from None
    where = (f"the dask cluster at {a.scheduler}" if a.scheduler else
             f"{a.workers} {a.executor} worker{'s' if a.workers > 1 else ''}")
    print(f"{len(rows)} runs ({len(mtbfs)} failure x {len(latencies)} latency x {len(losses)} loss "
          f"x {a.seeds} seeds) on {where} in {wall:.1f} s; model {model_path}, target {target_name}")
    for m in mtbfs:
        g = mean_grid(rows, latencies, losses, m)
        print(("no failures" if m == 0 else f"mtbf {m:g}, mttr {a.mttr:g}") + ": mean loss vs target")
        print("  latency \\ loss " + " ".join(f"{v:>9g}" for v in losses))
        for lat, row in zip(latencies, g):
            print(f"  {lat:>15g} " + " ".join(f"{v:>9.4f}" for v in row))
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.png'}")
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
