"""nca-convert (sim/convert.py): WebGL 8-bit JSON, TF.js graph JSON, npz; perception order; errors."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import convert as C
from sim import weights as W
from sim.model import (ALPHA, ORDER_CONCAT, ORDER_INTERLEAVED, PARAM_SHAPES, concat_to_interleaved, gradient_kernels,
                       interleaved_to_concat)
from sim.spec import step64

REPO = Path(__file__).resolve().parent.parent

# The paper's kernels, written out here rather than imported, so the order test is independent.
SX = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
SY = SX.T


def random_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in PARAM_SHAPES.items()}
    p["w1"][np.arange(48), np.arange(48)] += np.arange(48, dtype=np.float32)   # rows identifiable
    return p


def perception_concat(nb: np.ndarray) -> np.ndarray:
    """48-vector p[16k+c] of the centre of a (3, 3, 16) neighbourhood."""
    gx = np.einsum("yx,yxc->c", SX, nb)
    gy = np.einsum("yx,yxc->c", SY, nb)
    return np.concatenate([nb[1, 1], gx, gy])


def perception_interleaved(nb: np.ndarray) -> np.ndarray:
    """48-vector p[3c+k], as TF's depthwise_conv2d with channel_multiplier 3 lays it out."""
    out = np.empty(48)
    for c in range(16):
        out[3 * c + 0] = nb[1, 1, c]
        out[3 * c + 1] = np.sum(SX * nb[:, :, c])
        out[3 * c + 2] = np.sum(SY * nb[:, :, c])
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = C.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nca-convert: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ---------------------------------------------------------------- webgl

def test_webgl_decode_matches_the_documented_byte_layout():
    """Byte i*out_ch + o is W[i, o]; the last row is the bias (the Distill WebGL demo's 8-bit layout)."""
    rng = np.random.default_rng(5)
    layers = []
    tables = []
    for in_ch, out_ch, ws, bs in ((48, 128, 1.19, 0.376), (128, 16, 1.08, 0.164)):
        u8 = rng.integers(0, 256, (in_ch + 1) * out_ch, dtype=np.uint8)
        tables.append((u8.reshape(in_ch + 1, out_ch), ws, bs))
        layers.append({"data_b64": base64.b64encode(u8.tobytes()).decode(), "in_ch": in_ch,
                       "out_ch": out_ch, "weight_scale": ws, "bias_scale": bs, "type": "uint8"})
    p = C.decode_webgl(layers)
    for i, (a, ws, bs) in enumerate(tables):
        in_ch, out_ch = a.shape[0] - 1, a.shape[1]
        w, b = p[f"w{i + 1}"], p[f"b{i + 1}"]
        assert w.dtype == np.float32 and w.shape == (in_ch, out_ch)
        for (ii, o) in ((0, 0), (0, out_ch - 1), (in_ch - 1, 3), (7, 5)):
            assert w[ii, o] == np.float32((a[ii, o] / 255.0 - 0.5) * ws)
        np.testing.assert_array_equal(b, ((a[in_ch] / 255.0 - 0.5) * bs).astype(np.float32))


def test_webgl_encoder_is_pack_layer():
    params = random_params(1)
    layers = C.encode_webgl(params)
    assert [(l["in_ch"], l["out_ch"], l["type"]) for l in layers] == [(48, 128, "uint8"), (128, 16, "uint8")]
    l0 = layers[0]
    assert l0["weight_scale"] == pytest.approx(2 * np.abs(params["w1"]).max())
    assert l0["bias_scale"] == pytest.approx(2 * np.abs(params["b1"]).max())
    u8 = np.frombuffer(base64.b64decode(l0["data_b64"]), np.uint8).reshape(49, 128)
    expect = np.clip(np.round((params["w1"].astype(np.float64) / l0["weight_scale"] + 0.5) * 255), 0, 255)
    np.testing.assert_array_equal(u8[:48], expect)
    i = np.unravel_index(np.argmax(np.abs(params["w1"])), (48, 128))
    assert u8[i] in (0, 255)                   # the largest magnitude sits at the end of the range


