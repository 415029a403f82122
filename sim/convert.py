"""nca-convert: bring published Growing-NCA models into this project's weights format.

Input formats (guessed from the content when --format is omitted; the perception
ORDER is never guessed, it is each format's documented default or --order):

  webgl  The Distill article's 8-bit JSON (public/webgl_models8/*.json): a list of two
         layers {data_b64, in_ch, out_ch, weight_scale, bias_scale, type: "uint8"}.
         Default order: concat (the WebGL demo's layout, state, grad_x, grad_y).
  tfjs   A TF.js graph-model JSON with float32 weights inline in Const nodes (the
         notebook's export_model). Default order: interleaved (TF's depthwise p[3c+k]).
  npz    An .npz with w1, b1, w2, b2 (aliases in NPZ_ALIASES). No default order:
         --order is required. An .npz already in this project's format (it has a
         'meta' entry) is re-validated and re-saved; its order tag is used.

Interleaved models are reordered with model.interleaved_to_concat; the output is
always the concat order, written atomically by weights.save.

--update-scale C multiplies the output layer (w2, b2), so every update is C times
as large: the states where the update is zero, the grown pattern among them, stay
the same, and the pattern moves C times as fast. Each of an async swarm's fires then
carries C times the noise of the fire order: a smaller C averages it over more
fires (docs/regrowth.md, "Smaller updates").
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import weights as W
from .errors import ArgParser, UserError, cli_entry
from .pictures import EMOJI, TargetError, load_target
from .model import (CHANNELS, HIDDEN, ORDER_CONCAT, ORDER_INTERLEAVED, PARAM_SHAPES, PERCEPTION,
                    interleaved_to_concat)

PROG = "nca-convert"
FORMATS = ("webgl", "tfjs", "npz")
ORDERS = {"concat": ORDER_CONCAT, "interleaved": ORDER_INTERLEAVED}
MAX_UPDATE_SCALE = 4.0         # a bound on typing errors: the paper's lizard already breaks some seeds at 1.4
# The order a format's files are in by the format's definition (None: must be given).
DEFAULT_ORDER: dict[str, str | None] = {"webgl": "concat", "tfjs": "interleaved", "npz": None}
WEBGL_LAYERS = ((PERCEPTION, HIDDEN), (HIDDEN, CHANNELS))   # (in_ch, out_ch) of layers 0 and 1

# Array names accepted in a foreign .npz, tried in this order. "0."/"2." are a PyTorch
# nn.Sequential(Conv2d, ReLU, Conv2d) state_dict; "fc0."/"fc1." two nn.Linear layers.
# Layouts are recognised by shape: (in, out), Keras (1, 1, in, out), PyTorch (out, in)
# and (out, in, 1, 1); since 48, 128 and 16 differ, the shape alone is unambiguous.
NPZ_ALIASES: dict[str, tuple[str, ...]] = {
    "w1": ("w1", "0.weight", "fc0.weight"),
    "b1": ("b1", "0.bias", "fc0.bias"),
    "w2": ("w2", "2.weight", "fc1.weight"),
    "b2": ("b2", "2.bias", "fc1.bias"),
}


class ConvertError(UserError):
    """An input that cannot be converted; the message names the problem."""


def _fail(msg: str) -> NoReturn:
    raise ConvertError(msg)


# --------------------------------------------------------------------------- webgl

def _finite_scale(layer: dict, key: str, where: str) -> float:
    v = layer.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        _fail(f"{where}: '{key}' must be a finite number >= 0, got {v!r}")
    return float(v)


def decode_webgl(obj: Any, where: str = "webgl") -> dict[str, np.ndarray]:
    """Decode the Distill WebGL 8-bit JSON (already parsed) to float32 params.

    Row-major (in_ch+1) x out_ch bytes; W = (u8[:in_ch]/255 - 0.5) * weight_scale,
    b = (u8[in_ch]/255 - 0.5) * bias_scale (ca.js's dense shader). Rows keep the
    file's input order; the caller applies the perception order.
    """
    if not isinstance(obj, list) or len(obj) != 2:
        _fail(f"{where}: expected a JSON list of 2 layers, got "
              f"{type(obj).__name__}{' of length %d' % len(obj) if isinstance(obj, list) else ''}")
    out: dict[str, np.ndarray] = {}
    for i, (layer, (want_in, want_out)) in enumerate(zip(obj, WEBGL_LAYERS)):
        lw = f"{where}: layer {i}"
        if not isinstance(layer, dict):
            _fail(f"{lw}: expected a JSON object, got {type(layer).__name__}")
        missing = [k for k in ("data_b64", "in_ch", "out_ch", "weight_scale", "bias_scale")
                   if k not in layer]
        if missing:
            _fail(f"{lw}: missing key(s) {', '.join(missing)}")
        if layer.get("type", "uint8") != "uint8":
            _fail(f"{lw}: type {layer['type']!r} is not supported (only 'uint8')")
        in_ch, out_ch = layer["in_ch"], layer["out_ch"]
        if (in_ch, out_ch) != (want_in, want_out) or isinstance(in_ch, bool) or isinstance(out_ch, bool):
            _fail(f"{lw}: in_ch/out_ch are {in_ch!r}/{out_ch!r}, expected {want_in}/{want_out}")
        ws = _finite_scale(layer, "weight_scale", lw)
        bs = _finite_scale(layer, "bias_scale", lw)
        data = layer["data_b64"]
        if not isinstance(data, str):
            _fail(f"{lw}: data_b64 is not a string")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            _fail(f"{lw}: data_b64 is not valid base64 ({e})")
        want = (in_ch + 1) * out_ch
        if len(raw) != want:
            _fail(f"{lw}: data_b64 holds {len(raw)} bytes, expected (in_ch+1)*out_ch = {want}")
        a = np.frombuffer(raw, np.uint8).reshape(in_ch + 1, out_ch).astype(np.float64)
        w = (a[:in_ch] / 255.0 - 0.5) * ws
        b = (a[in_ch] / 255.0 - 0.5) * bs
        out[f"w{i + 1}"] = w.astype(np.float32)
        out[f"b{i + 1}"] = b.astype(np.float32)
    return out


def _quantise(v: np.ndarray) -> tuple[float, np.ndarray]:
    v = np.asarray(v, np.float64)
    scale = 2.0 * float(np.max(np.abs(v))) if v.size else 0.0
    if scale == 0.0:   # pack_layer would divide by zero; scale 0 decodes to exact zeros
        return 0.0, np.full(v.shape, 128, np.uint8)
    return scale, np.clip(np.round((v / scale + 0.5) * 255.0), 0, 255).astype(np.uint8)


def encode_webgl(params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Encode concat-order params as the Distill WebGL 8-bit JSON (the reference encoder).

    As the notebook's pack_layer: scale = 2*max|v| per tensor (weights and bias
    separately), u8 = round((v/scale + 0.5)*255) with numpy's half-even rounding, so
    decoding is off by at most scale/510. An all-zero tensor gets scale 0 (pack_layer
    would produce NaN) and decodes to exact zeros.
    """
    p = W.validate_params(params)
    layers = []
    for i, (in_ch, out_ch) in enumerate(WEBGL_LAYERS):
        ws, wq = _quantise(p[f"w{i + 1}"])
        bs, bq = _quantise(p[f"b{i + 1}"])
        packed = np.vstack([wq, bq[None, :]])
        layers.append({"data_b64": base64.b64encode(packed.tobytes()).decode("ascii"),
                       "in_ch": in_ch, "out_ch": out_ch,
                       "weight_scale": ws, "bias_scale": bs, "type": "uint8"})
    return layers


# --------------------------------------------------------------------------- tfjs

def _tensor_shape(tensor: dict) -> tuple[int, ...]:
    dims = (tensor.get("tensorShape") or {}).get("dim") or []
    return tuple(int(d.get("size", 0)) for d in dims)


# Shapes of the four tensors in a graph-model (Keras Conv2D kernels are (1, 1, in, out)).
_TFJS_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "w1": ((1, 1, PERCEPTION, HIDDEN), (PERCEPTION, HIDDEN)),
    "b1": ((HIDDEN,),),
    "w2": ((1, 1, HIDDEN, CHANNELS), (HIDDEN, CHANNELS)),
    "b2": ((CHANNELS,),),
}


