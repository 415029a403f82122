"""The weights file: one .npz with w1, b1, w2, b2 (float32) and a JSON `meta` entry.

Loaded with allow_pickle=False and validated (shapes, dtype, finite values,
perception order tag, format version); a bad file raises WeightsError with a
one-line reason. Saving writes a temporary file and renames it, so a failed
write never destroys the previous model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .atomic import atomic_write
from .errors import UserError
from .model import ORDER_CONCAT, ORDER_INTERLEAVED, PARAM_SHAPES

FORMAT_VERSION = 1
KINDS = ("growing", "persistent", "regenerating", "converted", "fixture", "unknown")


class WeightsError(UserError):
    """A weights file that cannot be used; the message names the problem."""


@dataclass
class Model:
    params: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def w1(self) -> np.ndarray:
        return self.params["w1"]

    @property
    def b1(self) -> np.ndarray:
        return self.params["b1"]

    @property
    def w2(self) -> np.ndarray:
        return self.params["w2"]

    @property
    def b2(self) -> np.ndarray:
        return self.params["b2"]


def default_meta(**overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "perception_order": ORDER_CONCAT,
        "target": None,
        "kind": "unknown",
        "iterations": 0,
        "loss_history": [],
        "origin": "",
    }
    meta.update(overrides)
    return meta


def validate_params(params: dict[str, Any], where: str = "model") -> dict[str, np.ndarray]:
    """Check names, shapes and finiteness; return contiguous float32 copies."""
    out = {}
    for name, shape in PARAM_SHAPES.items():
        if name not in params:
            raise WeightsError(f"{where}: missing array '{name}'")
        a = np.asarray(params[name])
        if a.shape != shape:
            raise WeightsError(f"{where}: '{name}' has shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise WeightsError(f"{where}: '{name}' has dtype {a.dtype}, expected float32")
        if not np.all(np.isfinite(a)):
            raise WeightsError(f"{where}: '{name}' contains NaN or infinite values")
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def validate_meta(meta: Any, where: str = "model") -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise WeightsError(f"{where}: metadata is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(f"{where}: unsupported format_version {version!r} (this build reads {FORMAT_VERSION})")
    order = meta.get("perception_order")
    if order == ORDER_INTERLEAVED:
        raise WeightsError(f"{where}: perception order is '{ORDER_INTERLEAVED}'; convert it with "
                           f"'nca-convert --order interleaved' first")
    if order != ORDER_CONCAT:
        raise WeightsError(f"{where}: unknown perception_order {order!r} (expected '{ORDER_CONCAT}')")
    return meta


def load(path: str | os.PathLike) -> Model:
    """Load and validate a weights file, given by path or by a shipped model's name."""
    p = paths.model_path(path)
    if not p.is_file():
        names = ", ".join(q.stem for q in paths.shipped_models() if not q.stem.startswith("fixture"))
        raise WeightsError(f"{p}: no such weights file" + (f" (shipped models: {names})" if names else ""))
    try:
        with open(p, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:   # zipfile, OSError, ValueError: all mean "not a readable npz"
        raise WeightsError(f"{p}: not a readable .npz weights file ({type(e).__name__}: {e})") from None
    if "meta" not in arrays:
        raise WeightsError(f"{p}: missing 'meta' entry (not a weights file of this project?)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (json.JSONDecodeError, TypeError) as e:
        raise WeightsError(f"{p}: 'meta' is not valid JSON ({e})") from None
    meta = validate_meta(meta, str(p))
    params = validate_params(arrays, str(p))
    return Model(params, meta)


def save(path: str | os.PathLike, model: Model) -> Path:
    """Validate and write atomically (temporary file in the same folder, then rename)."""
    p = Path(path)
    params = validate_params(model.params, str(p))
    meta = validate_meta(dict(default_meta(), **model.meta), str(p))
    payload = np.array(json.dumps(meta))
    return atomic_write(p, lambda f: np.savez_compressed(f, meta=payload, **params))


def load_model(name_or_path: str | os.PathLike | None) -> tuple[Model, str]:
    """The model a command's --model names (a path or a shipped name; None: the default
    model); returns (model, the path it came from)."""
    if name_or_path is None:
        if not paths.DEFAULT_MODEL.is_file():
            raise WeightsError(f"the default model {paths.DEFAULT_MODEL} does not exist in this installation; "
                               f"give --model (a weights file, a shipped model's name, or one made by nca-convert)")
        name_or_path = paths.DEFAULT_MODEL
    p = paths.model_path(name_or_path)
    return load(p), str(p)

