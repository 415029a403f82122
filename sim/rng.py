"""Counter-based random numbers: every draw is a pure function of
(seed, stream, cell, counter).

No engine keeps a stateful generator, so the synchronous grid, the numba event
loop and the SimPy swarm draw the very same numbers and can be compared bit for
bit. The functions are numba-compiled and called as they are from Python, so
both sides run one compiled arithmetic.

Mix: SplitMix64's finaliser `mix` applied in a chain (uint64, wrapping),
    h = mix(seed + G)
    h = mix((h ^ stream) + G);  h = mix((h ^ cell) + G);  h = mix((h ^ counter) + G)
with G the golden-ratio increment; uniform = (h >> 11) / 2**53 in [0, 1).
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

G = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0   # 2**-53

# Streams: one per kind of random decision.
FIRE = 1        # synchronous fire mask, counter = step
WAKE = 2        # asynchronous wake-up interval, counter = wake-up index of the cell
LATENCY = 3     # message latency, counter = message index of the sender
LOSS = 4        # message loss, counter = message index of the sender
FAIL = 5        # time to next failure, counter = failure index of the cell
REPAIR = 6      # time to repair, counter = failure index of the cell
INIT = 8        # a cell's clock: phase (counter 0) and drift (counter 1)


@nb.njit(nb.uint64(nb.uint64), cache=True, inline="always")
def mix64(z):
    z = (z ^ (z >> _S30)) * M1
    z = (z ^ (z >> _S27)) * M2
    return z ^ (z >> _S31)


@nb.njit(nb.uint64(nb.int64, nb.int64, nb.int64, nb.int64), cache=True)
def hash4(seed, stream, cell, counter):
    h = mix64(nb.uint64(seed) + G)
    h = mix64((h ^ nb.uint64(stream)) + G)
    h = mix64((h ^ nb.uint64(cell)) + G)
    return mix64((h ^ nb.uint64(counter)) + G)


@nb.njit(nb.float64(nb.int64, nb.int64, nb.int64, nb.int64), cache=True)
def uniform(seed, stream, cell, counter):
    """Uniform float64 in [0, 1)."""
    return nb.float64(hash4(seed, stream, cell, counter) >> _S11) * _INV53


@nb.njit(nb.float64(nb.int64, nb.int64, nb.int64, nb.int64, nb.float64), cache=True)
def exponential(seed, stream, cell, counter, mean):
    """Exponential with the given mean (inverse CDF on the counter uniform)."""
    return -mean * math.log1p(-uniform(seed, stream, cell, counter))


@nb.njit(cache=True)
def fire_mask(seed, step, height, width, rate):
    """Boolean (H, W) fire decisions of step `step`: u(seed, FIRE, cell, step) < rate."""
    out = np.empty((height, width), np.bool_)
    for y in range(height):
        for x in range(width):
            out[y, x] = uniform(seed, FIRE, y * width + x, step) < rate
    return out


def uniform_array(seed: int, stream: int, cells: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Vectorised `uniform` over broadcast cell and counter arrays (for tests and tools)."""
    c, k = np.broadcast_arrays(np.asarray(cells, np.int64), np.asarray(counters, np.int64))
    return _uniform_array(seed, stream, c.ravel(), k.ravel()).reshape(c.shape)


@nb.njit(cache=True)
def _uniform_array(seed, stream, cells, counters):
    out = np.empty(cells.shape[0], np.float64)
    for i in range(cells.shape[0]):
        out[i] = uniform(seed, stream, cells[i], counters[i])
    return out
