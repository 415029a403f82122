"""Checkpoints of a training run: parameters, Adam moments, pool, iteration, the
generator's state and the loss history, written atomically next to the output
(OUT.ckpt.npz), so that --resume continues exactly where a run stopped."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim import model as M
from sim.atomic import atomic_write

from . import bptt as core
from .config import CKPT_VERSION, SCHEDULE_KEYS, CheckpointError, TrainConfig


def checkpoint_path(out: Path) -> Path:
    """OUT.ckpt.npz next to the output (weights/x.npz -> weights/x.ckpt.npz)."""
    stem = out.name[:-4] if out.name.endswith(".npz") else out.name
    return out.with_name(stem + ".ckpt.npz")


def target_digest(target: np.ndarray) -> str:
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
    regrowing: np.ndarray | None = None   # per pool sample: visits left in its regrowth (--regrow-visits)


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
    if st.regrowing is not None:
        arrays["pool_regrowing"] = st.regrowing
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
        regrowing = None   # a checkpoint from before --regrow-visits: no sample is regrowing
        if pool is not None:
            regrowing = np.zeros(pool.shape[0], np.int32)
            if "pool_regrowing" in arrays:
                regrowing = np.ascontiguousarray(arrays["pool_regrowing"], np.int32)
                if regrowing.shape != (pool.shape[0],):
                    raise CheckpointError(f"{path}: pool_regrowing does not match the pool")
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
    if any(stages[-1].get(k, defaults[k]) != v for k, v in cfg.schedule().items()):
        stages.append({"from": iteration, **cfg.schedule()})
    if cfg.kind != "growing" and (pool is None or pool.shape[0] != cfg.pool):
        raise CheckpointError(f"{path}: pool missing or of the wrong size")
    return TrainState(params, adam, pool, iteration, gen, history, seconds, skipped, stages, regrowing)
