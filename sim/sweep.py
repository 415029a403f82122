"""`python -m sim.sweep`: robustness maps of models on an unreliable swarm, side by side.

For every model (`--model a,b,...`) x message latency x message loss rate (x failure
setting: mtbf list, one mttr) and several seeds (the same for every model), grow the swarm
from one seed cell for N steps and measure the paper's loss against the target (each
model's recorded target unless --target) and the living cells. The clocks and the
latency distribution are sim.run's (--clock, --mean-interval, --jitter, --drift,
--latency-dist, --links); a --latencies value is the mean latency (const: the value; uniform:
uniform in [0, 2v]; exp: exponential with mean v). Writes

    OUT/sweep.csv       one row per run: model (the weights file's stem), latency,
                        latency_dist, msg_loss, burst, mtbf, mttr, clock, mean_interval,
                        jitter, drift, links, seed, loss_vs_target, alive_cells, wall_seconds
    OUT/sweep.png       heat maps of loss_vs_target (mean over seeds), latency down, loss
                        rate across: one row of panels per model, one panel per failure
                        setting, one colour scale for all
    OUT/robustness.png  loss_vs_target (log, mean and min-max over seeds) against latency,
                        one line per model, one panel per loss rate (x failure setting),
                        the 1e-2 "breaks" line; a diverged point is an X at the top

Runs are independent and each is a pure function of its arguments (`sim.simulate.simulate`;
the counter-based generator of sim/rng.py), so they go to parallel worker processes
(`--workers`, default all cores) and give the same numbers in any process, on any
machine, in any order. The executor is pluggable: `process` (ProcessPoolExecutor) or
`dask` (a dask.distributed cluster at `--scheduler ADDRESS`, or a LocalCluster of
`--workers` processes without one; `pip install "dask[distributed]"`). A job carries
the model's arrays and the fitted target, so remote workers need the `sim` package
but no files. The default engine is the numba event loop (`async`, fast); `--engine
simpy` gives the same numbers, slower. The figures are drawn by `sim.sweep_plots`.
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
from .rules import CLOCKS, LAT_UNIFORM, LATENCY_KINDS, LINKS, AsyncConfig
from .simulate import MAX_SIZE, simulate
from .sweep_plots import mean_grid, plot_heatmap, plot_robustness
from .weights import Model, load_model

PROG = "python -m sim.sweep"
COLUMNS = ("model", "latency", "latency_dist", "msg_loss", "burst", "mtbf", "mttr", "clock", "mean_interval",
           "jitter", "drift", "links", "seed", "loss_vs_target", "alive_cells", "wall_seconds")
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
    model: str = ""           # the model's name (its file's stem), the CSV's model column
    clock: str = "exp"        # a key of sim.rules.CLOCKS
    mean_interval: float = 2.0
    jitter: float = 0.0       # periodic clock only
    drift: float = 0.0        # periodic clock only
    latency_dist: str = "const"   # a key of sim.rules.LATENCY_KINDS; `latency` is the mean
    links: str = "direct"         # a key of sim.rules.LINKS

    def config(self) -> AsyncConfig:
        """The run's AsyncConfig; a uniform latency of mean v is uniform in [0, 2v]."""
        kind = LATENCY_KINDS[self.latency_dist]
        uniform = kind == LAT_UNIFORM
        return AsyncConfig(clock=CLOCKS[self.clock], mean_interval=self.mean_interval, jitter=self.jitter,
                           drift=self.drift, latency_kind=kind, latency=0.0 if uniform else self.latency,
                           latency_high=2.0 * self.latency if uniform else 0.0, loss=self.msg_loss,
                           burst=self.burst if self.msg_loss else 0.0, mtbf=self.mtbf, mttr=self.mttr,
                           links=LINKS[self.links])