def test_webgl_zero_tensor_round_trips_exactly():
    params = random_params(2)
    params["b2"][:] = 0.0
    params["w2"][:] = 0.0
    layers = C.encode_webgl(params)
    assert layers[1]["weight_scale"] == 0.0 and layers[1]["bias_scale"] == 0.0
    p = C.decode_webgl(layers)
    assert not p["w2"].any() and not p["b2"].any()


def test_webgl_cli_round_trip(tmp_path, capsys):
    params = random_params(3)
    layers = C.encode_webgl(params)
    src = write_json(tmp_path / "model.json", layers)
    rc, out, err = run(capsys, src, tmp_path / "out.npz")
    assert rc == 0, err
    assert "wrote" in out
    m = W.load(tmp_path / "out.npz")
    decoded = C.decode_webgl(layers)
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(m.params[k], decoded[k])      # concat order: rows untouched
    for i in (1, 2):
        for key, scale in ((f"w{i}", layers[i - 1]["weight_scale"]), (f"b{i}", layers[i - 1]["bias_scale"])):
            err_q = np.abs(m.params[key].astype(np.float64) - params[key])
            assert err_q.max() <= scale / 510 * (1 + 1e-6) + 1e-7, key
    assert m.meta["perception_order"] == ORDER_CONCAT
    assert m.meta["kind"] == "converted"
    assert m.meta["iterations"] == 0
    assert m.meta["target"] is None
    assert "webgl" in m.meta["origin"] and "model.json" in m.meta["origin"]
    assert "order=concat" in m.meta["origin"]


def test_webgl_metadata_options_and_emoji_file_name(tmp_path, capsys):
    layers = C.encode_webgl(random_params(4))
    src = write_json(tmp_path / "ex3_\U0001F98E.json", layers)
    rc, _, err = run(capsys, src, tmp_path / "a.npz")
    assert rc == 0, err
    assert W.load(tmp_path / "a.npz").meta["target"] == "lizard"
    rc, _, err = run(capsys, src, tmp_path / "b.npz", "--target", "smiley", "--kind", "regenerating",
                     "--format", "webgl")
    assert rc == 0, err
    meta = W.load(tmp_path / "b.npz").meta
    assert (meta["target"], meta["kind"]) == ("smiley", "regenerating")


def test_webgl_explicit_interleaved_override(tmp_path, capsys):
    layers = C.encode_webgl(random_params(5))
    src = write_json(tmp_path / "m.json", layers)
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "interleaved")
    assert rc == 0, err
    m = W.load(tmp_path / "o.npz")
    np.testing.assert_array_equal(m.w1, interleaved_to_concat(C.decode_webgl(layers)["w1"]))
    assert "order=interleaved" in m.meta["origin"]


# ---------------------------------------------------------------- tfjs

def test_tfjs_round_trip_is_exact(tmp_path, capsys):
    params = random_params(6)
    src = write_json(tmp_path / "model.json", C.encode_tfjs(params))
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "concat")
    assert rc == 0, err
    m = W.load(tmp_path / "o.npz")
    for k in PARAM_SHAPES:
        assert m.params[k].tobytes() == params[k].tobytes()
    assert "tfjs" in m.meta["origin"]


def test_tfjs_default_order_is_interleaved(tmp_path, capsys):
    params = random_params(7)
    src = write_json(tmp_path / "model.json", C.encode_tfjs(params))
    rc, _, err = run(capsys, src, tmp_path / "o.npz")
    assert rc == 0, err
    m = W.load(tmp_path / "o.npz")
    np.testing.assert_array_equal(m.w1, interleaved_to_concat(params["w1"]))
    assert m.b1.tobytes() == params["b1"].tobytes()
    assert "order=interleaved" in m.meta["origin"]


