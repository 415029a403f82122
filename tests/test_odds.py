"""python -m sim.odds: the share of fire orders after a cut that regrow the pattern in place."""
import json

import numpy as np
import pytest

from sim.odds import main, regrowth_odds, wilson
from sim.spec import Params
from sim.weights import load_model


@pytest.fixture(scope="module")
def paper():
    """The paper-recipe lizard, the default before the slip-trained one (docs/regrowth.md)."""
    return Params.from_model(load_model("lizard_regenerating_paper")[0])


@pytest.fixture(scope="module")
def shipped():
    return Params.from_model(load_model("lizard_regenerating")[0])


def test_wilson_interval_holds_the_share_and_stays_in_0_1():
    for k, n in ((0, 20), (20, 20), (151, 200), (1, 3)):
        lo, hi = wilson(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson(0, 20)[1] > 0.1 and wilson(20, 20)[0] < 0.9      # never a zero-width interval
    lo, hi = wilson(100, 200)
    assert hi - lo == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(200), rel=0.02)   # the normal one at p = 1/2
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_the_centre_cut_of_the_paper_recipe_lizard_goes_both_ways(paper):
    """The same grown lizard, cut at the centre, comes back in place under some fire
    orders and one row off under others (docs/regrowth.md); the runs replay exactly."""
    r = regrowth_odds(paper, "circle:20,20,8@1000", 600, seeds=2, orders=8)
    assert r["runs"] == 16 and 0 < r["in_place"] < 16
    assert any(0 < k < 8 for k in r["in_place_per_seed"])      # both ways from one grown state
    mse = np.array(r["regrowth_mse"])
    assert mse.max() > 5e-3 and mse.min() < 1e-4               # moved runs are far off, kept ones close
    assert r == regrowth_odds(paper, "circle:20,20,8@1000", 600, seeds=2, orders=8)


def test_the_shipped_lizard_regrows_a_centre_cut_in_place_under_most_orders(shipped):
    """The slip-trained lizard with updates 0.4 as large, its output layer moved by
    evolution strategies, then x 0.9 (docs/regrowth.md): measured 15 of 16 (7 and 8 per
    grown seed), the miss 3.1e-3 off."""
    r = regrowth_odds(shipped, "circle:20,20,8@1000", 600, seeds=2, orders=8)
    assert r["in_place"] >= 15 and min(r["in_place_per_seed"]) >= 7, r["in_place_per_seed"]


def test_a_head_cut_regrows_in_place_under_every_order(tmp_path, capsys):
    out = tmp_path / "o.json"
    assert main(["--model", "lizard_regenerating", "--damage", "circle:12,6,7@1000", "--seeds", "1",
                 "--orders", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4/4 in place (100.0 %" in text
    r = json.loads(out.read_text())
    assert r["in_place"] == 4 and max(r["regrowth_mse"][0]) < 1e-4 and r["model"].endswith("lizard_regenerating.npz")


def test_a_slipped_middle_drags_the_lizard_a_slipped_head_moves_back(shipped):
    """--slip: the shipped lizard with its middle moved up a row follows it, every seed and
    order (the whole lizard ends a row up), as the paper's did; with a disc of its head
    moved up a row the head moves back, at most 1.2e-4 from the old lizard 600 steps
    later (docs/regrowth.md, "A slipped middle drags the lizard")."""
    mid = regrowth_odds(shipped, "circle:20,20,8@1000", 600, seeds=2, orders=2, slip=(0, -1))
    assert mid["in_place"] == 0 and min(min(r) for r in mid["regrowth_mse"]) > 5e-3 and mid["slip"] == [0, -1]
    head = regrowth_odds(shipped, "circle:12,6,6@1000", 600, seeds=2, orders=2, slip=(0, -1))
    assert head["in_place"] == 4 and max(max(r) for r in head["regrowth_mse"]) < 3e-4


def test_a_second_look_tells_a_late_regrowth_from_a_moved_one(paper, shipped):
    """--then: the paper-recipe lizard's misses are the lizard a row or a column off; the shipped
    lizard's one miss of grown seed 137 (a seed no other test uses) is late, in place
    600 steps later (docs/regrowth.md, "The last misses")."""
    p = regrowth_odds(paper, "circle:20,20,8@1000", 600, seeds=2, orders=8, then=600)
    assert p["misses"] and all(m["kind"] == "moved" and abs(m["shift"]["dy"]) + abs(m["shift"]["dx"]) == 1
                               and m["shift"]["mse"] <= 1e-3 for m in p["misses"])
    assert p["runs"] - p["in_place"] == len(p["misses"])
    s = regrowth_odds(shipped, "circle:20,20,8@1000", 600, seeds=1, orders=10, first_seed=137, then=600)
    assert s["first_seed"] == 137 and [(m["seed"], m["order"], m["kind"]) for m in s["misses"]] == [(137, 9, "late")]
    assert s["misses"][0]["then"] < 1e-3 < s["misses"][0]["regrowth_mse"]


@pytest.mark.parametrize("args, words", [
    (["--slip", "0,0"], "--slip"),
    (["--slip", "1"], "--slip"),
    (["--slip", "a,b"], "--slip"),
    (["--orders", "0"], "--orders"),
    (["--seeds", "-1"], "--seeds"),
    (["--first-seed", "-1"], "--first-seed"),
    (["--then", "-5"], "--then"),
    (["--first-seed", "9995", "--seeds", "10"], "--first-seed + --seeds"),
    (["--bound", "nan"], "--bound"),
    (["--damage", "square:1,2@3"], "--damage"),
    (["--damage", "circle:90,90,3@10"], "cuts no cell"),
    (["--model", "no_such_model"], "no_such_model"),
    (["--json", "/proc/odds.json"], "--json"),
])
def test_bad_input_is_one_line(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
