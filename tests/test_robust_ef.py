"""The error-feedback lizards on the wires: the latency-robust one
(weights/lizard_regenerating_robust_ef.npz: lizard_regenerating_paper_ef, the
paper-recipe lizard's error-feedback model, with its updates scaled by 0.3) against the
float robust model, and the firmware's (lizard_regenerating_ef) against the bound its
pattern is held to. On the fixed-point swarm: the async engine with codegen's golden
model in every cell (the SimPy swarm on the fixed backend, bit for bit), 40x40, seeds
0-4, loss against the target at step 1,000 (docs/robust-models.md and docs/regrowth.md
have the figures). Slow."""
from __future__ import annotations

import numpy as np
import pytest

from sim.assemble import simulate
from sim.rules import LINKS_RELAY, AsyncConfig
from sim.weights import load

pytestmark = pytest.mark.slow
SEEDS = range(5)


def _mean(model, cfg: AsyncConfig, engine: str = "async", backend: str = "fixed") -> float:
    return float(np.mean([simulate(model, engine=engine, backend=backend, steps=1000, size=40, seed=s,
                                   target="lizard", async_config=cfg).metrics["loss"] for s in SEEDS]))


@pytest.fixture(scope="module")
def robust_ef():
    return load("lizard_regenerating_robust_ef")


@pytest.fixture(scope="module")
def paper_ef():
    return load("lizard_regenerating_paper_ef")


@pytest.mark.parametrize("latency", [0.0, 1.0])
def test_robust_ef_is_within_a_quarter_of_the_float_robust_model(robust_ef, latency):
    """Measured 1.48e-4 at both, against 1.75e-4 and 1.77e-4 for the float robust model
    (1.94e-4 and 1.93e-4 for lizard_regenerating_wired, the float robust model when this
    one shipped)."""
    fixed = _mean(robust_ef, AsyncConfig(latency=latency))
    floating = _mean(load("lizard_regenerating_robust"), AsyncConfig(latency=latency), engine="async",
                     backend="float")
    assert fixed <= 1.25 * floating, (latency, fixed, floating)


@pytest.mark.parametrize("name,cfg,bound", [
    ("relay links, latency 0.5", AsyncConfig(links=LINKS_RELAY, latency=0.5), 2.4e-4),   # measured 1.58e-4
    ("latency 3.0", AsyncConfig(latency=3.0), 2.4e-4),                                    # 1.55e-4
])
def test_robust_ef_holds_the_lizard_on_the_wires(robust_ef, name, cfg, bound):
    got = _mean(robust_ef, cfg)
    assert got <= bound, (name, got)


def test_where_the_robust_ef_breaks(robust_ef):
    """Between 3 and 4 steps of latency: 1.55e-4 at 3, 2.7e-2 at 4."""
    assert _mean(robust_ef, AsyncConfig(latency=4.0)) > 1e-2


def test_the_model_it_was_made_from_breaks_where_the_robust_ef_holds(robust_ef, paper_ef):
    """lizard_regenerating_paper_ef: 7.5e-2 at latency 1.0 and 0.13 on relay links at 0.5."""
    for cfg in (AsyncConfig(latency=1.0), AsyncConfig(links=LINKS_RELAY, latency=0.5)):
        assert _mean(paper_ef, cfg) > 1e-2 > 10 * _mean(robust_ef, cfg)


@pytest.mark.parametrize("name,cfg", [
    ("latency 3.0", AsyncConfig(latency=3.0)),                                 # measured 2.98e-4
    ("relay links, latency 1.0", AsyncConfig(links=LINKS_RELAY, latency=1.0)),   # 2.81e-4
])
def test_the_firmware_model_holds_the_lizard_three_steps_late(name, cfg):
    """lizard_regenerating_ef within the 1.5 x 2.5e-4 its pattern is held to
    (docs/regrowth.md, "Three steps of latency for the firmware's lizard"); the firmware's
    model before it broke at two steps (1.1e-2) and on relay links at one (9.3e-3)."""
    got = _mean(load("lizard_regenerating_ef"), cfg)
    assert got <= 1.5 * 2.5e-4, (name, got)
