"""Exact regrowth of the shipped regenerating lizard (docs/regrowth.md): a cut at step
1,000, the pattern at step 1,600 against the pattern just before the cut
(`regrowth_mse`, `regrowth_shift`), seeds 0-9, on the async swarm (40x40) and the
synchronous 72x72 grid, and the firmware's fixed-point cell on the SimPy swarm. Slow:
about half a minute of numba runs and five of fixed-point ones."""
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


@pytest.fixture(scope="module")
def paper():
    return load("lizard_regenerating")


@pytest.mark.parametrize("engine", ["async", "sync"])
@pytest.mark.parametrize("place", list(SMALL_CUTS))
def test_head_tail_and_a_leg_come_back_exactly(paper, engine, place):
    """Measured at most 6.3e-6 (async) and 2.3e-6 (sync) over the seeds."""
    got = [_regrowth(paper, engine, SMALL_CUTS[place], s)["regrowth_mse"] for s in SEEDS]
    assert max(got) <= EXACT, (place, got)


def test_the_right_half_comes_back_exactly_on_the_72x72_grid(paper):
    """Measured at most 1.3e-5. (On the async swarm seed 1 misses: 1.1e-2.)"""
    got = [_regrowth(paper, "sync", RIGHT_HALF, s)["regrowth_mse"] for s in SEEDS]
    assert max(got) <= EXACT, got


@pytest.mark.parametrize("place", [*SMALL_CUTS, "the right half"])
def test_the_firmware_cell_regrows_within_one_and_a_half_times_the_bound(place):
    """The error-feedback fixed-point model on the fixed-point SimPy swarm: measured at most
    1.6e-4 for the small cuts (the fixed-point pattern's own flicker) and 7.6e-4 for the
    right half, against 1.5e-3."""
    ef = load("lizard_regenerating_ef")
    spec = SMALL_CUTS.get(place, RIGHT_HALF)
    got = [_regrowth(ef, "simpy", spec, s, backend="fixed")["regrowth_mse"] for s in SEEDS]
    assert max(got) <= 1.5 * EXACT, (place, got)


def test_a_centre_cut_can_bring_the_lizard_back_one_row_higher(paper):
    """The miss, held where it is: on seed 0 the lizard regrows whole but one row higher
    (1.4e-2 as cut; 3.0e-4 moved back down), while seed 2 comes back in place."""
    moved = _regrowth(paper, "async", "circle:20,20,8", 0)
    assert moved["regrowth_mse"] > 1e-2
    assert (moved["regrowth_shift"]["dy"], moved["regrowth_shift"]["dx"]) == (1, 0)
    assert moved["regrowth_shift"]["mse"] <= EXACT
    assert _regrowth(paper, "async", "circle:20,20,8", 2)["regrowth_mse"] <= EXACT
