"""Pluggable per-cell compute of the SimPy swarm (DESIGN.md: "The SimPy swarm can
run every cell on the float model, on the fixed-point golden model, on the
generated C itself, or on a board").

The swarm owns the arrays and the messaging; a backend only computes one cell
from what that cell knows, so every backend sees exactly the information a real
cell would have:

- `state`  float32 (N, 16): every cell's own state (row c is cell c's);
- `inbox`  float32 (N, 8, 16): the last state each cell received from each of
  its 8 neighbours, slot order `model.NEIGHBOUR_OFFSETS` (zero if none yet).

Two operations, both on cell `c` only:

- `update(c, state, inbox) -> int`: one asynchronous wake-up (the rules of
  `async_ref.cell_wakeup`: alive rule on what the cell knows); updates
  `state[c]` in place and returns DORMANT (0: nothing done, zero state and no
  known living neighbour), ZEROED (1: state set to zero) or UPDATED (2: the
  network ran).
- `tentative(c, state, inbox, out)`: lockstep phase A, `out[c] = state[c] + dx`
  with no alive rule (the post-update rule needs the neighbours' new alphas,
  which only the swarm's next phase delivers).

New backends (fixed point, firmware over ctypes, a board over serial) subclass
`CellBackend` and register a factory with `register_backend`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .async_ref import cell_wakeup, tentative
from .cell import scratch
from .errors import UserError
from .reference import Params
from .weights import Model

DORMANT, ZEROED, UPDATED = 0, 1, 2

ModelLike = Model | Params


class BackendError(UserError, ValueError):
    """An unknown backend name (a user error on the command line, a ValueError in code)."""


class CellBackend:
    """The compute of one cell; see the module docstring for the contract."""

    name: str = "abstract"

    def update(self, c: int, state: np.ndarray, inbox: np.ndarray) -> int:
        """One asynchronous wake-up of cell c: state[c] updated in place; returns 0/1/2."""
        raise NotImplementedError

    def tentative(self, c: int, state: np.ndarray, inbox: np.ndarray, out: np.ndarray) -> None:
        """out[c] = state[c] + dx of cell c (lockstep mode; no alive rule)."""
        raise NotImplementedError(f"backend {self.name!r} has no lockstep (tentative) step")

    def set_params(self, params: Params) -> None:
        """Switch every cell to a new model or rotation from now on."""
        raise NotImplementedError(f"backend {self.name!r} cannot change its model at run time")


class FloatBackend(CellBackend):
    """The float32 model through the shared numba kernel (`async_ref.cell_wakeup`),
    which is what makes the swarm bit-identical to the numba references."""

    name = "float"

    def __init__(self, params: Params):
        self.params = params
        self._nbhd, self._p, self._dx = scratch()

    def update(self, c: int, state: np.ndarray, inbox: np.ndarray) -> int:
        pr = self.params
        return cell_wakeup(c, state, inbox, pr.w1, pr.b1, pr.w2, pr.b2, pr.kxy,
                           self._nbhd, self._p, self._dx)

    def tentative(self, c: int, state: np.ndarray, inbox: np.ndarray, out: np.ndarray) -> None:
        pr = self.params
        tentative(c, state, inbox, pr.w1, pr.b1, pr.w2, pr.b2, pr.kxy, self._nbhd, self._p,
                  self._dx, out)

    def set_params(self, params: Params) -> None:
        self.params = params


def as_params(model: ModelLike, angle: float | None = None) -> Params:
    """Params from a Model or Params; `angle` (degrees) rotates the perception
    (None keeps a Params' own kernels, 0 for a Model)."""
    if isinstance(model, Params):
        return model if angle is None else model.rotated(angle)
    if isinstance(model, Model):
        return Params.from_model(model, 0.0 if angle is None else angle)
    raise TypeError(f"expected a weights.Model or reference.Params, got {type(model).__name__}")


BackendFactory = Callable[[ModelLike, float | None], CellBackend]
_REGISTRY: dict[str, BackendFactory] = {
    "float": lambda model, angle: FloatBackend(as_params(model, angle)),
}


# Modules that register more backends when imported ("fixed", "firmware": codegen.backends);
# imported on first need, so that asking for those names works without importing them first.
_PLUGINS = ("codegen.backends",)


def _load_plugins() -> None:
    import importlib
    for mod in _PLUGINS:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `make_backend(name, ...)` build backends with factory(model, angle)."""
    _REGISTRY[name] = factory


def backend_names() -> tuple[str, ...]:
    _load_plugins()
    return tuple(sorted(_REGISTRY))


def make_backend(name: str, model: ModelLike, angle: float | None = None) -> CellBackend:
    """Build the backend called `name` for a model (Model or Params) at a rotation angle."""
    if name not in _REGISTRY:
        _load_plugins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown cell backend {name!r}; known: {', '.join(backend_names())}") from None
    return factory(model, angle)