def test_tfjs_ignores_other_consts():
    params = random_params(8)
    obj = C.encode_tfjs(params)
    obj["modelTopology"]["node"] += [
        {"name": "kernel", "op": "Const", "attr": {"value": {"tensor": {
            "dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "3"}, {"size": "3"}, {"size": "1"},
                                                         {"size": "3"}]},
            "tensorContent": base64.b64encode(np.zeros(27, "<f4").tobytes()).decode()}}}},
        {"name": "idx", "op": "Const", "attr": {"value": {"tensor": {
            "dtype": "DT_INT32", "tensorShape": {"dim": [{"size": "16"}]},
            "tensorContent": base64.b64encode(np.zeros(16, "<i4").tobytes()).decode()}}}},
        {"name": "y", "op": "Const", "attr": {"value": {"tensor": {
            "dtype": "DT_FLOAT", "tensorShape": {}, "floatVal": [0.1]}}}},
        {"name": "x", "op": "Placeholder", "attr": {}},
    ]
    p = C.decode_tfjs(obj)
    for k in PARAM_SHAPES:
        assert p[k].tobytes() == params[k].tobytes()


# ---------------------------------------------------------------- the perception order

@pytest.mark.parametrize("fmt", ["npz", "tfjs"])
def test_interleaved_conversion_preserves_the_function(tmp_path, capsys, fmt):
    rng = np.random.default_rng(9)
    w1_i = rng.normal(0, 0.3, (48, 128)).astype(np.float32)    # a model in the TF notebook's order
    params = random_params(9)
    params["w1"] = w1_i
    if fmt == "npz":
        src = tmp_path / "tf.npz"
        np.savez(src, **params)
    else:
        src = write_json(tmp_path / "tf.json", C.encode_tfjs(params))
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "interleaved")
    assert rc == 0, err
    w1_c = W.load(tmp_path / "o.npz").w1
    np.testing.assert_array_equal(w1_c, interleaved_to_concat(w1_i))
    np.testing.assert_array_equal(concat_to_interleaved(w1_c), w1_i)
    for _ in range(5):
        nb = rng.normal(0, 1, (3, 3, 16))
        p_i, p_c = perception_interleaved(nb), perception_concat(nb)
        np.testing.assert_allclose(p_i @ w1_i.astype(np.float64), p_c @ w1_c.astype(np.float64),
                                   rtol=1e-12, atol=1e-12)
    # ... and reading it in the wrong order really does compute something else.
    nb = rng.normal(0, 1, (3, 3, 16))
    assert not np.allclose(perception_interleaved(nb) @ w1_i, perception_concat(nb) @ w1_i)


# ---------------------------------------------------------------- npz

def test_npz_requires_order(tmp_path, capsys):
    src = tmp_path / "m.npz"
    np.savez(src, **random_params())
    rc, _, err = run(capsys, src, tmp_path / "o.npz")
    assert_user_error(rc, err, "--order", "required")
    assert not (tmp_path / "o.npz").exists()


def test_npz_concat_and_torch_aliases(tmp_path, capsys):
    params = random_params(10)
    src = tmp_path / "torch.npz"
    np.savez(src, **{"0.weight": params["w1"].T.reshape(128, 48, 1, 1), "0.bias": params["b1"],
                     "2.weight": params["w2"].T, "2.bias": params["b2"].astype(np.float64)})
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "concat")
    assert rc == 0, err
    m = W.load(tmp_path / "o.npz")
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(m.params[k], params[k])


def test_npz_keras_layout(tmp_path, capsys):
    params = random_params(11)
    src = tmp_path / "k.npz"
    np.savez(src, w1=params["w1"].reshape(1, 1, 48, 128), b1=params["b1"],
             w2=params["w2"].reshape(1, 1, 128, 16), b2=params["b2"])
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "concat")
    assert rc == 0, err
    np.testing.assert_array_equal(W.load(tmp_path / "o.npz").w1, params["w1"])


def test_project_npz_is_revalidated_and_keeps_its_history(tmp_path, capsys):
    params = random_params(12)
    meta = W.default_meta(kind="growing", target="lizard", iterations=8000, loss_history=[0.5, 0.1],
                          origin="nca-train")
    src = W.save(tmp_path / "in.npz", W.Model(params, meta))
    rc, _, err = run(capsys, src, tmp_path / "o.npz")
    assert rc == 0, err
    m = W.load(tmp_path / "o.npz")
    for k in PARAM_SHAPES:
        assert m.params[k].tobytes() == params[k].tobytes()
    assert (m.meta["kind"], m.meta["target"], m.meta["iterations"]) == ("growing", "lizard", 8000)
    assert m.meta["loss_history"] == [0.5, 0.1]
    assert "nca-train" in m.meta["origin"]


