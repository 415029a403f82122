"""The engines behind one interface, so that `sim.simulate`, `sim.live` and the
board mesh drive any of them alike:

  sync      the paper's synchronous grid (`sim.grid.SyncGrid`);
  lockstep  message-passing cells ticking together (`sim.lockstep.LockstepSwarm`),
            equal to `sync` bit for bit for the same seed and fire rate;
  async     event-driven cells with their own clocks, message latency and loss,
            failures and restarts (`sim.events.AsyncSwarm`); one step = one time unit;
  simpy     the same asynchronous swarm with every cell a SimPy process
            (`sim.swarm.SimPySwarm`), equal to `async` bit for bit; its cells can be
            computed by any backend (fixed point, firmware, boards), the async engine's
            by numba ones only (the float model and the fixed-point golden model).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cell_backends import CellBackend, FloatBackend
from .errors import UserError
from .events import AsyncSwarm
from .grid import SyncGrid
from .lockstep import LockstepSwarm
from .model import FIRE_RATE, seed_state
from .rules import AsyncConfig
from .spec import Params
from .swarm import SimPySwarm

ENGINES = ("sync", "lockstep", "async", "simpy", "mesh")
MESH_ENGINE = "mesh"                 # emulated boards wired to each other (boards.mesh, via sim.assemble)
EVENT_ENGINES = ("async", "simpy")   # own clocks and messages: take the AsyncConfig options
DEFAULT_ENGINE = "simpy"


class RunError(UserError, ValueError):
    """Arguments of a run that cannot work (a user error on the command line, a ValueError in code)."""


class Engine:
    """What every engine shares: nothing to inspect or release unless it says so."""

    swarm: Any = None    # the AsyncSwarm or SimPySwarm of an event engine
    backend = "float"    # the name of what computes the cells

    def metrics(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release what the engine opened (ports, emulators); simulate() always calls it."""


class SyncEngine(Engine):
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


class LockstepEngine(Engine):
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


class AsyncEngine(Engine):
    """Event-driven swarm; step s is time s, and advancing to s runs the events before s."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig,
                 cell: CellBackend | None = None):
        self.swarm = AsyncSwarm(state, params, seed, config, cell)
        self.backend = self.swarm.cell.name
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


class SimPyEngine(AsyncEngine):
    """Every cell a SimPy process; equals the async engine bit for bit (float backend).
    `cell` computes the cells (default: the float model); `realtime_factor` paces the
    clock to wall time (simpy.rt: seconds per time unit)."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig,
                 cell: CellBackend | None = None, realtime_factor: float | None = None):
        if realtime_factor is not None and not (math.isfinite(realtime_factor) and realtime_factor > 0):
            raise RunError(f"realtime factor must be > 0, got {realtime_factor}")
        cell = FloatBackend(params) if cell is None else cell
        self.backend = cell.name
        self.swarm = SimPySwarm(state, cell, seed, config, realtime_factor=realtime_factor)
        self._params = params


def make_engine(engine: str, state: np.ndarray, params: Params, seed: int, fire_rate: float = FIRE_RATE,
                config: AsyncConfig | None = None, cell: CellBackend | None = None) -> Engine:
    """One engine behind the interface simulate() and sim.live drive: advance(t), damage(mask),
    set_params(params), params, state, now, cell_updates, metrics(), close(), and swarm: the
    AsyncSwarm or SimPySwarm of an event engine (None for sync and lockstep). A cell
    backend other than the float model (`cell`) runs on the simpy engine, and on the
    async engine where it is numba code (the fixed-point golden model)."""
    config = config or AsyncConfig()
    if engine not in ENGINES:
        raise RunError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if cell is not None and cell.name != "float":
        numba = cell.compiled() is not None       # the async engine's loop can call it
        if engine != "simpy" and not (numba and engine == "async"):
            engines = "the async and simpy engines" if numba else "the simpy engine"
            raise RunError(f"the {cell.name} cell backend runs on {engines} only, not --engine {engine}")
    if engine == "sync":
        return SyncEngine(state, params, seed, fire_rate)
    if engine == "lockstep":
        return LockstepEngine(state, params, seed, fire_rate)
    if engine == "simpy":
        return SimPyEngine(state, params, seed, config, cell)
    if engine == MESH_ENGINE:
        raise RunError("the mesh engine runs emulated boards: sim.assemble.simulate puts it together")
    return AsyncEngine(state, params, seed, config, cell)


def warm_up(engine: str, params: Params, seed: int, fire_rate: float, config: AsyncConfig,
            height: int, width: int, cell: CellBackend | None = None) -> None:
    """Load (or compile) the numba code outside the timed loop, so updates/s measure the swarm.
    The sync grid picks serial or parallel kernels by size, hence the same-size grid there."""
    h, w = (height, width) if engine == "sync" else (3, 3)
    e = make_engine(engine, seed_state(h, w), params, seed, fire_rate, config, cell)
    e.advance(1)
    e.damage(np.zeros((h, w), bool))
