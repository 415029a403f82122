"""nca-train: train a Growing-NCA model for a target picture with the paper's recipe.

    nca-train --target lizard --kind regenerating --iterations 8000
    python -m sim.train --target my.png --kind persistent --out weights/my.npz
    nca-train --init M.npz --state-noise 1 --out M_noise.npz   # then, for the firmware:
    nca-train --init M_noise.npz --qat [--error-feedback] --out M_qat.npz
    nca-train --tune-biases --init M_qat.npz --out M_qat.npz

The recipe (shared/research/nca_reference.md section 1): Adam (0.9, 0.999, 1e-7),
lr 2e-3 then 2e-4 after 2,000 iterations, every gradient tensor divided by
(its L2 norm + 1e-8), batch 8, rollouts of U{64..95} steps with BPTT, and
  growing      8 fresh seeds each iteration, no pool;
  persistent   a pool of 1,024 states: sample 8 without replacement, sort by
               loss (worst first), replace the worst by the seed, write back;
  regenerating as persistent, and the 3 best are damaged by a random circle.
The BPTT itself is sim.train_core (numba + BLAS on the live, fired cells only).

Every random draw comes from one numpy Generator seeded by --seed, so a run is
reproducible, and a checkpoint (params, Adam moments, pool, iteration, the
generator's state, loss history) lets --resume continue exactly where it left
off. The checkpoint lives next to the output (OUT.ckpt.npz), is written
atomically every --checkpoint-every iterations and on Ctrl-C / SIGTERM, and is
removed after the model is saved unless --keep-checkpoint is given. A resumed
run may change the schedule (learning rates, --damage-n, --distill): fine-tuning in
stages, each recorded with the iteration it began at.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

# Numba's OpenMP workers spin after each parallel region and starve OpenBLAS on a
# small machine (3x slower, bptt_feasibility.md); must be set before numba loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from . import model as M  # noqa: E402
from . import train_core as core  # noqa: E402
from .atomic import atomic_write  # noqa: E402
from .errors import ArgParser, UserError, cli_entry  # noqa: E402
from .targets import EMOJI, load_target, pad_target, to_rgba8  # noqa: E402
from .weights import Model, default_meta, load as load_model, save as save_model  # noqa: E402

KINDS = ("growing", "persistent", "regenerating")
CKPT_VERSION = 1
DAMAGE_N = 3
SCHEDULE_KEYS = ("lr", "lr_drop_at", "lr_after", "damage_n", "distill")   # --resume may change these


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from; the message names the problem."""


