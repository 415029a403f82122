"""The pictures a training run leaves next to its model: the loss curve and a row
of pool samples (weights/curves/ holds the shipped models')."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sim.atomic import atomic_write
from sim.pictures import to_rgba8


def save_pictures(out: Path, history: Sequence[float], samples: np.ndarray, title: str) -> list[Path]:
    """Loss curve (log10) and a strip of sample states, as PNGs in OUT's folder/curves/."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = out.name[:-4] if out.name.endswith(".npz") else out.name
    folder = out.parent / "curves"
    written = []
    h = np.asarray(history, np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ok = np.isfinite(h) & (h > 0)
    it = np.arange(1, len(h) + 1)
    ax.plot(it[ok], np.log10(h[ok]), ".", ms=1.5, alpha=0.3, color="tab:blue", label="batch loss")
    if ok.sum() >= 50:
        k = 50
        sm = np.convolve(np.log10(h[ok]), np.ones(k) / k, mode="valid")
        ax.plot(it[ok][k - 1:], sm, color="tab:red", lw=1.2, label="mean of 50")
    ax.set_xlabel("iteration")
    ax.set_ylabel("log10(loss)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    p = folder / f"{stem}_loss.png"
    written.append(atomic_write(p, lambda f: fig.savefig(f, format="png")))
    plt.close(fig)

    imgs = to_rgba8(samples)
    n = len(imgs)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), dpi=100, squeeze=False)
    for a, im in zip(axes[0], imgs):
        a.imshow(im, interpolation="nearest")
        a.axis("off")
    fig.suptitle(title + " (samples)", fontsize=9)
    fig.tight_layout()
    p = folder / f"{stem}_pool.png"
    written.append(atomic_write(p, lambda f: fig.savefig(f, format="png")))
    plt.close(fig)
    return written
