"""`python -m sim.run`: grow a swarm from one seed cell, damage it, measure it.

Engines (all start from `model.seed_state` and draw from the counter-based
generator, so a run is a pure function of its arguments):
  sync      the paper's synchronous grid (numba, `reference.SyncGrid`);
  lockstep  message-passing cells ticking together (`async_ref.LockstepSwarm`),
            equal to `sync` bit for bit for the same seed and fire rate;
  async     event-driven cells with their own clocks, message latency and loss,
            failures and restarts (`async_ref.AsyncSwarm`); one step = one time unit;
  simpy     the same asynchronous swarm with every cell a SimPy process
            (`swarm.SimPySwarm`), equal to `async` bit for bit.

The loop lives in `simulate()` so tests and benchmarks call it without the CLI;
`main()` only parses, validates (one-line errors, exit 2) and writes files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .async_ref import (LAT_CONSTANT, LAT_EXPONENTIAL, LAT_UNIFORM, AsyncConfig, AsyncSwarm,
                        LockstepSwarm)
from .atomic import atomic_write
from .damage import FORMS as DAMAGE_FORMS
from .damage import Damage, parse_damage
from .errors import ArgParser, UserError, cli_entry
from .model import ALIVE_THRESHOLD, ALPHA, CHANNELS, FIRE_RATE, seed_state
from .reference import Params, SyncGrid
from .swarm import SimPySwarm
from .weights import Model

PROG = "python -m sim.run"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "weights" / "lizard_regenerating.npz"
DEFAULT_TARGET = "lizard"
ENGINES = ("sync", "lockstep", "async", "simpy")
EVENT_ENGINES = ("async", "simpy")   # own clocks and messages: take the AsyncConfig options
DEFAULT_ENGINE = "async"
LATENCY_KINDS = {"const": LAT_CONSTANT, "uniform": LAT_UNIFORM, "exp": LAT_EXPONENTIAL}
HISTORY_POINTS = 50      # history sampled about every steps/50 steps
STRIP_FRAMES = 8         # evenly spaced growth frames (damage times come on top)
MAX_SIZE = 4096
MAX_SEED = 2 ** 63 - 1


class RunError(UserError, ValueError):
    """Arguments of a run that cannot work (a user error on the command line, a ValueError in code)."""


# ---------------------------------------------------------------- engines
class _SyncEngine:
    """The paper's synchronous grid; only cells near living ones are computed."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, fire_rate: float):
        self.grid = SyncGrid(state, params, seed, 0, fire_rate, skip_dead=True)

    def advance(self, step: int) -> None:
        self.grid.run(step - self.grid.step_count, count_updates=True)

    def damage(self, mask: np.ndarray) -> None:
        self.grid.x[0][mask] = 0.0

    @property
    def state(self) -> np.ndarray:
        return self.grid.state

    @property
    def cell_updates(self) -> int:
        return int(self.grid.cell_updates)

    def metrics(self) -> dict[str, Any]:
        return {}


class _LockstepEngine:
    """Message-passing cells at integer ticks; every fired cell runs its network."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, fire_rate: float):
        self.swarm = LockstepSwarm(state, params, seed, 0, fire_rate)

    def advance(self, step: int) -> None:
        self.swarm.run(step - self.swarm.step_count)

    def damage(self, mask: np.ndarray) -> None:
        self.swarm.damage(mask)

    @property
    def state(self) -> np.ndarray:
        return self.swarm.grid

    @property
    def cell_updates(self) -> int:
        return int(self.swarm.cell_updates)

    def metrics(self) -> dict[str, Any]:
        return {}


class _AsyncEngine:
    """Event-driven swarm; step s is time s, and advancing to s runs the events before s."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig):
        self.swarm = AsyncSwarm(state, params, seed, config)

    def advance(self, step: int) -> None:
        self.swarm.run(float(step))

    def damage(self, mask: np.ndarray) -> None:
        self.swarm.damage(mask)

    @property
    def state(self) -> np.ndarray:
        return self.swarm.grid

    @property
    def cell_updates(self) -> int:
        return int(self.swarm.metrics()["cell_updates"])

    def metrics(self) -> dict[str, Any]:
        return {"swarm": self.swarm.metrics()}


