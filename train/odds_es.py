"""Evolution strategies on the regrowth odds (nca-train --odds-es).

Whether a cut lizard regrows in place or a cell off is decided by the order its
cells fire in during the first 20-160 steps after the cut. Both endings are fixed
points, and the gradient through one rollout sharpens whichever one it lands on
(docs/regrowth.md, "What limits it"). The share of fire orders that end in place
moves smoothly with the weights even where single runs jump, so this estimates its
gradient from the runs themselves: antithetic pairs of random moves of the output
layer (w2, b2), both signs scored on the same wounds under the same fire orders
(common random numbers), on the async engine the swarm runs.

A step grows `runs // len(cuts)` lizards with the current weights from fresh grown
seeds, cuts each with every cut, and scores every perturbed model on every wound by
how much nearer the regrown picture is to the one before the cut than to the one
before the cut moved by a cell: clip(log10(d_moved / d_in_place), -2, 2) / 2, in
[-1, 1] (1: in place). That score sees where a run ends, not how far it has got: a
run that is in place but late scores as one that is done. `score="mse"` scores
clip(-log10(d_in_place), 2, 5) instead, so every run's distance to the old picture
counts, and a run that moves scores as one a hundred times too far. `pattern` adds
that weight times -log10 of the picture loss of a lizard grown with the perturbed
weights, so the grown pattern is held too; with `pattern_latency` that lizard grows
with every message that many steps late, so a speed-up of the regrowth cannot be
bought with the latency tolerance (the wounds still regrow without latency, as the
regrowth target is measured). `cells="fixed"` runs every scored swarm on
the firmware's integer arithmetic (the golden model inside the async engine), each
perturbed model quantised in the format its quantisation-aware fine-tuning recorded,
so the estimate sees the rounding's own noise. The update is a fixed length along the
estimate, in units of each array's spread at the start (a normalised step: the
estimate's size is mostly noise).

Every draw comes from `seed` and the step number, so a run replays exactly and one
continued from its own output (`--init` its model: the steps done are in its
metadata) goes on with fresh wounds. The seeds grown here are apart from the tests'
and from sim.odds' (0-9999).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context

import numpy as np

from codegen.fixed_cells import fixed_backend
from codegen.quantize import recorded_format
from sim.cell_backends import BackendFactory
from sim.damage import DamageError, parse_damage, wipe
from sim.errors import UserError
from sim.model import seed_state
from sim.odds import GROWN_SEEDS as ODDS_SEEDS, advanced
from sim.rules import AsyncConfig
from sim.simulate import loss_vs, regrowth_mse, shifted
from sim.spec import Params
from sim.weights import Model

META_KEY = "odds_es"
GROWN_SEEDS = ODDS_SEEDS     # grown seed of step k, lizard g: GROWN_SEEDS + k * 64 + g, above sim.odds'
ORDER_SEEDS = 5_000_000     # fire order after cut c of that lizard: ORDER_SEEDS + grown * 10 + c
PATTERN_SEEDS = 2_000_000   # the lizard grown with each perturbed model at step k: PATTERN_SEEDS + k
IN_PLACE = 1e-3             # regrowth_mse of a run counted in place (the regrowth target's bound)
SCORES = ("place", "mse")
MSE_RANGE = (2.0, 5.0)      # score="mse": -log10(regrowth_mse) clipped, 1e-2 (moved) .. 1e-5 (done)
MOVED = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
CELLS: dict[str, BackendFactory | None] = {"float": None, "fixed": fixed_backend}   # what computes the cells


@dataclass(frozen=True)
class OddsES:
    """One run's settings (recorded in the model's metadata)."""
    steps: int = 40
    directions: int = 20                 # antithetic pairs per step
    runs: int = 12                       # wounds per step (grown lizards x cuts)
    sigma: float = 0.01                  # perturbation, in units of each array's spread
    step_length: float = 0.1             # update length, in the same units
    pattern: float = 0.2                 # weight of -log10(grown picture loss)
    after: int = 500                     # steps of regrowth scored
    size: int = 40
    cuts: tuple[str, ...] = ("circle:20,20,8@1000", "rect:20,0,39,39@1000")   # one step for all
    seed: int = 0
    score: str = "place"                 # or "mse" (the module's docstring)
    cells: str = "float"                 # or "fixed" (the module's docstring)
    pattern_latency: float = 0.0         # steps every message of the pattern's lizard is late

    def validate(self) -> None:
        for name, lo in (("steps", 1), ("directions", 1), ("after", 1), ("size", 8)):
            if getattr(self, name) < lo:
                flag = "--odds-es: the grid size" if name == "size" else f"--es-{name}"
                raise UserError(f"{flag} must be >= {lo}, got {getattr(self, name)}")
        if self.score not in SCORES:
            raise UserError(f"--es-score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.cells not in CELLS:
            raise UserError(f"--es-cells must be one of {', '.join(CELLS)}, got {self.cells!r}")
        if not 1 <= len(self.cuts) <= 9:
            raise UserError(f"--es-cut: one to nine cuts, got {len(self.cuts)}")
        if self.runs < len(self.cuts) or self.runs % len(self.cuts):
            raise UserError(f"--es-runs must be a multiple of the {len(self.cuts)} cuts, got {self.runs}")
        if self.runs // len(self.cuts) > 64:
            raise UserError(f"--es-runs: at most 64 grown lizards a step, got {self.runs // len(self.cuts)}")
        for name in ("sigma", "step_length"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise UserError(f"--es-{name.replace('_', '-')} must be a number > 0, got {v}")
        for name in ("pattern", "pattern_latency"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise UserError(f"--es-{name.replace('_', '-')} must be a number >= 0, got {v}")
        steps = set()
        for c in self.cuts:
            try:
                cut = parse_damage(c)
            except DamageError as e:
                raise UserError(f"--es-cut: {e}") from None
            if not cut.mask(self.size, self.size).any():
                raise UserError(f"--es-cut {c}: cuts no cell of the {self.size}x{self.size} grid")
            steps.add(cut.step)
        if len(steps) > 1:
            raise UserError("--es-cut: every cut must be at the same step (one grown lizard takes them all)")

    @property
    def grow(self) -> int:
        return parse_damage(self.cuts[0]).step


def distances(state: np.ndarray, before: np.ndarray) -> tuple[float, float]:
    """The regrown picture's RGBA difference to the old one (`regrowth_mse`), and to the old
    one moved by a cell, whichever of the eight moves is nearest."""
    a = np.asarray(state, np.float64)[..., :4]
    b = np.asarray(before, np.float64)[..., :4]
    d_moved = min(float(np.mean((shifted(a, dy, dx) - b) ** 2)) for dy, dx in MOVED)
    return regrowth_mse(state, before), d_moved


def score_of(d_in: float, d_moved: float, score: str = "place") -> float:
    if score == "mse":
        return float(np.clip(-np.log10(max(d_in, 1e-12)), *MSE_RANGE))
    return float(np.clip(np.log10(max(d_moved, 1e-12) / max(d_in, 1e-12)), -2.0, 2.0) / 2.0)


def run_score(state: np.ndarray, before: np.ndarray) -> float:
    """1 when the regrown picture is the old one, -1 when it is the old one moved a cell."""
    return score_of(*distances(state, before))


def antithetic_gradient(diffs: np.ndarray, eps: np.ndarray, sigma: float) -> np.ndarray:
    """The estimate of grad F from pairs: diffs[i] = (F(z + sigma eps_i) - F(z - sigma eps_i)) / 2."""
    return (np.asarray(diffs, np.float64)[:, None] * eps).sum(0) / (len(diffs) * sigma)


class Moves:
    """The output layer as a vector z, in units of each array's spread in `base`."""
    KEYS = ("w2", "b2")

    def __init__(self, base: Model):
        self.base = base
        self.arrays = {k: np.asarray(base.params[k], np.float64) for k in self.KEYS}
        self.scale = {k: float(self.arrays[k].std()) or 1.0 for k in self.KEYS}
        self.dim = sum(a.size for a in self.arrays.values())

    def as_params(self, z: np.ndarray) -> Params:
        """params(z) for the engines, with the base model's metadata (its recorded
        fixed-point format, which the fixed-point cells quantise in)."""
        return replace(Params.from_arrays(self.params(z)), meta=self.base.meta)

    def params(self, z: np.ndarray) -> dict[str, np.ndarray]:
        params = dict(self.base.params)
        at = 0
        for k in self.KEYS:
            a = self.arrays[k]
            params[k] = (a + self.scale[k] * z[at:at + a.size].reshape(a.shape)).astype(np.float32)
            at += a.size
        return params