@dataclass
class TrainConfig:
    """Settings of a run; recorded in the model's metadata and checked on --resume."""
    target: str = "lizard"
    kind: str = "regenerating"
    iterations: int = 8000
    batch: int = 8
    pool: int = 1024
    pad: int = 16
    seed: int = 0
    rotate_train: bool = False
    lr: float = 2e-3
    lr_drop_at: int = 2000
    lr_after: float = 2e-4
    min_steps: int = 64
    max_steps: int = 95
    damage_n: int = DAMAGE_N
    init: str | None = None          # start from this model's weights (fine-tuning)
    qat: bool = False                # the firmware's rounding in the loop (codegen.qat)
    distill: float = 0.0             # weight of the pull towards the --init model's float rollout
    state_noise: float = 0.0         # uniform noise on each update, in the fixed-point state's steps
    error_feedback: bool = False     # with qat: the cells keep 8 more bits of their own state

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown kind {self.kind!r} (choose from {', '.join(KINDS)})")
        if self.iterations < 1:
            raise UserError(f"--iterations must be at least 1, got {self.iterations}")
        if self.batch < 1:
            raise UserError(f"--batch must be at least 1, got {self.batch}")
        if self.pad < 0:
            raise UserError(f"--pad must be >= 0, got {self.pad}")
        if not (1 <= self.min_steps <= self.max_steps):
            raise UserError(f"rollout length range [{self.min_steps}, {self.max_steps}] is empty "
                            f"or below 1")
        if self.kind != "growing" and self.pool < self.batch:
            raise UserError(f"--pool ({self.pool}) must be at least --batch ({self.batch})")
        if self.kind == "regenerating" and not (0 <= self.damage_n <= self.batch - 1):
            raise UserError(f"--damage-n must be in [0, batch-1], got {self.damage_n}")
        if not (self.lr > 0 and self.lr_after > 0 and math.isfinite(self.lr)):
            raise UserError("--lr must be a positive number")
        if self.qat and self.init is None:
            raise UserError("--qat fine-tunes a trained model: give it with --init MODEL")
        if not (self.distill >= 0 and math.isfinite(self.distill)):
            raise UserError(f"--distill must be a number >= 0, got {self.distill}")
        if self.distill > 0 and not self.qat:
            raise UserError("--distill pulls a quantisation-aware fine-tuning towards its --init model: add --qat")
        if not (self.state_noise >= 0 and math.isfinite(self.state_noise)):
            raise UserError(f"--state-noise must be a number >= 0, got {self.state_noise}")
        if self.state_noise > 0 and (self.qat or self.init is None):
            raise UserError("--state-noise trains a float --init model against the fixed-point state's "
                            "step; --qat has the real rounding instead" if self.qat else
                            "--state-noise takes its state formats from a trained model: give it with --init MODEL")
        if self.error_feedback and not self.qat:
            raise UserError("--error-feedback is a fixed-point cell's arithmetic: add --qat")
        if self.qat and self.rotate_train:
            raise UserError("--qat trains the unrotated integer perception; drop --rotate-train")
        if self.init is not None and not Path(self.init).is_file():
            raise UserError(f"--init {self.init}: no such model file")

    def lr_at(self, iteration: int) -> float:
        """Piecewise-constant schedule (Keras PiecewiseConstantDecay([2000], [2e-3, 2e-4]))."""
        return self.lr if iteration < self.lr_drop_at else self.lr_after

    def resume_keys(self) -> dict[str, Any]:
        """Settings a checkpoint must share with the run that resumes it."""
        d = asdict(self)
        d.pop("iterations")
        for k in SCHEDULE_KEYS:
            d.pop(k)
        return d

    def schedule(self) -> dict[str, Any]:
        """The settings a resumed run may change (a new stage of the same run)."""
        d = asdict(self)
        return {k: d[k] for k in SCHEDULE_KEYS}


def make_circle_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """The notebook's damage: (n, h, w) bool, True inside a circle with centre
    U(-0.5, 0.5)^2 and radius U(0.1, 0.4) in coordinates linspace(-1, 1)."""
    x = np.linspace(-1.0, 1.0, w)[None, None, :]
    y = np.linspace(-1.0, 1.0, h)[None, :, None]
    center = rng.random((2, n, 1, 1)) - 0.5
    r = rng.random((n, 1, 1)) * 0.3 + 0.1
    x, y = (x - center[0]) / r, (y - center[1]) / r
    return x * x + y * y < 1.0


# ------------------------------------------------------------------------------ checkpoint

def checkpoint_path(out: Path) -> Path:
    """OUT.ckpt.npz next to the output (weights/x.npz -> weights/x.ckpt.npz)."""
    stem = out.name[:-4] if out.name.endswith(".npz") else out.name
    return out.with_name(stem + ".ckpt.npz")


def _target_digest(target: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(target, np.float32).tobytes()).hexdigest()[:16]


@dataclass
class TrainState:
    """Everything a run needs to continue: the checkpoint's content."""
    params: dict[str, np.ndarray]
    adam: core.Adam
    pool: np.ndarray | None
    iteration: int
    rng: np.random.Generator
    history: list[float]
    seconds: float = 0.0
    skipped: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)   # {"from": iteration, schedule...}


