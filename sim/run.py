"""`python -m sim.run`: grow a swarm from one seed cell, damage it, measure it.

Engines (all start from `model.seed_state` and draw from the counter-based
generator, so a run is a pure function of its arguments; `simpy` is the
default, the issue's "realistic path", and equals `async` bit for bit):
  sync      the paper's synchronous grid (numba, `reference.SyncGrid`);
  lockstep  message-passing cells ticking together (`async_ref.LockstepSwarm`),
            equal to `sync` bit for bit for the same seed and fire rate;
  async     event-driven cells with their own clocks, message latency and loss,
            failures and restarts (`async_ref.AsyncSwarm`); one step = one time unit;
  simpy     the same asynchronous swarm with every cell a SimPy process
            (`swarm.SimPySwarm`), equal to `async` bit for bit.

The loop lives in `simulate()` so tests, benchmarks and `sim.sweep` call it
without the CLI; `main()` only parses, validates (one-line errors, exit 2) and
writes files (pictures, movies and plots through `sim.plots`, all atomic).
`--live` hands over to `sim.live` (an interactive window).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .async_ref import (CLOCK_EXPONENTIAL, CLOCK_PERIODIC, LAT_CONSTANT, LAT_EXPONENTIAL,
                        LAT_UNIFORM, AsyncConfig, AsyncSwarm, LockstepSwarm)
from .atomic import atomic_write
from .backends import backend_names, make_backend
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
DEFAULT_ENGINE = "simpy"
LATENCY_KINDS = {"const": LAT_CONSTANT, "uniform": LAT_UNIFORM, "exp": LAT_EXPONENTIAL}
CLOCKS = {"exp": CLOCK_EXPONENTIAL, "periodic": CLOCK_PERIODIC}
HISTORY_POINTS = 50      # history sampled about every steps/50 steps
STRIP_FRAMES = 8         # evenly spaced growth frames (damage times come on top)
MOVIE_FRAMES = 100       # default GIF/MP4 length: a frame about every steps/100 steps
MAX_SIZE = 4096
MAX_SEED = 2 ** 63 - 1


class RunError(UserError, ValueError):
    """Arguments of a run that cannot work (a user error on the command line, a ValueError in code)."""


@dataclass(frozen=True)
class Rotation:
    """A change of the perception's rotation to `deg` degrees (absolute) after `step` steps."""
    deg: float
    step: int

    def describe(self) -> str:
        d = int(self.deg) if float(self.deg).is_integer() else self.deg
        return f"{d}@{self.step}"


def parse_rotation(spec: str) -> Rotation:
    """Parse `DEG@STEP` (e.g. `90@200`); a RunError names what is wrong."""
    text = str(spec).strip()
    form = "expected DEG@STEP, e.g. 90@200 (rotate to 90 degrees after 200 steps)"
    if text.count("@") != 1:
        raise RunError(f"bad rotation {spec!r}: {form}")
    deg_text, step_text = (t.strip() for t in text.split("@"))
    try:
        deg = float(deg_text)
    except ValueError:
        raise RunError(f"bad rotation {spec!r}: DEG is not a number: {deg_text!r} ({form})") from None
    if not math.isfinite(deg):
        raise RunError(f"bad rotation {spec!r}: DEG must be finite ({form})")
    try:
        step = int(step_text)
    except ValueError:
        raise RunError(f"bad rotation {spec!r}: STEP must be an integer >= 0, got {step_text!r}") from None
    if step < 0:
        raise RunError(f"bad rotation {spec!r}: STEP must be >= 0, got {step}")
    return Rotation(deg, step)


