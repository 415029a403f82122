"""Output-bias tuning of a fine-tuned fixed-point model against its own swarm.

Quantisation-aware training (train.qat) sees the integer arithmetic through
the straight-through estimator and rollouts of under 100 steps. What it leaves
is where each channel's update settles in the long run: the 16 int16 output
biases b2 move every update of a channel by a constant, and one step of b2 is
1/32 to 1/2 of a state step for the regenerating lizard's channels. A
coordinate search over b2 on the firmware's exact arithmetic (the golden
synchronous grid from the seed; the picture loss averaged over late steps and
several seeds, none of them the tests'), which may not slow the healing of a
cut, finds biases the gradient does not reach. For the shipped fine-tuned lizard
the gain is small: the async swarm's loss at step 1,000 went from 3.27e-4 to 3.20e-4
on seeds 0-4 (for the model before it, 4.4e-4 to 3.95e-4, but its median over seeds
0-24 only by 2%; docs/fixed-point.md, "Results").

The result is a float model whose b2 lands on the tuned integers: each float
bias sits at the centre of the rounding interval that `quantize.build_at` maps
to the wanted integer, and the model is re-quantised to check it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sim.damage import Damage
from sim.model import CHANNELS, seed_state
from sim.weights import Model

from codegen import formats as F
from codegen import golden as G
from codegen.quantize import QModel, QuantizeError, output_bias_fits, quantize, recorded_format

DEFAULT_SEEDS = tuple(range(1000, 1006))   # disjoint from the tests' and the README's seeds 0..4
DEFAULT_CHECKPOINTS = (400, 500, 600)      # the pattern has grown by 400 (loss flat from there)
DEFAULT_REGROW = (400, 600)                # steps after the cut (the regrowth test looks at 600)
DEFAULT_DELTAS = (-2, -1, 1, 2)
META_KEY = "bias_tuning"
NOT_FINE_TUNED = ("bias tuning needs a model fine-tuned with nca-train --qat (its fixed-point format is "
                  "recorded, and it is built without bias correction)")


def rollout_losses(q: QModel, target: np.ndarray, seeds: Sequence[int] = DEFAULT_SEEDS,
                   checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS,
                   regrow: Sequence[int] = DEFAULT_REGROW, b2: np.ndarray | None = None,
                   workers: int = 2, pattern_limit: float | None = None) -> tuple[float, float]:
    """(pattern, regrowth) losses of the fixed-point synchronous grid grown from the seed:
    the mean squared RGBA error against target (H, W, 4) averaged over the checkpoint
    steps, then, after a circle cut at the last checkpoint (`cut_of(seed)`), averaged
    over the `regrow` steps after the cut (none: regrowth 0); both averaged over the
    seeds (one thread per seed: the golden grid step releases the GIL). b2 replaces
    the model's output biases (the search's candidates).

    pattern_limit: the caller only wants a pattern loss below it. Once the seeds done
    show that the mean cannot be, the rest are skipped and (a lower bound >= the
    limit, nan) is returned; the regrowth is only grown for a pattern below it."""
    arrays = list(q.arrays())
    if b2 is not None:
        arrays[3] = np.asarray(b2, np.int16)
    h, w = target.shape[:2]
    marks = sorted(set(int(c) for c in checkpoints))
    after = sorted(set(int(c) for c in regrow))
    tgt = np.asarray(target, np.float64)

    def loss(x: np.ndarray) -> float:
        return float(np.mean((F.dequantize_fine(x, q.fmt)[..., :F.RGBA] - tgt) ** 2))

    def grown(seed: int) -> tuple[float, np.ndarray]:
        x = F.quantize_fine(seed_state(h, w), q.fmt)
        k, pattern = 0, 0.0
        for m in marks:
            x, k = G.sync_run(x, seed, m - k, arrays, k), m
            pattern += loss(x) / len(marks)
        return pattern, x

    def regrown(seed: int, x: np.ndarray) -> float:
        k, total = marks[-1], 0.0
        x = x.copy()
        x[cut_of(seed, k, h, w).mask(h, w)] = 0
        for a in after:
            x, k = G.sync_run(x, seed, marks[-1] + a - k, arrays, k), marks[-1] + a
            total += loss(x) / len(after)
        return total

    n = len(seeds)
    # a margin so that rounding in the running sum never skips a seed the mean needs
    stop_at = None if pattern_limit is None else pattern_limit * n * (1 + 1e-9)
    with ThreadPoolExecutor(max(1, workers)) as ex:
        jobs = [ex.submit(grown, s) for s in seeds]
        done, running = [], 0.0
        for job in jobs:
            done.append(job.result())
            running += done[-1][0]
            if stop_at is not None and running >= stop_at and len(done) < n:
                for j in jobs:
                    j.cancel()
                return running / n, float("nan")
        pattern = float(np.mean([p for p, _ in done]))
        if pattern_limit is not None and not pattern < pattern_limit:
            return pattern, float("nan")
        regrowth = list(ex.map(regrown, seeds, [x for _, x in done])) if after else [0.0] * n
    return pattern, float(np.mean(regrowth))


def cut_of(seed: int, step: int, height: int = 40, width: int = 40) -> Damage:
    """The circle cut of `rollout_losses` for a seed: centre within 6 cells of the grid's
    centre, radius 6 to 9 (the regrowth test cuts radius 8 at the centre)."""
    r = np.random.default_rng([seed, 0x637574])
    cx, cy = np.array([width, height]) / 2 + r.uniform(-6, 6, 2)
    return Damage("circle", (float(cx), float(cy), float(r.uniform(6, 9))), step)


def with_output_biases(model: Model, b2: np.ndarray, q: QModel | None = None) -> Model:
    """The model with float output biases that quantise to the int16 b2 (checked).
    Only for a model with a recorded fixed-point format: any other is quantised with
    bias correction, which would move the integers again. q: the model quantised,
    where the caller has it."""
    if recorded_format(model.meta) is None:
        raise QuantizeError(NOT_FINE_TUNED)
    q = quantize(model) if q is None else q
    want = np.asarray(b2, np.int64)
    if want.shape != (CHANNELS,) or np.any(np.abs(want) > F.ACC_MAX):
        raise QuantizeError(f"output biases must be {CHANNELS} int16 values")
    params = {k: np.array(v) for k, v in model.params.items()}
    rs = q.fmt.acc_shift
    params["b2"] = ((want - F.floor_mean(rs)) * q.s2 * 2.0 ** rs).astype(params["b2"].dtype)
    out = Model(params, dict(model.meta))
    got = quantize(out).b2.astype(np.int64)
    if not np.array_equal(got, want):
        bad = int(np.flatnonzero(got != want)[0])
        raise QuantizeError(f"output bias {bad}: {want[bad]} does not survive re-quantisation (got {got[bad]})")
    return out


def tune_output_biases(model: Model, target: np.ndarray, sweeps: int = 4,
                       seeds: Sequence[int] = DEFAULT_SEEDS,
                       checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS,
                       regrow: Sequence[int] = DEFAULT_REGROW,
                       deltas: Sequence[int] = DEFAULT_DELTAS, channels: Sequence[int] | None = None,
                       min_gain: float = 0.01, regrow_slack: float = 0.1, workers: int = 2,
                       losses: Callable[..., tuple[float, float]] | None = None, prune: bool = True,
                       log: Callable[[str], None] | None = None) -> tuple[Model, dict[str, Any]]:
    """Coordinate search over the int16 output biases: per sweep, each channel (in a
    fixed shuffled order) tries the deltas; a candidate is kept if it lowers the
    pattern loss of `rollout_losses` by more than min_gain (relative: smaller gains
    are within the seeds' noise) and keeps the regrowth loss within regrow_slack of
    the starting model's (a bias that sharpens the grown pattern can slow the
    healing of a cut). Stops after `sweeps` or a sweep without a change. Returns the
    model (metadata entry META_KEY: seeds, losses, per-channel changes) and that
    entry. losses replaces `rollout_losses` (tests). prune: a candidate's seeds stop
    once its pattern loss cannot win (`pattern_limit`; the same decisions, in about
    half the time: most candidates lose on the pattern)."""
    if sweeps < 1:
        raise ValueError(f"sweeps must be >= 1, got {sweeps}")
    if recorded_format(model.meta) is None:
        raise QuantizeError(NOT_FINE_TUNED)
    q = quantize(model)
    evaluate = losses or rollout_losses

    def run(b2: np.ndarray, pattern_limit: float | None = None) -> tuple[float, float]:
        return evaluate(q, target, seeds, checkpoints, regrow, b2, workers,
                        pattern_limit if prune else None)

    start = q.b2.astype(np.int64)
    cur = start.copy()
    before, regrow0 = run(cur)
    best, best_regrow = before, regrow0
    if log:
        log(f"bias tuning: pattern loss {before:.3e}, regrowth loss {regrow0:.3e} "
            f"({len(seeds)} seeds, steps {list(checkpoints)}, regrowth {list(regrow)} after a cut)")
    order = list(np.random.default_rng(0).permutation(CHANNELS)) if channels is None else list(channels)
    done = 0
    for sweep in range(sweeps):
        done = sweep + 1
        changed = False
        for m in order:
            for d in deltas:
                v = cur.copy()
                v[m] += d
                if not output_bias_fits(q.w2[:, m], int(v[m]), q.fmt.acc_shift):
                    continue
                pattern, regrown = run(v, best * (1 - min_gain))
                if pattern < best * (1 - min_gain) and regrown <= regrow0 * (1 + regrow_slack):
                    best, best_regrow, cur, changed = pattern, regrown, v, True
                    if log:
                        log(f"  sweep {sweep + 1}: b2[{m}] {start[m]:+d} -> {v[m]:+d}: pattern {best:.3e}, "
                            f"regrowth {regrown:.3e}")
        if not changed:
            break
    tuned = with_output_biases(model, cur, q)
    entry = {"seeds": [int(s) for s in seeds], "checkpoints": [int(c) for c in checkpoints],
             "regrow": [int(c) for c in regrow], "sweeps": done,
             "loss_before": before, "loss_after": best, "regrow_before": regrow0, "regrow_after": best_regrow,
             "b2_changes": {str(m): int(cur[m] - start[m]) for m in range(CHANNELS) if cur[m] != start[m]}}
    tuned = Model(tuned.params, dict(tuned.meta, **{META_KEY: entry}))
    return tuned, entry
