"""The training loop of nca-train: the paper's recipe, optionally fine-tuning a
model against the firmware's rounding (train.qat) or state noise.

The recipe (docs/design.md, "The model", Training): Adam (0.9, 0.999, 1e-7),
lr 2e-3 then 2e-4 after 2,000 iterations, every gradient tensor divided by
(its L2 norm + 1e-8), batch 8, rollouts of U{64..95} steps with BPTT, and
  growing      8 fresh seeds each iteration, no pool;
  persistent   a pool of 1,024 states: sample 8 without replacement, sort by
               loss (worst first), replace the worst by the seed, write back;
  regenerating as persistent, and the 3 best are damaged by a random circle
               (--damage-shapes mixed: or, with even odds, a straight cut).
               With --regrow-visits K a cut sample is spared both the seed and
               another cut for its next K visits (pick_reseed_and_cuts).
With --path-loss W the picture is also compared with the target along each rollout
(every --path-every steps), on the cells path_cells names.
The BPTT itself is train.bptt (numba + BLAS on the live, fired cells only).

Every random draw comes from one numpy Generator seeded by --seed, so a run is
reproducible, and a checkpoint (params, Adam moments, pool, iteration, the
generator's state, loss history) lets --resume continue exactly where it left
off. The checkpoint lives next to the output (OUT.ckpt.npz), is written
atomically every --checkpoint-every iterations and on Ctrl-C / SIGTERM, and is
removed after the model is saved unless --keep-checkpoint is given. A resumed
run may change the schedule (learning rates, --damage-n, --distill, the wires): fine-tuning in
stages, each recorded with the iteration it began at.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import numpy as np

from sim import model as M
from sim.errors import UserError
from sim.pictures import load_target, pad_target
from sim.progress import Progress
from sim.weights import Model, default_meta
from sim.weights import load as load_model
from sim.weights import save as save_model

from codegen import formats as F

from . import bptt as core
from .checkpoint import TrainState, checkpoint_path, load_checkpoint, save_checkpoint, target_digest
from .config import TrainConfig
from .curves import save_pictures
from .links import Wires
from .qat import FakeQuant

# --state-range keeps hidden channels inside the int8 range of Q2.5, the hidden format the
# quantiser always tries (codegen.quantize): wider states are clipped on the integer grid
HIDDEN_RANGE = F.STATE_MAX * 2.0 ** -F.LEGACY_HIDDEN_FRAC


def make_circle_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """The notebook's damage: (n, h, w) bool, True inside a circle with centre
    U(-0.5, 0.5)^2 and radius U(0.1, 0.4) in coordinates linspace(-1, 1)."""
    x = np.linspace(-1.0, 1.0, w)[None, None, :]
    y = np.linspace(-1.0, 1.0, h)[None, :, None]
    center = rng.random((2, n, 1, 1)) - 0.5
    r = rng.random((n, 1, 1)) * 0.3 + 0.1
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


def make_damage(rng: np.random.Generator, shapes: str, n: int, h: int, w: int) -> np.ndarray:
    """The cuts of a batch: the paper's circles, or ("mixed") each one a circle or a
    straight cut with even odds. The circles' draws come first, so "circle" keeps the
    paper's random stream."""
    masks = make_circle_masks(rng, n, h, w)
    if shapes == "mixed":
        straight = rng.random(n) < 0.5
        halves = make_half_masks(rng, n, h, w)
        masks[straight] = halves[straight]
    return masks


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