def decode_tfjs(obj: Any, where: str = "tfjs") -> dict[str, np.ndarray]:
    """Decode a TF.js graph-model JSON (already parsed) to float32 params.

    The four weights are the float32 Const nodes whose inline little-endian
    `tensorContent` has the shapes (1,1,48,128), (128,), (1,1,128,16), (16,).
    Rows keep the file's input order (the notebook's interleaved p[3c+k]).
    """
    if not isinstance(obj, dict):
        _fail(f"{where}: expected a JSON object (TF.js graph model), got {type(obj).__name__}")
    topo = obj.get("modelTopology")
    if not isinstance(topo, dict) or not isinstance(topo.get("node"), list):
        _fail(f"{where}: no modelTopology.node list (not a TF.js graph model)")
    found: dict[str, list[tuple[str, np.ndarray]]] = {k: [] for k in _TFJS_SHAPES}
    for node in topo["node"]:
        if not isinstance(node, dict) or node.get("op") != "Const":
            continue
        tensor = ((node.get("attr") or {}).get("value") or {}).get("tensor")
        if not isinstance(tensor, dict) or tensor.get("dtype") != "DT_FLOAT" or "tensorContent" not in tensor:
            continue
        name = str(node.get("name", "?"))
        try:
            shape = _tensor_shape(tensor)
        except (TypeError, ValueError, AttributeError):
            _fail(f"{where}: node {name}: malformed tensorShape")
        key = next((k for k, shapes in _TFJS_SHAPES.items() if shape in shapes), None)
        if key is None:
            continue
        try:
            raw = base64.b64decode(tensor["tensorContent"], validate=True)
        except (binascii.Error, ValueError, TypeError) as e:
            _fail(f"{where}: node {name}: tensorContent is not valid base64 ({e})")
        n = int(np.prod(shape))
        if len(raw) != 4 * n:
            _fail(f"{where}: node {name}: tensorContent holds {len(raw)} bytes, expected 4*{n} for {shape}")
        found[key].append((name, np.frombuffer(raw, "<f4").reshape(PARAM_SHAPES[key]).astype(np.float32)))
    weights_manifest = obj.get("weightsManifest")
    out = {}
    for key, hits in found.items():
        if not hits:
            extra = (" (weights in external shard files are not supported: only inline tensorContent)"
                     if weights_manifest else "")
            shapes = " or ".join(str(s) for s in _TFJS_SHAPES[key])
            _fail(f"{where}: no float32 Const tensor of shape {shapes} for {key}{extra}")
        if len(hits) > 1:
            _fail(f"{where}: ambiguous {key}: several float32 Const tensors of its shape "
                  f"({', '.join(h[0] for h in hits)})")
        out[key] = hits[0][1]
    return out