def test_update_scale_multiplies_every_update_and_keeps_the_rest(tmp_path, capsys):
    """--update-scale C: the output layer times C, so one step moves every fired cell C
    times as far (the alive rule permitting) and a state where the update is zero stays
    one; the scale is recorded, and a second one adds to the list."""
    params = random_params(13)
    src = W.save(tmp_path / "in.npz", W.Model(params, W.default_meta(kind="regenerating", target="lizard")))
    rc, out, err = run(capsys, src, tmp_path / "o.npz", "--update-scale", "0.4")
    assert rc == 0, err
    assert "update-scale=0.4" in out
    m = W.load(tmp_path / "o.npz")
    for k in ("w1", "b1"):
        assert m.params[k].tobytes() == params[k].tobytes()
    for k in ("w2", "b2"):
        np.testing.assert_array_equal(m.params[k], (params[k].astype(np.float64) * 0.4).astype(np.float32))
    assert m.meta["update_scales"] == [0.4] and "update-scale=0.4" in m.meta["origin"]
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.5, (12, 12, 16))
    x[..., ALPHA] = 1.0                                        # every cell alive, before and after
    kx, ky = gradient_kernels(0.0)
    fire = rng.random((12, 12)) < 0.5
    _, t1 = step64(x, params, kx, ky, fire)
    _, t2 = step64(x, m.params, kx, ky, fire)
    np.testing.assert_allclose(t2 - x, 0.4 * (t1 - x), rtol=1e-5, atol=1e-6)   # float32 weights
    rc, _, err = run(capsys, tmp_path / "o.npz", tmp_path / "o2.npz", "--update-scale", "0.5")
    assert rc == 0, err
    assert W.load(tmp_path / "o2.npz").meta["update_scales"] == [0.4, 0.5]


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "5"])
def test_a_bad_update_scale_is_a_one_line_error(tmp_path, capsys, bad):
    src = W.save(tmp_path / "in.npz", W.Model(random_params(14), W.default_meta()))
    (tmp_path / "o.npz").write_bytes(b"previous")
    rc, _, err = run(capsys, src, tmp_path / "o.npz", f"--update-scale={bad}")
    assert_user_error(rc, err, "--update-scale")
    assert (tmp_path / "o.npz").read_bytes() == b"previous"


def test_project_npz_tagged_interleaved_is_converted(tmp_path, capsys):
    params = random_params(13)
    src = tmp_path / "in.npz"
    np.savez(src, meta=np.array(json.dumps(W.default_meta(perception_order=ORDER_INTERLEAVED))), **params)
    rc, _, err = run(capsys, src, tmp_path / "o.npz")
    assert rc == 0, err
    m = W.load(tmp_path / "o.npz")
    np.testing.assert_array_equal(m.w1, interleaved_to_concat(params["w1"]))
    assert m.meta["perception_order"] == ORDER_CONCAT
    rc, _, err = run(capsys, src, tmp_path / "p.npz", "--order", "concat")
    assert_user_error(rc, err, "contradicts")


# ---------------------------------------------------------------- errors: one line, exit 2

def webgl_layers() -> list[dict]:
    return C.encode_webgl(random_params(20))


