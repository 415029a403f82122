"""The model's executable specification: `Params` (the arrays every engine takes)
and `step64`, one synchronous step written plainly in float64 numpy. Every fast
engine is tested against `step64` or against an engine that is (docs/update-rule.md
maps them); it is slow on purpose and never used to run a swarm.

A step (docs/design.md, "The model"): perceive the 3x3 neighbourhood as
[state, Sobel-x, Sobel-y] (zero padding, kernels rotated by the angle), a dense
layer with ReLU, a dense layer to dx; add dx where the cell fires; keep a cell
only where its 3x3 neighbourhood had alpha > 0.1 before and after the update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .model import ALIVE_THRESHOLD, ALPHA, PARAM_SHAPES, gradient_kernels

if TYPE_CHECKING:   # annotation only: weights imports nothing from here
    from .weights import Model


@dataclass(frozen=True)
class Params:
    """Model arrays plus the (rotated) gradient kernels, as the kernels take them."""
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    kxy: np.ndarray
    # the model's metadata, for consumers that need more than the arrays (the
    # quantiser reads the shifts a quantisation-aware fine-tuning trained at)
    meta: dict | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_model(cls, model: Model, angle_deg: float = 0.0) -> "Params":
        p = cls.from_arrays(model.params, angle_deg)
        return replace(p, meta=model.meta)

    @classmethod
    def from_arrays(cls, params: dict[str, np.ndarray], angle_deg: float = 0.0) -> "Params":
        arrays = {k: np.ascontiguousarray(params[k], np.float32) for k in PARAM_SHAPES}
        for k, shape in PARAM_SHAPES.items():
            if arrays[k].shape != shape:   # the cell kernels read raw memory of these shapes
                raise ValueError(f"parameter {k} has shape {arrays[k].shape}, expected {shape}")
        return cls(arrays["w1"], arrays["b1"], arrays["w2"], arrays["b2"], gradient_kernels(angle_deg))

    def rotated(self, angle_deg: float) -> "Params":
        return Params(self.w1, self.b1, self.w2, self.b2, gradient_kernels(angle_deg), self.meta)

    def astuple(self) -> tuple[np.ndarray, ...]:
        return self.w1, self.b1, self.w2, self.b2, self.kxy


def kernels64(angle_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Sobel-x/y (cross-correlation taps [dy+1, dx+1], /8) rotated by angle, float64."""
    sx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    sy = sx.T
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return c * sx - s * sy, s * sx + c * sy


def perceive64(x: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """(H, W, 48): [state(16), grad_x(16), grad_y(16)], zero padding, explicit 3x3 taps."""
    x = np.asarray(x, np.float64)
    h, w, _ = x.shape
    pad = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    for i in range(3):              # i = dy + 1
        for j in range(3):          # j = dx + 1
            nb_ = pad[i:i + h, j:j + w]          # value of cell (y + dy, x + dx)
            gx += kx[i, j] * nb_
            gy += ky[i, j] * nb_
    return np.concatenate([x, gx, gy], axis=-1)


def maxpool64(alpha: np.ndarray) -> np.ndarray:
    """The 3x3 max of alpha, outside the grid counting as -inf."""
    h, w = alpha.shape
    pad = np.pad(np.asarray(alpha, np.float64), 1, constant_values=-np.inf)
    return np.max([pad[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def step64(x: np.ndarray, params: dict, kx: np.ndarray, ky: np.ndarray,
           fire: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One synchronous step in float64. Returns (new state, tentative state)."""
    w1, b1, w2, b2 = (np.asarray(params[k], np.float64) for k in ("w1", "b1", "w2", "b2"))
    x = np.asarray(x, np.float64)
    pre = maxpool64(x[..., ALPHA]) > ALIVE_THRESHOLD
    hid = np.maximum(perceive64(x, kx, ky) @ w1 + b1, 0.0)
    dx = hid @ w2 + b2
    xt = x + dx * fire[..., None]
    post = maxpool64(xt[..., ALPHA]) > ALIVE_THRESHOLD          # the updated alphas of ALL cells
    return xt * (pre & post)[..., None], xt