def save_checkpoint(path: Path, st: TrainState, cfg: TrainConfig, digest: str) -> None:
    """Atomic write. The pool is stored sparsely (only cells with a nonzero channel:
    dead cells are exactly zero), which is exact and ~3x smaller than the dense pool."""
    meta = {"version": CKPT_VERSION, "config": cfg.resume_keys(), "stages": st.stages,
            "target_digest": digest, "iteration": st.iteration, "adam_t": st.adam.t, "history": st.history,
            "rng": st.rng.bit_generator.state, "seconds": st.seconds, "skipped": st.skipped}
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for k in M.PARAM_SHAPES:
        arrays[f"p_{k}"] = st.params[k]
        arrays[f"m_{k}"] = st.adam.m[k]
        arrays[f"v_{k}"] = st.adam.v[k]
    if st.pool is not None:
        occupied = np.any(st.pool != 0, axis=-1)
        arrays["pool_shape"] = np.array(st.pool.shape, np.int64)
        arrays["pool_mask"] = np.packbits(occupied.ravel())
        arrays["pool_cells"] = st.pool[occupied]
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: Path, cfg: TrainConfig, digest: str) -> TrainState:
    """Load and validate; any problem is a CheckpointError (one line, exit 2)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        if meta.get("version") != CKPT_VERSION:
            raise CheckpointError(f"{path}: unsupported checkpoint version {meta.get('version')!r}")
        params = {k: np.ascontiguousarray(arrays[f"p_{k}"], np.float32) for k in M.PARAM_SHAPES}
        adam = core.Adam(params)
        adam.t = int(meta["adam_t"])
        for k, shape in M.PARAM_SHAPES.items():
            for name, a in (("p", params[k]), ("m", arrays[f"m_{k}"]), ("v", arrays[f"v_{k}"])):
                if a.shape != shape or not np.all(np.isfinite(a)):
                    raise CheckpointError(f"{path}: array {name}_{k} has shape {a.shape} or "
                                          f"non-finite values")
            adam.m[k] = np.ascontiguousarray(arrays[f"m_{k}"], np.float32)
            adam.v[k] = np.ascontiguousarray(arrays[f"v_{k}"], np.float32)
        pool = None
        if "pool_shape" in arrays:
            shape = tuple(int(s) for s in arrays["pool_shape"])
            ncell = int(np.prod(shape[:-1]))
            occupied = np.unpackbits(arrays["pool_mask"], count=ncell).astype(bool).reshape(shape[:-1])
            cells = arrays["pool_cells"]
            if cells.shape != (int(occupied.sum()), shape[-1]):
                raise CheckpointError(f"{path}: pool cells do not match the pool mask")
            pool = np.zeros(shape, np.float32)
            pool[occupied] = cells
        gen = np.random.default_rng()
        gen.bit_generator.state = meta["rng"]
        history = [float(v) for v in meta["history"]]
        iteration = int(meta["iteration"])
        saved_cfg, saved_digest = meta["config"], meta["target_digest"]
        seconds, skipped = float(meta.get("seconds", 0.0)), int(meta.get("skipped", 0))
    except CheckpointError:
        raise
    except Exception as e:   # zip errors, missing keys, bad JSON, bad shapes: all "corrupt"
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e})") from None
    want = cfg.resume_keys()
    defaults = asdict(TrainConfig())   # a setting added since the checkpoint was written had its default
    diff = [k for k in want if saved_cfg.get(k, defaults[k]) != want[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(f"{path}: was written with {k}={saved_cfg.get(k, defaults[k])!r}, this run has "
                              f"{k}={want[k]!r}; use the same settings or another --out")
    if saved_digest != digest:
        raise CheckpointError(f"{path}: was written for a different target picture")
    if len(history) != iteration:
        raise CheckpointError(f"{path}: loss history has {len(history)} entries for iteration {iteration}")
    stages = list(meta.get("stages") or [{"from": 0, **{k: saved_cfg.get(k) for k in SCHEDULE_KEYS}}])
    if any(stages[-1].get(k) != v for k, v in cfg.schedule().items()):
        stages.append({"from": iteration, **cfg.schedule()})
    if cfg.kind != "growing" and (pool is None or pool.shape[0] != cfg.pool):
        raise CheckpointError(f"{path}: pool missing or of the wrong size")
    return TrainState(params, adam, pool, iteration, gen, history, seconds, skipped, stages)


# ------------------------------------------------------------------------------ pictures

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


# ------------------------------------------------------------------------------ training

class Progress:
    """One status line: rewritten with \\r on a terminal, printed every `every`
    iterations otherwise (logs stay readable)."""

    def __init__(self, total: int, stream: TextIO, every: int = 50):
        self.total, self.stream, self.every = total, stream, every
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.times: list[float] = []
        self._last = 0.0

    def update(self, it: int, loss: float, dt: float, rows_frac: float) -> None:
        self.times.append(dt)
        recent = self.times[-50:]
        spi = sum(recent) / len(recent)
        eta = spi * (self.total - it)
        line = (f"it {it:6d}/{self.total}  loss {loss:.3e} (log10 {math.log10(max(loss, 1e-30)):+.2f})  "
                f"{1.0 / spi:5.2f} it/s  {spi:.3f} s/it  rows {rows_frac:5.1%}  "
                f"ETA {int(eta // 3600):d}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")
        if self.tty:
            now = time.monotonic()
            if now - self._last > 0.2 or it == self.total:
                self.stream.write("\r" + line + " " * 4)
                self.stream.flush()
                self._last = now
        elif it % self.every == 0 or it == self.total or it == 1:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def train(cfg: TrainConfig, out: Path, resume: bool = False, checkpoint_every: int = 100,
          keep_checkpoint: bool = False, stream: TextIO = sys.stdout,
          stop: Callable[[], bool] | None = None) -> Model:
    """Run (or continue) training; save the model, pictures and checkpoints; return the Model."""
    cfg.validate()
    target = pad_target(load_target(cfg.target), cfg.pad).astype(np.float32)
    H, W = target.shape[:2]
    digest = _target_digest(target)
    ckpt = checkpoint_path(out)
    seed = M.seed_state(H, W)
    init = load_model(cfg.init) if cfg.init is not None else None
    fq = noise_fq = noise_widths = None
    if (cfg.qat or cfg.state_noise > 0) and init is not None:
        from codegen.qat import FakeQuant   # the firmware's formats live in codegen
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
        st = TrainState(params, core.Adam(params), pool, 0, gen, [], stages=[{"from": 0, **cfg.schedule()}])
    noise = None if noise_widths is None else core.StateNoise(noise_widths, st.rng)   # the run's draws
    ws = core.Workspace()
    prog = Progress(cfg.iterations, stream)
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
            if st.pool is None:
                idx = None
                x0 = np.repeat(seed[None], cfg.batch, 0)
            else:
                idx = gen.choice(cfg.pool, cfg.batch, replace=False)
                x0 = st.pool[idx]
                order = np.argsort(-core.loss_per_sample(x0, target), kind="stable")
                idx, x0 = idx[order], x0[order]
                x0[0] = seed
                if cfg.kind == "regenerating" and cfg.damage_n > 0:
                    dmg = make_circle_masks(gen, cfg.damage_n, H, W)
                    x0[-cfg.damage_n:] *= (~dmg)[..., None]
            run_params = st.params if fq is None else fq.weights(st.params)
            losses, xN, grads, rows = core.loss_and_grads(
                x0, target, run_params, steps, gen, M.gradient_kernels(angle), np.float32, ws,
                rounding=fq, noise=noise, teacher=teacher, teacher_weight=cfg.distill)
            loss = float(losses.mean())
            if math.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values()):
                st.adam.step(st.params, core.normalize_grads(grads), cfg.lr_at(st.iteration))
                if st.pool is not None:
                    st.pool[idx] = xN
                last_batch = xN
            else:
                st.skipped += 1   # a diverged rollout: keep params and pool, note it
            st.history.append(loss)
            st.iteration += 1
            dt = time.perf_counter() - t0
            st.seconds += dt
            prog.update(st.iteration, loss, dt, rows / (cells * steps))
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
        origin="nca-train" + (" (fine-tuned, quantisation-aware)" if fq is not None else
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


def _check_writable(out: Path) -> None:
    """Fail before hours of training, not after: the output folder must take a file."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'model.npz'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {out.parent}: {e.strerror or e}") from None


