"""Quantisation-aware training: the firmware's arithmetic inside the trainer.

Post-training quantisation of a trained NCA is not enough: the pattern is a
fixed point of the update, and the int8 state grid, the rounded gradient
inputs, the uint8 hidden units, the floored partial sums and the int8 weights
move it (the regenerating lizard's loss at step 1,000 grows ~50x on the
fixed-point swarm). Fine-tuning through that arithmetic teaches the model a
pattern that is stable on the integer grid.

`FakeQuant` (the trainer's `Rounding`) quantises the float master weights every
iteration at the shifts and state formats fixed at the start (`quantize.build_at`:
the same function that builds the shipped genome, recorded in the model's
metadata), and computes each step's dense layers in exactly the golden model's
integer arithmetic. The integers are carried in float32, which is exact: every
intermediate is an integer below 2^24 (codegen/formats.py bounds them). The
trainer then sees a state change that equals the firmware's bit for bit, and
the backward pass uses the dequantised perception and hidden values with the
dequantised weights, treating each rounding as the identity (the
straight-through estimator), so the float master weights get the gradients.

With `error_feedback` it is the cell that keeps formats.EF_BITS more bits of its
own state: the trainer's states then live on that finer grid (still exact in
float32), the cells perceive and apply the alive rule to `view(x)` (the int8
part), and an update is added at the finer resolution. The backward pass treats
the view as the identity too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.model import CHANNELS, PERCEPTION
from sim.weights import Model

from codegen import formats as F
from codegen.quantize import META_KEY, QModel, build_at, quantize, recorded_error_feedback, recorded_format


@dataclass
class FakeQuant:
    """The firmware's arithmetic at fixed shifts and state formats, for train.bptt.forward."""
    grad_shift: int
    hidden_shift: int
    hidden_fracs: tuple[int, ...]
    error_feedback: bool = False
    q: QModel | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.fmt = F.partial_format(F.state_fracs(self.hidden_fracs), self.grad_shift, self.hidden_shift)
        self._x_steps = self.fmt.state_steps.astype(np.float32)                # exact powers of two
        self._g_steps = np.tile(self.fmt.state_steps * F.SOBEL_DIV, 2).astype(np.float32)
        self._x_scales = self.fmt.state_scales

    @classmethod
    def for_model(cls, model: Model) -> FakeQuant:
        """The format recorded by an earlier fine-tuning, else the one `quantize` picks."""
        rec = recorded_format(model.meta)
        if rec is not None:
            return cls(*rec, error_feedback=recorded_error_feedback(model.meta))
        q = quantize(model)
        return cls(q.fmt.grad_shift, q.fmt.hidden_shift, q.fmt.state_fracs[F.RGBA:])

    def on_grid(self, x: np.ndarray) -> np.ndarray:
        """States (..., 16) rounded onto the firmware's state grid (the seed's 1.0 is not
        on RGBA's): the trainer starts from these, so its states stay on the grid."""
        return F.dequantize_state(F.quantize_state(x, self.fmt), self.fmt).astype(x.dtype)

    def meta(self) -> dict[str, Any]:
        """The model metadata's training entry that `recorded_format` reads back."""
        rec: dict[str, Any] = {"grad_shift": self.grad_shift, "hidden_shift": self.hidden_shift,
                               "hidden_fracs": list(self.hidden_fracs)}
        if self.error_feedback:
            rec["error_feedback"] = True
        return {META_KEY: rec}

    def view(self, x: np.ndarray) -> np.ndarray:
        """What neighbours and the network see of error-feedback states x (on the fine
        grid): each channel's int8 step below it (the int16 state's high byte)."""
        v = np.floor(x * self._x_steps)
        np.clip(v, F.STATE_MIN, F.STATE_MAX, out=v)
        return (v / self._x_steps).astype(x.dtype)

    def weights(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Quantise the master weights for this iteration; returns them dequantised (what
        the backward pass multiplies by)."""
        self.q = build_at(Model({k: params[k] for k in ("w1", "b1", "w2", "b2")}),
                          self.grad_shift, self.hidden_shift, self.fmt.state_fracs,
                          ef_bits=F.EF_BITS if self.error_feedback else 0)
        q = self.q
        self._units = q.input_units()
        self._unit_h = q.s1 * 2.0 ** self.hidden_shift
        self._w1 = q.w1.astype(np.float32)
        self._b1 = (q.b1.astype(np.float32) * np.float32(2 ** q.fmt.bias_shift))[None, :]
        self._w2 = q.w2.astype(np.float32).reshape(F.GROUPS, F.GROUP, CHANNELS)
        self._rs = np.float32(2.0 ** -q.fmt.acc_shift)
        self._ks = np.float32(2.0 ** -q.fmt.hidden_shift)
        self._kh = np.float32(2.0 ** (q.fmt.hidden_shift - 1)) if q.fmt.hidden_shift else np.float32(0)
        self._mult = q.mult.astype(np.int64)
        self._tsh = q.tsh.astype(np.int64)
        return dict(q.dequantize().params)

    def dense(self, P: np.ndarray, h: np.ndarray, dx: np.ndarray, own: np.ndarray | None = None) -> None:
        """Rows of perception P (n, 49: 48 inputs then a ones column; states on their
        grid, gradients exact Sobel sums): P's inputs become the firmware's (dequantised),
        h (n, 128) its hidden values (dequantised) and dx (n, 16) its exact state change.
        own: the rows' own states (n, 16), which with error feedback are finer than P's."""
        if self.q is None:
            raise RuntimeError("FakeQuant.dense before FakeQuant.weights")
        n = P.shape[0]
        x = np.clip(np.rint(P[:, :CHANNELS] * self._x_steps), F.STATE_MIN, F.STATE_MAX)   # int8 state
        g = P[:, CHANNELS:PERCEPTION] * self._g_steps                            # exact sums G
        g = np.clip(np.floor((g + np.float32((1 << self.grad_shift) >> 1))
                             * np.float32(2.0 ** -self.grad_shift)), F.STATE_MIN, F.STATE_MAX)
        pin = np.concatenate([x, g], axis=1, dtype=np.float32)                  # (n, 48) ints
        a = pin @ self._w1                                                        # exact: |a| < 2^23
        hq = np.floor((a + self._kh) * self._ks) + self._b1
        np.clip(hq, 0, F.HIDDEN_MAX, out=hq)                                     # (n, 128) uint8
        t = np.einsum("ngu,gum->ngm", hq.reshape(n, F.GROUPS, F.GROUP), self._w2,
                      optimize=True)                                              # exact: < 2^17
        acc = np.floor(t * self._rs).sum(axis=1).astype(np.int64) + self.q.b2.astype(np.int64)[None, :]
        e = F.EF_BITS if self.error_feedback else 0        # the own state in 2^-e steps
        d = (acc * self._mult + (np.int64(1) << (self._tsh - 1 - e))) >> (self._tsh - e)
        xi = (x.astype(np.int64) if not e else
              np.rint(own.astype(np.float64) * (self.fmt.state_steps * (1 << e))[None, :]).astype(np.int64))
        new = np.clip(xi + d, F.STATE_MIN << e, ((F.STATE_MAX + 1) << e) - 1)
        dx[:] = ((new - xi) * (self._x_scales / (1 << e))[None, :]).astype(dx.dtype)
        P[:, :PERCEPTION] = (pin * self._units[None, :]).astype(P.dtype)
        h[:] = (hq * self._unit_h[None, :]).astype(h.dtype)

