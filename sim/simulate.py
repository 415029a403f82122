"""`simulate()`: grow one swarm from the seed (or a given state), damage it, turn
its perception, and measure it (loss against a target picture, living cells,
update rate, the engine's own metrics). Tests, benchmarks, `sim.sweep` and the
`python -m sim.run` command line all call it; it writes no files.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cell_backends import BackendFactory
from .damage import Damage, parse_damage
from .engines import DEFAULT_ENGINE, ENGINES, EVENT_ENGINES, Engine, RunError, make_engine
from .engines import warm_up as warm_up_engine
from .model import ALIVE_THRESHOLD, ALPHA, CHANNELS, FIRE_RATE, seed_state
from .pictures import fit_target, load_target
from .rules import CLOCKS, LATENCY_KINDS, LINKS, LINKS_DIRECT, AsyncConfig
from .spec import Params
from .weights import Model

HISTORY_POINTS = 50      # history sampled about every steps/50 steps
STRIP_FRAMES = 8         # evenly spaced growth frames (damage times come on top)
MOVIE_FRAMES = 100       # default GIF/MP4 length: a frame about every steps/100 steps
MAX_SIZE = 4096
MAX_SEED = 2 ** 63 - 1

EngineFactory = Callable[[np.ndarray, Params, int, AsyncConfig], Engine]


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


def regrowth_mse(state: np.ndarray, before: np.ndarray) -> float:
    """How far a regrown pattern is from the one that was cut: MSE over H, W and the 4
    RGBA channels between `state` and the state just before the first damage."""
    return loss_vs(state, np.asarray(before)[..., :4])


def shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`a` moved by (dy, dx) cells on its grid, zeros coming in at the edges (no wrap)."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def regrowth_shift(state: np.ndarray, before: np.ndarray, reach: int = 2) -> dict[str, float | int]:
    """Whether a regrown pattern came back whole but elsewhere: the whole-grid move (dy, dx),
    each within +-reach cells, that brings `state` closest to the pattern before the cut, and
    the RGBA MSE left after it. (dy, dx) = (1, 0) means the pattern came back one row higher."""
    a = np.asarray(state, np.float64)[..., :4]
    b = np.asarray(before, np.float64)[..., :4]
    best = min(((float(np.mean((shifted(a, dy, dx) - b) ** 2)), dy, dx)
                for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)),
               key=lambda t: (t[0], abs(t[1]) + abs(t[2])))
    return {"dy": best[1], "dx": best[2], "mse": best[0]}


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


def _links_name(kind: int) -> str:
    return {v: k for k, v in LINKS.items()}[kind]


def _resolve_target(target: Any, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
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
             progress: Callable[[int], None] | None = None, cell: BackendFactory | None = None,
             engine_factory: EngineFactory | None = None) -> Result:
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

    `cell` builds the backend that computes the cells from the run's Params (simpy
    engine, or async for numba backends; default the float model). `engine_factory(state, params, seed, config)`
    replaces the engine named by `engine` (e.g. boards in the grid, `sim.assemble`);
    simulate() closes what it returns, whatever happens.
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
    elif config.links != LINKS_DIRECT:
        raise RunError(f"relay links need an event engine (async, simpy), not the {engine} engine "
                       f"(its cells exchange no messages)")
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

    if engine_factory is not None:
        eng = engine_factory(x0, params, seed, config)
    else:
        if warm_up:
            warm_up_engine(engine, params, seed, fire_rate, config, height, width,
                           cell(params, None) if cell else None)
        eng = make_engine(engine, x0, params, seed, fire_rate, config, cell(params, None) if cell else None)
    history: list[dict[str, Any]] = []
    frames: list[Frame] = []
    damage_log: list[dict[str, Any]] = []
    rotation_log: list[dict[str, Any]] = []
    engine_seconds = 0.0
    before_cut: np.ndarray | None = None
    t0 = time.perf_counter()
    try:
        for s in checkpoints:
            te = time.perf_counter()
            eng.advance(s)
            engine_seconds += time.perf_counter() - te
            hit = False
            for d, m in zip(damage, masks):
                if d.step == s:
                    if before_cut is None:       # the pattern the regrowth is measured against
                        before_cut = np.array(eng.state, np.float32)
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
            "backend": eng.backend,
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
            "regrowth_mse": None if before_cut is None else _finite(regrowth_mse(final, before_cut)),
            "regrowth_shift": None if before_cut is None or not np.all(np.isfinite(final))
            else regrowth_shift(final, before_cut),
        }
        if engine in EVENT_ENGINES:
            metrics["async_config"] = {
                "clock": _clock_name(config.clock), "mean_interval": config.mean_interval,
                "jitter": config.jitter, "drift": config.drift,
                "latency_dist": _latency_name(config.latency_kind),
                "latency": config.latency, "latency_high": config.latency_high, "msg_loss": config.loss,
                "burst": config.burst, "mtbf": config.mtbf, "mttr": config.mttr,
                "links": _links_name(config.links)}
        else:
            metrics["fire_rate"] = float(fire_rate)
        metrics.update(eng.metrics())
        if "swarm" in metrics:
            metrics["messages"] = message_metrics(metrics["swarm"])
    finally:
        eng.close()      # the ports and emulators a board engine opened, even when a step or metric raises
    return Result(final, history, metrics, frames, eng.swarm)