def _parser() -> ArgParser:
    ap = ArgParser(prog="nca-train", description=(
        "Train a Growing-NCA model for a target picture with the paper's recipe "
        "(growing, persistent or regenerating). Writes OUT (.npz), OUT's folder/curves/"
        "<name>_loss.png and <name>_pool.png, and a checkpoint OUT.ckpt.npz while running."))
    ap.add_argument("--target", default="lizard", help="shipped target name (lizard, smiley, ...) "
                    "or an image path (default: %(default)s)")
    ap.add_argument("--kind", choices=KINDS, default="regenerating", help="experiment (default: %(default)s)")
    ap.add_argument("--iterations", type=int, default=8000, help="total iterations (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    ap.add_argument("--pool", type=int, default=1024, help="pool size (default: %(default)s)")
    ap.add_argument("--pad", type=int, default=16, help="target padding per side (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    ap.add_argument("--rotate-train", action="store_true",
                    help="random perception rotation angle per batch (our extension)")
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate (default: %(default)s)")
    ap.add_argument("--lr-drop-at", type=int, default=2000,
                    help="iteration at which lr drops to --lr-after (default: %(default)s)")
    ap.add_argument("--lr-after", type=float, default=2e-4, help="(default: %(default)s)")
    ap.add_argument("--min-steps", type=int, default=64, help="shortest rollout (default: %(default)s)")
    ap.add_argument("--max-steps", type=int, default=95, help="longest rollout (default: %(default)s)")
    ap.add_argument("--damage-n", type=int, default=DAMAGE_N,
                    help="regenerating: samples damaged per batch (default: %(default)s)")
    ap.add_argument("--init", metavar="MODEL", help="start from this model's weights (fine-tuning)")
    ap.add_argument("--qat", action="store_true",
                    help="quantisation-aware fine-tuning of the --init model: the forward runs the "
                         "firmware's integer arithmetic (int8 weights, gradient inputs, hidden units and "
                         "state), the gradients pass its rounding straight through, so that nca-codegen's "
                         "fixed-point cell keeps the pattern")
    ap.add_argument("--distill", type=float, default=0.0, metavar="W",
                    help="with --qat: also pull the integer rollout's 16 channels towards the --init "
                         "model's float rollout from the same states (weight W, e.g. 0.1; default: off)")
    ap.add_argument("--state-noise", type=float, default=0.0, metavar="W",
                    help="float fine-tuning of the --init model with uniform noise W steps of its "
                         "fixed-point state format wide added to every state change (e.g. 1.0: the "
                         "rounding's size), so that the pattern survives the firmware's rounding; a "
                         "start for --qat, which keeps the formats it records (default: off)")
    ap.add_argument("--error-feedback", action="store_true",
                    help="with --qat: train the fixed-point cell that keeps 8 more bits of its own "
                         "state (int16; its neighbours and its network see the int8 state), so that "
                         "updates below half a state step are not lost (recorded in the model)")
    ap.add_argument("--tune-biases", action="store_true",
                    help="instead of training: tune the int16 output biases of the --init model (fine-tuned "
                         "with --qat) by a coordinate search on its fixed-point grid's picture loss, "
                         "regrowth after a cut kept (codegen.tune); writes the tuned model to --out")
    ap.add_argument("--tune-sweeps", type=int, default=4, metavar="N",
                    help="with --tune-biases: at most N sweeps over the 16 channels (default: %(default)s)")
    ap.add_argument("--out", help="output .npz (default: weights/<target>_<kind>.npz)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from OUT.ckpt.npz; --iterations, the learning-rate settings, "
                         "--damage-n and --distill may differ (a new stage, recorded in the model's metadata)")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="iterations between checkpoints, 0 = only on interrupt (default: %(default)s)")
    ap.add_argument("--keep-checkpoint", action="store_true",
                    help="keep OUT.ckpt.npz after the model is saved (to extend the run later)")
    return ap


