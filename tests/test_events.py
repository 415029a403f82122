"""sim/rules.py, sim/events.py and sim/lockstep.py: lockstep == the synchronous grid;
the event-driven swarm's determinism, metrics, counter-based draws, message loss,
damage and config validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

import sim.events
import sim.lockstep
import sim.rules
from sim.fixture import frozen_pattern_model
from sim.model import NEIGHBOUR_OFFSETS, seed_state
from sim.spec import Params
from sim.grid import SyncGrid

N = 24

ALL_ON = dict(loss=0.2, mtbf=50.0, mttr=5.0)
LATENCIES = {
    "constant": dict(latency_kind=sim.rules.LAT_CONSTANT, latency=0.3),
    "uniform": dict(latency_kind=sim.rules.LAT_UNIFORM, latency=0.1, latency_high=0.9),
    "exponential": dict(latency_kind=sim.rules.LAT_EXPONENTIAL, latency=0.4),
}


def swarm(params, seed=1, n=N, state=None, **cfg):
    x = seed_state(n, n) if state is None else state
    return sim.events.AsyncSwarm(x, params, seed, sim.rules.AsyncConfig(**cfg))


def in_flight(sw):
    """Messages scheduled but not yet delivered: the references held on pooled payloads."""
    return int(sw.pool_ref.sum())


# ---------------------------------------------------------------- lockstep
@pytest.mark.parametrize("angle", [0.0, 37.0])
def test_lockstep_equals_sync_bit_for_bit(blob, angle):
    params = Params.from_model(blob, angle)
    seed, step0 = 9, 5
    lock = sim.lockstep.LockstepSwarm(seed_state(N, N), params, seed, step0)
    grid = SyncGrid(seed_state(N, N), params, seed, step0)
    damage = np.zeros((N, N), bool)
    damage[4:14, 6:18] = True
    for k in range(15):
        if k == 6:                                   # step 60 (+ step0)
            lock.damage(damage)
            grid.x[0][damage] = 0.0
            assert not lock.grid[damage].any()
        a = lock.run(10)
        b = grid.run(10)
        assert np.array_equal(a, b), (k + 1) * 10
    assert lock.step_count == grid.step_count == step0 + 150
    assert (a[..., 3] > 0.1).sum() > 50                    # regrew after the damage


def test_lockstep_post_rule_hand_built(post_rule_case):
    x, params, expect = post_rule_case
    lock = sim.lockstep.LockstepSwarm(x, Params.from_arrays(params), 0, 0, fire_rate=1.0)
    np.testing.assert_array_equal(lock.run(1), expect)


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("lat", sorted(LATENCIES))
def test_async_deterministic_per_seed(blob_params, lat):
    cfg = dict(**ALL_ON, **LATENCIES[lat])
    a = swarm(blob_params, seed=3, **cfg)
    b = swarm(blob_params, seed=3, **cfg)
    c = swarm(blob_params, seed=4, **cfg)
    ga, gb, gc = a.run(60.0).copy(), b.run(60.0).copy(), c.run(60.0).copy()
    assert np.array_equal(ga, gb)
    assert np.array_equal(a.inbox, b.inbox)
    assert a.metrics() == b.metrics()
    assert not np.array_equal(ga, gc)
    m = a.metrics()
    assert m["restarts"] > 0 and m["messages_lost"] > 0
    assert m["cell_updates"] > 0 and (ga[..., 3] > 0.1).sum() > 9     # it grew


def test_async_split_run_equals_direct(blob_params):
    cfg = dict(**ALL_ON, **LATENCIES["exponential"])
    a = swarm(blob_params, seed=5, **cfg)
    b = swarm(blob_params, seed=5, **cfg)
    a.run(17.3)
    a.run(17.3)                     # a no-op repeat
    a.run(40.0)
    ga = a.run(71.5).copy()
    gb = b.run(71.5)
    assert np.array_equal(ga, gb)
    assert a.metrics() == b.metrics()
    assert a.now == b.now == 71.5


def test_async_growth_of_heap_and_pool_is_transparent(blob_params):
    """Latency 3 piles messages up past the initial heap/pool capacity: growing them mid-run
    (the engine stops, grows, resumes) gives the same result as 40 short runs."""
    cfg = dict(latency_kind=sim.rules.LAT_CONSTANT, latency=3.0)
    a = swarm(blob_params, seed=2, n=12, **cfg)
    b = swarm(blob_params, seed=2, n=12, **cfg)
    cap = a.ht.shape[0]
    ga = a.run(40.0).copy()
    for t in np.arange(1.0, 41.0):
        gb = b.run(float(t))
    assert a.ht.shape[0] > cap or a.pool.shape[0] > 12 * 12 + 16
    assert np.array_equal(ga, gb) and a.metrics() == b.metrics()


# ---------------------------------------------------------------- metrics
def test_metrics_consistent(blob_params):
    sw = swarm(blob_params, seed=8, **ALL_ON, **LATENCIES["uniform"])
    for t in (10.0, 35.0, 80.0):
        sw.run(t)
        m = sw.metrics()
        assert m["messages_sent"] == (m["messages_lost"] + m["messages_delivered"]
                                      + m["messages_dropped"] + in_flight(sw))
        assert m["cell_updates"] + m["dormant_wakeups"] <= m["wakeups"]
        assert m["messages_sent"] <= 8 * (m["wakeups"] - m["dormant_wakeups"])
        assert 0.1 <= m["mean_message_delay"] <= 0.9      # uniform latency in [0.1, 0.9]


def test_failures_and_restarts(blob_params):
    sw = swarm(blob_params, seed=8, n=8, mtbf=50.0, mttr=5.0)
    sw.run(100.0)
    m = sw.metrics()
    assert m["failures"] >= m["restarts"]
    assert m["failures"] - m["restarts"] == m["cells_failed_now"] == int(sw.failed.sum())
    assert m["messages_dropped"] > 0                  # failed cells drop what reaches them
    expect = 64 * 100.0 / 55.0            # failures per cell ~ T / (mtbf + mttr)
    assert abs(m["failures"] - expect) < 6 * math.sqrt(expect)


def all_alive(n=N):
    x = np.zeros((n, n, 16), np.float32)
    x[..., 3] = 1.0
    return x


def test_wakeup_rate_matches_exponential_clock():
    """Mean interval 2: about N*N*T/2 wake-ups when every cell stays alive (the frozen
    model never changes alpha, so no cell is dormant)."""
    sw = swarm(Params.from_model(frozen_pattern_model()), seed=6, state=all_alive())
    sw.run(100.0)
    m = sw.metrics()
    expect = N * N * 100.0 / 2.0
    assert m["dormant_wakeups"] == 0 and m["cell_updates"] == m["wakeups"]
    assert abs(m["wakeups"] - expect) < 5 * math.sqrt(expect)


def test_message_loss_fraction_in_swarm(blob_params):
    sw = swarm(blob_params, seed=6, state=all_alive(), loss=0.2)     # everyone talks
    sw.run(20.0)
    m = sw.metrics()
    frac = m["messages_lost"] / m["messages_sent"]
    assert m["messages_sent"] > 20_000
    assert abs(frac - 0.2) < 5 * math.sqrt(0.2 * 0.8 / m["messages_sent"])


# ---------------------------------------------------------------- the draws
def test_wake_interval_exponential_mean():
    cfg = sim.rules.AsyncConfig().asarray()
    n = 40_000
    v = np.array([sim.rules.wake_interval(11, cfg, c % 400, c // 400) for c in range(n)])
    assert v.min() > 0.0
    assert abs(v.mean() - 2.0) < 5 * 2.0 / math.sqrt(n)
    assert abs(np.median(v) - 2.0 * math.log(2.0)) < 0.05      # exponential, not just mean 2
    # a pure function of (seed, cell, k)
    assert sim.rules.wake_interval(11, cfg, 3, 7) == sim.rules.wake_interval(11, cfg, 3, 7)
    assert sim.rules.wake_interval(11, cfg, 3, 7) != sim.rules.wake_interval(12, cfg, 3, 7)


def test_wake_interval_periodic():
    cfg = sim.rules.AsyncConfig(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, jitter=0.2, drift=0.1).validate()
    arr = cfg.asarray()
    for c in range(50):
        first = sim.rules.wake_interval(1, arr, c, 0)
        later = np.array([sim.rules.wake_interval(1, arr, c, k) for k in range(1, 50)])
        assert 0.0 <= first < 1.1
        assert later.min() >= 0.9 - 0.2 - 1e-12 and later.max() <= 1.1 + 0.2 + 1e-12
        assert later.max() - later.min() <= 0.4 + 1e-12      # one drift per cell, jitter +-0.2
    plain = sim.rules.AsyncConfig(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.5).asarray()
    assert all(sim.rules.wake_interval(1, plain, 3, k) == 1.5 for k in range(1, 20))


LINKS = np.zeros(800, np.bool_)   # links' Gilbert-Elliott states (unused by independent losses)


def test_message_fate_loss_fraction_and_latency():
    n = 40_000
    cfg = sim.rules.AsyncConfig(loss=0.2, latency_kind=sim.rules.LAT_UNIFORM, latency=0.1, latency_high=0.5).asarray()
    fates = [sim.rules.message_fate(4, cfg, m % 100, m // 100, LINKS) for m in range(n)]
    lost = np.array([f[0] for f in fates])
    lat = np.array([f[1] for f in fates if not f[0]])
    assert abs(lost.mean() - 0.2) < 5 * math.sqrt(0.16 / n)
    assert lat.min() >= 0.1 and lat.max() <= 0.5 and abs(lat.mean() - 0.3) < 0.01
    none = sim.rules.AsyncConfig(loss=0.0, latency=0.25).asarray()
    assert all(sim.rules.message_fate(4, none, 1, m, LINKS) == (False, 0.25) for m in range(500))
    every = sim.rules.AsyncConfig(loss=1.0).asarray()
    assert all(sim.rules.message_fate(4, every, 1, m, LINKS)[0] for m in range(500))
    expo = sim.rules.AsyncConfig(latency_kind=sim.rules.LAT_EXPONENTIAL, latency=0.4).asarray()
    e = np.array([sim.rules.message_fate(4, expo, m % 100, m // 100, LINKS)[1] for m in range(n)])
    assert abs(e.mean() - 0.4) < 5 * 0.4 / math.sqrt(n)


# ---------------------------------------------------------------- loss = 1
def test_total_message_loss_confines_the_seed(blob_params):
    """With every message lost, cells know only the boot-time exchange of initial states:
    the seed's 8 neighbours see its initial alpha forever and do work; every cell farther
    away sees only zeros, so it stays dormant and exactly zero."""
    sw = swarm(blob_params, seed=2, loss=1.0)
    g = sw.run(100.0)
    m = sw.metrics()
    assert m["messages_delivered"] == 0 and m["messages_dropped"] == 0
    assert m["messages_lost"] == m["messages_sent"] > 0
    c = N // 2
    outside = np.ones((N, N), bool)
    outside[c - 1:c + 2, c - 1:c + 2] = False
    assert not g[outside].any()
    ring = g[c - 1:c + 2, c - 1:c + 2].copy()
    ring[1, 1] = 0
    assert ring.any()                                  # the neighbours did update
    assert m["dormant_wakeups"] >= 0.95 * (N * N - 9)          # each outside cell woke, idle
    assert m["messages_sent"] <= 8 * (m["wakeups"] - m["dormant_wakeups"])
    # the neighbours' inboxes still hold the seed's initial state (alpha 1)
    centre = c * N + c
    for s, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        d = (c + dy) * N + (c + dx)
        np.testing.assert_array_equal(sw.inbox[d, 7 - s], seed_state(N, N)[c, c])
        assert sw.nbr[d, 7 - s] == centre


# ---------------------------------------------------------------- damage
def test_damage_clears_state_and_inbox(blob_params):
    sw = swarm(blob_params, seed=1, **LATENCIES["constant"])
    sw.run(60.0)
    mask = np.zeros((N, N), bool)
    mask[8:16, 8:16] = True
    assert sw.grid[mask].any() and sw.inbox[mask.ravel()].any()
    state_before = sw.state.copy()
    inbox_before = sw.inbox.copy()
    sw.damage(mask)
    idx = mask.ravel()
    assert not sw.grid[mask].any() and not sw.inbox[idx].any()
    np.testing.assert_array_equal(sw.state[~idx], state_before[~idx])
    # neighbours are not told: they learn of the damage by the next messages
    np.testing.assert_array_equal(sw.inbox[~idx], inbox_before[~idx])
    sw.run(120.0)
    assert (sw.grid[mask][..., 3] > 0.1).sum() > 0        # the hole refills


def test_damage_is_deterministic(blob_params):
    def go():
        sw = swarm(blob_params, seed=7, **ALL_ON, **LATENCIES["uniform"])
        sw.run(30.0)
        sw.damage(np.eye(N, dtype=bool))
        return sw.run(50.0).copy(), sw.metrics()
    (a, ma), (b, mb) = go(), go()
    assert np.array_equal(a, b) and ma == mb


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [
    dict(latency=-0.1),
    dict(latency_kind=sim.rules.LAT_UNIFORM, latency=0.0, latency_high=-1.0),
    dict(latency_kind=sim.rules.LAT_UNIFORM, latency=0.5, latency_high=0.2),
    dict(loss=1.5),
    dict(loss=-0.1),
    dict(mean_interval=0.0),
    dict(mean_interval=-2.0),
    dict(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, jitter=1.0),
    dict(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, jitter=-0.1),
    dict(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, drift=1.0),
    dict(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, jitter=0.5, drift=0.5),
    dict(mtbf=-1.0),
    dict(mttr=0.0),
    dict(loss=0.1, burst=0.5),
    dict(loss=0.9, burst=5.0),
])
def test_config_validation(blob_params, bad):
    with pytest.raises(ValueError):
        sim.rules.AsyncConfig(**bad).validate()
    with pytest.raises(ValueError):
        sim.events.AsyncSwarm(seed_state(4, 4), blob_params, 0, sim.rules.AsyncConfig(**bad))


def test_good_configs_validate():
    for ok in [dict(), dict(loss=1.0), dict(loss=0.0, latency=0.0),
               dict(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, jitter=0.44, drift=0.5),
               dict(latency_kind=sim.rules.LAT_UNIFORM, latency=0.3, latency_high=0.3),
               dict(loss=0.1, burst=5.0), dict(loss=5 / 6, burst=5.0), dict(loss=0.0, burst=1.0)]:
        sim.rules.AsyncConfig(**ok).validate()


def test_bad_state_shape_raises(blob_params):
    with pytest.raises(ValueError):
        sim.events.AsyncSwarm(np.zeros((4, 4, 15), np.float32), blob_params)
    with pytest.raises(ValueError):
        sim.events.AsyncSwarm(np.zeros((2, 4, 4, 16), np.float32), blob_params)
