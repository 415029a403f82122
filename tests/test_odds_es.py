"""nca-train --odds-es: the estimate, the score, the moves, the run's replay and its errors."""
from __future__ import annotations

import numpy as np
import pytest

from sim import weights
from sim.errors import UserError
from sim.pictures import load_target
from sim.rules import AsyncConfig
from sim.simulate import shifted, simulate
from train.cli import main
from train.odds_es import (GROWN_SEEDS, MSE_RANGE, ORDER_SEEDS, PATTERN_SEEDS, OddsES, Moves,
                            antithetic_gradient, distances, odds_es, run_score, score_of)

# A model with no evolution-strategies history: a run from it numbers its steps from 1.
START = "lizard_regenerating_slips"
TINY = ["--es-steps", "2", "--es-directions", "2", "--es-runs", "2", "--es-after", "30",
        "--es-cut", "circle:20,20,8@120", "--es-cut", "rect:20,0,39,39@120", "--es-workers", "1"]


def test_antithetic_gradient_is_exact_on_a_linear_fitness():
    a = np.array([0.5, -2.0, 1.0, 0.0])
    sigma = 0.03
    eps = np.eye(4) * 2.0          # four orthogonal moves of length 2 = sqrt(N): the estimate is a
    diffs = np.array([(a @ (sigma * e) - a @ (-sigma * e)) / 2 for e in eps])
    np.testing.assert_allclose(antithetic_gradient(diffs, eps, sigma), a, rtol=1e-12)


def test_antithetic_gradient_estimates_in_expectation():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(8)
    eps = rng.standard_normal((20000, 8))
    diffs = eps @ a * 0.01
    g = antithetic_gradient(diffs, eps, 0.01)
    assert np.corrcoef(g, a)[0, 1] > 0.99


def test_run_score_tells_in_place_from_moved():
    rng = np.random.default_rng(1)
    before = np.zeros((40, 40, 16), np.float32)
    before[10:30, 12:28, :4] = rng.random((20, 16, 4))
    assert run_score(before, before) == 1.0
    assert run_score(shifted(before, 1, 0), before) == -1.0
    assert run_score(shifted(before, 0, -1), before) == -1.0
    half = before.copy()
    half[20:] = shifted(before, 1, 0)[20:]          # half of it moved: in between
    assert -1.0 < run_score(half, before) < 1.0


def test_mse_score_counts_how_far_a_run_has_got():
    rng = np.random.default_rng(2)
    before = np.zeros((40, 40, 16), np.float32)
    before[10:30, 12:28, :4] = rng.random((20, 16, 4))
    late = before.copy()
    late[19:21, 19:21, 3] *= 0.5                    # in place, a patch still faint
    later = before.copy()
    later[19:22, 19:22, 3] *= 0.5
    # the place score cannot tell the two late runs apart; the mse score ranks them
    assert run_score(late, before) == run_score(later, before) == 1.0
    s_late, s_later = (score_of(*distances(x, before), "mse") for x in (late, later))
    assert MSE_RANGE[0] < s_later < s_late < MSE_RANGE[1]
    assert score_of(*distances(before, before), "mse") == MSE_RANGE[1]
    assert score_of(*distances(shifted(before, 1, 0), before), "mse") == MSE_RANGE[0]


def test_moves_touch_only_the_output_layer():
    m = weights.load(START)
    mv = Moves(m)
    assert mv.dim == m.params["w2"].size + m.params["b2"].size
    same = mv.params(np.zeros(mv.dim))
    for k in m.params:
        np.testing.assert_array_equal(same[k], m.params[k])
    z = np.zeros(mv.dim)
    z[0] = 1.0
    z[-1] = -2.0
    moved = mv.params(z)
    for k in ("w1", "b1"):
        np.testing.assert_array_equal(moved[k], m.params[k])
    assert moved["w2"].flat[0] == pytest.approx(m.params["w2"].flat[0] + m.params["w2"].std(), rel=1e-5)
    assert moved["b2"][-1] == pytest.approx(m.params["b2"][-1] - 2 * m.params["b2"].std(), rel=1e-5)
    assert np.count_nonzero(moved["w2"] != m.params["w2"]) == 1


@pytest.mark.parametrize("kw, words", [
    ({"runs": 3}, "multiple of the 2 cuts"),
    ({"sigma": 0.0}, "--es-sigma"),
    ({"step_length": float("nan")}, "--es-step-length"),
    ({"pattern": -1.0}, "--es-pattern"),
    ({"pattern_latency": -0.5}, "--es-pattern-latency"),
    ({"pattern_latency": float("inf")}, "--es-pattern-latency"),
    ({"cuts": ("circle:60,60,3@100",)}, "cuts no cell"),
    ({"cuts": ("circle:20,20,8@100", "rect:20,0,39,39@200")}, "same step"),
    ({"cuts": ("circle:20,20@100",)}, "--es-cut"),
    ({"cuts": ()}, "one to nine"),
    ({"steps": 0}, "--es-steps must be >= 1"),
    ({"directions": 0}, "--es-directions"),
    ({"score": "odds"}, "--es-score must be one of place, mse"),
    ({"cells": "golden"}, "--es-cells must be one of float, fixed"),
])
def test_settings_are_checked(kw, words):
    with pytest.raises(UserError, match=words):
        OddsES(**kw).validate()