def run_job(job: Job) -> dict[str, Any]:
    """Run one job (in a worker) and return its CSV row."""
    t0 = time.perf_counter()
    r = simulate(Model(job.params), engine=job.engine, steps=job.steps, size=job.size, seed=job.seed,
                 target=job.target, async_config=job.config())
    loss = r.loss
    return {"model": job.model, "latency": job.latency, "latency_dist": job.latency_dist, "msg_loss": job.msg_loss,
            "burst": job.burst, "mtbf": job.mtbf, "mttr": job.mttr, "clock": job.clock,
            "mean_interval": job.mean_interval, "jitter": job.jitter, "drift": job.drift,
            "links": job.links, "seed": job.seed, "loss_vs_target": math.nan if loss is None else loss,
            "alive_cells": r.alive, "wall_seconds": time.perf_counter() - t0}


def make_jobs(model: Model, target: np.ndarray, *, engine: str = "async", steps: int = 200, size: int = 40,
              latencies: Sequence[float] = (0.0,), losses: Sequence[float] = (0.0,),
              mtbfs: Sequence[float] = (0.0,), mttr: float = 1.0, seeds: int = 1,
              burst: float = 0.0, name: str = "", clock: str = "exp", mean_interval: float = 2.0,
              jitter: float = 0.0, drift: float = 0.0, latency_dist: str = "const",
              links: str = "direct") -> list[Job]:
    """The grid of runs of one model (`name` in the rows), failure setting outermost, then
    latency, loss, seed; with `burst`, every lossy link loses messages in runs of that mean
    length (Gilbert-Elliott); clock, latency_dist and links are keys of sim.rules.CLOCKS,
    LATENCY_KINDS and LINKS."""
    if clock not in CLOCKS or latency_dist not in LATENCY_KINDS:
        raise ValueError(f"unknown clock {clock!r} or latency distribution {latency_dist!r}")
    if links not in LINKS:
        raise ValueError(f"unknown links {links!r}; choose one of {', '.join(LINKS)}")
    params = {k: np.asarray(v, np.float32) for k, v in model.params.items()}
    tgt = np.asarray(target, np.float32)
    return [Job(params, tgt, engine, int(steps), int(size), float(lat), float(loss), float(mtbf),
                float(mttr), int(seed), float(burst), name, clock, float(mean_interval), float(jitter),
                float(drift), latency_dist, links)
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


def load_models(text: str | None) -> list[tuple[str, Model, str]]:
    """(name, model, path) of each model of a comma-separated --model list (names or paths;
    None: the default model); the name, a file's stem, is the CSV's model column, so two
    models with one name are an error, as is a model that does not load."""
    entries = [None] if text is None else [e.strip() for e in text.split(",")]
    if any(e == "" for e in entries):
        raise UserError(f"--model {text!r}: empty entry (expected a comma-separated list of shipped "
                        f"model names or weights files)")
    out: list[tuple[str, Model, str]] = []
    for e in entries:
        try:
            model, path = load_model(e)
        except UserError as err:
            if len(entries) == 1:
                raise
            raise UserError(f"--model {text!r}: {err}") from None
        name = Path(path).stem
        if any(name == n for n, _, _ in out):
            raise UserError(f"--model {text!r}: {name} appears twice")
        out.append((name, model, path))
    return out


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_clock(a: argparse.Namespace) -> None:
    """The clock options' ranges and dependencies, with python -m sim.run's messages."""
    for dest in ("mean_interval", "jitter", "drift"):
        v = getattr(a, dest)
        if v is not None and not math.isfinite(v):
            raise UserError(f"{_flag(dest)} must be a finite number, got {v}")
    if a.mean_interval is not None and not a.mean_interval > 0:
        raise UserError(f"--mean-interval must be > 0, got {a.mean_interval}")
    for dest in ("jitter", "drift"):
        if getattr(a, dest) is not None and a.clock != "periodic":
            raise UserError(f"{_flag(dest)} needs --clock periodic (the exponential clock is random already)")
    if a.clock == "periodic":
        period = 2.0 if a.mean_interval is None else a.mean_interval
        drift, jitter = a.drift or 0.0, a.jitter or 0.0
        if not 0.0 <= drift < 1.0:
            raise UserError(f"--drift must be within [0, 1), got {drift}")
        if not 0.0 <= jitter < period * (1.0 - drift):
            raise UserError(f"--jitter must be >= 0 and < period x (1 - drift) = {period * (1.0 - drift):g} "
                            f"(an interval must stay positive), got {jitter}")


def _settings_text(a: argparse.Namespace) -> str:
    """The clock and latency distribution in words, for the figures' titles."""
    clock = a.clock or "exp"
    interval = 2.0 if a.mean_interval is None else a.mean_interval
    text = (f"exp clock (mean interval {interval:g})" if clock == "exp" else
            f"periodic clock (period {interval:g}, jitter {a.jitter or 0:g}, drift {a.drift or 0:g})")
    dist = a.latency_dist or "const"
    lat = {"const": "constant", "uniform": "uniform in [0, 2 x latency]", "exp": "exponential"}[dist]
    relay = ", relay links (4 per cell, diagonals relayed)" if a.links == "relay" else ""
    return f"{text}, {lat} latency{relay}"


def _parser() -> ArgParser:
    ap = ArgParser(
        prog=PROG, allow_abbrev=False,
        description="Robustness map of models side by side: loss vs target after --steps steps over a "
                    "grid of message latency x loss rate (x failure rate), several seeds, in parallel; "
                    "writes OUT/sweep.csv (one row per run), OUT/sweep.png (heat maps) and "
                    "OUT/robustness.png (loss against latency, one line per model).",
        epilog="Example: python -m sim.sweep --model lizard_regenerating,weights/fixture_blob.npz --steps 200 "
               "--latencies 0,0.25,0.5,1 --losses 0,0.1,0.3 --mtbf 0,200 --seeds 3 --out sweep/")
    ap.add_argument("--model", metavar="LIST", help="weights .npz files or shipped models' names, comma-separated; "
                    "each runs the same grid and seeds (default: the default model of python -m sim.run)")
    ap.add_argument("--target", help="target name or image path (default: each model's, else lizard)")
    ap.add_argument("--steps", type=int, default=200, help="time units per run (default: %(default)s)")
    ap.add_argument("--size", type=int, default=40, help="grid is N x N cells (default: %(default)s)")
    ap.add_argument("--latencies", default="0,0.25,0.5,1", metavar="LIST",
                    help="mean message latencies in steps (--latency-dist const: the latency; uniform: "
                         "uniform in [0, 2 x the value]; exp: the mean) (default: %(default)s)")
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
    g = ap.add_argument_group("clocks and latency (as in python -m sim.run)")
    g.add_argument("--clock", choices=tuple(CLOCKS), help="exp: exponential wake-up intervals; "
                   "periodic: a fixed period (--mean-interval) with --jitter and --drift, each cell "
                   "starting at a random phase (default: exp)")
    g.add_argument("--mean-interval", type=float, help="mean wake-up interval of a cell in steps "
                                                       "(periodic: the period; default: 2, i.e. fire rate 0.5)")
    g.add_argument("--jitter", type=float, help="periodic clock: each interval +- a uniform jitter "
                                                "of up to this many steps (default: 0)")
    g.add_argument("--drift", type=float, help="periodic clock: each cell's rate off by up to +- "
                                               "this fraction, e.g. 0.01 = 1%% (default: 0)")
    g.add_argument("--latency-dist", choices=tuple(LATENCY_KINDS),
                   help="latency distribution: const (each --latencies value), uniform (in [0, 2v] for "
                        "a value v, mean v), exp (exponential, mean v) (default: const)")
    g.add_argument("--links", choices=tuple(LINKS), help="direct: a link to each of the 8 neighbours; "
                   "relay: links to the 4 orthogonal neighbours only, the frames to N and S also "
                   "carrying the sender's last W and E states (the receiver's diagonals) (default: direct)")
    g = ap.add_argument_group("where to run")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: the number of CPUs, %(default)s)")
    g.add_argument("--executor", choices=EXECUTORS, default="process",
                   help=f"process: a local process pool; dask: a dask.distributed cluster "
                        f"({DASK_HINT}) (default: %(default)s)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler, e.g. tcp://10.0.0.5:8786 "
                   "(default with --executor dask: a local cluster of --workers processes)")
    g.add_argument("--out", default="sweep", metavar="DIR", help="output folder (default: %(default)s)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line on stderr (default: only when stderr is a terminal)")
    return ap


