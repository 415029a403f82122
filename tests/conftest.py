"""Shared fixtures: the synthetic blob model (sim.fixture) as engine Params, a tiny
training target, the check of `python -m sim.run`'s one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sim.run
from sim.fixture import blob_model
from sim.spec import Params
from sim.weights import Model, save


@pytest.fixture
def one_line_error(capsys):
    """check(argv, words): `python -m sim.run argv` exits 2 with one line naming `words`,
    and no traceback."""
    def check(argv, words: str) -> None:
        rc = sim.run.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return check


@pytest.fixture(scope="session")
def blob():
    """The blob fixture Model (grows a bounded blob in which some cells die)."""
    return blob_model()


@pytest.fixture(scope="session")
def blob_params(blob):
    """Params of the blob model, rotation 0."""
    return Params.from_model(blob)


@pytest.fixture
def post_rule_case():
    """(state, params, expected) of a hand-built step at fire rate 1 where every fired cell's
    new alpha is its channel 4: C (2,2) alpha .5 -> 0; P (2,3) keeps ch7 = .3 with alpha 0;
    D (2,4) alpha 0 -> .7 but D is not pre-alive. P survives only through D's updated alpha
    (post uses ALL cells' new alphas) while D itself and C are zeroed."""
    w1 = np.zeros((48, 128), np.float32)
    w2 = np.zeros((128, 16), np.float32)
    w1[4, 0], w1[4, 1], w1[3, 2], w1[3, 3] = 1, -1, 1, -1
    w2[0, 3], w2[1, 3], w2[2, 3], w2[3, 3] = 1, -1, -1, 1          # d alpha = ch4 - alpha
    params = {"w1": w1, "b1": np.zeros(128, np.float32), "w2": w2, "b2": np.zeros(16, np.float32)}
    x = np.zeros((5, 7, 16), np.float32)
    x[2, 2, 3] = 0.5
    x[2, 3, 7] = 0.3
    x[2, 4, 4] = 0.7
    expect = np.zeros_like(x)
    expect[2, 3, 7] = 0.3
    return x, params, expect


@pytest.fixture(scope="session")
def disc_png(tmp_path_factory) -> Path:
    """A 12x12 coloured disc: a target small enough to learn in seconds."""
    n = 12
    y, x = np.mgrid[0:n, 0:n]
    a = (np.hypot(y - 5.5, x - 5.5) < 5).astype(float)
    img = np.zeros((n, n, 4))
    img[..., 0] = 0.9 * a
    img[..., 1] = a * np.linspace(0.2, 0.8, n)[None, :]
    img[..., 2] = 0.3 * a
    img[..., 3] = a
    p = tmp_path_factory.mktemp("target") / "disc.png"
    Image.fromarray(np.round(img * 255).astype(np.uint8), "RGBA").save(p)
    return p


def other_model(m: Model) -> Model:
    """A second, different model (for flashing over a first one)."""
    p = {k: np.asarray(v, np.float32).copy() for k, v in m.params.items()}
    p["w2"] = p["w2"] * np.float32(0.5)
    p["b2"] = p["b2"] + np.float32(0.01)
    return Model(p, dict(m.meta))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two different models saved as .npz and quantised: (path a, path b, qa, qb)."""
    from codegen.quantize import quantized
    d = tmp_path_factory.mktemp("models")
    a, b = blob_model(), other_model(blob_model())
    save(d / "a.npz", a)
    save(d / "b.npz", b)
    return d / "a.npz", d / "b.npz", quantized(a), quantized(b)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """The blob model saved as a weights file (read only)."""
    return save(tmp_path_factory.mktemp("models") / "blob.npz", blob_model())