def encode_tfjs(params: dict[str, np.ndarray]) -> dict[str, Any]:
    """A minimal TF.js graph-model JSON holding the params as the notebook exports them.

    Only the four weight Const nodes (named as in the notebook's export), no ops:
    enough for decode_tfjs and for tests, not a runnable TF.js model.
    """
    p = W.validate_params(params)
    nodes = []
    shapes = {"w1": (1, 1, PERCEPTION, HIDDEN), "b1": (HIDDEN,),
              "w2": (1, 1, HIDDEN, CHANNELS), "b2": (CHANNELS,)}
    for i, (key, shape) in enumerate(shapes.items()):
        content = base64.b64encode(p[key].astype("<f4").tobytes()).decode("ascii")
        nodes.append({"name": f"StatefulPartitionedCall/args_{4 + i}", "op": "Const",
                      "attr": {"value": {"tensor": {
                          "dtype": "DT_FLOAT",
                          "tensorShape": {"dim": [{"size": str(s)} for s in shape]},
                          "tensorContent": content}},
                          "dtype": {"type": "DT_FLOAT"}}})
    return {"format": "graph-model", "generatedBy": "sim.convert.encode_tfjs",
            "modelTopology": {"node": nodes, "versions": {"producer": "1.14"}},
            "weightsManifest": []}


# --------------------------------------------------------------------------- npz

def _to_in_out(a: np.ndarray, key: str, where: str) -> np.ndarray:
    want = PARAM_SHAPES[key]
    if a.shape == want:
        return a
    if len(want) == 2:
        n_in, n_out = want
        if a.shape == (1, 1, n_in, n_out):
            return a.reshape(want)
        if a.shape in ((n_out, n_in), (n_out, n_in, 1, 1)):
            return a.reshape(n_out, n_in).T
    _fail(f"{where}: '{key}' has shape {a.shape}, expected {want} "
          f"(or (1,1,in,out), (out,in), (out,in,1,1))")


