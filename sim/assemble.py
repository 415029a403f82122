"""A run put together from names: the cell backends (the float model here; the
fixed-point golden model and the generated C from `codegen`) and boards in the
grid (`boards`). The command line (`sim.run`) composes through this module, the
one place that knows every package; the engines below it know none of them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from boards.mesh import MeshConfig, MeshEngine
from boards.swarm import BoardEngine
from codegen.fixed_cells import fixed_backend
from codegen.host_cells import firmware_backend

from .cell_backends import (
    BackendError,
    BackendFactory,
    CellBackend,
    ModelLike,
    float_backend,
)
from .engines import DEFAULT_ENGINE, MESH_ENGINE, RunError
from .rules import AsyncConfig
from .simulate import Result
from .simulate import simulate as simulate_with
from .spec import Params
from .weights import Model

BACKENDS: dict[str, BackendFactory] = {
    "float": float_backend,
    "fixed": fixed_backend,        # the firmware's integer arithmetic (codegen.golden)
    "firmware": firmware_backend,  # the generated C, built for this machine, through ctypes
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Give a new cell backend a name (`--backend NAME`, `make_backend(NAME, ...)`)."""
    BACKENDS[name] = factory


def backend_names() -> tuple[str, ...]:
    return tuple(sorted(BACKENDS))


def make_backend(name: str, model: ModelLike, angle: float | None = None) -> CellBackend:
    """The backend called `name` for a model (Model or Params) at a rotation angle
    (None: a Params' own rotation, 0 for a Model)."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown cell backend {name!r}; known: {', '.join(backend_names())}") from None
    return factory(model, angle)


def simulate(model: Model | Params, engine: str = DEFAULT_ENGINE, *, backend: str = "float",
             boards: dict | None = None, realtime_factor: float | None = None,
             log: Callable[[str], None] | None = None, mesh: MeshConfig | None = None, **kw: Any) -> Result:
    """`sim.simulate.simulate` with the cells computed by the backend named `backend`
    (simpy engine for any but "float") and, with `boards`, hardware in the loop: `boards`
    maps (x, y) cells to boards (a pyserial URL or device, "emu:cortex-m0" / "emu:avr"
    for an emulated board started here, or a boards.client.Board); those cells run on
    their boards over the cell link and the others on `backend` ("fixed" makes the run
    equal to an all-fixed-point one bit for bit). A board that lacks the model's genome
    is flashed first. `realtime_factor` paces the SimPy clock (seconds per time unit).
    engine "mesh": the grid of emulated boards wired to each other (boards.mesh), as
    `mesh` configures it, with the clock of `async_config`."""
    if engine == MESH_ENGINE:
        if backend != "float" or boards or realtime_factor is not None:
            raise RunError("the mesh engine's cells are its boards: no --backend, --board or --realtime")
        base = mesh or MeshConfig()

        def mesh_engine(state: np.ndarray, params: Params, seed: int, config: AsyncConfig) -> MeshEngine:
            if config.drift:
                raise RunError("the mesh's boards drift by their own clocks (--clock-ppm), not --drift")
            cfg = replace(base, clock=config.clock, mean_interval=config.mean_interval, jitter=config.jitter)
            return MeshEngine(state, params, seed, cfg)

        return simulate_with(model, engine, engine_factory=mesh_engine, **kw)
    if backend not in BACKENDS:
        raise RunError(f"unknown cell backend {backend!r}; choose one of {', '.join(backend_names())}")
    factory = BACKENDS[backend]
    cell = None if backend == "float" else factory
    if not boards and realtime_factor is None:
        return simulate_with(model, engine, cell=cell, **kw)
    if engine != "simpy":
        raise RunError(f"boards in the grid and --realtime need --engine simpy, not --engine {engine}")

    def board_engine(state: np.ndarray, params: Params, seed: int, config: AsyncConfig) -> BoardEngine:
        base = factory(params, None)
        return BoardEngine(state, params, seed, config, base, boards or {}, realtime_factor, log)

    return simulate_with(model, engine, cell=cell, engine_factory=board_engine, **kw)
