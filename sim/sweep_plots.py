"""The figures of `python -m sim.sweep`, from its rows (dicts with the sweep.csv columns):
a heat map per model and failure setting (sweep.png) and the models' loss against latency
side by side (robustness.png). Matplotlib's Figure API only (no pyplot: no display, no
global state), so the sweep draws in any process."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

BREAKS = 1e-2   # loss vs target above which the shape is gone (the dotted "breaks" line)


def _failure_text(mtbf: float, mttr: float) -> str:
    return "no failures" if mtbf == 0 else f"mtbf {mtbf:g}, mttr {mttr:g}"


def _values(rows: Sequence[dict[str, Any]], lat: float, loss: float, mtbf: float,
            model: str | None) -> list[float]:
    """loss_vs_target of the seeds at one grid point (of one model; None: every row)."""
    return [r["loss_vs_target"] for r in rows
            if r["latency"] == lat and r["msg_loss"] == loss and r["mtbf"] == mtbf
            and (model is None or r.get("model", "") == model)]


def mean_grid(rows: Sequence[dict[str, Any]], latencies: Sequence[float], losses: Sequence[float],
              mtbf: float, model: str | None = None) -> np.ndarray:
    """(latencies, losses) mean loss_vs_target over the seeds of one failure setting and
    model (None: all rows), NaN where every seed diverged."""
    g = np.full((len(latencies), len(losses)), np.nan)
    for i, lat in enumerate(latencies):
        for j, loss in enumerate(losses):
            v = [x for x in _values(rows, lat, loss, mtbf, model) if math.isfinite(x)]
            if v:
                g[i, j] = float(np.mean(v))
    return g


def plot_heatmap(rows: Sequence[dict[str, Any]], latencies: Sequence[float], losses: Sequence[float],
                 mtbfs: Sequence[float], mttr: float, title: str, models: Sequence[str] | None = None):
    """Figure: one heat-map panel per model (rows of panels) and failure setting (across),
    one colour scale for all, so the models compare at a glance."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    names: list[str | None] = list(models) if models else [None]
    grids = [[mean_grid(rows, latencies, losses, m, name) for m in mtbfs] for name in names]
    vals = np.concatenate([g[np.isfinite(g)] for gs in grids for g in gs]) if mtbfs else np.zeros(0)
    if vals.size and vals.min() > 0 and vals.max() > 10 * vals.min():
        norm = LogNorm(vals.min(), vals.max())
    elif vals.size:
        norm = Normalize(vals.min(), max(vals.max(), vals.min() + 1e-12))
    else:
        norm = Normalize(0, 1)
    n, k = len(mtbfs), len(names)
    panel = max(0.9 * len(losses) + 1.4, 3.6 if k > 1 else 0.0)     # room for the model's name
    fig = Figure(figsize=(max(6.4, 1.2 + n * panel), 0.6 + k * (1.0 + 0.6 * len(latencies))),
                 layout="constrained")
    axes = fig.subplots(k, n, squeeze=False)
    im = None
    for row, name, gs in zip(axes, names, grids):
        for ax, g, m in zip(row, gs, mtbfs):
            im = ax.imshow(g, cmap="viridis_r", norm=norm, aspect="auto")
            ax.set_xticks(range(len(losses)), [f"{v:g}" for v in losses])
            ax.set_yticks(range(len(latencies)), [f"{v:g}" for v in latencies])
            ax.set_xlabel("message loss rate")
            ax.set_ylabel("latency (steps, mean)")
            ax.set_title((f"{name}: " if len(names) > 1 else "") + _failure_text(m, mttr), fontsize=10)
            for i in range(g.shape[0]):
                for j in range(g.shape[1]):
                    v = g[i, j]
                    text = "diverged" if not np.isfinite(v) else f"{v:.3g}"
                    light = np.isfinite(v) and norm(v) > 0.6
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if light else "black")
    if im is not None:
        fig.colorbar(im, ax=list(axes.ravel()), label="loss vs target (mean over seeds)", shrink=0.9)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_robustness(rows: Sequence[dict[str, Any]], latencies: Sequence[float], losses: Sequence[float],
                    mtbfs: Sequence[float], mttr: float, models: Sequence[str], title: str):
    """Figure: loss vs target (log) against latency, one line per model (mean over seeds,
    min-max band), one panel per message loss rate (across) and failure setting (down),
    the 1e-2 "breaks" line dotted. A point where a seed diverged (NaN) has no mean: it is
    an X at the top of the panel in the model's colour, with the count if not every seed."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    xs = np.asarray(latencies, float)
    nr, nc = len(mtbfs), len(losses)
    fig = Figure(figsize=(max(6.4, 0.8 + 3.4 * nc), 1.4 + 2.8 * nr), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False, sharex=True, sharey=True)
    any_diverged = False
    finite = [r["loss_vs_target"] for r in rows if math.isfinite(r["loss_vs_target"]) and r["loss_vs_target"] > 0]
    for r, mtbf in enumerate(mtbfs):
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            for i, name in enumerate(models):
                colour = f"C{i % 10}"
                mean, lo, hi = (np.full(len(xs), np.nan) for _ in range(3))
                for j, lat in enumerate(latencies):
                    v = np.asarray(_values(rows, lat, loss, mtbf, name), float)
                    if not v.size:
                        continue
                    bad = int(np.count_nonzero(~np.isfinite(v)))
                    if bad:
                        any_diverged = True
                        top = 0.96 - 0.06 * (i % 5)          # models that diverge together stay apart
                        ax.plot([xs[j]], [top], "X", color=colour, ms=8, clip_on=False,
                                transform=ax.get_xaxis_transform())
                        if bad < v.size:
                            ax.annotate(f"{bad}/{v.size}", (xs[j], top), xycoords=ax.get_xaxis_transform(),
                                        xytext=(6, -3), textcoords="offset points", fontsize=7, color=colour)
                        continue
                    mean[j], lo[j], hi[j] = v.mean(), v.min(), v.max()
                ax.plot(xs, mean, "o-", color=colour, ms=4, lw=1.5)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, lw=0)
            ax.axhline(BREAKS, ls=":", color="0.3", lw=1)
            ax.text(0.01, BREAKS, "breaks", transform=ax.get_yaxis_transform(), ha="left", va="bottom",
                    fontsize=8, color="0.3")
            ax.set_yscale("log")
            ax.set_title(f"message loss {loss:g}" + (f", {_failure_text(mtbf, mttr)}" if len(mtbfs) > 1
                                                      or mtbf else ""), fontsize=10)
            if r == nr - 1:
                ax.set_xlabel("latency (steps, mean)")
            if c == 0:
                ax.set_ylabel("loss vs target")
    # the "breaks" line always in view, and a free strip on top for the diverged markers
    axes[0, 0].set_ylim(min(finite + [BREAKS]) / 1.5, max(finite + [BREAKS]) * 4)
    handles = [Line2D([], [], color=f"C{i % 10}", marker="o", ms=4, label=name) for i, name in enumerate(models)]
    if any_diverged:
        handles.append(Line2D([], [], color="0.3", marker="X", ls="none", ms=8,
                              label="diverged (NaN; count if not every seed)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8,
               frameon=False)
    fig.suptitle(title + "\nline: mean over seeds, band: min to max", fontsize=10)
    return fig