# ---------------------------------------------------------------- engines
class _Engine:
    """What every engine shares: nothing to inspect or release unless it says so."""

    swarm: Any = None    # the AsyncSwarm or SimPySwarm of an event engine

    def metrics(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release what the engine opened (ports, emulators); simulate() always calls it."""


class _SyncEngine(_Engine):
    """The paper's synchronous grid; only cells near living ones are computed."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, fire_rate: float):
        self.grid = SyncGrid(state, params, seed, 0, fire_rate, skip_dead=True)

    def advance(self, t: float) -> None:
        """Run the whole steps up to time t (a fraction of a step waits for the next call)."""
        self.grid.run(int(math.floor(t)) - self.grid.step_count, count_updates=True)

    def damage(self, mask: np.ndarray) -> None:
        self.grid.x[0][mask] = 0.0

    def set_params(self, params: Params) -> None:
        self.grid.params = params

    @property
    def params(self) -> Params:
        return self.grid.params

    @property
    def now(self) -> float:
        return float(self.grid.step_count)

    @property
    def state(self) -> np.ndarray:
        return self.grid.state

    @property
    def cell_updates(self) -> int:
        return int(self.grid.cell_updates)


class _LockstepEngine(_Engine):
    """Message-passing cells at integer ticks; every fired cell runs its network."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, fire_rate: float):
        self.lock = LockstepSwarm(state, params, seed, 0, fire_rate)

    def advance(self, t: float) -> None:
        self.lock.run(int(math.floor(t)) - self.lock.step_count)

    def damage(self, mask: np.ndarray) -> None:
        self.lock.damage(mask)

    def set_params(self, params: Params) -> None:
        self.lock.params = params

    @property
    def params(self) -> Params:
        return self.lock.params

    @property
    def now(self) -> float:
        return float(self.lock.step_count)

    @property
    def state(self) -> np.ndarray:
        return self.lock.grid

    @property
    def cell_updates(self) -> int:
        return int(self.lock.cell_updates)


class _AsyncEngine(_Engine):
    """Event-driven swarm; step s is time s, and advancing to s runs the events before s."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig):
        self.swarm = AsyncSwarm(state, params, seed, config)
        self._params = params

    def advance(self, t: float) -> None:
        self.swarm.run(float(t))

    def damage(self, mask: np.ndarray) -> None:
        self.swarm.damage(mask)

    def set_params(self, params: Params) -> None:
        """Between two run() calls: the same as SimPySwarm.schedule_params at this time."""
        self.swarm.set_params(params)
        self._params = params

    @property
    def params(self) -> Params:
        return self._params

    @property
    def now(self) -> float:
        return float(self.swarm.now)

    @property
    def state(self) -> np.ndarray:
        return self.swarm.grid

    @property
    def cell_updates(self) -> int:
        return int(self.swarm.metrics()["cell_updates"])

    def metrics(self) -> dict[str, Any]:
        return {"swarm": self.swarm.metrics()}


class _SimPyEngine(_AsyncEngine):
    """Every cell a SimPy process; equals the async engine bit for bit (float backend)."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig,
                 backend: str = "float", cell: Any = None, realtime_factor: float | None = None):
        cell = make_backend(backend, params) if cell is None else cell
        self.swarm = SimPySwarm(state, cell, seed, config, realtime_factor=realtime_factor)
        self._params = params


def make_engine(engine: str, state: np.ndarray, params: Params, seed: int, fire_rate: float = FIRE_RATE,
                config: AsyncConfig | None = None, backend: str = "float"):
    """One engine behind the interface simulate() and sim.live drive: advance(t), damage(mask),
    set_params(params), params, state, now, cell_updates, metrics(), and swarm: the
    AsyncSwarm or SimPySwarm of an event engine (None for sync and lockstep). A cell
    backend other than "float" (sim.backends) runs on the SimPy engine only."""
    config = config or AsyncConfig()
    if backend != "float" and engine != "simpy":
        raise RunError(f"the {backend} cell backend runs on the simpy engine only, not --engine {engine}")
    if engine == "sync":
        return _SyncEngine(state, params, seed, fire_rate)
    if engine == "lockstep":
        return _LockstepEngine(state, params, seed, fire_rate)
    if engine == "simpy":
        return _SimPyEngine(state, params, seed, config, backend)
    return _AsyncEngine(state, params, seed, config)


class _BoardEngine(_SimPyEngine):
    """Hardware in the loop: the simpy engine whose cells at `boards` ({(x, y): URL,
    "emu:cortex-m0" | "emu:avr", or a codegen.board.Board}) run on boards over the
    cell link (codegen.board.BoardCells), the rest on `backend`; optionally paced to
    wall time (simpy.rt). close() ends the emulators and ports it opened."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig, backend: str,
                 boards: dict, realtime_factor: float | None, engine: str,
                 log: Callable[[str], None] | None = None):
        from codegen.board import Board, Emulator, board_cells

        if engine != "simpy":
            raise RunError(f"boards in the grid and --realtime need --engine simpy, not --engine {engine}")
        if realtime_factor is not None and not (math.isfinite(realtime_factor) and realtime_factor > 0):
            raise RunError(f"realtime factor must be > 0, got {realtime_factor}")
        h, w = state.shape[:2]
        self._opened: list[Any] = []
        cells = {}
        try:
            for (x, y), where in boards.items():
                if not (0 <= x < w and 0 <= y < h):
                    raise RunError(f"board cell ({x},{y}) is outside the {w}x{h} grid "
                                   f"(x = column 0..{w - 1}, y = row 0..{h - 1})")
                if isinstance(where, Board):
                    b = where
                else:
                    url = str(where)
                    if url.startswith("emu:"):
                        emu = Emulator(url[4:]).start()
                        self._opened.append(emu)
                        url = emu.url
                    b = Board(url, timeout=5.0)
                    self._opened.append(b)
                cells[y * w + x] = b
            base = make_backend(backend, params)
            self.backend = board_cells(params, cells, base=base, log=log) if cells else base
            super().__init__(state, params, seed, config, cell=self.backend, realtime_factor=realtime_factor)
        except BaseException:
            self.close()
            raise

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "boards": {"cells": len(getattr(self.backend, "boards", {})),
                                                "requests": getattr(self.backend, "calls", 0)}}

    def close(self) -> None:
        """Close the ports and stop the emulators (each once, however often it is called)."""
        opened, self._opened = self._opened, []
        for o in reversed(opened):
            o.close()