def _score(job: tuple) -> tuple[float, float, int]:
    """One model on every wound: (mean score, grown picture loss or nan, runs in place)."""
    p, wounds, after, pattern_seed, grow_steps, target, score, cell, pattern_config = job
    scores, in_place = [], 0
    for wound, before, order in wounds:
        d_in, d_moved = distances(advanced(wound, p, order, after, cell), before)
        scores.append(score_of(d_in, d_moved, score))
        in_place += d_in <= IN_PLACE
    loss = np.nan
    if target is not None:
        grown = advanced(seed_state(*target.shape[:2]), p, pattern_seed, grow_steps, cell, pattern_config)
        loss = loss_vs(grown, target)
    return float(np.mean(scores)), float(loss), in_place


def odds_es(model: Model, target: np.ndarray, cfg: OddsES, workers: int = 2,
            log: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False,
            save: Callable[[Model], None] | None = None, save_every: int = 10) -> Model:
    """cfg.steps steps of the estimate from `model`; the result carries the run in its metadata
    (and `save` gets it every `save_every` steps and at the end, or when `stop` says so)."""
    cfg.validate()
    if target.shape[:2] != (cfg.size, cfg.size):
        raise UserError(f"--odds-es: the target is {target.shape[0]}x{target.shape[1]}, the grid "
                        f"{cfg.size}x{cfg.size}")
    cell = CELLS[cfg.cells]
    if cell is not None and recorded_format(model.meta) is None:
        raise UserError("--es-cells fixed needs a model fine-tuned with --qat: each move is quantised "
                        "in the format that fine-tuning recorded")
    earlier = list(model.meta.get(META_KEY, []))
    first = sum(int(e["steps_done"]) for e in earlier) + 1
    moves = Moves(model)
    masks = [parse_damage(c).mask(cfg.size, cfg.size) for c in cfg.cuts]
    z = np.zeros(moves.dim)
    norm = None
    done = 0
    history: list[dict] = []
    pat = target if cfg.pattern > 0 else None

    def result() -> Model:
        entry = {**asdict(cfg), "cuts": list(cfg.cuts), "first_step": first, "steps_done": done,
                 "history": history}
        return Model(moves.params(z), {**model.meta, META_KEY: earlier + [entry]})

    ctx = get_context("spawn")    # numba kernels in a forked child of a threaded parent can hang
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx) as pool:
        for k in range(first, first + cfg.steps):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, k])
            p = moves.as_params(z)
            wounds = []
            for g in range(cfg.runs // len(cfg.cuts)):
                s = GROWN_SEEDS + k * 64 + g
                before = advanced(seed_state(cfg.size, cfg.size), p, s, cfg.grow, cell)
                wounds += [(wipe(before, m), before, ORDER_SEEDS + s * 10 + c)
                           for c, m in enumerate(masks)]
            eps = rng.standard_normal((cfg.directions, moves.dim))
            same = (wounds, cfg.after, PATTERN_SEEDS + k, cfg.grow, pat, cfg.score, cell,
                    AsyncConfig(latency=cfg.pattern_latency))   # every model's job
            jobs = [(p, *same)]
            for e in eps:
                jobs += [(moves.as_params(z + sign * cfg.sigma * e), *same) for sign in (1, -1)]
            out = list(pool.map(_score, jobs))
            fit = np.array([s - cfg.pattern * np.log10(max(l, 1e-12)) if pat is not None else s
                            for s, l, _ in out[1:]])
            diffs = (fit[0::2] - fit[1::2]) / 2
            g = antithetic_gradient(diffs, eps, cfg.sigma)
            gn = float(np.linalg.norm(g))
            norm = gn if norm is None else 0.9 * norm + 0.1 * gn
            if norm > 0:
                z = z + (cfg.step_length / norm) * g
            done += 1
            score, loss, ok = out[0]
            history.append({"step": k, "score": score, "in_place": ok, "runs": len(wounds),
                            "pattern_loss": None if np.isnan(loss) else loss,
                            "mean_abs_diff": float(np.abs(diffs).mean())})
            log(f"step {k}: before it, score {score:+.3f} ({ok}/{len(wounds)} in place after {cfg.after} "
                f"steps), picture loss {loss:.2e}; |diff| {np.abs(diffs).mean():.4f}; "
                f"moved {np.linalg.norm(z):.3f} spreads; {time.perf_counter() - t0:.0f} s")
            if stop():
                break
            if save is not None and done % save_every == 0 and done < cfg.steps:
                save(result())
    final = result()
    if save is not None:
        save(final)
    return final
