"""`python -m sim.run`: grow a swarm from one seed cell, damage it, measure it.

The command line only: it parses, validates (one-line errors, exit 2), runs
`sim.assemble.simulate` (engines: sync, lockstep, async, simpy; cell backends:
float, fixed, firmware; boards in the grid) and writes the files asked for
(pictures, movies and plots through `sim.render` and `sim.plots`, all atomic).
`--live` hands over to `sim.live` (an interactive window).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boards.mesh import MeshConfig, random_mounts
from boards.swarm import parse_board_spec

from . import paths
from .assemble import simulate
from .atomic import atomic_write
from .damage import FORMS as DAMAGE_FORMS
from .damage import parse_damage
from .engines import DEFAULT_ENGINE, ENGINES, EVENT_ENGINES, MESH_ENGINE
from .errors import ArgParser, UserError, cli_entry
from .live import run_live
from .model import ALIVE_THRESHOLD, FIRE_RATE
from .outputs import check_output, check_output_dir, write_output
from .pictures import load_target_for
from .plots import require_ffmpeg, save_gif, save_mp4, save_plots
from .progress import Progress
from .render import save_png, save_strip
from .rules import CLOCKS, LATENCY_KINDS, LINKS, AsyncConfig
from .simulate import MAX_SEED, MAX_SIZE, Result, movie_steps, parse_rotation, strip_steps
from .weights import load_model

PROG = "python -m sim.run"


ASYNC_ONLY = ("latency", "latency_dist", "latency_high", "msg_loss", "burst", "mtbf", "mttr", "mean_interval",
              "clock", "jitter", "drift", "links")
GRID_ONLY = ("fire_rate",)   # sync and lockstep
MESH_CLOCK = ("mean_interval", "clock", "jitter")   # the event engines' options the mesh takes too
MESH_ONLY = ("wake_ms", "frame_loss", "byte_loss", "byte_corrupt", "copies", "clock_ppm", "miswire", "mount",
             "mirror", "mesh_threads", "reflash", "flash_cuts")
NOT_LIVE = ("damage", "rotate_at", "save_png", "save_strip", "save_state", "json", "save_gif",
            "save_mp4", "save_plots")


def _parser() -> ArgParser:
    ap = ArgParser(
        prog=PROG, allow_abbrev=False,
        description="Grow a swarm of NCA cells from one seed cell; damage it and watch it regrow. "
                    "Prints the final loss against the target, the living cells and the update "
                    "rate; writes pictures, movies, plots, the final state and JSON metrics on "
                    "request, or opens an interactive window (--live).",
        epilog=f"Damage specs (cells: x = column, y = row, (0,0) top-left): {DAMAGE_FORMS}. "
               "Damage at STEP happens after STEP steps. Example: "
               "python -m sim.run --steps 400 "
               "--damage circle:20,20,8@200 --save-strip regrow.png --save-gif regrow.gif")
    ap.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                    help="simpy: every cell a SimPy process with its own clock, messages with "
                         "latency and loss, failures; async: the same swarm as a numba event loop "
                         "(faster, equal to simpy bit for bit); sync: the paper's synchronous grid; "
                         "lockstep: message-passing cells ticking together (equals sync); "
                         "mesh: a grid of emulated ATmega2560 boards, each running the cell firmware, "
                         "wired to their 4 neighbours (needs gcc-avr, libsimavr-dev) "
                         "(default: %(default)s)")
    ap.add_argument("--backend", default="float",
                    help="what computes a cell (simpy engine): float, fixed (the firmware's integer "
                         "arithmetic, codegen's golden model; on the async engine too, equal and faster), firmware (the generated C, built for "
                         "this machine and called through ctypes) (default: %(default)s)")
    ap.add_argument("--model", help=f"weights .npz or a shipped model's name, e.g. lizard_regenerating_ef (default: "
                                    f"{_show(paths.DEFAULT_MODEL)}, the mesh {_show(paths.BOARD_MODEL)}; "
                                    f"nca-convert makes one from a published model)")
    ap.add_argument("--target", help="target name (lizard, ...) or image path for the loss "
                                     "(default: the model's recorded target, else lizard)")
    ap.add_argument("--size", type=int, default=40, help="grid is N x N cells (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1000, help="steps (event engines: time units) to run "
                                                            "(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    ap.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                    help="rotate the perception's gradient kernels by DEG degrees (the paper's rotation experiment)")
    ap.add_argument("--rotate-at", action="append", default=[], metavar="DEG@STEP",
                    help="set the rotation to DEG degrees after STEP steps, e.g. 90@300 (repeatable)")
    ap.add_argument("--damage", action="append", default=[], metavar="SPEC",
                    help="wipe cells, e.g. circle:20,20,8@200 (repeatable; see below)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress line on stderr (default: only when stderr is a terminal)")
    g = ap.add_argument_group("sync and lockstep engines")
    g.add_argument("--fire-rate", type=float, help=f"probability that a cell updates in a step "
                                                   f"(default: {FIRE_RATE})")
    g = ap.add_argument_group("event engines (simpy, async): clocks, links, failures")
    g.add_argument("--clock", choices=tuple(CLOCKS), help="exp: exponential wake-up intervals; "
                   "periodic: a fixed period (--mean-interval) with --jitter and --drift, each cell "
                   "starting at a random phase (default: exp)")
    g.add_argument("--mean-interval", type=float, help="mean wake-up interval of a cell in steps "
                                                       "(periodic: the period; default: 2, i.e. fire rate 0.5)")
    g.add_argument("--jitter", type=float, help="periodic clock: each interval +- a uniform jitter "
                                                "of up to this many steps (default: 0)")
    g.add_argument("--drift", type=float, help="periodic clock: each cell's rate off by up to +- "
                                               "this fraction, e.g. 0.01 = 1%% (default: 0)")
    g.add_argument("--latency", type=float, help="message latency in steps (const: the value; "
                                                 "uniform: the low end; exp: the mean; default: 0)")
    g.add_argument("--latency-dist", choices=tuple(LATENCY_KINDS), help="latency distribution "
                                                                        "(default: const)")
    g.add_argument("--latency-high", type=float, help="high end of a uniform latency")
    g.add_argument("--msg-loss", type=float, help="probability that a message is lost (0..1)")
    g.add_argument("--burst", type=float, metavar="L", help="lost messages come in runs of mean length L "
                   "on each link (a Gilbert-Elliott channel; --msg-loss is the mean loss; default: each "
                   "message lost independently)")
    g.add_argument("--links", choices=tuple(LINKS), help="direct: a link to each of the 8 neighbours; "
                   "relay: links to the 4 orthogonal neighbours only (boards wired N, E, S, W), the frames "
                   "to N and S also carrying the sender's last W and E states, which the receiver takes "
                   "as its diagonal neighbours' (default: direct)")
    g.add_argument("--mtbf", type=float, help="mean running time between a cell's failures "
                                              "(0: no failures)")
    g.add_argument("--mttr", type=float, help="mean time until a failed cell restarts with a zero "
                                              "state (default: 1)")
    g = ap.add_argument_group("the mesh of emulated boards (mesh engine; also --clock, --mean-interval, "
                              "--jitter; --damage power-cycles the boards)")
    g.add_argument("--wake-ms", type=float, help="a board's mean wake interval in ms of its 16 MHz clock; "
                                                 "a time unit is --wake-ms / --mean-interval (default: 100)")
    g.add_argument("--clock-ppm", type=float, help="each board's clock off by up to +- this many ppm, "
                                                   "seeded (default: 5000, a ceramic resonator)")
    g.add_argument("--frame-loss", type=float, help="probability that a frame is lost on a wire (0..1)")
    g.add_argument("--byte-loss", type=float, help="probability that a byte is lost on a wire (0..1)")
    g.add_argument("--byte-corrupt", type=float, help="probability that a byte arrives with a bit "
                                                      "flipped (0..1)")
    g.add_argument("--copies", type=int, help="each board sends every state frame this many times back "
                   "to back, 1 to 3: a receiver keeps the first good copy (default: 1)")
    g.add_argument("--miswire", action="append", metavar="X,Y", help="board (X,Y)'s north wire lands "
                   "on its north neighbour's west port (repeatable): detected and reported")
    g.add_argument("--mount", choices=("straight", "random"), help="random: every board but the host's "
                   "(0,0) mounted turned by a random quarter turn (seeded); the boards find their rotation "
                   "(default: straight)")
    g.add_argument("--mirror", action="append", metavar="X,Y", help="board (X,Y) mounted mirrored "
                   "(repeatable): reported, and it stays an empty cell")
    g.add_argument("--reflash", action="append", metavar="MODEL@STEP[:keep]", help="at STEP, flash MODEL's "
                   "genome into the host's board (0,0) through its host port and start a new run with its seed "
                   "(:keep: the genome says the boards keep their states, and the run goes on): the boards pass "
                   "the genome on (genome gossip); the JSON says when every board ran it and what the grid's "
                   "census counted")
    g.add_argument("--flash-cuts", metavar="X,Y", help="board (X,Y) loses power at every flash operation of "
                   "its update in turn (one per attempt, torn halfway every other time) after --reflash")
    g.add_argument("--mesh-threads", type=int, help="emulator threads (default: 2)")
    g = ap.add_argument_group("hardware in the loop (simpy engine)")
    g.add_argument("--board", action="append", default=[], metavar="X,Y=URL",
                   help="cell (X,Y) runs on a board over the cell link (repeatable): a pyserial URL or "
                        "device (socket://HOST:PORT, /dev/ttyACM0), or emu:cortex-m0 / emu:avr for an "
                        "emulated board started for the run; the other cells run --backend (fixed: "
                        "equal to an all-fixed-point run), and a board without the model's genome is "
                        "flashed first")
    g.add_argument("--realtime", type=float, metavar="FACTOR",
                   help="pace the SimPy clock to wall time (simpy.rt): FACTOR seconds per time unit")
    g = ap.add_argument_group("output")
    g.add_argument("--save-png", metavar="FILE", help="picture of the final state")
    g.add_argument("--save-strip", metavar="FILE", help="growth strip: ~8 evenly spaced steps plus "
                                                        "the damage and rotation steps")
    g.add_argument("--save-gif", metavar="FILE.gif", help="animated GIF of the run")
    g.add_argument("--save-mp4", metavar="FILE.mp4", help="MP4 video of the run (needs ffmpeg)")
    g.add_argument("--frame-every", type=int, metavar="K", help="GIF/MP4: a frame every K steps "
                                                                "(default: about 100 frames)")
    g.add_argument("--fps", type=float, default=20.0, help="GIF/MP4 frames per second (default: %(default)s)")
    g.add_argument("--save-plots", metavar="DIR", help="plots into DIR: loss.png (loss vs target and "
                   "alive cells over time); event engines also wakeups.png (wake-up intervals) and "
                   "messages.png (message delays; lost, delivered, dropped)")
    g.add_argument("--save-state", metavar="FILE.npy", help="final state, H x W x 16 float32 .npy")
    g.add_argument("--json", metavar="FILE", help="metrics (messages sent, lost, staleness, ...) and the "
                                                  "{step, loss, alive} history")
    g = ap.add_argument_group("interactive window")
    g.add_argument("--live", action="store_true", help="watch the swarm in a window: click to cut a "
                   "circle out, sliders for rotation, speed and cut radius, pause, model choice "
                   "(the .npz files in weights/); --steps is ignored")
    g.add_argument("--live-radius", type=float, default=5.0, metavar="R",
                   help="radius in cells of the circle a click cuts out (default: %(default)s)")
    g.add_argument("--live-speed", type=float, default=2.0, metavar="T",
                   help="steps (time units) the swarm advances per frame (default: %(default)s)")
    g.add_argument("--live-frames", type=int, metavar="N", help="close the window after N frames")
    g.add_argument("--live-screenshot", metavar="FILE.png", help="save the window as a picture "
                   "after --live-frames frames (default 30) and exit; works without a display too")
    return ap


def _show(path: Path) -> str:
    """A path as the user would type it from here: relative when below the current folder."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_args(a: argparse.Namespace) -> None:
    """Engine applicability and numeric ranges: one-line errors before anything runs."""
    for dest in ASYNC_ONLY:
        if a.engine == MESH_ENGINE and dest in MESH_CLOCK:
            continue
        if getattr(a, dest) is not None and a.engine == MESH_ENGINE:
            raise UserError(f"{_flag(dest)} does not apply to --engine mesh: its wires are real (see "
                            f"--frame-loss, --byte-loss, --byte-corrupt, --clock-ppm)")
        if getattr(a, dest) is not None and a.engine not in EVENT_ENGINES:
            raise UserError(f"{_flag(dest)} applies to --engine async|simpy only, not --engine {a.engine} "
                            f"(its cells exchange no messages and have no clocks)")
    for dest in MESH_ONLY:
        if getattr(a, dest) is not None and a.engine != MESH_ENGINE:
            raise UserError(f"{_flag(dest)} applies to --engine mesh only, not --engine {a.engine}")
    for dest in GRID_ONLY:
        if getattr(a, dest) is not None and a.engine in (*EVENT_ENGINES, MESH_ENGINE):
            raise UserError(f"{_flag(dest)} applies to --engine sync|lockstep only; the {a.engine} engine's "
                            f"update rate is set by --mean-interval")

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    def finite(dest: str) -> None:
        v = getattr(a, dest)
        need(v is None or math.isfinite(v), f"{_flag(dest)} must be a finite number, got {v}")

    for dest in ("rotate", "fire_rate", "mean_interval", "latency", "latency_high", "msg_loss", "burst",
                 "mtbf", "mttr", "jitter", "drift", "fps", "live_radius", "live_speed", "wake_ms", "clock_ppm",
                 "frame_loss", "byte_loss", "byte_corrupt"):
        finite(dest)
    if a.engine == MESH_ENGINE:
        need(not a.live, "--live does not take --engine mesh")
        need(not a.rotate and not a.rotate_at, "--engine mesh perceives unrotated (--rotate, --rotate-at)")
    need(a.steps >= 0, f"--steps must be an integer >= 0, got {a.steps}")
    need(3 <= a.size <= MAX_SIZE, f"--size must be within [3, {MAX_SIZE}], got {a.size}")
    need(0 <= a.seed <= MAX_SEED, f"--seed must be within [0, 2**63 - 1], got {a.seed}")
    if a.fire_rate is not None:
        need(0.0 <= a.fire_rate <= 1.0, f"--fire-rate must be within [0, 1], got {a.fire_rate}")
    if a.mean_interval is not None:
        need(a.mean_interval > 0, f"--mean-interval must be > 0, got {a.mean_interval}")
    if a.latency is not None:
        need(a.latency >= 0, f"--latency must be >= 0, got {a.latency}")
    if a.msg_loss is not None:
        need(0.0 <= a.msg_loss <= 1.0, f"--msg-loss must be within [0, 1], got {a.msg_loss}")
    if a.burst is not None:
        need(a.burst >= 1.0, f"--burst must be a mean run length >= 1 (messages), got {a.burst}")
        need(bool(a.msg_loss), "--burst needs --msg-loss > 0 (the mean loss of the bursty links)")
        need(a.msg_loss <= a.burst / (a.burst + 1.0), f"--msg-loss {a.msg_loss} is too high for bursts of "
             f"mean length {a.burst:g} (at most {a.burst / (a.burst + 1.0):.3g})")
    dist = a.latency_dist or "const"
    if a.latency_high is not None:
        need(dist == "uniform", "--latency-high needs --latency-dist uniform")
        need(a.latency_high >= (a.latency or 0.0),
             f"--latency-high ({a.latency_high}) must be >= --latency ({a.latency or 0.0})")
    need(dist != "uniform" or a.latency_high is not None,
         "--latency-dist uniform needs --latency-high (and optionally --latency as the low end)")
    need(dist != "exp" or a.latency is not None, "--latency-dist exp needs --latency MEAN")
    if a.mtbf is not None:
        need(a.mtbf >= 0, f"--mtbf must be >= 0 (0: no failures), got {a.mtbf}")
    if a.mttr is not None:
        need(a.mttr > 0, f"--mttr must be > 0, got {a.mttr}")
        need(bool(a.mtbf), "--mttr needs --mtbf > 0 (cells only restart after failing)")
    for dest in ("jitter", "drift"):
        if getattr(a, dest) is not None:
            need(a.clock == "periodic", f"{_flag(dest)} needs --clock periodic (the exponential "
                                        f"clock is random already)")
    if a.clock == "periodic":
        period = 2.0 if a.mean_interval is None else a.mean_interval
        drift, jitter = a.drift or 0.0, a.jitter or 0.0
        need(0.0 <= drift < 1.0, f"--drift must be within [0, 1), got {drift}")
        need(0.0 <= jitter < period * (1.0 - drift),
             f"--jitter must be >= 0 and < period x (1 - drift) = {period * (1.0 - drift):g} "
             f"(an interval must stay positive), got {jitter}")
    need(a.fps > 0, f"--fps must be > 0, got {a.fps}")
    if a.board or a.realtime is not None:
        need(a.engine == "simpy", f"--board and --realtime need --engine simpy, not --engine {a.engine}")
        need(not a.live, "--board and --realtime cannot be combined with --live")
    if a.realtime is not None:
        need(math.isfinite(a.realtime) and a.realtime > 0, f"--realtime must be > 0, got {a.realtime}")
    if a.frame_every is not None:
        need(a.frame_every >= 1, f"--frame-every must be an integer >= 1, got {a.frame_every}")
        need(bool(a.save_gif or a.save_mp4), "--frame-every needs --save-gif or --save-mp4")
    need(a.live_radius > 0, f"--live-radius must be > 0, got {a.live_radius}")
    need(a.live_speed > 0, f"--live-speed must be > 0, got {a.live_speed}")
    if a.live_frames is not None:
        need(a.live_frames >= 1, f"--live-frames must be an integer >= 1, got {a.live_frames}")
    for dest in ("live_frames", "live_screenshot"):
        if getattr(a, dest) is not None:
            need(a.live, f"{_flag(dest)} needs --live")
    if a.live:
        for dest in NOT_LIVE:
            v = getattr(a, dest)
            need(not v, f"{_flag(dest)} cannot be combined with --live (in the window: click to "
                        f"cut, the slider rotates; --live-screenshot saves a picture)")