def _main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate (one-line errors, exit 2), run the sweep, write the CSV and figures."""
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
    _check_clock(a)
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
    models = load_models(a.model)
    names = [name for name, _, _ in models]
    clock = {"clock": a.clock or "exp", "mean_interval": 2.0 if a.mean_interval is None else a.mean_interval,
             "jitter": a.jitter or 0.0, "drift": a.drift or 0.0, "latency_dist": a.latency_dist or "const",
             "links": a.links or "direct"}
    jobs: list[Job] = []
    targets: list[str] = []
    for name, model, _ in models:
        target, target_name = load_target_for(model, a.target)
        targets.append(target_name)
        jobs += make_jobs(model, target, engine=a.engine, steps=a.steps, size=a.size, latencies=latencies,
                          losses=losses, mtbfs=mtbfs, mttr=a.mttr, seeds=a.seeds, burst=a.burst, name=name,
                          **clock)
    bar = Progress(len(jobs), "runs") if Progress.wanted(a.progress) else None
    t0 = time.perf_counter()
    try:
        rows = run_sweep(jobs, a.executor, a.workers, a.scheduler, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    wall = time.perf_counter() - t0
    out = Path(a.out)
    against = targets[0] if len(set(targets)) == 1 else "their targets (" + ", ".join(targets) + ")"
    head, what = f"{', '.join(names)} vs {against}", f"loss after {a.steps} steps, {a.size}x{a.size} cells"
    title = (f"{head}: {what}" if len(head) + len(what) < 72 else f"{head}:\n{what}") + (  # fits the figure
        f"\n{a.engine} engine, {_settings_text(a)}, {a.seeds} seed{'s' if a.seeds > 1 else ''}")
    heat = plot_heatmap(rows, latencies, losses, mtbfs, a.mttr, title, names)
    lines = plot_robustness(rows, latencies, losses, mtbfs, a.mttr, names, title)
    text = csv_text(rows)
    try:
        atomic_write(out / "sweep.csv", lambda f: f.write(text), binary=False)
        atomic_write(out / "sweep.png", lambda f: heat.savefig(f, format="png", dpi=100))
        atomic_write(out / "robustness.png", lambda f: lines.savefig(f, format="png", dpi=100))
    except OSError as e:
        raise UserError(f"--out {a.out}: cannot write ({e.strerror or e})") from None
    where = (f"the dask cluster at {a.scheduler}" if a.scheduler else
             f"{a.workers} {a.executor} worker{'s' if a.workers > 1 else ''}")
    print(f"{len(rows)} runs ({len(models)} model x {len(mtbfs)} failure x {len(latencies)} latency x "
          f"{len(losses)} loss x {a.seeds} seeds) on {where} in {wall:.1f} s; "
          + "; ".join(f"model {path}, target {t}" for (_, _, path), t in zip(models, targets)))
    for name in names:
        for m in mtbfs:
            g = mean_grid(rows, latencies, losses, m, name)
            print(f"{name}, " + ("no failures" if m == 0 else f"mtbf {m:g}, mttr {a.mttr:g}")
                  + ": mean loss vs target")
            print("  latency \\ loss " + " ".join(f"{v:>9g}" for v in losses))
            for lat, row in zip(latencies, g):
                print(f"  {lat:>15g} " + " ".join(f"{v:>9.4f}" for v in row))
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.png'}, {out / 'robustness.png'}")
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