class _SimPyEngine(_AsyncEngine):
    """Every cell a SimPy process; equals the async engine bit for bit."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig):
        self.swarm = SimPySwarm(state, params, seed, config)


def _make_engine(engine: str, state: np.ndarray, params: Params, seed: int, fire_rate: float,
                 config: AsyncConfig):
    if engine == "sync":
        return _SyncEngine(state, params, seed, fire_rate)
    if engine == "lockstep":
        return _LockstepEngine(state, params, seed, fire_rate)
    if engine == "simpy":
        return _SimPyEngine(state, params, seed, config)
    return _AsyncEngine(state, params, seed, config)


def _warm_up(engine: str, params: Params, seed: int, fire_rate: float, config: AsyncConfig,
             height: int, width: int) -> None:
    """Load (or compile) the numba code outside the timed loop, so updates/s measure the swarm.
    The sync grid picks serial or parallel kernels by size, hence the same-size grid there."""
    h, w = (height, width) if engine == "sync" else (3, 3)
    e = _make_engine(engine, seed_state(h, w), params, seed, fire_rate, config)
    e.advance(1)
    e.damage(np.zeros((h, w), bool))


# ---------------------------------------------------------------- simulate
@dataclass
class Frame:
    """A snapshot for the growth strip; `damaged` when damage was applied just before it."""
    step: int
    state: np.ndarray
    damaged: bool = False


@dataclass
class Result:
    """Outcome of `simulate`: final state (H, W, 16) float32, sampled history, metrics, frames."""
    state: np.ndarray
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    frames: list[Frame] = field(default_factory=list)

    @property
    def loss(self) -> float | None:
        return self.metrics["loss"]

    @property
    def alive(self) -> int:
        return self.metrics["alive_cells"]


def loss_vs(state: np.ndarray, target: np.ndarray) -> float:
    """The paper's loss: MSE over H, W and the 4 RGBA channels (target already fitted to the grid)."""
    d = np.asarray(state[..., :4], np.float64) - np.asarray(target, np.float64)
    return float(np.mean(d * d))


def alive_cells(state: np.ndarray) -> int:
    """Cells whose own alpha exceeds the alive threshold (the visible organism)."""
    return int(np.count_nonzero(np.asarray(state)[..., ALPHA] > ALIVE_THRESHOLD))


