"""The Growing-NCA model: the one place that fixes shapes, kernels, order and rules.

Everything else (references, swarm, trainer, quantiser, tests) imports these
names instead of restating them. See docs/design.md, "The model".
"""
from __future__ import annotations

import math

import numpy as np

CHANNELS = 16            # 0-2 RGB (premultiplied), 3 alpha, 4-15 hidden
ALPHA = 3
RGBA = slice(0, 4)
HIDDEN = 128
N_KERNELS = 3            # identity, Sobel-x, Sobel-y
PERCEPTION = N_KERNELS * CHANNELS   # 48
ALIVE_THRESHOLD = 0.1    # alive iff max alpha over the 3x3 neighbourhood > this
FIRE_RATE = 0.5

# Perception order stored in weights files: p[16*k + c] with k = 0 state,
# 1 x-gradient, 2 y-gradient (the paper's pseudo-code order, the WebGL export).
ORDER_CONCAT = "state,grad_x,grad_y"
# The TF notebook's order p[3*c + k]; only ever reached through an explicit conversion.
ORDER_INTERLEAVED = "interleaved"

PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "w1": (PERCEPTION, HIDDEN),
    "b1": (HIDDEN,),
    "w2": (HIDDEN, CHANNELS),
    "b2": (CHANNELS,),
}
N_PARAMS = sum(int(np.prod(s)) for s in PARAM_SHAPES.values())   # 8,336

# Cross-correlation kernels indexed [dy+1, dx+1]: x grows to the right, y grows down.
SOBEL_X = np.array([[-1.0, 0.0, 1.0],
                    [-2.0, 0.0, 2.0],
                    [-1.0, 0.0, 1.0]]) / 8.0
SOBEL_Y = SOBEL_X.T.copy()
IDENTITY = np.zeros((3, 3))
IDENTITY[1, 1] = 1.0

# The 8 neighbour slots of a cell's inbox, as (dy, dx), row-major over the 3x3
# without the centre. Slot s of cell (y, x) holds the state of (y+dy, x+dx).
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def gradient_kernels(angle_deg: float = 0.0) -> np.ndarray:
    """Return float32 (2, 3, 3): the rotated x and y gradient kernels.

    Kx = cos*Sx - sin*Sy, Ky = sin*Sx + cos*Sy (the paper's rotation experiment:
    turning the perception mid-run; docs/design.md, "The model"),
    computed in float64 and rounded once so every engine sees the same taps.
    """
    th = math.radians(angle_deg)
    c, s = math.cos(th), math.sin(th)
    kx = c * SOBEL_X - s * SOBEL_Y
    ky = s * SOBEL_X + c * SOBEL_Y
    return np.stack([kx, ky]).astype(np.float32)


def empty_params() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in PARAM_SHAPES.items()}


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Paper initialisation: Glorot-uniform W1; W2 and both biases zero."""
    p = empty_params()
    lim = math.sqrt(6.0 / (PERCEPTION + HIDDEN))
    p["w1"] = rng.uniform(-lim, lim, PARAM_SHAPES["w1"]).astype(np.float32)
    return p


def seed_state(height: int, width: int, batch: int | None = None) -> np.ndarray:
    """Zero grid with the seed cell at (h//2, w//2): channels 3..15 = 1, RGB 0."""
    shape = (height, width, CHANNELS) if batch is None else (batch, height, width, CHANNELS)
    x = np.zeros(shape, np.float32)
    x[..., height // 2, width // 2, ALPHA:] = 1.0
    return x


def interleaved_to_concat(w1: np.ndarray) -> np.ndarray:
    """Reorder W1 rows from p[3c+k] to p[16k+c]."""
    w1 = np.asarray(w1)
    return w1.reshape(CHANNELS, N_KERNELS, -1).transpose(1, 0, 2).reshape(PERCEPTION, -1).copy()


def concat_to_interleaved(w1: np.ndarray) -> np.ndarray:
    """Reorder W1 rows from p[16k+c] to p[3c+k]."""
    w1 = np.asarray(w1)
    return w1.reshape(N_KERNELS, CHANNELS, -1).transpose(1, 0, 2).reshape(PERCEPTION, -1).copy()


def alive_mask(alpha: np.ndarray) -> np.ndarray:
    """Boolean (..., H, W): max over the zero-padded 3x3 neighbourhood > threshold."""
    a = np.asarray(alpha)
    pad = [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(a, pad, constant_values=-np.inf)
    h, w = a.shape[-2:]
    m = np.full(a.shape, -np.inf, dtype=a.dtype)
    for dy in range(3):
        for dx in range(3):
            m = np.maximum(m, p[..., dy:dy + h, dx:dx + w])
    return m.astype(np.float64) > ALIVE_THRESHOLD   # the engines compare in float64 too