def _tune_biases(args: Any) -> int:
    """nca-train --tune-biases: codegen.tune on the --init model, written to --out."""
    from codegen.quantize import QuantizeError
    from codegen.tune import tune_output_biases

    if not args.init:
        raise UserError("--tune-biases needs --init MODEL (a model fine-tuned with --qat)")
    if args.qat or args.resume or args.distill or args.state_noise:
        raise UserError("--tune-biases does not train: drop --qat, --distill, --state-noise and --resume")
    if args.tune_sweeps < 1:
        raise UserError(f"--tune-sweeps must be >= 1, got {args.tune_sweeps}")
    out = Path(args.out) if args.out else _default_out(args.target, args.kind)
    _check_writable(out)
    model = load_model(args.init)
    target = load_target(args.target)       # 40 x 40: the swarm's grid
    trained = model.meta.get("training", {})
    if "target_digest" in trained and "pad" in trained:
        if _target_digest(pad_target(target, int(trained["pad"]))) != trained["target_digest"]:
            raise UserError(f"--init {args.init} was trained for another picture than --target "
                            f"{args.target}; give the target it was trained for")
    t0 = time.time()
    try:
        tuned, entry = tune_output_biases(model, target, sweeps=args.tune_sweeps,
                                          log=lambda s: print(s, flush=True))
    except QuantizeError as e:
        raise UserError(f"--init {args.init}: {e}") from None
    save_model(out, tuned)
    print(f"saved {out}: pattern loss {entry['loss_before']:.3e} -> {entry['loss_after']:.3e}, regrowth "
          f"{entry['regrow_before']:.3e} -> {entry['regrow_after']:.3e} ({entry['sweeps']} sweeps, "
          f"{time.time() - t0:.0f} s; changes {entry['b2_changes']})", flush=True)
    return 0