def _bad_webgl_cases():
    def edit(fn):
        layers = webgl_layers()
        fn(layers)
        return layers

    return {
        "one layer": (webgl_layers()[:1], "list of 2 layers"),
        "not a dict": ([1, 2], "expected a JSON object"),
        "missing key": (edit(lambda l: l[0].pop("bias_scale")), "missing key"),
        "wrong in_ch": (edit(lambda l: l[0].update(in_ch=47)), "in_ch"),
        "wrong out_ch": (edit(lambda l: l[1].update(out_ch=15)), "out_ch"),
        "swapped layers": (webgl_layers()[::-1], "in_ch"),
        "short data": (edit(lambda l: l[1].update(data_b64=l[1]["data_b64"][:-8])), "bytes"),
        "bad base64": (edit(lambda l: l[0].update(data_b64="***" + l[0]["data_b64"][3:])), "base64"),
        "data not str": (edit(lambda l: l[0].update(data_b64=12)), "not a string"),
        "float type": (edit(lambda l: l[0].update(type="float32")), "uint8"),
        "nan scale": (edit(lambda l: l[0].update(weight_scale=float("nan"))), "weight_scale"),
        "inf scale": (edit(lambda l: l[1].update(bias_scale=float("inf"))), "bias_scale"),
        "negative scale": (edit(lambda l: l[1].update(bias_scale=-1.0)), "bias_scale"),
        "string scale": (edit(lambda l: l[1].update(weight_scale="1.0")), "weight_scale"),
    }


BAD_WEBGL = _bad_webgl_cases()


@pytest.mark.parametrize("case", list(BAD_WEBGL))
def test_bad_webgl(tmp_path, capsys, case):
    obj, needle = BAD_WEBGL[case]
    src = tmp_path / "m.json"
    src.write_text(json.dumps(obj))          # json.dumps writes NaN/Infinity, which json.loads reads
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--format", "webgl")
    assert_user_error(rc, err, needle, "m.json")
    assert not (tmp_path / "o.npz").exists()


def _tfjs(params=None):
    return C.encode_tfjs(params if params is not None else random_params(21))


def _bad_tfjs_cases():
    nan_params = random_params(22)
    missing = _tfjs()
    missing["modelTopology"]["node"].pop(1)
    dup = _tfjs()
    dup["modelTopology"]["node"].append(dict(dup["modelTopology"]["node"][3], name="copy"))
    bad64 = _tfjs()
    bad64["modelTopology"]["node"][0]["attr"]["value"]["tensor"]["tensorContent"] = "@@@@"
    short = _tfjs()
    t = short["modelTopology"]["node"][2]["attr"]["value"]["tensor"]
    t["tensorContent"] = base64.b64encode(base64.b64decode(t["tensorContent"])[:-4]).decode()
    sharded = _tfjs()
    sharded["modelTopology"]["node"] = sharded["modelTopology"]["node"][1:]
    sharded["weightsManifest"] = [{"paths": ["group1-shard1of1.bin"], "weights": []}]
    # A float32 NaN has to be built by hand: validate_params in encode_tfjs refuses it.
    nan_obj = _tfjs(nan_params)
    tb = nan_obj["modelTopology"]["node"][0]["attr"]["value"]["tensor"]
    raw = bytearray(base64.b64decode(tb["tensorContent"]))
    raw[0:4] = np.array([np.nan], "<f4").tobytes()
    tb["tensorContent"] = base64.b64encode(bytes(raw)).decode()
    return {
        "missing b1": (missing, "b1"),
        "ambiguous": (dup, "ambiguous"),
        "bad base64": (bad64, "base64"),
        "short tensor": (short, "bytes"),
        "sharded weights": (sharded, "shard"),
        "nan weight": (nan_obj, "NaN"),
        "no topology": ({"format": "graph-model"}, "modelTopology"),
    }


BAD_TFJS = _bad_tfjs_cases()


@pytest.mark.parametrize("case", list(BAD_TFJS))
def test_bad_tfjs(tmp_path, capsys, case):
    obj, needle = BAD_TFJS[case]
    src = write_json(tmp_path / "m.json", obj)
    rc, _, err = run(capsys, src, tmp_path / "o.npz")
    assert_user_error(rc, err, needle)
    assert not (tmp_path / "o.npz").exists()


def test_input_missing(tmp_path, capsys):
    rc, _, err = run(capsys, tmp_path / "nope.json", tmp_path / "o.npz")
    assert_user_error(rc, err, "no such file", "nope.json")


def test_input_is_a_directory(tmp_path, capsys):
    rc, _, err = run(capsys, tmp_path, tmp_path / "o.npz")
    assert_user_error(rc, err, "directory")


