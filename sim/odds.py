"""python -m sim.odds: how often a cut pattern regrows in place on the async swarm.

Whether a cut lizard comes back where it was or one row off is decided by the order
the cells fire in after the cut, not by the grown state (docs/regrowth.md). Counting
seeds of `sim.run --damage` measures that probability coarsely (30 seeds: +-14 % at
95 %). This grows the pattern from a few seeds, cuts it, and lets it regrow from each
cut state under many fresh fire orders: the cells' exponential clocks have no memory,
so a fresh engine started on the cut state is the same random process as the run
going on. It prints the share that comes back in place (`regrowth_mse` at or below
the bound) with a 95 % Wilson interval. With --slip the damage wipes nothing: the
tissue under it is moved by a cell or more, and the share is of the runs where it
moved back rather than the rest of the pattern following it. --first-seed measures on
grown seeds no test uses; --then looks again, later, at each run that missed, to tell a
late regrowth from a moved one.

    python -m sim.odds --model lizard_regenerating --damage circle:20,20,8@1000 --seeds 10 --orders 20
    python -m sim.odds --first-seed 100 --seeds 100 --orders 10 --then 600
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence

import numpy as np

from .atomic import atomic_write
from .cell_backends import BackendFactory
from .damage import DamageError, parse_damage, slip as slipped, wipe
from .engines import AsyncEngine
from .errors import ArgParser, UserError, cli_entry
from .model import seed_state
from .outputs import check_output, write_output
from .progress import Progress
from .rules import AsyncConfig
from .simulate import MAX_SIZE, regrowth_mse, regrowth_shift
from .spec import Params
from .weights import load_model

PROG = "python -m sim.odds"
ORDER_SEEDS = 1_000_000      # fresh orders' seeds: ORDER_SEEDS + grown seed * MAX_ORDERS + order
MAX_ORDERS = 10_000
GROWN_SEEDS = 10_000         # grown seeds 0..GROWN_SEEDS-1 (train.odds_es grows its own above them)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a share k/n (sound at 0 and n, unlike k/n +- 2 sd)."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def advanced(state: np.ndarray, params: Params, seed: int, steps: int,
             cell: BackendFactory | None = None, config: AsyncConfig | None = None) -> np.ndarray:
    """`state` after `steps` steps of the async swarm (`config`, default clocks and links) under
    the fire order of `seed`: a lizard grown from the seed state, or a wound regrown. `cell`
    builds what computes the cells from `params` (default: the float model; the fixed-point
    golden model for one)."""
    e = AsyncEngine(state.copy(), params, seed, config or AsyncConfig(),
                    None if cell is None else cell(params, None))
    e.advance(steps)
    return e.state.copy()


def regrowth_odds(params: Params, damage: str, after: int, seeds: int, orders: int, size: int = 40,
                  bound: float = 1e-3, progress: Callable[[float], None] | None = None,
                  slip: tuple[int, int] | None = None, first_seed: int = 0, then: int = 0) -> dict:
    """For grown seeds first_seed..first_seed+seeds-1: grow to the damage's step, cut (or,
    with `slip` (dx, dy), move the damaged cells' tissue by that many cells instead),
    regrow `after` steps under `orders` fresh fire orders; the regrowth_mse of every run
    and the share in place. With `then`, each run not in place goes on `then` steps more
    and is told apart: late (in place by then), moved (the best whole-grid move of
    `regrowth_shift` is not none) or off in place."""
    cut = parse_damage(damage)
    mask = cut.mask(size, size)
    mse = np.empty((seeds, orders))
    misses = []
    for i, s in enumerate(range(first_seed, first_seed + seeds)):
        before = advanced(seed_state(size, size), params, s, cut.step)
        wound = wipe(before, mask) if slip is None else slipped(before, mask, *slip)
        for r in range(orders):
            e = AsyncEngine(wound.copy(), params, ORDER_SEEDS + s * MAX_ORDERS + r, AsyncConfig())
            e.advance(after)
            mse[i, r] = regrowth_mse(e.state, before)
            if then and mse[i, r] > bound:
                e.advance(after + then)
                later, shift = regrowth_mse(e.state, before), regrowth_shift(e.state, before)
                kind = "late" if later <= bound else "moved" if (shift["dy"], shift["dx"]) != (0, 0) else "off"
                misses.append({"seed": s, "order": r, "regrowth_mse": float(mse[i, r]), "then": later,
                               "shift": shift, "kind": kind})
            if progress is not None:
                progress(i * orders + r + 1)
    ok = mse <= bound
    k, n = int(ok.sum()), int(ok.size)
    lo, hi = wilson(k, n)
    out = {"damage": cut.spec, "after": after, "size": size, "bound": bound, "first_seed": first_seed,
           "seeds": seeds, "orders": orders, "slip": None if slip is None else list(slip), "in_place": k,
           "runs": n, "share": k / n, "interval": [lo, hi],
           "in_place_per_seed": ok.sum(1).tolist(), "regrowth_mse": mse.tolist()}
    if then:
        out["then"] = then
        out["misses"] = misses
    return out


def _parser() -> ArgParser:
    ap = ArgParser(prog=PROG, description="How often a cut pattern regrows in place on the async swarm: "
                   "the pattern grown from each of --seeds seeds, cut by --damage, regrown under --orders "
                   "fresh fire orders each.")
    ap.add_argument("--model", default=None, help="weights file or shipped model name (default: the "
                    "default model)")
    ap.add_argument("--damage", default="circle:20,20,8@1000",
                    help="the cut, as sim.run's --damage (default: circle:20,20,8@1000, the centre)")
    ap.add_argument("--slip", default=None, metavar="DX,DY",
                    help="instead of wiping the damage's cells, move their tissue by DX columns and DY "
                         "rows (e.g. 0,-1: one row up; a negative DX as --slip=-1,0): does the slipped "
                         "part move back, or the rest follow it? (default: wipe)")
    ap.add_argument("--after", type=int, default=600, help="steps of regrowth before the pattern is "
                    "compared with the one that was cut (default: 600)")
    ap.add_argument("--seeds", type=int, default=10, help="how many grown seeds (default: 10)")
    ap.add_argument("--first-seed", type=int, default=0, help="the first grown seed, so that seeds no "
                    "test uses can be measured (default: 0)")
    ap.add_argument("--orders", type=int, default=20, help="fresh fire orders per grown seed (default: 20)")
    ap.add_argument("--then", type=int, default=0, metavar="STEPS",
                    help="each run not in place goes on STEPS more steps and is counted as late (in place "
                         "by then), moved (a whole-grid move brings it closer) or off in place (default: 0, "
                         "no second look)")
    ap.add_argument("--size", type=int, default=40, help="grid side (default: 40)")
    ap.add_argument("--bound", type=float, default=1e-3, help="in place: regrowth_mse at or below this "
                    "(default: 1e-3)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the counts and every run's "
                    "regrowth_mse here")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress line on stderr (default: only when stderr is a terminal)")
    return ap


def _main(argv: Sequence[str] | None = None) -> int:
    """python -m sim.odds entry point."""
    a = _parser().parse_args(argv)
    for flag, v, lo, hi in (("--after", a.after, 1, 10**6), ("--seeds", a.seeds, 1, 10**4),
                            ("--first-seed", a.first_seed, 0, GROWN_SEEDS - 1), ("--then", a.then, 0, 10**6),
                            ("--orders", a.orders, 1, MAX_ORDERS), ("--size", a.size, 8, MAX_SIZE)):
        if not lo <= v <= hi:
            raise UserError(f"{flag} must be in [{lo}, {hi}], got {v}")
    if a.first_seed + a.seeds > GROWN_SEEDS:
        raise UserError(f"--first-seed + --seeds must be at most {GROWN_SEEDS} (grown seeds 0-{GROWN_SEEDS - 1}), "
                        f"got {a.first_seed + a.seeds}")
    if not (math.isfinite(a.bound) and a.bound > 0):
        raise UserError(f"--bound must be a number > 0, got {a.bound}")
    try:
        cut = parse_damage(a.damage)
    except DamageError as e:
        raise UserError(f"--damage: {e}") from None
    if not cut.mask(a.size, a.size).any():
        raise UserError(f"--damage {a.damage}: cuts no cell of the {a.size}x{a.size} grid")
    slip = None
    if a.slip is not None:
        try:
            slip = tuple(int(v) for v in a.slip.split(","))
        except ValueError:
            slip = ()
        if len(slip) != 2 or slip == (0, 0) or max(abs(v) for v in slip) > a.size // 2:
            raise UserError(f"--slip {a.slip}: expected two whole numbers DX,DY, not both 0, "
                            f"each at most {a.size // 2} cells")
    if a.json:
        check_output(a.json, "--json")
    model, path = load_model(a.model)
    bar = Progress(a.seeds * a.orders, "runs") if Progress.wanted(a.progress) else None
    try:
        r = regrowth_odds(Params.from_model(model), a.damage, a.after, a.seeds, a.orders, a.size, a.bound,
                          bar.update if bar else None, slip, a.first_seed, a.then)
    finally:
        if bar:
            bar.close()
    r["model"] = path
    lo, hi = r["interval"]
    what = r["damage"] + ("" if slip is None else f" slipped by {slip[0]},{slip[1]}")
    print(f"{path}, {what}, {a.after} steps after: {r['in_place']}/{r['runs']} in place "
          f"({100 * r['share']:.1f} %, 95 % interval {100 * lo:.1f}-{100 * hi:.1f} %); per grown seed: "
          + " ".join(str(v) for v in r["in_place_per_seed"]) + f" of {a.orders}")
    if a.then:
        kinds = [m["kind"] for m in r["misses"]]
        print(f"of the {len(kinds)} not in place, {a.then} steps later: {kinds.count('late')} in place (late), "
              f"{kinds.count('moved')} moved, {kinds.count('off')} off in place")
    if a.json:
        write_output(a.json, "--json", lambda q: atomic_write(q, lambda f: json.dump(r, f, indent=1), binary=False))
        print(f"wrote {a.json}")
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