def _finite(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


def _history_steps(steps: int, every: int | None) -> list[int]:
    every = max(1, steps // HISTORY_POINTS) if every is None else int(every)
    if every < 1:
        raise RunError(f"history interval must be >= 1, got {every}")
    return sorted(set(range(0, steps + 1, every)) | {steps})


def strip_steps(steps: int, damage: Sequence[Damage] = (), frames: int = STRIP_FRAMES) -> list[int]:
    """About `frames` evenly spaced steps from 0 to steps, plus every damage step."""
    even = {int(round(v)) for v in np.linspace(0, steps, frames)} if steps > 0 else {0}
    return sorted(even | {d.step for d in damage if d.step <= steps})


def _latency_name(kind: int) -> str:
    return {v: k for k, v in LATENCY_KINDS.items()}[kind]


def _resolve_target(target: Any, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
    from .targets import fit_target, load_target

    if target is None:
        return None, None
    if isinstance(target, (str, os.PathLike)):
        return fit_target(load_target(target), height, width), str(target)
    t = np.asarray(target, np.float32)
    if t.ndim != 3 or t.shape[-1] < 4:
        raise RunError(f"target must be an (H, W, >=4) RGBA array, got shape {t.shape}")
    return fit_target(t[..., :4], height, width), "array"


def simulate(model: Model | Params, engine: str = DEFAULT_ENGINE, steps: int = 1000, size: int = 40,
             seed: int = 0, rotate: float = 0.0, damage: Iterable[Damage | str] = (),
             target: str | os.PathLike | np.ndarray | None = None, fire_rate: float = FIRE_RATE,
             async_config: AsyncConfig | None = None, history_every: int | None = None,
             frame_steps: Iterable[int] = (), state: np.ndarray | None = None,
             warm_up: bool = True) -> Result:
    """Run one swarm for `steps` steps from the seed (or `state`) and measure it.

    Damage d is applied when the run reaches d.step (after d.step steps; sync and
    lockstep between steps, async after the events before time d.step). The loss
    is the paper's MSE against `target` (a name, an image path or an RGBA array,
    centred on the grid); history holds {step, loss, alive} about every steps/50
    steps. `model` may be ready Params (kept with their own rotation unless `rotate`
    is non-zero). Arguments that cannot work raise RunError before anything runs.
    """
    if engine not in ENGINES:
        raise RunError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    steps = int(steps)
    if steps < 0:
        raise RunError(f"steps must be >= 0, got {steps}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise RunError(f"seed must be within [0, 2**63 - 1], got {seed}")
    seed = int(seed)
    if state is None:
        if not 3 <= int(size) <= MAX_SIZE:
            raise RunError(f"size must be within [3, {MAX_SIZE}], got {size}")
        x0 = seed_state(int(size), int(size))
    else:
        x0 = np.array(state, np.float32)
        if x0.ndim != 3 or x0.shape[-1] != CHANNELS:
            raise RunError(f"state must be (H, W, {CHANNELS}), got shape {x0.shape}")
    height, width = x0.shape[:2]
    if not math.isfinite(rotate):
        raise RunError(f"rotation must be a finite angle, got {rotate}")
    if not 0.0 <= fire_rate <= 1.0:
        raise RunError(f"fire rate must be within [0, 1], got {fire_rate}")
    config = async_config or AsyncConfig()
    if engine in EVENT_ENGINES:
        try:
            config.validate()
        except ValueError as e:
            raise RunError(str(e)) from None
    if isinstance(model, Params):   # used as given (its own rotation) unless rotate is set
        params = model.rotated(rotate) if rotate else model
    else:
        params = Params.from_model(model, rotate)
    damage = [d if isinstance(d, Damage) else parse_damage(d) for d in damage]
    masks = []
    for d in damage:
        if d.step > steps:
            raise RunError(f"damage {d.describe()} happens after the end of the run ({steps} steps)")
        m = d.mask(height, width)
        if not m.any():
            raise RunError(f"damage {d.describe()} covers no cell of the {width}x{height} grid "
                           f"(coordinates are cells: x = column 0..{width - 1}, y = row 0..{height - 1})")
        masks.append(m)
    tgt, target_name = _resolve_target(target, height, width)
    hist = _history_steps(steps, history_every)
    frames_at = {s for s in frame_steps if 0 <= s <= steps}
    checkpoints = sorted(set(hist) | frames_at | {d.step for d in damage})
    hist_set = set(hist)

    if warm_up:
        _warm_up(engine, params, seed, fire_rate, config, height, width)
    eng = _make_engine(engine, x0, params, seed, fire_rate, config)
    history: list[dict[str, Any]] = []
    frames: list[Frame] = []
    damage_log: list[dict[str, Any]] = []
    engine_seconds = 0.0
    t0 = time.perf_counter()
    for s in checkpoints:
        te = time.perf_counter()
        eng.advance(s)
        engine_seconds += time.perf_counter() - te
        hit = False
        for d, m in zip(damage, masks):
            if d.step == s:
                eng.damage(m)
                damage_log.append({"spec": d.describe(), "step": s, "cells": int(m.sum())})
                hit = True
        x = eng.state
        if s in hist_set:
            loss = _finite(loss_vs(x, tgt)) if tgt is not None else None
            history.append({"step": s, "loss": loss, "alive": alive_cells(x)})
        if s in frames_at:
            frames.append(Frame(s, x.copy(), hit))
    wall = time.perf_counter() - t0
    final = np.array(eng.state, np.float32)
    updates = eng.cell_updates
    metrics: dict[str, Any] = {
        "engine": engine,
        "steps": steps,
        "seed": seed,
        "height": height,
        "width": width,
        "rotate_deg": float(rotate),
        "target": target_name,
        "loss": _finite(loss_vs(final, tgt)) if tgt is not None else None,
        "alive_cells": alive_cells(final),
        "finite": bool(np.all(np.isfinite(final))),
        "cell_updates": updates,
        "wall_seconds": wall,
        "engine_seconds": engine_seconds,
        "cell_updates_per_second": updates / engine_seconds if engine_seconds > 0 else None,
        "damage": damage_log,
    }
    if engine in EVENT_ENGINES:
        metrics["async_config"] = {
            "mean_interval": config.mean_interval, "latency_dist": _latency_name(config.latency_kind),
            "latency": config.latency, "latency_high": config.latency_high, "msg_loss": config.loss,
            "mtbf": config.mtbf, "mttr": config.mttr}
    else:
        metrics["fire_rate"] = float(fire_rate)
    metrics.update(eng.metrics())
    return Result(final, history, metrics, frames)


# ---------------------------------------------------------------- command line
ASYNC_ONLY = ("latency", "latency_dist", "latency_high", "msg_loss", "mtbf", "mttr", "mean_interval")
GRID_ONLY = ("fire_rate",)   # sync and lockstep


def _parser() -> ArgParser:
    ap = ArgParser(
        prog=PROG, allow_abbrev=False,
        description="Grow a swarm of NCA cells from one seed cell; damage it and watch it regrow. "
                    "Prints the final loss against the target, the living cells and the update "
                    "rate; writes pictures, the final state and JSON metrics on request.",
        epilog=f"Damage specs (cells: x = column, y = row, (0,0) top-left): {DAMAGE_FORMS}. "
               "Damage at STEP happens after STEP steps. Example: "
               "python -m sim.run --engine sync --model weights/fixture_blob.npz --steps 400 "
               "--damage circle:20,20,8@200 --save-strip regrow.png")
    ap.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                    help="sync: the paper's synchronous grid; lockstep: message-passing cells ticking "
                         "together (equals sync); async: own clocks, latency, loss, failures "
                         "(numba event loop); simpy: the same swarm as SimPy processes (equals async) "
                         "(default: %(default)s)")
    ap.add_argument("--model", help=f"weights .npz (default: {_show(DEFAULT_MODEL)}; "
                                    "nca-convert makes one from a published model)")
    ap.add_argument("--target", help="target name (lizard, ...) or image path for the loss "
                                     "(default: the model's recorded target, else lizard)")
    ap.add_argument("--size", type=int, default=40, help="grid is N x N cells (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1000, help="steps (async: time units) to run "
                                                            "(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    ap.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                    help="rotate the perception's gradient kernels by DEG degrees (experiment 4)")
    ap.add_argument("--damage", action="append", default=[], metavar="SPEC",
                    help="wipe cells, e.g. circle:20,20,8@200 (repeatable; see below)")
    g = ap.add_argument_group("sync and lockstep engines")
    g.add_argument("--fire-rate", type=float, help=f"probability that a cell updates in a step "
                                                   f"(default: {FIRE_RATE})")
    g = ap.add_argument_group("async engine")
    g.add_argument("--mean-interval", type=float, help="mean wake-up interval of a cell in steps "
                                                       "(exponential; default: 2, i.e. fire rate 0.5)")
    g.add_argument("--latency", type=float, help="message latency in steps (const: the value; "
                                                 "uniform: the low end; exp: the mean; default: 0)")
    g.add_argument("--latency-dist", choices=tuple(LATENCY_KINDS), help="latency distribution "
                                                                        "(default: const)")
    g.add_argument("--latency-high", type=float, help="high end of a uniform latency")
    g.add_argument("--msg-loss", type=float, help="probability that a message is lost (0..1)")
    g.add_argument("--mtbf", type=float, help="mean running time between a cell's failures "
                                              "(0: no failures)")
    g.add_argument("--mttr", type=float, help="mean time until a failed cell restarts with a zero "
                                              "state (default: 1)")
    g = ap.add_argument_group("output")
    g.add_argument("--save-png", metavar="FILE", help="picture of the final state")
    g.add_argument("--save-strip", metavar="FILE", help="growth strip: ~8 evenly spaced steps plus "
                                                        "the damage steps")
    g.add_argument("--save-state", metavar="FILE.npy", help="final state, H x W x 16 float32 .npy")
    g.add_argument("--json", metavar="FILE", help="metrics and the {step, loss, alive} history")
    return ap


def _show(path: Path) -> str:
    """A path as the user would type it from here: relative when below the current folder."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_args(a: argparse.Namespace) -> None:
    """Engine applicability and numeric ranges: one-line errors before anything runs."""
    for dest in ASYNC_ONLY:
        if getattr(a, dest) is not None and a.engine not in EVENT_ENGINES:
            raise UserError(f"{_flag(dest)} applies to --engine async|simpy only, not --engine {a.engine} "
                            f"(its cells exchange no messages and have no clocks)")
    for dest in GRID_ONLY:
        if getattr(a, dest) is not None and a.engine in EVENT_ENGINES:
            raise UserError(f"{_flag(dest)} applies to --engine sync|lockstep only; the {a.engine} engine's "
                            f"update rate is set by --mean-interval")

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    def finite(dest: str) -> None:
        v = getattr(a, dest)
        need(v is None or math.isfinite(v), f"{_flag(dest)} must be a finite number, got {v}")

    for dest in ("rotate", "fire_rate", "mean_interval", "latency", "latency_high", "msg_loss",
                 "mtbf", "mttr"):
        finite(dest)
    need(a.steps >= 0, f"--steps must be an integer >= 0, got {a.steps}")
    need(3 <= a.size <= MAX_SIZE, f"--size must be within [3, {MAX_SIZE}], got {a.size}")
    need(0 <= a.seed <= MAX_SEED, f"--seed must be within [0, 2**63 - 1], got {a.seed}")
    if a.fire_rate is not None:
        need(0.0 <= a.fire_rate <= 1.0, f"--fire-rate must be within [0, 1], got {a.fire_rate}")
    if a.mean_interval is not None:
        need(a.mean_interval > 0, f"--mean-interval must be > 0, got {a.mean_interval}")
    if a.latency is not None:
        need(a.latency >= 0, f"--latency must be >= 0, got {a.latency}")
    if a.msg_loss is not None:
        need(0.0 <= a.msg_loss <= 1.0, f"--msg-loss must be within [0, 1], got {a.msg_loss}")
    dist = a.latency_dist or "const"
    if a.latency_high is not None:
        need(dist == "uniform", "--latency-high needs --latency-dist uniform")
        need(a.latency_high >= (a.latency or 0.0),
             f"--latency-high ({a.latency_high}) must be >= --latency ({a.latency or 0.0})")
    need(dist != "uniform" or a.latency_high is not None,
         "--latency-dist uniform needs --latency-high (and optionally --latency as the low end)")
    need(dist != "exp" or a.latency is not None, "--latency-dist exp needs --latency MEAN")
    if a.mtbf is not None:
        need(a.mtbf >= 0, f"--mtbf must be >= 0 (0: no failures), got {a.mtbf}")
    if a.mttr is not None:
        need(a.mttr > 0, f"--mttr must be > 0, got {a.mttr}")
        need(bool(a.mtbf), "--mttr needs --mtbf > 0 (cells only restart after failing)")


def _check_output(path: str, flag: str) -> None:
    """Fail before a long run, not after it, when an output cannot be written."""
    p = Path(os.path.realpath(path))
    if any(str(q).startswith(("/dev/", "/proc/")) for q in (p, Path(path).absolute())):
        raise UserError(f"{flag} {path}: not a regular file (outputs are written to a temporary "
                        f"file and renamed into place, so /dev and /proc paths cannot be used)")
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a directory")
    if p.exists() and not p.is_file():   # a rename over a device or FIFO would replace it
        raise UserError(f"{flag} {path}: not a regular file (outputs are written to a temporary "
                        f"file and renamed into place)")
    anc = p.parent if str(p.parent) else Path(".")
    while not anc.exists():
        if anc.is_symlink() or anc == anc.parent:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise UserError(f"{flag} {path}: cannot write there ({anc} is not a directory)")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write there (no write permission in {anc})")


def _write(path: str, flag: str, writer) -> None:
    """Write through symlinks (the rename then replaces the file the link points to, not the link)."""
    try:
        writer(os.path.realpath(path))
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def _load_model(path: str | None) -> tuple[Model, str]:
    from .weights import load

    if path is None:
        if not DEFAULT_MODEL.is_file():
            hint = REPO_ROOT / "weights" / "fixture_blob.npz"
            eg = f" (e.g. --model {_show(hint)})" if hint.is_file() else ""
            raise UserError(f"the default model {_show(DEFAULT_MODEL)} does not exist (trained models are "
                            f"not shipped yet); point --model to a weights file{eg}, or to one made "
                            f"by nca-convert")
        path = str(DEFAULT_MODEL)
    return load(path), path


def _load_target(name: str, from_meta: bool) -> np.ndarray:
    from .targets import TargetError, load_target

    try:
        return load_target(name)
    except TargetError as e:
        if from_meta:
            raise TargetError(f"{e} (the model's recorded target; choose another with --target)") from None
        raise


def _summary(r: Result, model_path: str, written: list[str]) -> str:
    m = r.metrics
    rate = m["cell_updates_per_second"]
    loss = m["loss"]
    lines = [
        f"{m['engine']} engine, {m['width']}x{m['height']} cells, {m['steps']} steps, seed {m['seed']}, "
        f"model {model_path}, target {m['target']}",
        f"final loss {loss:.5f}" if loss is not None else "final loss n/a (state not finite)",
    ]
    lines[-1] += (f", {m['alive_cells']} alive cells (alpha > {ALIVE_THRESHOLD}), "
                  f"{m['cell_updates']} cell updates in {m['engine_seconds']:.2f} s"
                  + (f" ({rate:,.0f} updates/s)" if rate else ""))
    for d in m["damage"]:
        lines.append(f"damage {d['spec']}: {d['cells']} cells wiped at step {d['step']}")
    if "swarm" in m:
        s = m["swarm"]
        lines.append(f"messages: {s['messages_sent']} sent, {s['messages_lost']} lost, "
                     f"{s['messages_delivered']} delivered; failures {s['failures']}, "
                     f"restarts {s['restarts']}")
    lines.append("wrote " + ", ".join(written) if written else "wrote no files (see --save-png, "
                                                                 "--save-strip, --save-state, --json)")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, simulate, write; every bad input is a one-line error (exit 2)."""
    a = _parser().parse_args(argv)
    _check_args(a)
    damage = [parse_damage(s) for s in a.damage]
    outputs = [(a.save_state, "--save-state"), (a.save_png, "--save-png"),
               (a.save_strip, "--save-strip"), (a.json, "--json")]
    seen: dict[str, str] = {}
    for path, flag in outputs:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise UserError(f"{seen[key]} and {flag} name the same file {path}")
        seen[key] = flag
        _check_output(path, flag)
    model, model_path = _load_model(a.model)
    target_name = a.target or model.meta.get("target") or DEFAULT_TARGET
    target = _load_target(target_name, from_meta=a.target is None and bool(model.meta.get("target")))
    config = AsyncConfig(
        mean_interval=2.0 if a.mean_interval is None else a.mean_interval,
        latency_kind=LATENCY_KINDS[a.latency_dist or "const"],
        latency=a.latency or 0.0, latency_high=a.latency_high or 0.0,
        loss=a.msg_loss or 0.0, mtbf=a.mtbf or 0.0, mttr=1.0 if a.mttr is None else a.mttr)
    frames = strip_steps(a.steps, damage) if a.save_strip else []
    r = simulate(model, engine=a.engine, steps=a.steps, size=a.size, seed=a.seed, rotate=a.rotate,
                 damage=damage, target=target, fire_rate=FIRE_RATE if a.fire_rate is None else a.fire_rate,
                 async_config=config, frame_steps=frames)
    r.metrics["target"] = str(target_name)
    r.metrics["model"] = model_path
    written: list[str] = []
    if a.save_state:
        _write(a.save_state, "--save-state",
               lambda p: atomic_write(p, lambda f: np.save(f, r.state, allow_pickle=False)))
        written.append(a.save_state)
    if a.save_png:
        from .render import save_png

        _write(a.save_png, "--save-png", lambda p: save_png(p, r.state))
        written.append(a.save_png)
    if a.save_strip:
        from .render import save_strip

        labels = [f"step {f.step}" + ("\ndamaged" if f.damaged else "") for f in r.frames]
        _write(a.save_strip, "--save-strip", lambda p: save_strip(p, [f.state for f in r.frames], labels))
        written.append(a.save_strip)
    if a.json:
        doc = dict(r.metrics, history=r.history,
                   files={flag.lstrip("-"): path for path, flag in outputs if path})
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
        _write(a.json, "--json", lambda p: atomic_write(p, lambda f: f.write(text), binary=False))
        written.append(a.json)
    print(_summary(r, model_path, written))
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