def test_cli_errors_are_one_line(capsys, tmp_path):
    out = tmp_path / "o.npz"
    for extra, words in ((["--odds-es"], "--init"),
                         (["--odds-es", "--init", START, "--qat"], "does not train"),
                         (["--odds-es", "--init", START, "--es-runs", "3"], "--es-runs"),
                         (["--odds-es", "--init", START, "--es-workers", "0"], "--es-workers"),
                         (["--odds-es", "--init", START, "--es-cells", "fixed"], "fine-tuned with --qat")):
        assert main([*extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and words in err and "Traceback" not in err
    assert not out.exists()


def test_a_run_replays_exactly_and_continues_where_it_stopped(tmp_path, capsys):
    a, b, c = (tmp_path / n for n in ("a.npz", "b.npz", "c.npz"))
    assert main(["--odds-es", "--init", START, *TINY, "--seed", "3", "--out", str(a)]) == 0
    assert main(["--odds-es", "--init", START, *TINY, "--seed", "3", "--out", str(b)]) == 0
    log = capsys.readouterr().out
    assert "step 1:" in log and "step 2:" in log
    ma, mb, m0 = weights.load(a), weights.load(b), weights.load(START)
    for k in m0.params:
        np.testing.assert_array_equal(ma.params[k], mb.params[k])
    assert not np.array_equal(ma.params["w2"], m0.params["w2"])
    np.testing.assert_array_equal(ma.params["w1"], m0.params["w1"])
    runs = ma.meta["odds_es"]
    assert len(runs) == 1 and runs[0]["steps_done"] == 2 and runs[0]["seed"] == 3
    assert [h["step"] for h in runs[0]["history"]] == [1, 2]
    assert main(["--odds-es", "--init", str(a), *TINY, "--seed", "3", "--out", str(c)]) == 0
    assert "step 3:" in capsys.readouterr().out
    runs = weights.load(c).meta["odds_es"]
    assert [r["first_step"] for r in runs] == [1, 3]


def test_the_mse_score_is_recorded_and_steers_the_run(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    one = [*TINY[:1], "1", *TINY[2:]]
    assert main(["--odds-es", "--init", START, *one, "--seed", "3", "--out", str(a)]) == 0
    assert main(["--odds-es", "--init", START, *one, "--seed", "3", "--es-score", "mse",
                 "--out", str(b)]) == 0
    capsys.readouterr()
    ma, mb = weights.load(a), weights.load(b)
    assert ma.meta["odds_es"][0]["score"] == "place" and mb.meta["odds_es"][0]["score"] == "mse"
    assert not np.array_equal(ma.params["w2"], mb.params["w2"])     # the same moves, other fitness
    assert 2.0 <= mb.meta["odds_es"][0]["history"][0]["score"] <= 5.0


def test_fixed_point_cells_score_the_firmware_arithmetic():
    """With cells="fixed" a step scores the firmware's integer cell: the base model's score
    is the one the SimPy swarm on the fixed backend gives the same wounds under the same
    fire orders, and not the float model's."""
    from sim.assemble import simulate
    from sim.damage import parse_damage, wipe
    from sim.pictures import load_target
    ef = weights.load_model("lizard_regenerating_ef")[0]
    cuts = ("circle:20,20,8@120", "rect:20,0,39,39@120")
    cfg = dict(steps=1, directions=1, runs=2, after=30, cuts=cuts, seed=5)
    target = load_target("lizard")
    runs = {c: odds_es(ef, target, OddsES(**cfg, cells=c), workers=1, log=lambda s: None).meta["odds_es"][-1]
            for c in ("fixed", "float")}
    assert runs["fixed"]["cells"] == "fixed"
    grown = GROWN_SEEDS + runs["fixed"]["first_step"] * 64     # the step's number draws its wounds
    before = simulate(ef, "simpy", backend="fixed", steps=120, seed=grown, warm_up=False).state
    scores = []
    for c, cut in enumerate(cuts):
        wound = wipe(before, parse_damage(cut).mask(40, 40))
        after = simulate(ef, "simpy", backend="fixed", state=wound, steps=30, seed=ORDER_SEEDS + grown * 10 + c,
                         warm_up=False).state
        scores.append(run_score(after, before))
    assert runs["fixed"]["history"][0]["score"] == pytest.approx(float(np.mean(scores)), abs=1e-12)
    assert runs["fixed"]["history"][0]["score"] != runs["float"]["history"][0]["score"]


def test_the_pattern_lizard_grows_with_the_latency_asked_for(tmp_path, capsys):
    """--es-pattern-latency: the picture term's lizard is the one the async swarm grows with
    every message that late (same seed), recorded in the run; the wounds are unchanged."""
    cfg = dict(steps=1, directions=1, runs=2, after=30, cuts=("circle:20,20,8@120", "rect:20,0,39,39@120"),
               seed=5, pattern=1.0)
    m = weights.load(START)
    target = load_target("lizard")
    runs = {lat: odds_es(m, target, OddsES(**cfg, pattern_latency=lat), workers=1,
                         log=lambda s: None).meta["odds_es"][-1] for lat in (0.0, 3.0)}
    assert runs[3.0]["pattern_latency"] == 3.0
    for lat, run in runs.items():
        grown = simulate(m, "async", steps=120, seed=PATTERN_SEEDS + run["first_step"], warm_up=False,
                         target="lizard", async_config=AsyncConfig(latency=lat))
        assert run["history"][0]["pattern_loss"] == pytest.approx(grown.metrics["loss"], rel=1e-9)
    assert runs[3.0]["history"][0]["pattern_loss"] != runs[0.0]["history"][0]["pattern_loss"]
    assert runs[3.0]["history"][0]["score"] == runs[0.0]["history"][0]["score"]
    out = tmp_path / "o.npz"
    assert main(["--odds-es", "--init", START, "--es-pattern-latency", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--es-pattern-latency" in err and not out.exists()