@pytest.mark.parametrize("content,needle", [
    (b"this is not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00garbage\x80", "not UTF-8"),
    (b"[" * 100000, "JSON"),
    (b"42", "cannot tell the format"),
    (b'{"hello": 1}', "cannot tell the format"),
])
def test_not_a_model_json(tmp_path, capsys, content, needle):
    src = tmp_path / "m.json"
    src.write_bytes(content)
    rc, _, err = run(capsys, src, tmp_path / "o.npz")
    assert_user_error(rc, err, needle)


def test_non_finite_npz_values(tmp_path, capsys):
    params = random_params()
    params["b2"][0] = np.inf
    src = tmp_path / "m.npz"
    np.savez(src, **params)
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "concat")
    assert_user_error(rc, err, "NaN or infinite")


@pytest.mark.parametrize("case", ["corrupt", "missing array", "int dtype", "bad shape", "pickled"])
def test_bad_npz(tmp_path, capsys, case):
    src = tmp_path / "m.npz"
    params = random_params()
    needle = {"corrupt": "not a readable .npz", "missing array": "missing array 'w2'",
              "int dtype": "dtype", "bad shape": "shape", "pickled": "not a readable .npz"}[case]
    if case == "corrupt":
        src.write_bytes(b"PK\x03\x04 this is no zip")
    else:
        if case == "missing array":
            del params["w2"]
        elif case == "int dtype":
            params["w1"] = np.ones((48, 128), np.int32)
        elif case == "bad shape":
            params["w1"] = np.ones((49, 128), np.float32)
        else:
            params["b1"] = np.array([object()], dtype=object)
        np.savez(src, **params)
    rc, _, err = run(capsys, src, tmp_path / "o.npz", "--order", "concat")
    assert_user_error(rc, err, needle)


def test_unwritable_output(tmp_path, capsys):
    src = write_json(tmp_path / "m.json", webgl_layers())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run(capsys, src, blocker / "o.npz")
    assert_user_error(rc, err, "cannot write")
    (tmp_path / "dir.npz").mkdir()
    rc, _, err = run(capsys, src, tmp_path / "dir.npz")
    assert_user_error(rc, err, "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npz", "file", "m.json"]


def test_failed_conversion_keeps_previous_output(tmp_path, capsys):
    good = write_json(tmp_path / "good.json", webgl_layers())
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    out = tmp_path / "o.npz"
    assert run(capsys, good, out)[0] == 0
    before = out.read_bytes()
    rc, _, err = run(capsys, bad, out)
    assert_user_error(rc, err)
    assert out.read_bytes() == before


@pytest.mark.parametrize("argv,needle", [
    (["--format", "onnx"], "invalid choice"),
    (["--order", "guess"], "invalid choice"),
    (["--kind", "fancy"], "invalid choice"),
    (["--target", "unicorn"], "unknown target"),
])
def test_bad_options(tmp_path, capsys, argv, needle):
    src = write_json(tmp_path / "m.json", webgl_layers())
    rc, _, err = run(capsys, src, tmp_path / "o.npz", *argv)
    assert_user_error(rc, err, needle)
    assert not (tmp_path / "o.npz").exists()


def test_missing_arguments(capsys):
    rc, _, err = run(capsys)
    assert_user_error(rc, err, "required")


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        C.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "nca-convert" in out and "--order" in out and "interleaved" in out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_real_process_exit_code_and_stderr(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"data_b64": "AAAA"}]')
    r = subprocess.run([sys.executable, "-m", "sim.convert", str(bad), str(tmp_path / "o.npz")],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nca-convert: error:"), r.stderr
    assert r.stdout == ""


def test_real_process_success(tmp_path):
    src = write_json(tmp_path / "m.json", webgl_layers())
    r = subprocess.run([sys.executable, "-m", "sim.convert", str(src), str(tmp_path / "o.npz")],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    W.load(tmp_path / "o.npz")


@pytest.mark.skipif(shutil.which("nca-convert") is None, reason="package not installed (pip install -e .)")
def test_console_entry_point_help():
    r = subprocess.run(["nca-convert", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: nca-convert" in r.stdout
