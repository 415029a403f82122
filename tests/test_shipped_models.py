"""Quality of the shipped lizard models, measured the way a user would: with
`python -m sim.run --json` (in-process), 40x40 target on a 72x72 grid, sync
engine, seeds 0..4, mean over seeds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim import run as R

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SEEDS = range(5)


def _model(kind: str) -> Path:
    p = WEIGHTS / f"lizard_{kind}.npz"
    if not p.is_file():
        pytest.fail(f"shipped model {p} is missing")
    return p


def _run_json(tmp_path: Path, *args) -> dict:
    out = tmp_path / "m.json"
    argv = ["--engine", "sync", "--size", "72", "--target", "lizard", "--json", str(out), *map(str, args)]
    assert R.main(argv) == 0
    return json.loads(out.read_text())


def _mean_loss(tmp_path: Path, kind: str, steps: int, *extra) -> tuple[float, list[dict]]:
    runs = [_run_json(tmp_path, "--model", _model(kind), "--steps", steps, "--seed", s, *extra) for s in SEEDS]
    return float(np.mean([r["loss"] for r in runs])), runs


def test_growing_lizard_at_step_96(tmp_path):
    loss, runs = _mean_loss(tmp_path, "growing", 96)
    assert loss <= 2e-3, loss
    assert all(r["alive_cells"] > 300 for r in runs)


def test_persistent_lizard_holds_to_step_2000(tmp_path):
    loss, _ = _mean_loss(tmp_path, "persistent", 1000)
    assert loss <= 3e-3, loss
    loss2k, runs = _mean_loss(tmp_path, "persistent", 2000)
    assert all(r["alive_cells"] > 300 for r in runs), [r["alive_cells"] for r in runs]
    assert loss2k <= 1e-2, loss2k


def test_regenerating_lizard_regrows_a_radius_8_cut(tmp_path):
    # The grown pattern's centre on a 72x72 grid is (36, 36); the cut takes out a
    # third of the body there, including the belly stripe.
    cut = "circle:36,36,8@300"
    loss, runs = _mean_loss(tmp_path, "regenerating", 500, "--damage", cut)
    assert loss <= 4e-3, loss
    wiped = [r["damage"][0]["cells"] for r in runs]
    assert min(wiped) > 100, wiped
    strip = tmp_path / "regrow.png"
    _run_json(tmp_path, "--model", _model("regenerating"), "--steps", 500, "--damage", cut,
              "--save-strip", strip)
    assert strip.stat().st_size > 0
