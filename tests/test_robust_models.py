"""The latency-robust lizards on the asynchronous swarm: 40x40, seeds 0-4, loss against
the target at step 1,000 (docs/robust-models.md has the figures and the recipes).
weights/lizard_regenerating_robust.npz is the default lizard's updates halved and moved
by evolution strategies that held its picture with every message five steps late while
they sped up its regrowth (it regrows in place: tests/test_regrowth.py);
weights/lizard_regenerating_wired.npz, the robust model before, was trained with the
wires in the loop and its updates halved: it holds more latency, and its cuts come back
a row off. Slow: about two minutes of numba runs."""
from __future__ import annotations

import numpy as np
import pytest

from sim.rules import CLOCK_PERIODIC, LAT_EXPONENTIAL, LINKS_RELAY, AsyncConfig
from sim.simulate import simulate
from sim.weights import load

pytestmark = pytest.mark.slow
SEEDS = range(5)


def _losses(model, cfg: AsyncConfig, steps: int = 1000, damage=()) -> list[float]:
    return [simulate(model, engine="async", steps=steps, size=40, seed=s, target="lizard", async_config=cfg,
                     damage=list(damage)).loss for s in SEEDS]


@pytest.fixture(scope="module")
def robust():
    return load("lizard_regenerating_robust")


@pytest.fixture(scope="module")
def wired():
    return load("lizard_regenerating_wired")


@pytest.fixture(scope="module")
def paper():
    """The paper's recipe (the regenerating lizard the issue measured against)."""
    return load("lizard_regenerating_paper")


@pytest.fixture(scope="module")
def shipped():
    return load("lizard_regenerating")


TARGETS = [
    ("no latency", AsyncConfig(), 2.5e-4),
    ("latency 1.0", AsyncConfig(latency=1.0), 3e-4),
    ("latency 2.0", AsyncConfig(latency=2.0), 3e-4),
    ("exponential latency, mean 1.0", AsyncConfig(latency_kind=LAT_EXPONENTIAL, latency=1.0), 3e-4),
    ("10% bursty loss, runs of 5", AsyncConfig(loss=0.1, burst=5.0), 3e-4),
    ("periodic clocks, 5% spread, latency 1.0", AsyncConfig(clock=CLOCK_PERIODIC, drift=0.05, latency=1.0), 3e-4),
]
# measured, in TARGETS' order: robust 1.75e-4, 1.77e-4, 1.80e-4, 1.82e-4, 1.79e-4, 1.78e-4;
# wired 1.94e-4, 1.93e-4, 1.93e-4, 1.94e-4, 1.96e-4, 1.95e-4


@pytest.mark.parametrize("which", ["robust", "wired"])
@pytest.mark.parametrize("name,cfg,bound", TARGETS)
def test_robust_models_meet_the_targets(request, which, name, cfg, bound):
    got = float(np.mean(_losses(request.getfixturevalue(which), cfg)))
    assert got <= bound, (which, name, got)


def test_where_each_model_breaks(robust, wired, shipped):
    """The mean loss passes 1e-2 between 4 and 5 steps of latency for the robust model
    (3.8e-4 and 2.7e-2), between 8 and 10 for the wired one (1.2e-3 and 6.5e-2), and
    between 2 and 3 for the shipped lizard (1.5e-4 and 4.7e-2; at 2.5, 9.4e-3), which was
    not trained with the wires; the paper's breaks between 0.75 and 1."""
    assert np.mean(_losses(robust, AsyncConfig(latency=4.0))) <= 1e-3
    assert np.mean(_losses(robust, AsyncConfig(latency=5.0))) > 1e-2
    assert np.mean(_losses(wired, AsyncConfig(latency=8.0))) <= 5e-3
    assert np.mean(_losses(wired, AsyncConfig(latency=10.0))) > 1e-2
    assert np.mean(_losses(shipped, AsyncConfig(latency=2.0))) <= 3e-4
    assert np.mean(_losses(shipped, AsyncConfig(latency=3.0))) > 1e-2


def test_the_paper_model_breaks_where_the_robust_ones_hold(robust, wired, paper):
    """Latency 1, periodic clocks, and the boards' relay links at latency 1 (robust
    2.1e-4 there, wired 2.0e-4; neither trained on relay links; the paper's explodes)."""
    for cfg in (AsyncConfig(latency=1.0), AsyncConfig(clock=CLOCK_PERIODIC, drift=0.05, latency=1.0),
                AsyncConfig(links=LINKS_RELAY, latency=1.0)):
        p = np.mean(_losses(paper, cfg))
        for m in (robust, wired):
            assert p > 1e-2 > 30 * np.mean(_losses(m, cfg))


def test_wired_model_regrows_as_well_as_the_paper_model(wired, paper):
    """Radius-8 cut at the centre at step 1,000, loss at step 1,600 (latency 0): the
    wired model within 1.25x of the paper's (measured 5.0e-3 against 7.5e-3). Its lizard
    comes back whole, most often a row off (docs/regrowth.md); the robust one's comes back
    in place (tests/test_regrowth.py)."""
    cut = ["circle:20,20,8@1000"]
    r, p = (float(np.mean(_losses(m, AsyncConfig(), 1600, cut))) for m in (wired, paper))
    assert r <= 1.25 * p, (r, p)