def _warm_up(engine: str, params: Params, seed: int, fire_rate: float, config: AsyncConfig,
             height: int, width: int, backend: str = "float") -> None:
    """Load (or compile) the numba code outside the timed loop, so updates/s measure the swarm.
    The sync grid picks serial or parallel kernels by size, hence the same-size grid there."""
    h, w = (height, width) if engine == "sync" else (3, 3)
    e = make_engine(engine, seed_state(h, w), params, seed, fire_rate, config, backend)
    e.advance(1)
    e.damage(np.zeros((h, w), bool))


# ---------------------------------------------------------------- simulate
@dataclass
class Frame:
    """A snapshot for the growth strip and movies; `damaged` when damage was applied just
    before it, `rotated` the new angle when the rotation changed just before it."""
    step: int
    state: np.ndarray
    damaged: bool = False
    rotated: float | None = None

    def label(self) -> str:
        """`step N`, with a second line for what happened just before."""
        notes = (["damaged"] if self.damaged else []) + (
            [f"rotated {self.rotated:g} deg"] if self.rotated is not None else [])
        return f"step {self.step}" + ("\n" + ", ".join(notes) if notes else "")


@dataclass
class Result:
    """Outcome of `simulate`: final state (H, W, 16) float32, sampled history, metrics, frames.
    `swarm` is the event engines' AsyncSwarm or SimPySwarm (None for sync and lockstep), kept
    so that plots can redraw its clocks' and links' random numbers (`sim.plots`)."""
    state: np.ndarray
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    frames: list[Frame] = field(default_factory=list)
    swarm: Any = field(default=None, repr=False, compare=False)

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


def strip_steps(steps: int, damage: Sequence[Damage] = (), frames: int = STRIP_FRAMES,
                extra: Iterable[int] = ()) -> list[int]:
    """About `frames` evenly spaced steps from 0 to steps, plus every damage step (and `extra`,
    e.g. the rotation changes), so the strip shows each event's effect."""
    even = {int(round(v)) for v in np.linspace(0, steps, frames)} if steps > 0 else {0}
    return sorted(even | {d.step for d in damage if d.step <= steps} | {s for s in extra if 0 <= s <= steps})


