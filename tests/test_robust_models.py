"""The latency-robust lizard (weights/lizard_regenerating_robust.npz, trained with the
wires in the loop, its updates halved) on the asynchronous swarm: 40x40, seeds 0-4, loss against the target
at step 1,000 (docs/robust-models.md has the figures and the recipe). Slow: about a
minute of numba runs."""
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
def paper():
    """The paper's recipe (the regenerating lizard the issue measured against)."""
    return load("lizard_regenerating_paper")


@pytest.fixture(scope="module")
def shipped():
    return load("lizard_regenerating")


@pytest.mark.parametrize("name,cfg,bound", [
    ("no latency", AsyncConfig(), 2.5e-4),                                     # measured 1.94e-4
    ("latency 1.0", AsyncConfig(latency=1.0), 3e-4),                           # 1.93e-4
    ("latency 2.0", AsyncConfig(latency=2.0), 3e-4),                           # 1.93e-4
    ("exponential latency, mean 1.0", AsyncConfig(latency_kind=LAT_EXPONENTIAL, latency=1.0), 3e-4),  # 1.94e-4
    ("10% bursty loss, runs of 5", AsyncConfig(loss=0.1, burst=5.0), 3e-4),    # 1.96e-4
    ("periodic clocks, 5% spread, latency 1.0",
     AsyncConfig(clock=CLOCK_PERIODIC, drift=0.05, latency=1.0), 3e-4),       # 1.95e-4
])
def test_robust_model_meets_the_targets(robust, name, cfg, bound):
    got = float(np.mean(_losses(robust, cfg)))
    assert got <= bound, (name, got)


def test_where_each_model_breaks(robust, shipped):
    """The mean loss passes 1e-2 between 8 and 10 steps of latency for the robust model
    (1.2e-3 and 6.5e-2) and between 2 and 3 for the shipped lizard (1.5e-4 and 4.7e-2; at
    2.5, 9.4e-3), which was not trained with the wires; the paper's breaks between 0.75 and 1."""
    assert np.mean(_losses(robust, AsyncConfig(latency=8.0))) <= 5e-3
    assert np.mean(_losses(robust, AsyncConfig(latency=10.0))) > 1e-2
    assert np.mean(_losses(shipped, AsyncConfig(latency=2.0))) <= 3e-4
    assert np.mean(_losses(shipped, AsyncConfig(latency=3.0))) > 1e-2


def test_the_paper_model_breaks_where_the_robust_one_holds(robust, paper):
    """Latency 1, periodic clocks, and the boards' relay links at latency 1 (robust
    2.0e-4 there, trained on direct links only; the paper's explodes)."""
    for cfg in (AsyncConfig(latency=1.0), AsyncConfig(clock=CLOCK_PERIODIC, drift=0.05, latency=1.0),
                AsyncConfig(links=LINKS_RELAY, latency=1.0)):
        assert np.mean(_losses(paper, cfg)) > 1e-2 > 30 * np.mean(_losses(robust, cfg))


def test_robust_model_regrows_as_well_as_the_paper_model(robust, paper):
    """Radius-8 cut at the centre at step 1,000, loss at step 1,600 (latency 0): the
    robust model within 1.25x of the paper's (measured 5.0e-3 against 7.5e-3). Its lizard
    comes back whole, most often a row off (docs/regrowth.md)."""
    cut = ["circle:20,20,8@1000"]
    r, p = (float(np.mean(_losses(m, AsyncConfig(), 1600, cut))) for m in (robust, paper))
    assert r <= 1.25 * p, (r, p)
