"""Outputs of `python -m sim.run` beyond single pictures: movies of a run and plots of
what happened in it.

- `save_gif`: an animated GIF (Pillow), each frame a state upscaled by nearest
  neighbour with its step written under it.
- `save_mp4`: the same frames as H.264 video through `ffmpeg`, only when ffmpeg is on
  PATH (`require_ffmpeg` says how to get it); no Python video dependency.
- `save_plots`: loss vs target and alive cells over time (every engine); for the
  event engines also the wake-up intervals of the cells' clocks and the message
  delays with the count of lost, delivered and dropped messages.

The event-engine histograms are not recorded during the run: every random number is
a pure function of (seed, stream, cell, counter) (sim/rng.py), and a swarm keeps each
cell's counters (`wake_k`: wake-up draws, `sends`: send rounds), so the exact
intervals and latencies the run drew are recomputed afterwards with the engines' own
draw functions (`rules.wake_interval`, `rules.message_fate`), in two bounded
passes (range, then bins) whatever the run's length. The run pays nothing for it.

Plots use matplotlib's object API (`Figure`, Agg): no display and no pyplot state.
Every file is written atomically (temporary file, then rename).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np

from . import rules
from .atomic import atomic_path, atomic_write
from .errors import UserError
from .render import picture

MOVIE_MAX_PIXELS = 480      # upscale a movie frame to about this size (at most 6 px per cell)
MOVIE_MAX_SCALE = 6
HIST_BINS = 40


# ---------------------------------------------------------------- movies
def movie_scale(height: int, width: int) -> int:
    """Pixels per cell of a movie frame: large enough to see cells, small enough to stay light."""
    return max(1, min(MOVIE_MAX_SCALE, MOVIE_MAX_PIXELS // max(height, width)))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):   # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def movie_frames(states: Sequence[np.ndarray], labels: Sequence[str], scale: int | None = None,
                 even: bool = False) -> list[np.ndarray]:
    """uint8 (H', W', 3) frames: each state upscaled, its label in a white band underneath.
    `even` pads to even sizes (H.264 in yuv420p needs them)."""
    from PIL import Image, ImageDraw

    if len(states) == 0:
        raise ValueError("no frames to write")
    if len(labels) != len(states):
        raise ValueError(f"{len(states)} frames but {len(labels)} labels")
    h, w = np.shape(states[0])[:2]
    scale = movie_scale(h, w) if scale is None else int(scale)
    font = _font(12)
    band = 18
    out = []
    for state, text in zip(states, labels):
        pic = picture(state, scale)
        fh, fw = pic.shape[0] + band, pic.shape[1]
        if even:
            fh, fw = fh + fh % 2, fw + fw % 2
        img = Image.new("RGB", (fw, fh), "white")
        img.paste(Image.fromarray(pic, "RGB"), (0, 0))
        ImageDraw.Draw(img).text((4, pic.shape[0] + 2), str(text).replace("\n", ", "),
                                 fill=(0, 0, 0), font=font)
        out.append(np.asarray(img))
    return out


def save_gif(path: str | os.PathLike, states: Sequence[np.ndarray], labels: Sequence[str],
             fps: float = 20.0, scale: int | None = None) -> Path:
    """Write an animated GIF that loops, one frame per state (labels drawn underneath)."""
    from PIL import Image

    frames = [Image.fromarray(f, "RGB").convert("P", palette=Image.Palette.ADAPTIVE)
              for f in movie_frames(states, labels, scale)]
    ms = max(20, round(1000.0 / fps))
    return atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True,
                                                       append_images=frames[1:], duration=ms, loop=0))


def require_ffmpeg() -> str:
    """ffmpeg's path, or the one-line UserError that names the missing tool and its package."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise UserError("--save-mp4 needs ffmpeg, which is not on PATH (install it: apt-get install "
                        "ffmpeg; or use --save-gif, which needs nothing more)")
    return exe


def save_mp4(path: str | os.PathLike, states: Sequence[np.ndarray], labels: Sequence[str],
             fps: float = 20.0, scale: int | None = None) -> Path:
    """Write an H.264 MP4 through ffmpeg (raw RGB frames on its stdin). ffmpeg writes a
    temporary file beside `path` that is renamed into place only when it succeeded."""
    exe = require_ffmpeg()
    frames = movie_frames(states, labels, scale, even=True)
    fh, fw = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        cmd = [exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{fw}x{fh}", "-framerate", f"{fps:g}",
               "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
               "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames),
                              capture_output=True, timeout=600, check=False)
        if proc.returncode != 0:
            msg = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            raise UserError(f"--save-mp4 {path}: ffmpeg failed ({msg})")
    return Path(path)


