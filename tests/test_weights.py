"""The .npz weights format (sim/weights.py): round trip, every way a file can be bad, atomic save."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim import weights as W
from sim.model import ORDER_CONCAT, ORDER_INTERLEAVED, PARAM_SHAPES, init_params


def random_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in PARAM_SHAPES.items()}


def write_raw(path: Path, meta: object = "default", **arrays: np.ndarray) -> Path:
    """An .npz written by hand, bypassing W.save's validation, to build bad files."""
    if meta == "default":
        meta = W.default_meta()
    if meta is not None:
        arrays["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_round_trip_bit_exact_with_meta(tmp_path):
    params = random_params(1)
    params["w1"][0, 0] = -0.0
    params["w1"][0, 1] = np.float32(1e-45)          # subnormal
    params["b2"][3] = np.finfo(np.float32).max
    meta = W.default_meta(kind="regenerating", target="lizard", iterations=8000,
                          loss_history=[0.1, 0.05], origin="test")
    p = W.save(tmp_path / "m.npz", W.Model(params, meta))
    m = W.load(p)
    for k in PARAM_SHAPES:
        assert m.params[k].dtype == np.float32
        assert m.params[k].shape == PARAM_SHAPES[k]
        assert m.params[k].tobytes() == params[k].tobytes()     # bit-exact, -0.0 included
    assert m.meta == meta
    assert m.meta["perception_order"] == ORDER_CONCAT
    assert m.w1 is m.params["w1"] and m.b2 is m.params["b2"]
    assert leftovers(tmp_path) == []


def test_save_fills_default_meta_and_accepts_float64(tmp_path):
    params = {k: v.astype(np.float64) for k, v in init_params(np.random.default_rng(2)).items()}
    m = W.load(W.save(tmp_path / "sub" / "m.npz", W.Model(params, {"kind": "growing"})))
    assert m.meta["kind"] == "growing"
    assert m.meta["format_version"] == W.FORMAT_VERSION
    np.testing.assert_array_equal(m.w1, params["w1"].astype(np.float32))
    assert not m.w2.any() and not m.b1.any() and not m.b2.any()   # paper init: zeros


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float32, PARAM_SHAPES["b1"],
                  elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_round_trip_any_finite_float32(tmp_path_factory, b1):
    folder = tmp_path_factory.mktemp("rt")
    params = random_params(3)
    params["b1"] = b1
    m = W.load(W.save(folder / "m.npz", W.Model(params)))
    assert m.b1.tobytes() == b1.tobytes()


# ---------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(W.WeightsError, match="no such weights file"):
        W.load(tmp_path / "nope.npz")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(W.WeightsError, match="no such weights file"):
        W.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage", b"\x93NUMPY"])
def test_corrupt_bytes(tmp_path, content):
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(W.WeightsError, match="not a readable .npz"):
        W.load(p)


def test_truncated_file(tmp_path):
    p = W.save(tmp_path / "m.npz", W.Model(random_params()))
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(W.WeightsError, match="not a readable .npz"):
        W.load(p)


def test_missing_meta(tmp_path):
    p = write_raw(tmp_path / "m.npz", meta=None, **random_params())
    with pytest.raises(W.WeightsError, match="missing 'meta'"):
        W.load(p)


def test_bad_json_meta(tmp_path):
    p = write_raw(tmp_path / "m.npz", meta="{not json", **random_params())
    with pytest.raises(W.WeightsError, match="'meta' is not valid JSON"):
        W.load(p)


def test_meta_not_an_object(tmp_path):
    p = write_raw(tmp_path / "m.npz", meta="[1, 2]", **random_params())
    with pytest.raises(W.WeightsError, match="not a JSON object"):
        W.load(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", list(PARAM_SHAPES))
def test_non_finite_values(tmp_path, name, bad):
    params = random_params()
    params[name].flat[-1] = bad
    p = write_raw(tmp_path / "m.npz", **params)
    with pytest.raises(W.WeightsError, match=f"'{name}' contains NaN or infinite"):
        W.load(p)


@pytest.mark.parametrize("name,shape", [("w1", (128, 48)), ("w1", (1, 1, 48, 128)),
                                        ("b1", (127,)), ("w2", (16, 128)), ("b2", ())])
def test_wrong_shape(tmp_path, name, shape):
    params = random_params()
    params[name] = np.zeros(shape, np.float32)
    p = write_raw(tmp_path / "m.npz", **params)
    with pytest.raises(W.WeightsError, match=f"'{name}' has shape"):
        W.load(p)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.bool_])
