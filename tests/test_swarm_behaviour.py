"""What the paper reports of asynchronous cells, checked on the shipped
regenerating lizard (40x40 grid): the event-driven swarm grows it and keeps it
when messages are late, lost, and cells fail and restart. The numba event
engine is used for speed; the SimPy swarm equals it bit for bit (test_swarm.py),
and one run here goes through SimPy to show it on the real model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim import weights
from sim.rules import AsyncConfig
from sim.assemble import simulate
from sim.pictures import fit_target, load_target

MODEL = Path(__file__).resolve().parents[1] / "weights" / "lizard_regenerating.npz"
SEEDS = (0, 1, 2)
STEPS = 1000


@pytest.fixture(scope="module")
def model():
    if not MODEL.is_file():
        pytest.fail(f"shipped model {MODEL} is missing")
    return weights.load(MODEL)


@pytest.fixture(scope="module")
def sync_loss(model):
    return float(np.mean([simulate(model, engine="sync", steps=STEPS, seed=s, target="lizard").loss for s in SEEDS]))


def _async(model, config: AsyncConfig, engine: str = "async", seeds=SEEDS):
    runs = [simulate(model, engine=engine, steps=STEPS, seed=s, async_config=config, target="lizard") for s in seeds]
    return float(np.mean([r.loss for r in runs])), runs


def test_async_swarm_with_latency_grows_the_lizard(model, sync_loss):
    loss, runs = _async(model, AsyncConfig(mean_interval=2.0, latency=0.1))
    assert loss <= 1.5 * sync_loss, (loss, sync_loss)
    assert all(r.alive > 300 for r in runs)


def test_simpy_swarm_grows_the_lizard(model, sync_loss):
    loss, _ = _async(model, AsyncConfig(latency=0.1), engine="simpy", seeds=(0,))
    assert loss <= 1.5 * sync_loss, (loss, sync_loss)


def test_swarm_keeps_the_lizard_with_lost_messages_and_failing_cells(model, sync_loss):
    # 10% of messages lost; 5% of the cells fail once in the run (exponential running
    # time with mean 19,500 steps -> ~80 of 1,600 over 1,000 steps) and restart with a
    # zero state and inbox after 5 steps on average.
    loss, runs = _async(model, AsyncConfig(latency=0.1, loss=0.1, mtbf=19_500.0, mttr=5.0))
    # Measured 2.47e-4 (the paper-recipe lizard shipped before: 2.15e-4). A restarted
    # cell heals at the shipped model's update size, 0.36 of the paper's, so this is 2.1x
    # its own sync loss of 1.20e-4, where the paper-recipe one stayed at 1.1x its own.
    assert all(40 <= r.metrics["swarm"]["failures"] <= 130 for r in runs)
    assert loss <= 2.5e-4, (loss, sync_loss)
    assert all(r.alive > 300 for r in runs)


def test_swarm_degrades_gracefully_when_every_cell_keeps_failing(model, sync_loss):
    """Each cell down 5% of the time (mtbf 95, mttr 5: ~16,000 failures in 1,000 steps)
    blurs the lizard but keeps one bounded organism, away from an empty grid's loss and
    from the overgrowth of a model that breaks. Measured 0.47 of the empty grid's loss
    (438-459 cells alive); the paper-recipe lizard shipped before, whose updates are 2.8x
    as large and heal faster, 0.35."""
    empty = float(np.mean(fit_target(load_target("lizard"), 40, 40).astype(np.float64) ** 2))
    loss, runs = _async(model, AsyncConfig(latency=0.1, loss=0.1, mtbf=95.0, mttr=5.0))
    assert all(r.metrics["swarm"]["failures"] > 10_000 for r in runs)
    assert loss <= 0.6 * empty, (loss, empty)
    assert all(400 < r.alive < 900 for r in runs), [r.alive for r in runs]


def test_a_step_of_latency_is_tolerated_three_break_it(model, sync_loss):
    """The paper-trained model broke at about one step of latency; with updates 0.36 as
    large the shipped one holds to two (docs/robust-models.md; measured on seed 0: 1.2e-4
    at one step, 2.0e-4 at two, 3.9e-2 at three)."""
    tolerated, _ = _async(model, AsyncConfig(latency=1.0), seeds=(0,))
    broken, _ = _async(model, AsyncConfig(latency=3.0), seeds=(0,))
    assert tolerated <= 1.5 * sync_loss, (tolerated, sync_loss)
    assert broken > 20 * sync_loss, (broken, sync_loss)