def mesh_config_from(a: argparse.Namespace) -> MeshConfig | None:
    """The MeshConfig of parsed mesh options (None for another engine); its errors are one line."""
    if a.engine != MESH_ENGINE:
        return None

    def board(flag: str, spec: str, first_row: int = 0) -> int:
        try:
            x, y = (int(v) for v in spec.split(","))
        except ValueError:
            raise UserError(f"{flag} takes X,Y (a board's column and row), got {spec!r}") from None
        if not (0 <= x < a.size and first_row <= y < a.size):
            what = "board with a north neighbour" if first_row else "such board"
            raise UserError(f"{flag} {spec}: no {what} there on the {a.size}x{a.size} grid")
        if flag == "--mirror" and x == y == 0:
            raise UserError("--mirror 0,0: the host's board (0,0) defines north, it cannot be mirrored")
        return y * a.size + x

    miswire = [board("--miswire", spec, 1) for spec in a.miswire or []]
    reflash = []
    for spec in a.reflash or []:
        name, _, when = spec.rpartition("@")
        step, colon, keep = when.partition(":")
        try:
            at = float(step)
        except ValueError:
            raise UserError(f"--reflash takes MODEL@STEP[:keep], got {spec!r}") from None
        if colon and keep != "keep":
            raise UserError(f"--reflash takes MODEL@STEP[:keep], got {spec!r}")
        if not name or not 0 <= at <= a.steps:
            raise UserError(f"--reflash {spec}: name a model and a step within the run's 0..{a.steps}")
        load_model(name)            # a missing or bad model is its one-line error now
        reflash.append((at, name, bool(colon)))
    if a.flash_cuts and not reflash:
        raise UserError("--flash-cuts needs --reflash (the cuts fall on the update it starts)")
    cuts = board("--flash-cuts", a.flash_cuts) if a.flash_cuts else -1
    mirrored = tuple(board("--mirror", spec) for spec in a.mirror or [])
    if a.mount == "random":
        mount = random_mounts(a.size, a.size, a.seed, mirrored)
    else:
        mount = "".join("4" if i in mirrored else "0" for i in range(a.size * a.size)) if mirrored else ""
    cfg = MeshConfig(wake_ms=100.0 if a.wake_ms is None else a.wake_ms,
                     clock_ppm=5000.0 if a.clock_ppm is None else a.clock_ppm,
                     frame_loss=a.frame_loss or 0.0, byte_loss=a.byte_loss or 0.0,
                     byte_corrupt=a.byte_corrupt or 0.0, copies=1 if a.copies is None else a.copies,
                     miswire=tuple(miswire), mount=mount, reflash=tuple(reflash), flash_cuts=cuts,
                     threads=2 if a.mesh_threads is None else a.mesh_threads)
    return cfg.validate()


