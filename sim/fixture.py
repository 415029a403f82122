"""A synthetic model with bounded, non-trivial dynamics, for tests and benchmarks.

It is not trained: 32 hidden units carry +-x so the state decays linearly
towards a random drive from the other 96 units, and a positive alpha bias makes
the living region spread. The result stays bounded (|x| < ~1.5), fills the grid
and still lets some cells die, which exercises every rule of the model.
"""
from __future__ import annotations

import numpy as np

from .model import CHANNELS, HIDDEN, PERCEPTION, ALPHA
from .weights import Model, default_meta


def blob_model(seed: int = 1, gain: float = 0.6, decay: float = 0.2, drive: float = 0.05) -> Model:
    r = np.random.default_rng(seed)
    w1 = np.zeros((PERCEPTION, HIDDEN), np.float32)
    w2 = np.zeros((HIDDEN, CHANNELS), np.float32)
    b1 = np.zeros(HIDDEN, np.float32)
    b2 = np.zeros(CHANNELS, np.float32)
    lin = 2 * CHANNELS
    for c in range(CHANNELS):
        w1[c, 2 * c], w1[c, 2 * c + 1] = 1.0, -1.0
        w2[2 * c, c], w2[2 * c + 1, c] = -decay, decay
    w1[:, lin:] = r.standard_normal((PERCEPTION, HIDDEN - lin)) * gain / np.sqrt(PERCEPTION)
    b1[lin:] = r.standard_normal(HIDDEN - lin) * 0.05
    w2[lin:, :] = r.standard_normal((HIDDEN - lin, CHANNELS)) * gain / np.sqrt(HIDDEN - lin)
    b2[ALPHA] = drive
    meta = default_meta(kind="fixture", origin=f"sim.fixture.blob_model(seed={seed}, gain={gain})")
    return Model({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, meta)


def frozen_pattern_model(seed: int = 0) -> Model:
    """Random hidden dynamics with the alpha row of W2 and b2 zero: the living
    region never changes, so a benchmark keeps the sparsity it starts with."""
    r = np.random.default_rng(seed)
    w1 = (r.standard_normal((PERCEPTION, HIDDEN)) * 0.05).astype(np.float32)
    b1 = (r.standard_normal(HIDDEN) * 0.05).astype(np.float32)
    w2 = (r.standard_normal((HIDDEN, CHANNELS)) * 0.02).astype(np.float32)
    w2[:, ALPHA] = 0.0
    b2 = np.zeros(CHANNELS, np.float32)
    meta = default_meta(kind="fixture", origin=f"sim.fixture.frozen_pattern_model(seed={seed})")
    return Model({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, meta)


def main() -> int:
    """Write the blob fixture model (weights/fixture_blob.npz): a model for first runs and demos
    before trained ones exist."""
    import sys
    from pathlib import Path

    from .weights import save

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "weights" / "fixture_blob.npz"
    save(out, blob_model())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