def test_wrong_dtype(tmp_path, dtype):
    params = random_params()
    params["w2"] = np.zeros(PARAM_SHAPES["w2"], dtype)
    p = write_raw(tmp_path / "m.npz", **params)
    with pytest.raises(W.WeightsError, match="'w2' has dtype"):
        W.load(p)


def test_object_array_is_refused_without_unpickling(tmp_path):
    params = random_params()
    params["b2"] = np.array([{"evil": 1}], dtype=object)
    p = write_raw(tmp_path / "m.npz", **params)
    with pytest.raises(W.WeightsError):
        W.load(p)


def test_unknown_order_tag(tmp_path):
    p = write_raw(tmp_path / "m.npz", meta=W.default_meta(perception_order="grad_x,state,grad_y"),
                  **random_params())
    with pytest.raises(W.WeightsError, match="unknown perception_order"):
        W.load(p)


def test_missing_order_tag(tmp_path):
    meta = W.default_meta()
    del meta["perception_order"]
    p = write_raw(tmp_path / "m.npz", meta=meta, **random_params())
    with pytest.raises(W.WeightsError, match="perception_order"):
        W.load(p)


def test_interleaved_order_tag_points_to_nca_convert(tmp_path):
    p = write_raw(tmp_path / "m.npz", meta=W.default_meta(perception_order=ORDER_INTERLEAVED),
                  **random_params())
    with pytest.raises(W.WeightsError, match="nca-convert"):
        W.load(p)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_wrong_format_version(tmp_path, version):
    p = write_raw(tmp_path / "m.npz", meta=W.default_meta(format_version=version), **random_params())
    with pytest.raises(W.WeightsError, match="format_version"):
        W.load(p)


@pytest.mark.parametrize("name", list(PARAM_SHAPES))
def test_missing_array(tmp_path, name):
    params = random_params()
    del params[name]
    p = write_raw(tmp_path / "m.npz", **params)
    with pytest.raises(W.WeightsError, match=f"missing array '{name}'"):
        W.load(p)


def test_messages_are_one_line_and_name_the_file(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"junk\njunk")
    with pytest.raises(W.WeightsError) as e:
        W.load(p)
    assert "\n" not in str(e.value) and "bad.npz" in str(e.value)


def test_weights_error_is_a_user_error():
    from sim.errors import UserError
    assert issubclass(W.WeightsError, UserError)


# ---------------------------------------------------------------- atomic save

@pytest.fixture
def previous(tmp_path) -> tuple[Path, bytes]:
    p = W.save(tmp_path / "model.npz", W.Model(random_params(7), W.default_meta(kind="growing")))
    return p, p.read_bytes()


@pytest.mark.parametrize("breakage", ["nan", "shape", "missing", "interleaved", "version"])
def test_invalid_save_leaves_previous_file(previous, breakage):
    p, before = previous
    params, meta = random_params(8), {}
    if breakage == "nan":
        params["w1"][5, 5] = np.nan
    elif breakage == "shape":
        params["b1"] = np.zeros(3, np.float32)
    elif breakage == "missing":
        del params["w2"]
    elif breakage == "interleaved":
        meta = {"perception_order": ORDER_INTERLEAVED}
    else:
        meta = {"format_version": 99}
    with pytest.raises(W.WeightsError):
        W.save(p, W.Model(params, meta))
    assert p.read_bytes() == before
    assert leftovers(p.parent) == []


def test_write_failure_midway_leaves_previous_file(previous, monkeypatch):
    p, before = previous

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(W.np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        W.save(p, W.Model(random_params(9)))
    assert p.read_bytes() == before
    assert leftovers(p.parent) == []


def test_interrupted_save_leaves_previous_file(previous, monkeypatch):
    p, before = previous

    def interrupted(f, **arrays):
        f.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(W.np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        W.save(p, W.Model(random_params(9)))
    assert p.read_bytes() == before
    assert leftovers(p.parent) == []


def test_save_onto_a_directory_fails_cleanly(tmp_path):
    target = tmp_path / "model.npz"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        W.save(target, W.Model(random_params()))
    assert (target / "keep").read_text() == "x"
    assert leftovers(tmp_path) == []


def test_save_under_a_file_fails_cleanly(previous):
    p, before = previous
    with pytest.raises(OSError):
        W.save(p / "inner.npz", W.Model(random_params()))
    assert p.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_unwritable_directory_leaves_previous_file(previous):
    p, before = previous
    os.chmod(p.parent, 0o500)
    try:
        with pytest.raises(OSError):
            W.save(p, W.Model(random_params(10)))
    finally:
        os.chmod(p.parent, 0o700)
    assert p.read_bytes() == before
    assert leftovers(p.parent) == []