def movie_steps(steps: int, every: int | None = None) -> list[int]:
    """Frame steps of a GIF/MP4: 0, every, 2*every, ... and the last step (default every:
    about steps/100, so a movie has about 100 frames whatever the run's length)."""
    every = max(1, steps // MOVIE_FRAMES) if every is None else int(every)
    if every < 1:
        raise RunError(f"frame interval must be >= 1, got {every}")
    return sorted(set(range(0, steps + 1, every)) | {steps})


def _latency_name(kind: int) -> str:
    return {v: k for k, v in LATENCY_KINDS.items()}[kind]


def _clock_name(kind: int) -> str:
    return {v: k for k, v in CLOCKS.items()}[kind]


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


def message_metrics(swarm_metrics: dict[str, Any]) -> dict[str, Any]:
    """The link numbers of an event engine's run, named for readers of the JSON: messages
    sent, lost (by the link), delivered, dropped (receiver failed), still in flight at the
    end, the mean delay of the delivered ones, and the mean inbox staleness (age of the
    neighbour states a cell computed with; measured by the simpy engine only, else None)."""
    s = swarm_metrics
    sent, lost = int(s["messages_sent"]), int(s["messages_lost"])
    delivered, dropped = int(s["messages_delivered"]), int(s["messages_dropped"])
    return {"sent": sent, "lost": lost, "delivered": delivered, "dropped": dropped,
            "in_flight": sent - lost - delivered - dropped,
            "mean_delay": float(s["mean_message_delay"]),
            "mean_inbox_staleness": s.get("mean_inbox_staleness")}


def simulate(model: Model | Params, engine: str = DEFAULT_ENGINE, steps: int = 1000, size: int = 40,
             seed: int = 0, rotate: float = 0.0, damage: Iterable[Damage | str] = (),
             target: str | os.PathLike | np.ndarray | None = None, fire_rate: float = FIRE_RATE,
             async_config: AsyncConfig | None = None, history_every: int | None = None,
             frame_steps: Iterable[int] = (), state: np.ndarray | None = None,
             warm_up: bool = True, rotations: Iterable[Rotation | str] = (),
             progress: Callable[[int], None] | None = None, backend: str = "float",
             boards: dict | None = None, realtime_factor: float | None = None,
             log: Callable[[str], None] | None = None) -> Result:
    """Run one swarm for `steps` steps from the seed (or `state`) and measure it.

    Damage d is applied when the run reaches d.step (after d.step steps; sync and
    lockstep between steps, async after the events before time d.step). A rotation
    change r sets the perception's angle to r.deg at r.step the same way (what
    SimPySwarm.schedule_params does; damage first when both fall on one step). The loss
    is the paper's MSE against `target` (a name, an image path or an RGBA array,
    centred on the grid); history holds {step, loss, alive} about every steps/50
    steps. `model` may be ready Params (kept with their own rotation unless `rotate`
    is non-zero). `progress(step)` is called at each sampled step. Arguments that
    cannot work raise RunError before anything runs.

    Hardware in the loop: `boards` maps (x, y) cells to boards (a pyserial URL or
    device, "emu:cortex-m0" / "emu:avr" for an emulated board started here, or a
    codegen.board.Board); those cells run on their boards over the cell link and the
    others on `backend` ("fixed" makes the run equal to an all-fixed-point one bit for
    bit); simpy engine only. A board that lacks the model's genome is flashed first.
    `realtime_factor` paces the SimPy clock (simpy.rt: seconds of wall time per time unit).
    """
    if engine not in ENGINES:
        raise RunError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if backend not in backend_names():
        raise RunError(f"unknown cell backend {backend!r}; choose one of {', '.join(backend_names())}")
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
    rotations = [r if isinstance(r, Rotation) else parse_rotation(r) for r in rotations]
    masks = []
    for d in damage:
        if d.step > steps:
            raise RunError(f"damage {d.describe()} happens after the end of the run ({steps} steps)")
        m = d.mask(height, width)
        if not m.any():
            raise RunError(f"damage {d.describe()} covers no cell of the {width}x{height} grid "
                           f"(coordinates are cells: x = column 0..{width - 1}, y = row 0..{height - 1})")
        masks.append(m)
    for r in rotations:
        if r.step > steps:
            raise RunError(f"rotation {r.describe()} happens after the end of the run ({steps} steps)")
    tgt, target_name = _resolve_target(target, height, width)
    hist = _history_steps(steps, history_every)
    frames_at = {s for s in frame_steps if 0 <= s <= steps}
    checkpoints = sorted(set(hist) | frames_at | {d.step for d in damage} | {r.step for r in rotations})
    hist_set = set(hist)

    if boards or realtime_factor is not None:
        eng = _BoardEngine(x0, params, seed, config, backend, boards or {}, realtime_factor, engine, log)
    else:
        if warm_up:
            _warm_up(engine, params, seed, fire_rate, config, height, width, backend)
        eng = make_engine(engine, x0, params, seed, fire_rate, config, backend)
    history: list[dict[str, Any]] = []
    frames: list[Frame] = []
    damage_log: list[dict[str, Any]] = []
    rotation_log: list[dict[str, Any]] = []
    engine_seconds = 0.0
    t0 = time.perf_counter()
    try:
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
            turned = None
            for r in rotations:          # the last one given for a step wins
                if r.step == s:
                    eng.set_params(params.rotated(r.deg))
                    rotation_log.append({"spec": r.describe(), "step": s, "deg": float(r.deg)})
                    turned = float(r.deg)
            x = eng.state
            if s in hist_set:
                loss = _finite(loss_vs(x, tgt)) if tgt is not None else None
                history.append({"step": s, "loss": loss, "alive": alive_cells(x)})
            if s in frames_at:
                frames.append(Frame(s, x.copy(), hit, turned))
            if progress is not None:
                progress(s)
        wall = time.perf_counter() - t0
        final = np.array(eng.state, np.float32)
        updates = eng.cell_updates
        metrics: dict[str, Any] = {
            "engine": engine,
            "backend": backend,
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
            "rotations": rotation_log,
        }
        if engine in EVENT_ENGINES:
            metrics["async_config"] = {
                "clock": _clock_name(config.clock), "mean_interval": config.mean_interval,
                "jitter": config.jitter, "drift": config.drift,
                "latency_dist": _latency_name(config.latency_kind),
                "latency": config.latency, "latency_high": config.latency_high, "msg_loss": config.loss,
                "mtbf": config.mtbf, "mttr": config.mttr}
        else:
            metrics["fire_rate"] = float(fire_rate)
        metrics.update(eng.metrics())
        if "swarm" in metrics:
            metrics["messages"] = message_metrics(metrics["swarm"])
    finally:
        eng.close()      # the ports and emulators a board engine opened, even when a step or metric raises
    return Result(final, history, metrics, frames, eng.swarm)


# ---------------------------------------------------------------- progress
class Progress:
    """One self-rewriting stderr line for long runs: a bar, steps done, rate, ETA.

    Only drawn where a person watches (a tty) unless forced (`--progress`): redirected
    stderr stays clean for scripts and logs. Redraws at most every `min_interval` seconds."""

    def __init__(self, total: float, unit: str = "steps", stream: IO[str] | None = None,
                 width: int = 24, min_interval: float = 0.2):
        self.total = max(float(total), 0.0)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.start = time.perf_counter()
        self._last = -math.inf
        self._shown = 0
        self._drawn: float | None = None
        self.done = 0.0

    @staticmethod
    def wanted(flag: bool | None, stream: IO[str] | None = None) -> bool:
        """--progress / --no-progress if given, else whether the stream is a terminal."""
        if flag is not None:
            return flag
        s = stream if stream is not None else sys.stderr
        try:
            return s.isatty()
        except (AttributeError, ValueError):
            return False

    def line(self, done: float, elapsed: float) -> str:
        """The text for `done` units after `elapsed` seconds (pure, for tests)."""
        frac = min(1.0, done / self.total) if self.total > 0 else 1.0
        fill = int(frac * self.width)
        rate = done / elapsed if elapsed > 0 else 0.0
        if frac >= 1.0:
            tail = f"in {_clock(elapsed)}"
        elif rate > 0:
            tail = f"ETA {_clock((self.total - done) / rate)}"
        else:
            tail = "ETA --:--"
        return (f"[{'#' * fill}{'-' * (self.width - fill)}] {done:g}/{self.total:g} {self.unit}  "
                f"{rate:,.1f} {self.unit}/s  {tail}")

    def update(self, done: float, force: bool = False) -> None:
        self.done = float(done)
        now = time.perf_counter()
        if self._drawn is None and done == 0:    # the clock starts with the work (not the set-up)
            self.start = now
        if not force and now - self._last < self.min_interval and done < self.total:
            return
        self._last = now
        text = self.line(self.done, now - self.start)
        pad = " " * max(0, self._shown - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._shown = len(text)
        self._drawn = self.done

    def close(self) -> None:
        """Draw the final state (unless just drawn) and end the line."""
        if self._drawn != self.done:
            self.update(self.done, force=True)
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------- command line
ASYNC_ONLY = ("latency", "latency_dist", "latency_high", "msg_loss", "mtbf", "mttr", "mean_interval",
              "clock", "jitter", "drift")
GRID_ONLY = ("fire_rate",)   # sync and lockstep
NOT_LIVE = ("damage", "rotate_at", "save_png", "save_strip", "save_state", "json", "save_gif",
            "save_mp4", "save_plots")


def _parser() -> ArgParser:
    ap = ArgParser(
        prog=PROG, allow_abbrev=False,
        description="Grow a swarm of NCA cells from one seed cell; damage it and watch it regrow. "
                    "Prints the final loss against the target, the living cells and the update "
                    "rate; writes pictures, movies, plots, the final state and JSON metrics on "
                    "request, or opens an interactive window (--live).",
        epilog=f"Damage specs (cells: x = column, y = row, (0,0) top-left): {DAMAGE_FORMS}. "
               "Damage at STEP happens after STEP steps. Example: "
               "python -m sim.run --steps 400 "
               "--damage circle:20,20,8@200 --save-strip regrow.png --save-gif regrow.gif")
    ap.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                    help="simpy: every cell a SimPy process with its own clock, messages with "
                         "latency and loss, failures; async: the same swarm as a numba event loop "
                         "(faster, equal to simpy bit for bit); sync: the paper's synchronous grid; "
                         "lockstep: message-passing cells ticking together (equals sync) "
                         "(default: %(default)s)")
    ap.add_argument("--backend", default="float",
                    help="what computes a cell (simpy engine): float, fixed (the firmware's integer "
                         "arithmetic, codegen's golden model), firmware (the generated C, built for "
                         "this machine and called through ctypes) (default: %(default)s)")
    ap.add_argument("--model", help=f"weights .npz (default: {_show(DEFAULT_MODEL)}; "
                                    "nca-convert makes one from a published model)")
    ap.add_argument("--target", help="target name (lizard, ...) or image path for the loss "
                                     "(default: the model's recorded target, else lizard)")
    ap.add_argument("--size", type=int, default=40, help="grid is N x N cells (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1000, help="steps (event engines: time units) to run "
                                                            "(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    ap.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                    help="rotate the perception's gradient kernels by DEG degrees (experiment 4)")
    ap.add_argument("--rotate-at", action="append", default=[], metavar="DEG@STEP",
                    help="set the rotation to DEG degrees after STEP steps, e.g. 90@300 (repeatable)")
    ap.add_argument("--damage", action="append", default=[], metavar="SPEC",
                    help="wipe cells, e.g. circle:20,20,8@200 (repeatable; see below)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress line on stderr (default: only when stderr is a terminal)")
    g = ap.add_argument_group("sync and lockstep engines")
    g.add_argument("--fire-rate", type=float, help=f"probability that a cell updates in a step "
                                                   f"(default: {FIRE_RATE})")
    g = ap.add_argument_group("event engines (simpy, async): clocks, links, failures")
    g.add_argument("--clock", choices=tuple(CLOCKS), help="exp: exponential wake-up intervals; "
                   "periodic: a fixed period (--mean-interval) with --jitter and --drift, each cell "
                   "starting at a random phase (default: exp)")
    g.add_argument("--mean-interval", type=float, help="mean wake-up interval of a cell in steps "
                                                       "(periodic: the period; default: 2, i.e. fire rate 0.5)")
    g.add_argument("--jitter", type=float, help="periodic clock: each interval +- a uniform jitter "
                                                "of up to this many steps (default: 0)")
    g.add_argument("--drift", type=float, help="periodic clock: each cell's rate off by up to +- "
                                               "this fraction, e.g. 0.01 = 1%% (default: 0)")
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
    g = ap.add_argument_group("hardware in the loop (simpy engine)")
    g.add_argument("--board", action="append", default=[], metavar="X,Y=URL",
                   help="cell (X,Y) runs on a board over the cell link (repeatable): a pyserial URL or "
                        "device (socket://HOST:PORT, /dev/ttyACM0), or emu:cortex-m0 / emu:avr for an "
                        "emulated board started for the run; the other cells run --backend (fixed: "
                        "equal to an all-fixed-point run), and a board without the model's genome is "
                        "flashed first")
    g.add_argument("--realtime", type=float, metavar="FACTOR",
                   help="pace the SimPy clock to wall time (simpy.rt): FACTOR seconds per time unit")
    g = ap.add_argument_group("output")
    g.add_argument("--save-png", metavar="FILE", help="picture of the final state")
    g.add_argument("--save-strip", metavar="FILE", help="growth strip: ~8 evenly spaced steps plus "
                                                        "the damage and rotation steps")
    g.add_argument("--save-gif", metavar="FILE.gif", help="animated GIF of the run")
    g.add_argument("--save-mp4", metavar="FILE.mp4", help="MP4 video of the run (needs ffmpeg)")
    g.add_argument("--frame-every", type=int, metavar="K", help="GIF/MP4: a frame every K steps "
                                                                "(default: about 100 frames)")
    g.add_argument("--fps", type=float, default=20.0, help="GIF/MP4 frames per second (default: %(default)s)")
    g.add_argument("--save-plots", metavar="DIR", help="plots into DIR: loss.png (loss vs target and "
                   "alive cells over time); event engines also wakeups.png (wake-up intervals) and "
                   "messages.png (message delays; lost, delivered, dropped)")
    g.add_argument("--save-state", metavar="FILE.npy", help="final state, H x W x 16 float32 .npy")
    g.add_argument("--json", metavar="FILE", help="metrics (messages sent, lost, staleness, ...) and the "
                                                  "{step, loss, alive} history")
    g = ap.add_argument_group("interactive window")
    g.add_argument("--live", action="store_true", help="watch the swarm in a window: click to cut a "
                   "circle out, sliders for rotation, speed and cut radius, pause, model choice "
                   "(the .npz files in weights/); --steps is ignored")
    g.add_argument("--live-radius", type=float, default=5.0, metavar="R",
                   help="radius in cells of the circle a click cuts out (default: %(default)s)")
    g.add_argument("--live-speed", type=float, default=2.0, metavar="T",
                   help="steps (time units) the swarm advances per frame (default: %(default)s)")
    g.add_argument("--live-frames", type=int, metavar="N", help="close the window after N frames")
    g.add_argument("--live-screenshot", metavar="FILE.png", help="save the window as a picture "
                   "after --live-frames frames (default 30) and exit; works without a display too")
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
                 "mtbf", "mttr", "jitter", "drift", "fps", "live_radius", "live_speed"):
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
    for dest in ("jitter", "drift"):
        if getattr(a, dest) is not None:
            need(a.clock == "periodic", f"{_flag(dest)} needs --clock periodic (the exponential "
                                        f"clock is random already)")
    if a.clock == "periodic":
        period = 2.0 if a.mean_interval is None else a.mean_interval
        drift, jitter = a.drift or 0.0, a.jitter or 0.0
        need(0.0 <= drift < 1.0, f"--drift must be within [0, 1), got {drift}")
        need(0.0 <= jitter < period * (1.0 - drift),
             f"--jitter must be >= 0 and < period x (1 - drift) = {period * (1.0 - drift):g} "
             f"(an interval must stay positive), got {jitter}")
    need(a.fps > 0, f"--fps must be > 0, got {a.fps}")
    if a.board or a.realtime is not None:
        need(a.engine == "simpy", f"--board and --realtime need --engine simpy, not --engine {a.engine}")
        need(not a.live, "--board and --realtime cannot be combined with --live")
    if a.realtime is not None:
        need(math.isfinite(a.realtime) and a.realtime > 0, f"--realtime must be > 0, got {a.realtime}")
    if a.frame_every is not None:
        need(a.frame_every >= 1, f"--frame-every must be an integer >= 1, got {a.frame_every}")
        need(bool(a.save_gif or a.save_mp4), "--frame-every needs --save-gif or --save-mp4")
    need(a.live_radius > 0, f"--live-radius must be > 0, got {a.live_radius}")
    need(a.live_speed > 0, f"--live-speed must be > 0, got {a.live_speed}")
    if a.live_frames is not None:
        need(a.live_frames >= 1, f"--live-frames must be an integer >= 1, got {a.live_frames}")
    for dest in ("live_frames", "live_screenshot"):
        if getattr(a, dest) is not None:
            need(a.live, f"{_flag(dest)} needs --live")
    if a.live:
        for dest in NOT_LIVE:
            v = getattr(a, dest)
            need(not v, f"{_flag(dest)} cannot be combined with --live (in the window: click to "
                        f"cut, the slider rotates; --live-screenshot saves a picture)")


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
    _check_parent(p.parent if str(p.parent) else Path("."), path, flag)


def _check_parent(anc: Path, path: str, flag: str) -> None:
    while not anc.exists():
        if anc.is_symlink() or anc == anc.parent:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise UserError(f"{flag} {path}: cannot write there ({anc} is not a directory)")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write there (no write permission in {anc})")


def _check_output_dir(path: str, flag: str) -> None:
    """A folder for several outputs: an existing folder or one that can be made."""
    p = Path(os.path.realpath(path))
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path}: not a directory")
    _check_parent(p, path, flag)