# ---------------------------------------------------------------- the draws of a run
@nb.njit(cache=True)
def _wake_scan(seed, cfg, wake_k, lo, hi, counts):
    """One pass over every wake-up interval the cells' clocks drew (draws k >= 1: k = 0
    is the start phase). Returns (n, min, max, sum); bins into counts if it has bins."""
    nbins = counts.shape[0]
    width = (hi - lo) / nbins if nbins > 0 else 1.0
    n, mn, mx, sm = 0, np.inf, -np.inf, 0.0
    for c in range(wake_k.shape[0]):
        for k in range(1, wake_k[c]):
            v = rules.wake_interval(seed, cfg, c, k)
            n += 1
            sm += v
            mn = min(mn, v)
            mx = max(mx, v)
            if nbins > 0:
                i = min(nbins - 1, max(0, int((v - lo) / width)))
                counts[i] += 1
    return n, mn, mx, sm


@nb.njit(cache=True)
def _delay_scan(seed, cfg, sends, nbr, lo, hi, counts):
    """One pass over every message the cells sent (send round r, slot s -> draw 8r+s).
    Returns (lost, n not lost, min, max, sum of their latencies); bins as _wake_scan."""
    nbins = counts.shape[0]
    width = (hi - lo) / nbins if nbins > 0 else 1.0
    lost, n, mn, mx, sm = 0, 0, np.inf, -np.inf, 0.0
    link_bad = np.zeros(sends.shape[0] * 8, np.bool_)   # replayed in each link's own order
    links = int(cfg[rules.CFG_LINKS])
    for c in range(sends.shape[0]):
        for r in range(sends[c]):
            for s in range(8):
                if nbr[c, s] < 0 or not rules.sends_on(links, s):
                    continue
                gone, v = rules.message_fate(seed, cfg, c, r * 8 + s, link_bad)
                if gone:
                    lost += 1
                    continue
                n += 1
                sm += v
                mn = min(mn, v)
                mx = max(mx, v)
                if nbins > 0:
                    i = min(nbins - 1, max(0, int((v - lo) / width)))
                    counts[i] += 1
    return lost, n, mn, mx, sm


def _edges(lo: float, hi: float, bins: int) -> tuple[float, float, int]:
    if not hi > lo:     # one value (a constant latency, a jitter-free period): one narrow bar
        half = max(abs(lo) * 0.02, 1e-3)
        return lo - half, lo + half, 1
    return lo, hi, bins


def draw_statistics(swarm: Any, bins: int = HIST_BINS) -> dict[str, dict[str, Any]]:
    """Histograms of the wake-up intervals and message latencies an event-engine swarm
    (AsyncSwarm or SimPySwarm) drew so far: {"wake": {...}, "delay": {...}}, each with
    counts, edges, n, mean; "delay" also counts the lost messages (n + lost = sent)."""
    seed, cfg = int(swarm.seed), np.asarray(swarm.cfg, np.float64)
    empty = np.zeros(0, np.int64)
    out: dict[str, dict[str, Any]] = {}
    n, mn, mx, sm = _wake_scan(seed, cfg, swarm.wake_k, 0.0, 0.0, empty)
    counts = np.zeros(0, np.int64)
    lo = hi = 0.0
    if n:
        lo, hi, k = _edges(mn, mx, bins)
        counts = np.zeros(k, np.int64)
        _wake_scan(seed, cfg, swarm.wake_k, lo, hi, counts)
    out["wake"] = {"counts": counts, "edges": np.linspace(lo, hi, counts.size + 1), "n": int(n),
                   "mean": sm / n if n else None}
    lost, n, mn, mx, sm = _delay_scan(seed, cfg, swarm.sends, swarm.nbr, 0.0, 0.0, empty)
    counts = np.zeros(0, np.int64)
    lo = hi = 0.0
    if n:
        lo, hi, k = _edges(mn, mx, bins)
        counts = np.zeros(k, np.int64)
        _delay_scan(seed, cfg, swarm.sends, swarm.nbr, lo, hi, counts)
    out["delay"] = {"counts": counts, "edges": np.linspace(lo, hi, counts.size + 1), "n": int(n),
                    "mean": sm / n if n else None, "lost": int(lost)}
    return out