def _default_out(target: str, kind: str) -> Path:
    """weights/<name>_<kind>.npz: the emoji's name, or the picture file's stem."""
    name = next((n for n, ch in EMOJI.items() if target.replace("\ufe0f", "") in (n, ch)), None)
    name = name or Path(target).stem
    root = Path(__file__).resolve().parent.parent / "weights"
    return root / f"{name}_{kind}.npz"


def _main(argv: Sequence[str] | None = None) -> int:
    """nca-train entry point."""
    args = _parser().parse_args(argv)
    if args.tune_biases:
        return _tune_biases(args)
    cfg = TrainConfig(target=args.target, kind=args.kind, iterations=args.iterations,
                      batch=args.batch, pool=args.pool, pad=args.pad, seed=args.seed,
                      rotate_train=args.rotate_train, lr=args.lr, lr_drop_at=args.lr_drop_at,
                      lr_after=args.lr_after, min_steps=args.min_steps, max_steps=args.max_steps,
                      damage_n=args.damage_n, init=args.init, qat=args.qat,
                      distill=args.distill, state_noise=args.state_noise,
                      error_feedback=args.error_feedback)
    cfg.validate()
    if args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    out = Path(args.out) if args.out else _default_out(args.target, args.kind)
    _check_writable(out)
    load_target(cfg.target)    # a bad target fails now, with its own one-line message
    stopping = {"flag": False}

    def on_term(signum, frame):   # SIGTERM: checkpoint and stop like Ctrl-C
        stopping["flag"] = True

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        train(cfg, out, resume=args.resume, checkpoint_every=args.checkpoint_every,
              keep_checkpoint=args.keep_checkpoint, stop=lambda: stopping["flag"])
    finally:
        signal.signal(signal.SIGTERM, old)
    return 0


_main.prog = "nca-train"  # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