def async_config_from(a: argparse.Namespace) -> AsyncConfig:
    """The AsyncConfig of parsed event-engine options (defaults where not given)."""
    return AsyncConfig(
        clock=CLOCKS[a.clock or "exp"],
        mean_interval=2.0 if a.mean_interval is None else a.mean_interval,
        jitter=a.jitter or 0.0, drift=a.drift or 0.0,
        latency_kind=LATENCY_KINDS[a.latency_dist or "const"],
        latency=a.latency or 0.0, latency_high=a.latency_high or 0.0,
        loss=a.msg_loss or 0.0, burst=a.burst or 0.0, mtbf=a.mtbf or 0.0,
        mttr=1.0 if a.mttr is None else a.mttr, links=LINKS[a.links or "direct"])


def _summary(r: Result, model_path: str, written: list[str]) -> str:
    m = r.metrics
    rate = m["cell_updates_per_second"]
    loss = m["loss"]
    lines = [
        f"{m['engine']} engine, {m['width']}x{m['height']} cells, {m['steps']} steps, seed {m['seed']}, "
        f"model {model_path}, target {m['target']}",
        f"final loss {loss:.5f}" if loss is not None else "final loss n/a (state not finite)",
    ]
    lines[-1] += (f", {m['alive_cells']} alive cells (alpha > {ALIVE_THRESHOLD}), "
                  f"{m['cell_updates']} cell updates in {m['engine_seconds']:.2f} s"
                  + (f" ({rate:,.0f} updates/s)" if rate else ""))
    for d in m["damage"]:
        lines.append(f"damage {d['spec']}: {d['cells']} cells wiped at step {d['step']}")
    if m["regrowth_mse"] is not None:
        lines.append(f"regrowth: RGBA mean squared difference to the pattern just before the first cut "
                     f"{m['regrowth_mse']:.3g}")
        sh = m["regrowth_shift"]
        if sh is not None and (sh["dy"], sh["dx"]) != (0, 0):
            where = [f"{abs(n)} {unit}{'s' if abs(n) > 1 else ''} {(up, down)[n < 0]}"
                     for n, unit, up, down in ((sh["dy"], "row", "higher", "lower"),
                                               (sh["dx"], "column", "to the left", "to the right")) if n]
            lines.append(f"  the pattern came back {' and '.join(where)}; moved back, it differs by "
                         f"{sh['mse']:.3g}")
    for t in m["rotations"]:
        lines.append(f"rotation set to {t['deg']:g} degrees at step {t['step']}")
    if "swarm" in m:
        s, msg = m["swarm"], m["messages"]
        stale = msg["mean_inbox_staleness"]
        relay = m.get("async_config", {}).get("links") == "relay"
        lines.append(("relay links (4 per cell), frames: " if relay else "messages: ")
                     + f"{msg['sent']} sent, {msg['lost']} lost, {msg['delivered']} delivered "
                     f"(mean delay {msg['mean_delay']:.3g})"
                     + (f", mean inbox staleness {stale:.3g}" if stale is not None else "")
                     + f"; failures {s['failures']}, restarts {s['restarts']}")
    if "mesh" in m:
        b = m["mesh"]
        lines.append(f"mesh: {b['boards_running']} boards running, {b['wakes']} wakes, frames {b['sent']} sent, "
                     f"{b['received']} received, {b['lost']} lost, {b['corrupt']} corrupt, {b['refused']} "
                     f"refused ({b['miswired']} miswired, {b['foreign']} of another model); replay of "
                     f"{b['wakes_replayed']} wakes: {b['replay_mismatches']} mismatches; "
                     f"{b['emulated_seconds']:.1f} s emulated in {b['emulator_seconds']:.1f} s")
        if b["mounted_turned"] or b["mounted_mirrored"]:
            lines.append(f"mounts: {b['mounted_turned']} boards turned, {len(b['mounted_mirrored'])} mirrored; "
                         f"{b['boards_mirrored']} boards report a mirror; {b['mounts_found_wrong']} placed "
                         f"boards found their mount wrong; {b['inbox_mismatches']} inbox entries from the "
                         f"wrong neighbour")
        for r in b.get("reflash", []):
            every = r["all_boards_s"]
            lines.append(f"reflash at step {r['step']:g}: generation {r['generation']} (model {r['model_hash']}) "
                         f"in the host's board after {r['host_board_s']:.1f} s, on every board "
                         + (f"after {every:.1f} s" if every is not None else "not by the end of the run"))
        if "census" in b:
            c = b["census"]
            lines.append(f"census: {c['boards']} boards reported ("
                         + ", ".join(f"{n} on {k}" for k, n in c["genomes"].items()) + ")")
    lines.append("wrote " + ", ".join(written) if written else "wrote no files (see --save-png, "
                 "--save-strip, --save-gif, --save-plots, --save-state, --json)")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, simulate, write; every bad input is a one-line error (exit 2)."""
    a = _parser().parse_args(argv)
    _check_args(a)
    damage = [parse_damage(s) for s in a.damage]
    rotations = [parse_rotation(s) for s in a.rotate_at]
    outputs = [(a.save_state, "--save-state"), (a.save_png, "--save-png"),
               (a.save_strip, "--save-strip"), (a.save_gif, "--save-gif"),
               (a.save_mp4, "--save-mp4"), (a.json, "--json"), (a.live_screenshot, "--live-screenshot")]
    seen: dict[str, str] = {}
    for path, flag in outputs + [(a.save_plots, "--save-plots")]:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise UserError(f"{seen[key]} and {flag} name the same file {path}")
        seen[key] = flag
        if flag == "--save-plots":
            check_output_dir(path, flag)
        else:
            check_output(path, flag)
    if a.save_mp4:
        require_ffmpeg()
    boards = {}
    if a.board:
        for spec in a.board:
            x, y, url = parse_board_spec(spec)
            if (x, y) in boards:
                raise UserError(f"--board: cell ({x},{y}) is given twice")
            boards[(x, y)] = url
    model, model_path = load_model(a.model if a.model or a.engine != MESH_ENGINE else paths.BOARD_MODEL)
    target, target_name = load_target_for(model, a.target)
    config = async_config_from(a)
    mesh = mesh_config_from(a)
    if a.live:
        return run_live(model, model_path, engine=a.engine, size=a.size, seed=a.seed, rotate=a.rotate,
                        fire_rate=FIRE_RATE if a.fire_rate is None else a.fire_rate, config=config,
                        target=target, radius=a.live_radius, speed=a.live_speed, frames=a.live_frames,
                        screenshot=a.live_screenshot)
    strip = set(strip_steps(a.steps, damage, extra=[r.step for r in rotations])) if a.save_strip else set()
    movie_at = set(movie_steps(a.steps, a.frame_every)) if (a.save_gif or a.save_mp4) else set()
    bar = None
    if Progress.wanted(a.progress):
        bar = Progress(a.steps, "steps" if a.engine not in (*EVENT_ENGINES, MESH_ENGINE) else "time units")
    try:
        r = simulate(model, engine=a.engine, steps=a.steps, size=a.size, seed=a.seed, rotate=a.rotate,
                     damage=damage, target=target,
                     fire_rate=FIRE_RATE if a.fire_rate is None else a.fire_rate,
                     async_config=config, frame_steps=strip | movie_at, rotations=rotations,
                     progress=bar.update if bar else None, backend=a.backend,
                     boards=boards or None, realtime_factor=a.realtime, mesh=mesh,
                     log=lambda m: print(m, file=sys.stderr))
    finally:
        if bar:
            bar.close()
    r.metrics["target"] = target_name
    r.metrics["model"] = model_path
    written: list[str] = []
    if a.save_state:
        write_output(a.save_state, "--save-state",
               lambda p: atomic_write(p, lambda f: np.save(f, r.state, allow_pickle=False)))
        written.append(a.save_state)
    if a.save_png:
        write_output(a.save_png, "--save-png", lambda p: save_png(p, r.state))
        written.append(a.save_png)
    if a.save_strip:
        fr = [f for f in r.frames if f.step in strip]
        write_output(a.save_strip, "--save-strip", lambda p: save_strip(p, [f.state for f in fr],
                                                                    [f.label() for f in fr]))
        written.append(a.save_strip)
    movie_frames = [f for f in r.frames if f.step in movie_at]
    movie = ([f.state for f in movie_frames], [f.label() for f in movie_frames])
    if a.save_gif:
        write_output(a.save_gif, "--save-gif", lambda p: save_gif(p, *movie, fps=a.fps))
        written.append(a.save_gif)
    if a.save_mp4:
        write_output(a.save_mp4, "--save-mp4", lambda p: save_mp4(p, *movie, fps=a.fps))
        written.append(a.save_mp4)
    plot_files: list[str] = []
    if a.save_plots:
        def plots(folder: str) -> None:
            plot_files.extend(str(Path(a.save_plots) / q.name) for q in save_plots(folder, r))

        write_output(a.save_plots, "--save-plots", plots)
        written.extend(plot_files)
    if a.json:
        files = {flag.lstrip("-"): path for path, flag in outputs if path}
        if plot_files:
            files["save-plots"] = plot_files
        doc = dict(r.metrics, history=r.history, files=files)
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
        write_output(a.json, "--json", lambda p: atomic_write(p, lambda f: f.write(text), binary=False))
        written.append(a.json)
    print(_summary(r, model_path, written))
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