def _write(path: str, flag: str, writer) -> None:
    """Write through symlinks (the rename then replaces the file the link points to, not the link)."""
    try:
        writer(os.path.realpath(path))
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def load_model(path: str | None) -> tuple[Model, str]:
    """The model at `path`, or the default model with a one-line error saying what to do
    when it is not there; returns (model, the path used). Shared by sim.live and sim.sweep."""
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



def load_target_for(model: Model, name: str | None) -> tuple[np.ndarray, str]:
    """The target picture a run measures against: `name` (a --target), else the model's
    recorded target, else lizard; returns (RGBA array, the name used)."""
    from .targets import TargetError, load_target

    target_name = name or model.meta.get("target") or DEFAULT_TARGET
    try:
        return load_target(target_name), str(target_name)
    except TargetError as e:
        if name is None and model.meta.get("target"):
            raise TargetError(f"{e} (the model's recorded target; choose another with --target)") from None
        raise


def async_config_from(a: argparse.Namespace) -> AsyncConfig:
    """The AsyncConfig of parsed event-engine options (defaults where not given)."""
    return AsyncConfig(
        clock=CLOCKS[a.clock or "exp"],
        mean_interval=2.0 if a.mean_interval is None else a.mean_interval,
        jitter=a.jitter or 0.0, drift=a.drift or 0.0,
        latency_kind=LATENCY_KINDS[a.latency_dist or "const"],
        latency=a.latency or 0.0, latency_high=a.latency_high or 0.0,
        loss=a.msg_loss or 0.0, mtbf=a.mtbf or 0.0, mttr=1.0 if a.mttr is None else a.mttr)


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
    for t in m["rotations"]:
        lines.append(f"rotation set to {t['deg']:g} degrees at step {t['step']}")
    if "swarm" in m:
        s, msg = m["swarm"], m["messages"]
        stale = msg["mean_inbox_staleness"]
        lines.append(f"messages: {msg['sent']} sent, {msg['lost']} lost, {msg['delivered']} delivered "
                     f"(mean delay {msg['mean_delay']:.3g})"
                     + (f", mean inbox staleness {stale:.3g}" if stale is not None else "")
                     + f"; failures {s['failures']}, restarts {s['restarts']}")
    lines.append("wrote " + ", ".join(written) if written else "wrote no files (see --save-png, "
                 "--save-strip, --save-gif, --save-plots, --save-state, --json)")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, simulate, write; every bad input is a one-line error (exit 2)."""
    a = _parser().parse_args(argv)
    _check_args(a)
    damage = [parse_damage(s) for s in a.damage]
    rotations = [parse_rotation(s) for s in a.rotate_at]
    outputs = [(a.save_state, "--save-state"), (a.save_png, "--save-png"),
               (a.save_strip, "--save-strip"), (a.save_gif, "--save-gif"),
               (a.save_mp4, "--save-mp4"), (a.json, "--json"), (a.live_screenshot, "--live-screenshot")]
    seen: dict[str, str] = {}
    for path, flag in outputs + [(a.save_plots, "--save-plots")]:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise UserError(f"{seen[key]} and {flag} name the same file {path}")
        seen[key] = flag
        if flag == "--save-plots":
            _check_output_dir(path, flag)
        else:
            _check_output(path, flag)
    if a.save_mp4:
        from .plots import require_ffmpeg

        require_ffmpeg()
    boards = {}
    if a.board:
        from codegen.board import parse_board_spec

        for spec in a.board:
            x, y, url = parse_board_spec(spec)
            if (x, y) in boards:
                raise UserError(f"--board: cell ({x},{y}) is given twice")
            boards[(x, y)] = url
    model, model_path = load_model(a.model)
    target, target_name = load_target_for(model, a.target)
    config = async_config_from(a)
    if a.live:
        from .live import run_live

        return run_live(model, model_path, engine=a.engine, size=a.size, seed=a.seed, rotate=a.rotate,
                        fire_rate=FIRE_RATE if a.fire_rate is None else a.fire_rate, config=config,
                        target=target, radius=a.live_radius, speed=a.live_speed, frames=a.live_frames,
                        screenshot=a.live_screenshot)
    strip = set(strip_steps(a.steps, damage, extra=[r.step for r in rotations])) if a.save_strip else set()
    movie_at = set(movie_steps(a.steps, a.frame_every)) if (a.save_gif or a.save_mp4) else set()
    bar = None
    if Progress.wanted(a.progress):
        bar = Progress(a.steps, "steps" if a.engine not in EVENT_ENGINES else "time units")
    try:
        r = simulate(model, engine=a.engine, steps=a.steps, size=a.size, seed=a.seed, rotate=a.rotate,
                     damage=damage, target=target,
                     fire_rate=FIRE_RATE if a.fire_rate is None else a.fire_rate,
                     async_config=config, frame_steps=strip | movie_at, rotations=rotations,
                     progress=bar.update if bar else None, backend=a.backend,
                     boards=boards or None, realtime_factor=a.realtime,
                     log=lambda m: print(m, file=sys.stderr))
    finally:
        if bar:
            bar.close()
    r.metrics["target"] = target_name
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

        fr = [f for f in r.frames if f.step in strip]
        _write(a.save_strip, "--save-strip", lambda p: save_strip(p, [f.state for f in fr],
                                                                    [f.label() for f in fr]))
        written.append(a.save_strip)
    movie_frames = [f for f in r.frames if f.step in movie_at]
    movie = ([f.state for f in movie_frames], [f.label() for f in movie_frames])
    if a.save_gif:
        from .plots import save_gif

        _write(a.save_gif, "--save-gif", lambda p: save_gif(p, *movie, fps=a.fps))
        written.append(a.save_gif)
    if a.save_mp4:
        from .plots import save_mp4

        _write(a.save_mp4, "--save-mp4", lambda p: save_mp4(p, *movie, fps=a.fps))
        written.append(a.save_mp4)
    plot_files: list[str] = []
    if a.save_plots:
        from .plots import save_plots

        def plots(folder: str) -> None:
            plot_files.extend(str(Path(a.save_plots) / q.name) for q in save_plots(folder, r))

        _write(a.save_plots, "--save-plots", plots)
        written.extend(plot_files)
    if a.json:
        files = {flag.lstrip("-"): path for path, flag in outputs if path}
        if plot_files:
            files["save-plots"] = plot_files
        doc = dict(r.metrics, history=r.history, files=files)
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
        _write(a.json, "--json", lambda p: atomic_write(p, lambda f: f.write(text), binary=False))
        written.append(a.json)
    print(_summary(r, model_path, written))
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
