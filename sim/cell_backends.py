"""Per-cell compute of the SimPy swarm: the swarm can run every cell on the float
model (here), on the fixed-point golden model or the generated C (`codegen`), or
on a board (`boards`); `sim.assemble` names them for the command line.

The swarm owns the arrays and the messaging; a backend only computes one cell
from what that cell knows, so every backend sees exactly the information a real
cell would have:

- `state`  float32 (N, 16): every cell's own state (row c is cell c's);
- `inbox`  float32 (N, 8, 16): the last state each cell received from each of
  its 8 neighbours, slot order `model.NEIGHBOUR_OFFSETS` (zero if none yet).

Two operations, both on cell `c` only:

- `update(c, state, inbox) -> int`: one asynchronous wake-up (the rules of
  `sim.rules.cell_wakeup`: alive rule on what the cell knows); updates
  `state[c]` in place and returns DORMANT (0: nothing done, zero state and no
  known living neighbour), ZEROED (1: state set to zero) or UPDATED (2: the
  network ran).
- `tentative(c, state, inbox, out)`: lockstep phase A, `out[c] = state[c] + dx`
  with no alive rule (the post-update rule needs the neighbours' new alphas,
  which only the swarm's next phase delivers).

And, where the backend is numba code, `compiled()`: `update` in the form the async
engine's event loop calls (`sim.events`), which runs the grid without a SimPy process
a cell.

New backends subclass `CellBackend`; `sim.assemble.register_backend` gives one a name.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .cell import scratch
from .errors import UserError
from .rules import cell_wakeup, tentative
from .spec import Params
from .weights import Model

DORMANT, ZEROED, UPDATED = 0, 1, 2

ModelLike = Model | Params
CompiledCell = tuple[Callable, tuple]
"""(numba wake-up function, its weight arguments): see `CellBackend.compiled`."""


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

    def compiled(self) -> CompiledCell | None:
        """The cell as the numba event loop of the async engine (`sim.events`) can call
        it: a numba function of `sim.rules.cell_wakeup`'s signature and the five weight
        arguments it takes there; None for a backend that is not numba code."""
        return None


class FloatBackend(CellBackend):
    """The float32 model through the shared numba kernel (`sim.rules.cell_wakeup`),
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

    def compiled(self) -> CompiledCell:
        return cell_wakeup, self.params.astuple()


def as_params(model: ModelLike, angle: float | None = None) -> Params:
    """Params from a Model or Params; `angle` (degrees) rotates the perception
    (None keeps a Params' own kernels, 0 for a Model)."""
    if isinstance(model, Params):
        return model if angle is None else model.rotated(angle)
    if isinstance(model, Model):
        return Params.from_model(model, 0.0 if angle is None else angle)
    raise TypeError(f"expected a weights.Model or spec.Params, got {type(model).__name__}")


BackendFactory = Callable[[ModelLike, float | None], CellBackend]
"""Builds a backend for a model (Model or Params) at a rotation angle (None: its own)."""


def float_backend(model: ModelLike, angle: float | None = None) -> CellBackend:
    """The float model's backend (a BackendFactory)."""
    return FloatBackend(as_params(model, angle))
