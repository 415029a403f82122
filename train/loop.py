"""The training loop of nca-train: the paper's recipe, optionally fine-tuning a
model against the firmware's rounding (train.qat) or state noise.

The recipe (docs/design.md, "The model", Training): Adam (0.9, 0.999, 1e-7),
lr 2e-3 then 2e-4 after 2,000 iterations, every gradient tensor divided by
(its L2 norm + 1e-8), batch 8, rollouts of U{64..95} steps with BPTT, and
  growing      8 fresh seeds each iteration, no pool;
  persistent   a pool of 1,024 states: sample 8 without replacement, sort by
               loss (worst first), replace the worst by the seed, write back;
  regenerating as persistent, and the 3 best are damaged by a random circle
               (--damage-shapes mixed: or, with even odds, a straight cut; slip: or a
               disc of tissue moved by one cell, train.cuts).
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
from .cuts import cut_in_groups, make_damage, path_cells, pick_reseed_and_cuts
from .links import Wires
from .qat import FakeQuant

# --state-range keeps hidden channels inside the int8 range of Q2.5, the hidden format the
# quantiser always tries (codegen.quantize): wider states are clipped on the integer grid
HIDDEN_RANGE = F.STATE_MAX * 2.0 ** -F.LEGACY_HIDDEN_FRAC


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
                    dmg, moves = make_damage(gen, cfg.damage_shapes, -(-cut.size // cfg.cut_copies), H, W)
                    cut_in_groups(x0, cut, dmg, cfg.cut_copies, moves)
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
