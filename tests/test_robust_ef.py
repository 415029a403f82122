"""The latency-robust error-feedback lizard (weights/lizard_regenerating_robust_ef.npz,
fine-tuned through the firmware's integer cell with the wires in the loop) on the
fixed-point swarm: the SimPy engine with codegen's golden model in every cell, 40x40,
seeds 0-4, loss against the target at step 1,000 (docs/robust-models.md has the
figures and the recipe). Slow: about three minutes."""
from __future__ import annotations

import numpy as np
import pytest

from sim.assemble import simulate
from sim.rules import LINKS_RELAY, AsyncConfig
from sim.weights import load

pytestmark = pytest.mark.slow
SEEDS = range(5)


def _mean(model, cfg: AsyncConfig) -> float:
    return float(np.mean([simulate(model, engine="simpy", backend="fixed", steps=1000, size=40, seed=s,
                                   target="lizard", async_config=cfg).metrics["loss"] for s in SEEDS]))


@pytest.fixture(scope="module")
def robust_ef():
    return load("lizard_regenerating_robust_ef")


@pytest.fixture(scope="module")
def paper_ef():
    return load("lizard_regenerating_ef")


@pytest.mark.parametrize("name,cfg,bound", [
    ("no latency", AsyncConfig(), 4.2e-4),                                      # measured 3.55e-4
    ("latency 1.0", AsyncConfig(latency=1.0), 4.2e-4),                          # 3.57e-4
    ("relay links, latency 0.5", AsyncConfig(links=LINKS_RELAY, latency=0.5), 5e-4),   # 4.09e-4
])
def test_robust_ef_holds_the_lizard_on_the_wires(robust_ef, name, cfg, bound):
    """Missed target, held where it is: within 1.25x of the float robust model (1.94e-4 and
    1.93e-4, so about 2.4e-4) was asked at latencies 0 and 1; it is at 1.8x at both."""
    got = _mean(robust_ef, cfg)
    assert got <= bound, (name, got)


def test_the_firmware_model_breaks_where_the_robust_ef_holds(robust_ef, paper_ef):
    """lizard_regenerating_ef: 7.5e-2 at latency 1.0 and 0.13 on relay links at 0.5."""
    for cfg in (AsyncConfig(latency=1.0), AsyncConfig(links=LINKS_RELAY, latency=0.5)):
        assert _mean(paper_ef, cfg) > 1e-2 > 10 * _mean(robust_ef, cfg)