def cut_in_groups(x0: np.ndarray, cut: np.ndarray, dmg: np.ndarray, copies: int) -> None:
    """Cut the samples x0[cut] in place, one mask of dmg per group of `copies` consecutive
    samples, each group's samples all taking its first one's state: runs from one wound
    under different fire orders (--cut-copies; with 1 the paper's one cut per sample)."""
    heads = x0[cut[::copies]].copy()
    for i, slot in enumerate(cut):
        x0[slot] = heads[i // copies] * (~dmg[i // copies])[..., None]


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


def train(cfg: TrainConfig, out: Path, resume: bool = False, checkpoint_every: int = 100,
          keep_checkpoint: bool = False, stream: TextIO = sys.stdout,
          stop: Callable[[], bool] | None = None) -> Model:
    """Run (or continue) training; save the model, pictures and checkpoints; return the Model."""
    cfg.validate()
    target = pad_target(load_target(cfg.target), cfg.pad).astype(np.float32)
    H, W = target.shape[:2]
    digest = target_digest(target)
    ckpt = checkpoint_path(out)
    seed = M.seed_state(H, W)
    init = load_model(cfg.init) if cfg.init is not None else None
    fq = noise_fq = noise_widths = None
    if (cfg.qat or cfg.state_noise > 0) and init is not None:
        if cfg.qat:
            fq = FakeQuant.for_model(init)
            fq.error_feedback = fq.error_feedback or cfg.error_feedback
            seed = fq.on_grid(seed)
        else:
            noise_fq = FakeQuant.for_model(init)
            noise_widths = cfg.state_noise / noise_fq.fmt.state_steps
    teacher = dict(init.params) if init is not None and cfg.distill > 0 else None
    if resume:
        st = load_checkpoint(ckpt, cfg, digest)
        print(f"resuming {ckpt} at iteration {st.iteration}", file=stream, flush=True)
    else:
        gen = np.random.default_rng(cfg.seed)
        params = M.init_params(gen)
        if init is not None:
            params = {k: init.params[k].astype(np.float32, copy=True) for k in M.PARAM_SHAPES}
        pool = np.repeat(seed[None], cfg.pool, 0) if cfg.kind != "growing" else None
        st = TrainState(params, core.Adam(params), pool, 0, gen, [], stages=[{"from": 0, **cfg.schedule()}],
                        regrowing=None if pool is None else np.zeros(cfg.pool, np.int32))
    noise = None if noise_widths is None else core.StateNoise(noise_widths, st.rng)   # the run's draws
    ws = core.Workspace()
    links = cfg.links()
    prog = Progress(cfg.iterations, "it", stream, log_every=50)
    prog.update(st.iteration)
    last_batch = np.repeat(seed[None], cfg.batch, 0)
    cells = cfg.batch * H * W
    t_run = time.monotonic()
    try:
        while st.iteration < cfg.iterations:
            if stop is not None and stop():
                raise KeyboardInterrupt
            t0 = time.perf_counter()
            gen = st.rng
            angle = float(gen.uniform(0.0, 360.0)) if cfg.rotate_train else 0.0
            steps = int(gen.integers(cfg.min_steps, cfg.max_steps + 1))
            path_mask = None
            if st.pool is None:
                idx = None
                x0 = np.repeat(seed[None], cfg.batch, 0)
            else:
                idx = gen.choice(cfg.pool, cfg.batch, replace=False)
                x0 = st.pool[idx]
                order = np.argsort(-core.loss_per_sample(x0, target), kind="stable")
                idx, x0 = idx[order], x0[order]
                left = st.regrowing[idx]
                n_cut = cfg.damage_n * cfg.cut_copies if cfg.kind == "regenerating" else 0
                reseed, cut = pick_reseed_and_cuts(left, n_cut)
                if noise is not None and cfg.noise_on == "regrowing":   # cut now or on a regrowth visit
                    noise.samples = left > 0
                    noise.samples[cut] = True
                x0[reseed] = seed
                if cut.size:
                    dmg = make_damage(gen, cfg.damage_shapes, -(-cut.size // cfg.cut_copies), H, W)
                    cut_in_groups(x0, cut, dmg, cfg.cut_copies)
                if cfg.path_loss > 0:
                    path_mask = path_cells(cfg.batch, H, W, reseed, cut, dmg if cut.size else None, cfg.cut_copies)
                left = np.maximum(left - 1, 0)
                left[reseed] = 0
                left[cut] = cfg.regrow_visits
            run_params = st.params if fq is None else fq.weights(st.params)
            wires = Wires(links.draw(gen), int(gen.integers(2**62)), x0.shape[:3]) if links.active else None
            losses, xN, grads, rows = core.loss_and_grads(
                x0, target, run_params, steps, gen if wires is None else wires.fire,
                M.gradient_kernels(angle), np.float32, ws, rounding=fq, noise=noise, teacher=teacher,
                teacher_weight=cfg.distill, wires=wires, range_weight=cfg.state_range, hidden_range=HIDDEN_RANGE,
                path_weight=cfg.path_loss, path_every=cfg.path_every, path_mask=path_mask)
            loss = float(losses.mean())
            if math.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values()):
                st.adam.step(st.params, core.normalize_grads(grads), cfg.lr_at(st.iteration))
                if st.pool is not None:
                    st.pool[idx] = xN
                    st.regrowing[idx] = left
                last_batch = xN
            else:
                st.skipped += 1   # a diverged rollout: keep params and pool, note it
            st.history.append(loss)
            st.iteration += 1
            dt = time.perf_counter() - t0
            st.seconds += dt
            prog.update(st.iteration, note=f"loss {loss:.3e} (log10 {math.log10(max(loss, 1e-30)):+.2f})  "
                                           f"{dt:.3f} s/it  rows {rows / (cells * steps):5.1%}")
            if checkpoint_every > 0 and st.iteration % checkpoint_every == 0 and st.iteration < cfg.iterations:
                save_checkpoint(ckpt, st, cfg, digest)
    except KeyboardInterrupt:
        prog.close()
        save_checkpoint(ckpt, st, cfg, digest)
        print(f"stopped at iteration {st.iteration}; checkpoint {ckpt} (continue with --resume)",
              file=sys.stderr, flush=True)
        raise
    prog.close()
    if keep_checkpoint:
        save_checkpoint(ckpt, st, cfg, digest)
    h = st.history
    tail = [v for v in h[-100:] if math.isfinite(v)]
    settings = asdict(cfg)
    settings.pop("target")
    settings.pop("kind")
    settings.pop("iterations")
    before: list[float] = []
    if init is not None:
        before = [float(v) for v in init.meta.get("loss_history", [])]
        settings["init"] = {"model": Path(cfg.init).name, "iterations": int(init.meta.get("iterations", 0))}
    if fq is not None or noise_fq is not None:   # the shifts, under the key the quantiser reads back,
        settings.update((fq or noise_fq).meta())  # so a later --qat keeps the formats trained against
    if len(st.stages) > 1:   # resumed with another schedule: what ran when
        settings["stages"] = st.stages
    meta = default_meta(
        kind=cfg.kind, target=cfg.target, iterations=len(before) + st.iteration,
        loss_history=before + [float(v) for v in h],
        origin="nca-train" + (" (wires in the loop)" if links.active else "") +
               (" (fine-tuned, quantisation-aware)" if fq is not None else
                              " (fine-tuned against state noise)" if noise_fq is not None else ""), training=dict(
            settings, grid=[H, W], fire_rate=M.FIRE_RATE, optimizer="adam(0.9,0.999,1e-7)",
            grad_norm="per-tensor L2", target_digest=digest, seconds=round(st.seconds, 1),
            s_per_iter=round(st.seconds / max(st.iteration, 1), 4), skipped_nonfinite=st.skipped,
            final_loss_mean100=float(np.mean(tail)) if tail else None,
            wall_seconds_this_session=round(time.monotonic() - t_run, 1)))
    model = Model({k: st.params[k].copy() for k in M.PARAM_SHAPES}, meta)
    try:
        save_model(out, model)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e}") from None
    samples = st.pool[:8] if st.pool is not None else last_batch[:8]
    try:
        pics = save_pictures(out, h, samples, f"{cfg.target} {cfg.kind}, {st.iteration} it")
    except Exception as e:   # pictures are a convenience; the model is already saved
        pics = []
        print(f"warning: could not write pictures: {e}", file=sys.stderr)
    if not keep_checkpoint:
        try:
            ckpt.unlink()
        except FileNotFoundError:
            pass
    print(f"saved {out} ({st.iteration} iterations, last-100 mean loss "
          f"{meta['training']['final_loss_mean100']:.3e})" + "".join(f"; {p}" for p in pics),
          file=stream, flush=True)
    return model
