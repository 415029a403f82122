"""The "fixed" cell backend of the SimPy and async swarms: every cell computed by the
golden model of the firmware's integer arithmetic (`codegen.golden`, numba), one
call per wake-up (on the async engine, from inside its numba event loop).

It takes the swarm's float32 arrays as they are: every state it writes is on the
state grid (q/128 for RGBA, q/32 for the hidden channels: exact in float32; with
error feedback 16 times finer), and a value that is not (the float seed's 1.0 on
RGBA) is rounded to the nearest step, saturating, on the way in. A message is the
sender's whole state, of which the receiving cell takes the int8 part.
"""
from __future__ import annotations

import numpy as np

from sim.cell_backends import CellBackend, CompiledCell, ModelLike
from sim.errors import UserError
from sim.spec import Params

from . import formats as F
from . import golden as G
from .quantize import QModel, quantized


def angle_of(model: ModelLike, angle: float | None) -> float:
    if angle is not None:
        return float(angle)
    if isinstance(model, Params):
        return F.angle_of_kernels(model.kxy)
    return 0.0


def lockstep_check(fmt: F.ModelFormat) -> None:
    """Lockstep mode applies the alive rule itself, on the swarm's float states; a cell
    with error feedback decides it on the int8 part of its state, which that cannot see."""
    if fmt.ef_bits:
        raise UserError("lockstep mode decides the alive rule on the swarm's float states, which differ "
                        "from what a cell with error feedback decides it on; run this model asynchronously")


class FixedBackend(CellBackend):
    """The golden model of the firmware's integer arithmetic."""

    name = "fixed"

    def __init__(self, q: QModel, angle: float = 0.0):
        self.q = q
        self._args = q.arrays()
        self.rot = G.rotation_array(angle)
        self._work = G.work_arrays()

    def update(self, c: int, state: np.ndarray, inbox: np.ndarray) -> int:
        return G.wakeup_f32_into(c, state, inbox, *self._args, self.rot, self._work)

    def tentative(self, c: int, state: np.ndarray, inbox: np.ndarray, out: np.ndarray) -> None:
        lockstep_check(self.q.fmt)
        G.tentative_f32(c, state, inbox, *self._args, self.rot, out)

    def compiled(self) -> CompiledCell:
        w1, b1, w2, b2, mult, tsh, consts = self._args
        return G.wakeup_event, (w1, b1, w2, b2, (mult, tsh, consts, self.rot, self._work))

    def set_params(self, params: Params) -> None:
        """A new rotation (and, if the weights changed, a new quantised model)."""
        self.q = quantized(params)
        self._args = self.q.arrays()
        self.rot = G.rotation_array(F.angle_of_kernels(params.kxy))


def fixed_backend(model: ModelLike, angle: float | None = None) -> CellBackend:
    """The "fixed" backend of a model (a sim.cell_backends.BackendFactory)."""
    return FixedBackend(quantized(model), angle_of(model, angle))