def decode_npz(arrays: dict[str, np.ndarray], where: str = "npz") -> dict[str, np.ndarray]:
    """Pick w1, b1, w2, b2 (or an alias from NPZ_ALIASES) out of a foreign .npz's arrays."""
    out = {}
    for key, names in NPZ_ALIASES.items():
        name = next((n for n in names if n in arrays), None)
        if name is None:
            _fail(f"{where}: missing array '{key}' (accepted names: {', '.join(names)}; "
                  f"found: {', '.join(sorted(arrays)) or 'none'})")
        a = np.asarray(arrays[name])
        if not np.issubdtype(a.dtype, np.floating):
            _fail(f"{where}: '{name}' has dtype {a.dtype}, expected a float type")
        out[key] = _to_in_out(a, key, where)
    return out


def _read_npz(path: Path, data: bytes) -> dict[str, np.ndarray]:
    try:   # from memory: np.load(path) leaks its file handle when the zip is corrupt
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if not hasattr(z, "files"):
                _fail(f"{path}: a single .npy array, not an .npz archive")
            return {k: z[k] for k in z.files}
    except ConvertError:
        raise
    except Exception as e:   # zipfile.BadZipFile, ValueError (pickled objects), OSError
        _fail(f"{path}: not a readable .npz file ({type(e).__name__}: {e})")


# --------------------------------------------------------------------------- CLI