# ---------------------------------------------------------------- plots
def _save_fig(fig, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _events(ax, metrics: dict[str, Any]) -> None:
    """Vertical lines at the damage and rotation steps."""
    for i, d in enumerate(metrics.get("damage", [])):
        ax.axvline(d["step"], color="tab:red", ls="--", lw=1, label="damage" if i == 0 else None)
    for i, r in enumerate(metrics.get("rotations", [])):
        ax.axvline(r["step"], color="tab:purple", ls=":", lw=1.2,
                   label="rotation change" if i == 0 else None)


def plot_history(result: Any):
    """Figure: loss vs target (top, log scale when positive) and alive cells (bottom) over time."""
    from matplotlib.figure import Figure

    m, hist = result.metrics, result.history
    steps = [h["step"] for h in hist]
    loss = [np.nan if h["loss"] is None else h["loss"] for h in hist]
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(steps, loss, color="tab:blue", marker=".", ms=3)
    finite = [v for v in loss if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 10 * min(finite):   # spans decades
        ax1.set_yscale("log")
    ax1.set_ylabel(f"loss vs target ({m.get('target')})")
    ax2.plot(steps, [h["alive"] for h in hist], color="tab:green", marker=".", ms=3)
    ax2.set_ylabel("alive cells (alpha > 0.1)")
    ax2.set_xlabel("step" if m["engine"] in ("sync", "lockstep") else "time (steps)")
    for ax in (ax1, ax2):
        _events(ax, m)
        ax.grid(alpha=0.3)
    if m.get("damage") or m.get("rotations"):
        ax1.legend(loc="best", fontsize=8)
    fig.suptitle(f"{m['engine']} engine, {m['width']}x{m['height']} cells, seed {m['seed']}", fontsize=10)
    return fig


def plot_wakeups(result: Any, stats: dict[str, Any]):
    """Figure: histogram of the wake-up intervals (with the exponential clock's density)."""
    from matplotlib.figure import Figure

    cfg = result.metrics["async_config"]
    w = stats["wake"]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    if w["n"]:
        e = w["edges"]
        ax.stairs(w["counts"], e, fill=True, alpha=0.6, label=f"{w['n']:,} intervals, mean {w['mean']:.3g}")
        if cfg["clock"] == "exp":
            x = np.linspace(0, e[-1], 200)
            mean = cfg["mean_interval"]
            ax.plot(x, w["n"] * (e[1] - e[0]) * np.exp(-x / mean) / mean, color="k", lw=1,
                    label=f"exponential, mean {mean:g}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no wake-up intervals drawn", ha="center", transform=ax.transAxes)
    clock = (f"exponential clock, mean {cfg['mean_interval']:g}" if cfg["clock"] == "exp" else
             f"periodic clock, period {cfg['mean_interval']:g}, jitter {cfg['jitter']:g}, drift {cfg['drift']:g}")
    ax.set_title(f"wake-up intervals ({clock})", fontsize=10)
    ax.set_xlabel("interval (steps)")
    ax.set_ylabel("count")
    return fig


def plot_messages(result: Any, stats: dict[str, Any]):
    """Figure: histogram of the message delays (left) and what became of the messages (right)."""
    from matplotlib.figure import Figure

    cfg, msg = result.metrics["async_config"], result.metrics["messages"]
    d = stats["delay"]
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    if d["n"]:
        e = d["edges"]
        ax1.stairs(d["counts"], e, fill=True, alpha=0.6, color="tab:orange",
                   label=f"{d['n']:,} messages not lost, mean {d['mean']:.3g}")
        if d["counts"].size == 1:        # one latency value: show it against zero
            ax1.set_xlim(min(0.0, e[0]), max(2 * e[-1], 1.0))
        ax1.legend(fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no message got through the link", ha="center", transform=ax1.transAxes)
    ax1.set_title(f"message delays ({cfg['latency_dist']} latency {cfg['latency']:g}"
                  + (f"..{cfg['latency_high']:g}" if cfg["latency_dist"] == "uniform" else "") + ")",
                  fontsize=10)
    ax1.set_xlabel("delay (steps)")
    ax1.set_ylabel("count")
    names = ["sent", "lost", "delivered", "dropped", "in flight"]
    vals = [msg["sent"], msg["lost"], msg["delivered"], msg["dropped"], msg["in_flight"]]
    bars = ax2.bar(names, vals, color=["tab:gray", "tab:red", "tab:green", "tab:purple", "tab:blue"])
    ax2.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=8)
    ax2.set_title(f"messages (loss rate {cfg['msg_loss']:g})", fontsize=10)
    ax2.set_xlabel("dropped: the receiver had failed", fontsize=8)
    ax2.tick_params(axis="x", labelsize=8)
    ax2.margins(y=0.15)
    return fig


def save_plots(folder: str | os.PathLike, result: Any) -> list[Path]:
    """Write loss.png, and for an event-engine run wakeups.png and messages.png, into folder
    (made if needed); returns the files written. `result` is a sim.simulate.Result."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    written = [_save_fig(plot_history(result), d / "loss.png")]
    if result.swarm is not None and "async_config" in result.metrics:
        stats = draw_statistics(result.swarm)
        written.append(_save_fig(plot_wakeups(result, stats), d / "wakeups.png"))
        written.append(_save_fig(plot_messages(result, stats), d / "messages.png"))
    return written
