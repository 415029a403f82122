"""The damage of the regenerating recipe: which samples of a batch are cut, the cuts'
shapes, and how a cut is applied.

A cut wipes the cells under its mask (the paper's circles; --damage-shapes mixed: or a
straight cut). --damage-shapes slip adds a third kind, which wipes nothing: the tissue
inside a small disc is moved by one cell, so the disc no longer lines up with the
tissue around it, and the loss asks the disc to move back. A cut lizard that regrows
one row off does so because its regrown middle settles one row off and the rest follows
it (docs/regrowth.md, "A slipped middle drags the lizard"); slips train the opposite,
the minority of the tissue yielding to the majority.
"""
from __future__ import annotations

import numpy as np

from sim.damage import slip, wipe

# the eight one-cell moves a slip draws from: (rows, columns)
SLIP_MOVES = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)], np.int64)
SLIP_RADIUS = (0.1, 0.15)   # a slipped disc's radius: lowest and span, in make_circle_masks' coordinates


def make_circle_masks(rng: np.random.Generator, n: int, h: int, w: int,
                      radius: tuple[float, float] = (0.1, 0.3)) -> np.ndarray:
    """The notebook's damage: (n, h, w) bool, True inside a circle with centre
    U(-0.5, 0.5)^2 and radius U(0.1, 0.4) in coordinates linspace(-1, 1) (or the
    `radius` given as its lowest value and span)."""
    x = np.linspace(-1.0, 1.0, w)[None, None, :]
    y = np.linspace(-1.0, 1.0, h)[None, :, None]
    center = rng.random((2, n, 1, 1)) - 0.5
    r = rng.random((n, 1, 1)) * radius[1] + radius[0]
    x, y = (x - center[0]) / r, (y - center[1]) / r
    return x * x + y * y < 1.0


def make_half_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Straight cuts: (n, h, w) bool, True beyond a line at a uniform angle whose
    distance from the grid's centre is U(-0.15, 0.35) in the coordinates of
    make_circle_masks, so that a cut takes from a third to a little over half of the
    picture: the right half of the lizard is the angle 0 at distance 0."""
    x = np.linspace(-1.0, 1.0, w)[None, None, :]
    y = np.linspace(-1.0, 1.0, h)[None, :, None]
    a = rng.uniform(0.0, 2.0 * np.pi, (n, 1, 1))
    d = rng.uniform(-0.15, 0.35, (n, 1, 1))
    return x * np.cos(a) + y * np.sin(a) > d


def make_damage(rng: np.random.Generator, shapes: str, n: int, h: int,
                w: int) -> tuple[np.ndarray, np.ndarray]:
    """The cuts of a batch: masks (n, h, w) and moves (n, 2). The paper's circles, or
    ("mixed") each one a circle or a straight cut with even odds, or ("slip") a circle,
    a straight cut or a slipped disc with odds of a third each, or ("only-slips") each
    one a slipped disc. A wipe's move is (0, 0); a slip's is one of SLIP_MOVES. The
    circles' draws come first, so "circle" keeps the paper's random stream, and "mixed"
    the stream it had before slips."""
    masks = make_circle_masks(rng, n, h, w)
    moves = np.zeros((n, 2), np.int64)
    if shapes == "only-slips":
        masks = make_circle_masks(rng, n, h, w, SLIP_RADIUS)
        moves[:] = SLIP_MOVES[rng.integers(0, len(SLIP_MOVES), n)]
    elif shapes in ("mixed", "slip"):
        kind = rng.random(n)
        halves = make_half_masks(rng, n, h, w)
        straight = kind < 0.5 if shapes == "mixed" else (kind >= 1 / 3) & (kind < 2 / 3)
        masks[straight] = halves[straight]
        if shapes == "slip":
            slip = kind >= 2 / 3
            discs = make_circle_masks(rng, n, h, w, SLIP_RADIUS)
            dirs = rng.integers(0, len(SLIP_MOVES), n)
            masks[slip] = discs[slip]
            moves[slip] = SLIP_MOVES[dirs[slip]]
    return masks, moves


def apply_cut(x: np.ndarray, mask: np.ndarray, move: np.ndarray) -> np.ndarray:
    """One sample (h, w, c) cut: wiped under the mask, or, for a move (rows, columns) other
    than (0, 0), the tissue under the mask slipped by the move (sim.damage.slip)."""
    if not move.any():
        return wipe(x, mask)
    return slip(x, mask, dx=int(move[1]), dy=int(move[0]))


def pick_reseed_and_cuts(left: np.ndarray, n_cut: int) -> tuple[int, np.ndarray]:
    """Which sample of a batch sorted worst first is replaced by the seed, and which are
    cut. The paper's recipe: the worst, and the n_cut best. Samples still regrowing from
    an earlier cut (left > 0, --regrow-visits) are spared both: a lizard that regrows
    wrong is the batch's worst, and reseeding it would hide exactly what training must
    see. If every sample is regrowing the worst is reseeded all the same."""
    free = np.flatnonzero(left == 0)
    reseed = int(free[0]) if free.size else 0
    cut = np.array([i for i in free[::-1] if i != reseed][:n_cut], np.int64)
    return reseed, np.sort(cut)


def cut_in_groups(x0: np.ndarray, cut: np.ndarray, dmg: np.ndarray, copies: int,
                  moves: np.ndarray | None = None) -> None:
    """Cut the samples x0[cut] in place, one mask of dmg (and move of moves) per group of
    `copies` consecutive samples, each group's samples all taking its first one's state:
    runs from one wound under different fire orders (--cut-copies; with 1 the paper's one
    cut per sample)."""
    heads = x0[cut[::copies]].copy()
    for i, slot in enumerate(cut):
        g = i // copies
        x0[slot] = apply_cut(heads[g], dmg[g], np.zeros(2, np.int64) if moves is None else moves[g])


def path_cells(batch: int, H: int, W: int, reseed: int, cut: np.ndarray, dmg: np.ndarray | None,
               copies: int) -> np.ndarray:
    """The cells --path-loss compares along a rollout (batch, H, W): none of the new seed
    (it is still growing), a cut sample's cells outside its cut (the tissue the cut
    spared must stay where it is), every cell of the others."""
    cells = np.ones((batch, H, W), np.bool_)
    cells[reseed] = False
    for i, slot in enumerate(cut):
        cells[slot] = ~dmg[i // copies]
    return cells