def guess_format(path: Path, data: bytes) -> str:
    """The file FORMAT from its content (never the perception order)."""
    if data[:4] == b"PK\x03\x04" or path.suffix.lower() == ".npz":
        return "npz"
    obj = _parse_json(path, data)
    if isinstance(obj, list):
        return "webgl"
    if isinstance(obj, dict) and (obj.get("format") == "graph-model" or "modelTopology" in obj):
        return "tfjs"
    _fail(f"{path}: cannot tell the format (expected a WebGL JSON list of 2 layers, a TF.js "
          f"graph-model JSON or an .npz); pass --format")


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        _fail(f"{path}: not a JSON file (not UTF-8 text)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        _fail(f"{path}: not valid JSON ({e})")
    except RecursionError:
        _fail(f"{path}: not valid JSON (nested too deeply)")


def _int_or_zero(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _emoji_target(name: str) -> str | None:
    """A shipped target name if exactly one of the paper's emoji is in the file name."""
    hits = [n for n, ch in EMOJI.items() if ch in name]
    return hits[0] if len(hits) == 1 else None


def convert(input_path: str | os.PathLike, output_path: str | os.PathLike, fmt: str | None = None,
            order: str | None = None, target: str | None = None, kind: str | None = None,
            update_scale: float | None = None) -> W.Model:
    """Convert one model file and save it; returns the saved Model. Raises UserError."""
    src, dst = Path(input_path), Path(output_path)
    if update_scale is not None and not (math.isfinite(update_scale) and 0 < update_scale <= MAX_UPDATE_SCALE):
        _fail(f"--update-scale must be a number in (0, {MAX_UPDATE_SCALE:g}], got {update_scale}")
    if fmt is not None and fmt not in FORMATS:
        _fail(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if order is not None and order not in ORDERS:
        _fail(f"unknown order {order!r} (choose from {', '.join(ORDERS)})")
    if kind is not None and kind not in W.KINDS:
        _fail(f"unknown kind {kind!r} (choose from {', '.join(W.KINDS)})")
    if not src.exists():
        _fail(f"{src}: no such file")
    if src.is_dir():
        _fail(f"{src}: is a directory, not a model file")
    try:
        data = src.read_bytes()
    except OSError as e:
        _fail(f"{src}: cannot read ({e.strerror or e})")
    fmt = fmt or guess_format(src, data)

    meta: dict[str, Any] = {}
    if fmt == "npz":
        arrays = _read_npz(src, data)
        if "meta" in arrays:                          # already this project's format
            try:
                meta = json.loads(str(arrays.pop("meta")))
            except (json.JSONDecodeError, TypeError) as e:
                _fail(f"{src}: 'meta' is not valid JSON ({e})")
            if not isinstance(meta, dict):
                _fail(f"{src}: 'meta' is not a JSON object")
            tag = meta.get("perception_order")
            file_order = next((k for k, v in ORDERS.items() if v == tag), None)
            if file_order is None:
                _fail(f"{src}: unknown perception_order {tag!r} in meta")
            if order is not None and order != file_order:
                _fail(f"{src}: --order {order} contradicts the file's own perception_order "
                      f"{tag!r}; leave --order out")
            order = file_order
            W.validate_meta(dict(meta, perception_order=ORDER_CONCAT), str(src))   # format_version
            params = W.validate_params(arrays, str(src))
        else:
            if order is None:
                _fail(f"{src}: --order concat|interleaved is required for .npz input: such a "
                      f"file does not record its perception order (concat = p[16k+c], state, "
                      f"grad_x, grad_y; interleaved = p[3c+k], the TF notebook's)")
            params = decode_npz(arrays, str(src))
    else:
        obj = _parse_json(src, data)
        params = decode_webgl(obj, str(src)) if fmt == "webgl" else decode_tfjs(obj, str(src))
        order = order or DEFAULT_ORDER[fmt]
    assert order is not None
    params = W.validate_params(params, str(src))   # finite, shapes, float32
    if order == "interleaved":
        params["w1"] = interleaved_to_concat(params["w1"])
    if update_scale is not None:
        for k in ("w2", "b2"):
            params[k] = (params[k].astype(np.float64) * update_scale).astype(np.float32)

    if target is not None:
        try:
            load_target(target)                      # fail now, not at training time
        except TargetError as e:
            _fail(f"--target: {e}")
    elif not meta.get("target"):
        target = _emoji_target(src.name)
    new_meta = W.default_meta(**meta)                # a re-saved project file keeps its history
    new_meta.update(
        perception_order=ORDER_CONCAT,
        kind=kind or meta.get("kind") or "converted",
        target=target if target is not None else meta.get("target"),
        iterations=_int_or_zero(meta.get("iterations", 0)),
        origin=f"{PROG} {fmt} {src.name} order={order}"
               + (f" update-scale={update_scale:g}" if update_scale is not None else "")
               + (f" (was: {meta['origin']})" if meta.get("origin") else ""),
    )
    if update_scale is not None:
        new_meta["update_scales"] = list(meta.get("update_scales", [])) + [update_scale]
    model = W.Model(params, new_meta)
    try:
        W.save(dst, model)
    except OSError as e:
        _fail(f"{dst}: cannot write ({e.strerror or e})")
    return model


def _main(argv: Sequence[str] | None = None) -> int:
    """Convert a published NCA model to this project's .npz weights (concat order)."""
    ap = ArgParser(
        prog=PROG,
        description="Convert a Growing-NCA model (Distill WebGL 8-bit JSON, TF.js graph-model "
                    "JSON, or .npz) to this project's weights file. The output is always in the "
                    "concat perception order p[16k+c] (state, grad_x, grad_y).",
        epilog="Perception order defaults: webgl = concat (the WebGL demo's layout), tfjs = "
               "interleaved p[3c+k] (the TF notebook's depthwise conv); npz has none, so --order "
               "is required. The order is never guessed from the numbers: a wrong order still "
               "loads and silently grows garbage. If --target is omitted and the input file name "
               "contains one of the paper's emoji (e.g. ex3_🦎.json), that target is recorded.")
    ap.add_argument("input", help="model file (.json or .npz)")
    ap.add_argument("output", help="weights file to write (.npz); replaced atomically")
    ap.add_argument("--format", choices=FORMATS, help="input format (default: from the content)")
    ap.add_argument("--order", choices=tuple(ORDERS),
                    help="perception order of the INPUT's first layer (overrides the format's default)")
    ap.add_argument("--target", help="target recorded in the metadata: a name (lizard, ...) or image path")
    ap.add_argument("--kind", choices=("growing", "persistent", "regenerating", "converted"),
                    help="kind recorded in the metadata (default: converted; a project .npz keeps its own)")
    ap.add_argument("--update-scale", type=float, default=None, metavar="C",
                    help="multiply the output layer by C: every update C times as large, the grown "
                         "pattern the same (e.g. 0.4: slower, and a cut regrows in place more often "
                         "for a model trained on slips; docs/regrowth.md)")
    args = ap.parse_args(argv)
    model = convert(args.input, args.output, args.format, args.order, args.target, args.kind,
                    args.update_scale)
    print(f"wrote {args.output}: {model.meta['origin']}, kind={model.meta['kind']}, "
          f"target={model.meta['target']}")
    return 0


_main.prog = PROG  # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
