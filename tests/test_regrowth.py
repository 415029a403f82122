"""Exact regrowth of the shipped regenerating lizards (docs/regrowth.md): a cut at step
1,000, the pattern at step 1,600 against the pattern just before the cut
(`regrowth_mse`, `regrowth_shift`), seeds 0-9, on the async swarm (40x40) and the
synchronous 72x72 grid, for the default lizard and the latency-robust one, and the
firmware's fixed-point cells on the async swarm (the golden model in its event loop: the
SimPy swarm on the fixed backend, bit for bit). Slow."""
from __future__ import annotations

import pytest

from sim.assemble import simulate
from sim.weights import load

pytestmark = pytest.mark.slow
SEEDS = range(10)
EXACT = 1e-3
SMALL_CUTS = {"head": "circle:12,6,7", "tail": "circle:33,33,7", "a front leg": "circle:10,19,5"}
RIGHT_HALF = "rect:20,0,39,39"


def _regrowth(model, engine: str, spec: str, seed: int, backend: str = "float") -> dict:
    size, off = (72, 16) if engine == "sync" else (40, 0)
    kind, nums = spec.split(":")
    v = [float(t) for t in nums.split(",")]
    v = [v[0] + off, v[1] + off, v[2]] if kind == "circle" else [t + off for t in v]
    cut = f"{kind}:" + ",".join(f"{t:g}" for t in v) + "@1000"
    return simulate(model, engine=engine, steps=1600, size=size, seed=seed, target="lizard",
                    damage=[cut], backend=backend).metrics


@pytest.fixture(scope="module", params=["lizard_regenerating", "lizard_regenerating_robust"])
def shipped(request):
    return load(request.param)


@pytest.fixture(scope="module")
def paper():
    """The paper-recipe lizard, shipped as the default before the slip-trained one."""
    return load("lizard_regenerating_paper")


@pytest.mark.parametrize("engine", ["async", "sync"])
@pytest.mark.parametrize("place", list(SMALL_CUTS))
def test_head_tail_and_a_leg_come_back_exactly(shipped, engine, place):
    """Measured at most 4.4e-6 (async) and 1.3e-6 (sync) over the seeds; the robust
    lizard at most 8.4e-5 and 2.4e-5."""
    got = [_regrowth(shipped, engine, SMALL_CUTS[place], s)["regrowth_mse"] for s in SEEDS]
    assert max(got) <= EXACT, (place, got)


@pytest.mark.parametrize("engine", ["async", "sync"])
def test_the_right_half_comes_back_exactly(shipped, engine):
    """Measured at most 7.6e-5 (async) and 1.5e-5 (sync); the robust lizard 4.0e-4 and 1.1e-4.
    (The paper-recipe lizard missed seed 1 on the async swarm: 1.1e-2; the wire-trained
    robust lizard before it, lizard_regenerating_wired, every seed.)"""
    got = [_regrowth(shipped, engine, RIGHT_HALF, s)["regrowth_mse"] for s in SEEDS]
    assert max(got) <= EXACT, got


def test_the_centre_cut_comes_back_in_place(shipped):
    """Every seed on both grids: measured at most 5.8e-4 (async) and 2.4e-4 (sync); the
    robust lizard 8.5e-4 (seed 8) and 3.1e-4. The default lizard before it, with updates 1/0.9 as
    large, brought seed 8 back late: 2.5e-3 at step 1,600 (docs/regrowth.md)."""
    sync = [_regrowth(shipped, "sync", "circle:20,20,8", s)["regrowth_mse"] for s in SEEDS]
    assert max(sync) <= EXACT, sync
    runs = [_regrowth(shipped, "async", "circle:20,20,8", s) for s in SEEDS]
    assert max(r["regrowth_mse"] for r in runs) <= EXACT, [r["regrowth_mse"] for r in runs]
    assert all((r["regrowth_shift"]["dy"], r["regrowth_shift"]["dx"]) == (0, 0) for r in runs)


@pytest.mark.parametrize("place", list(SMALL_CUTS))
def test_the_robust_firmware_cell_brings_small_cuts_back_exactly(place):
    """lizard_regenerating_robust_ef (lizard_regenerating_paper_ef's updates x 0.3): measured
    at most 4.1e-5, under that model's 1.6e-4 (its pattern flickers less); its centre and right-half cuts
    come back late or a row off (docs/regrowth.md)."""
    robust_ef = load("lizard_regenerating_robust_ef")
    got = [_regrowth(robust_ef, "async", SMALL_CUTS[place], s, backend="fixed")["regrowth_mse"] for s in SEEDS]
    assert max(got) <= 1e-4, (place, got)


@pytest.mark.parametrize("place", [*SMALL_CUTS, "the right half", "the centre"])
def test_the_firmware_cell_regrows_within_one_and_a_half_times_the_bound(place):
    """lizard_regenerating_ef, the default lizard's error-feedback counterpart, on the
    fixed-point async swarm: measured at most 9.2e-5 for the small cuts (the fixed-point
    pattern's own flicker), 1.22e-3 for the right half and 1.02e-3 for the centre (seed 8;
    the paper-recipe lizard's fine-tune, lizard_regenerating_paper_ef, missed 5 of 10
    centre cuts by up to 1.6e-2), against 1.5e-3."""
    ef = load("lizard_regenerating_ef")
    spec = {**SMALL_CUTS, "the right half": RIGHT_HALF, "the centre": "circle:20,20,8"}[place]
    got = [_regrowth(ef, "async", spec, s, backend="fixed") for s in SEEDS]
    assert max(r["regrowth_mse"] for r in got) <= 1.5 * EXACT, (place, [r["regrowth_mse"] for r in got])
    assert all((r["regrowth_shift"]["dy"], r["regrowth_shift"]["dx"]) == (0, 0) for r in got)


def test_the_firmware_cells_pattern_before_the_cut_is_within_one_and_a_half_times_the_bound():
    """The grown lizard at step 1,000 on the fixed-point async swarm, seeds 0-4: measured
    2.64e-4 (mean), against 1.5 x 2.5e-4; the float default it was made from: 1.20e-4."""
    ef = load("lizard_regenerating_ef")
    losses = [simulate(ef, engine="async", backend="fixed", steps=1000, seed=s, target="lizard").metrics["loss"]
              for s in range(5)]
    assert sum(losses) / len(losses) <= 1.5 * 2.5e-4, losses


def test_the_paper_recipe_lizard_can_come_back_one_row_higher(paper):
    """What the slip-trained lizard fixes: on seed 0 the paper-recipe lizard regrows whole
    but one row higher (1.4e-2 as cut; 3.0e-4 moved back down), while seed 2 comes back
    in place."""
    moved = _regrowth(paper, "async", "circle:20,20,8", 0)
    assert moved["regrowth_mse"] > 1e-2
    assert (moved["regrowth_shift"]["dy"], moved["regrowth_shift"]["dx"]) == (1, 0)
    assert moved["regrowth_shift"]["mse"] <= EXACT
    assert _regrowth(paper, "async", "circle:20,20,8", 2)["regrowth_mse"] <= EXACT
