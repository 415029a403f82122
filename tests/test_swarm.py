"""sim/swarm.py and sim/cell_backends.py: the SimPy swarm equals the sync reference in
lockstep mode and the numba event-driven reference (AsyncSwarm) in async mode,
bit for bit, in state, inbox and metrics; scheduling, snapshots, backends."""
from __future__ import annotations

import time

import numpy as np
import pytest

import sim.events
import sim.lockstep
import sim.rules
from sim.cell_backends import BackendError, CellBackend, FloatBackend
from sim.assemble import backend_names, make_backend, register_backend
from sim.model import seed_state
from sim.spec import Params
from sim.grid import SyncGrid
from sim.swarm import SimPySwarm

N = 24
LATENCIES = {
    "zero": dict(),
    "constant": dict(latency_kind=sim.rules.LAT_CONSTANT, latency=0.3),
    "uniform": dict(latency_kind=sim.rules.LAT_UNIFORM, latency=0.1, latency_high=0.9),
    "exponential": dict(latency_kind=sim.rules.LAT_EXPONENTIAL, latency=0.4),
}
FAULTS = dict(loss=0.1, mtbf=40.0, mttr=5.0)


def hole(n=N):
    m = np.zeros((n, n), bool)
    m[n // 2 - 5:n // 2 + 3, n // 2 - 4:n // 2 + 6] = True
    return m


def assert_same(sw: SimPySwarm, ref: sim.events.AsyncSwarm, when) -> None:
    assert np.array_equal(sw.grid, ref.grid), when
    assert np.array_equal(sw.inbox, ref.inbox), when
    ms, mr = sw.metrics(), ref.metrics()
    assert {k: ms[k] for k in mr} == mr, when
    np.testing.assert_array_equal(sw.failed, ref.failed)
    np.testing.assert_array_equal(sw.wake_k, ref.wake_k)


def compare(params, seed, cfg, checkpoints, damage_at=None, mask=None, n=N, state=None):
    """Run both engines with the same damage schedule; compare at each checkpoint."""
    x = seed_state(n, n) if state is None else state
    ref = sim.events.AsyncSwarm(x, params, seed, cfg)
    sw = SimPySwarm(x, params, seed, cfg)
    if damage_at is not None:
        sw.schedule_damage(damage_at, mask)
    damaged = False
    for t in checkpoints:
        if damage_at is not None and not damaged and damage_at <= t:
            ref.run(damage_at)
            ref.damage(mask(ref) if callable(mask) else mask)
            damaged = True
        ref.run(t)
        sw.run(t)
        assert_same(sw, ref, t)
    return sw, ref


# ---------------------------------------------------------------- lockstep
@pytest.mark.parametrize("angle", [0.0, 37.0])
def test_lockstep_equals_sync_bit_for_bit(blob, angle):
    n, seed, step0 = 20, 9, 5
    params = Params.from_model(blob, angle)
    sw = SimPySwarm(seed_state(n, n), params, seed, mode="lockstep", step0=step0)
    grid = SyncGrid(seed_state(n, n), params, seed, step0)
    lock = sim.lockstep.LockstepSwarm(seed_state(n, n), params, seed, step0)
    mask = hole(n)
    sw.schedule_damage(60, mask)
    for t in range(20, 121, 20):
        a = sw.run(t)                  # run(60) applies the damage scheduled at 60
        b = grid.run(20)
        c = lock.run(20)
        if t == 60:
            assert (b[mask][..., 3] > 0.1).sum() > 20         # the damage hits living cells
            grid.x[0][mask] = 0.0
            lock.damage(mask)
        assert np.array_equal(a, b), t
        assert np.array_equal(a, c), t
    assert sw.step_count == grid.step_count == step0 + 120
    assert (a[mask][..., 3] > 0.1).sum() > 20                 # and they regrow
    m = sw.metrics()
    assert m["wakeups"] == n * n * 120 and 0 < m["cell_updates"] < m["wakeups"]
    if hasattr(lock, "cell_updates"):              # fired cells, counted the same way
        assert m["cell_updates"] == lock.cell_updates


def test_lockstep_post_rule_hand_built(post_rule_case):
    x, params, expect = post_rule_case
    sw = SimPySwarm(x, Params.from_arrays(params), 0, mode="lockstep", fire_rate=1.0)
    np.testing.assert_array_equal(sw.run(1), expect)


def test_lockstep_rejects_links_and_faults(blob_params):
    for bad in ({"latency": 0.1}, {"loss": 0.1}, {"mtbf": 10.0},
                {"latency_kind": sim.rules.LAT_UNIFORM, "latency_high": 0.5}):
        with pytest.raises(ValueError):
            SimPySwarm(seed_state(8, 8), blob_params, config=sim.rules.AsyncConfig(**bad), mode="lockstep")


# ---------------------------------------------------------------- async == numba reference
@pytest.mark.parametrize("lat", sorted(LATENCIES))
def test_async_equals_reference(blob_params, lat):
    compare(blob_params, 3, sim.rules.AsyncConfig(**LATENCIES[lat]), (13.7, 50.0, 110.0))


@pytest.mark.parametrize("lat", ["zero", "constant", "uniform", "exponential"])
def test_async_everything_on_equals_reference(blob_params, lat):
    """Latency, loss 0.1, failures (mtbf 40, mttr 5) and a damage at t = 50, together."""
    cfg = sim.rules.AsyncConfig(**LATENCIES[lat], **FAULTS)
    sw, _ = compare(blob_params, 7, cfg, (25.0, 50.0, 50.5, 80.0, 120.0), damage_at=50.0,
                    mask=hole())
    m = sw.metrics()
    assert m["failures"] > 50 and m["restarts"] > 50 and m["messages_lost"] > 1000
    assert m["messages_dropped"] > 0 and m["dormant_wakeups"] > 0
    assert (sw.grid[..., 3] > 0.1).sum() > 50
    if lat != "zero":
        assert m["mean_message_delay"] > 0.05


def test_bursty_loss_equals_reference(blob_params):
    """Gilbert-Elliott links with latency and failures: the SimPy swarm equals the numba
    event loop bit for bit (the links' states live in both and evolve alike)."""
    cfg = sim.rules.AsyncConfig(**LATENCIES["exponential"], loss=0.2, burst=4.0, mtbf=40.0, mttr=5.0)
    sw, _ = compare(blob_params, 11, cfg, (30.0, 75.0, 120.0))
    m = sw.metrics()
    assert m["messages_lost"] > 0.1 * m["messages_sent"] and sw.link_bad.any()


def test_async_damage_by_callable_and_immediate(blob_params):
    """A callable mask evaluated at its time; damage() between runs (as the reference does)."""
    cfg = sim.rules.AsyncConfig(**LATENCIES["uniform"], **FAULTS)

    def living(sw):
        return sw.grid[..., 3] > 0.1

    sw, ref = compare(blob_params, 4, cfg, (40.0, 60.0), damage_at=40.0, mask=living)
    assert not (sw.grid[..., 3] > 0.1).all()
    ring = np.zeros((N, N), bool)
    ring[::3] = True
    sw.damage(ring)
    ref.damage(ring)
    for t in (61.0, 100.0):
        sw.run(t)
        ref.run(t)
        assert_same(sw, ref, t)


def test_async_periodic_clock_with_jitter_and_drift(blob_params):
    cfg = sim.rules.AsyncConfig(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, jitter=0.3, drift=0.2,
                        latency_kind=sim.rules.LAT_UNIFORM, latency=0.05, latency_high=0.4, loss=0.05)
    sw, _ = compare(blob_params, 11, cfg, (30.0, 100.0))
    assert sw.metrics()["cell_updates"] > 10_000


def test_async_periodic_clock_exact_period_and_integer_latency(blob_params):
    """Exactly representable periods and latencies: the configuration where ties are likeliest."""
    cfg = sim.rules.AsyncConfig(clock=sim.rules.CLOCK_PERIODIC, mean_interval=1.0, latency=1.0, mtbf=30.0, mttr=2.0)
    compare(blob_params, 12, cfg, (20.0, 64.0, 101.0), damage_at=40.0, mask=hole())


def test_async_rotation_change_at_a_time(blob):
    p0, p90 = Params.from_model(blob), Params.from_model(blob, 90.0)
    cfg = sim.rules.AsyncConfig(**LATENCIES["exponential"])
    ref = sim.events.AsyncSwarm(seed_state(N, N), p0, 2, cfg)
    sw = SimPySwarm(seed_state(N, N), blob, 2, cfg)        # a Model is accepted too
    sw.schedule_params(30.0, p90)
    ref.run(30.0)
    ref.set_params(p90)
    ref.run(80.0)
    sw.run(80.0)
    assert_same(sw, ref, 80.0)
    other = SimPySwarm(seed_state(N, N), p0, 2, cfg)
    assert not np.array_equal(other.run(80.0), sw.grid)      # the rotation mattered


def test_async_split_runs_and_noop_runs(blob_params):
    cfg = sim.rules.AsyncConfig(**LATENCIES["exponential"], **FAULTS)
    a = SimPySwarm(seed_state(N, N), blob_params, 5, cfg)
    b = SimPySwarm(seed_state(N, N), blob_params, 5, cfg)
    a.run(17.3)
    a.run(17.3)
    a.run(3.0)                       # the past: nothing happens
    ga = a.run(71.5).copy()
    assert np.array_equal(ga, b.run(71.5)) and a.metrics() == b.metrics()
    assert a.now == b.now == 71.5


def test_async_seeds_differ(blob_params):
    cfg = sim.rules.AsyncConfig(**LATENCIES["constant"], loss=0.1)
    a = SimPySwarm(seed_state(N, N), blob_params, 1, cfg).run(40.0)
    b = SimPySwarm(seed_state(N, N), blob_params, 2, cfg).run(40.0)
    assert not np.array_equal(a, b)


def test_dormant_cells_sleep_without_events(blob_params):
    """An isolated seed on a big empty grid: the far cells wake once, fall asleep and
    schedule nothing more, so the event queue holds about one entry per awake cell."""
    sw = SimPySwarm(seed_state(40, 40), blob_params, 1)
    sw.run(10.0)
    m = sw.metrics()
    asleep = int(sw.asleep.sum())
    assert asleep > 1450 and m["dormant_wakeups"] >= asleep
    assert len(sw.env._queue) <= 1600 - asleep + 2


def test_inbox_staleness_metric(blob_params):
    sw = SimPySwarm(seed_state(N, N), blob_params, 1, sim.rules.AsyncConfig(latency=0.5))
    sw.run(30.0)
    fast = SimPySwarm(seed_state(N, N), blob_params, 1,
                      sim.rules.AsyncConfig(clock=sim.rules.CLOCK_PERIODIC, mean_interval=0.5))
    fast.run(30.0)
    assert 0.5 < sw.metrics()["mean_inbox_staleness"] < 30.0
    assert fast.metrics()["mean_inbox_staleness"] < sw.metrics()["mean_inbox_staleness"]


# ---------------------------------------------------------------- snapshots, realtime
def test_snapshots_every_k(blob_params):
    cfg = sim.rules.AsyncConfig(**LATENCIES["constant"])
    sw = SimPySwarm(seed_state(N, N), blob_params, 3, cfg)
    ref = sim.events.AsyncSwarm(seed_state(N, N), blob_params, 3, cfg)
    snaps = sw.record(10.0)
    sw.run(35.0)
    assert [t for t, _ in snaps] == [0.0, 10.0, 20.0, 30.0]
    np.testing.assert_array_equal(snaps[0][1], seed_state(N, N))
    for t, g in snaps[1:]:
        assert np.array_equal(g, ref.run(t)), t
    sw.run(40.0)
    assert snaps[-1][0] == 40.0                 # a snapshot at t is taken by run(t)
    sw.record(0)
    sw.run(60.0)
    assert len(snaps) == 5


def test_realtime_factor(blob_params):
    cfg = sim.rules.AsyncConfig(latency=0.2)
    sw = SimPySwarm(seed_state(12, 12), blob_params, 1, cfg, realtime_factor=0.01)
    t0 = time.perf_counter()
    sw.run(5.0)
    assert time.perf_counter() - t0 >= 0.04
    time.sleep(0.05)                            # a pause between runs is not caught up on
    t0 = time.perf_counter()
    g = sw.run(8.0)
    assert 0.025 <= time.perf_counter() - t0 < 0.5
    assert np.array_equal(g, sim.events.AsyncSwarm(seed_state(12, 12), blob_params, 1, cfg).run(8.0))


# ---------------------------------------------------------------- backends
class CountingBackend(CellBackend):
    """A wrapper backend: the swarm works through the interface only."""
    name = "counting"

    def __init__(self, inner: CellBackend):
        self.inner, self.calls = inner, 0

    def update(self, c, state, inbox):
        self.calls += 1
        return self.inner.update(c, state, inbox)

    def tentative(self, c, state, inbox, out):
        self.calls += 1
        self.inner.tentative(c, state, inbox, out)


def test_custom_backend_through_the_interface(blob_params):
    cfg = sim.rules.AsyncConfig(**LATENCIES["uniform"], **FAULTS)
    be = CountingBackend(FloatBackend(blob_params))
    sw = SimPySwarm(seed_state(16, 16), be, 6, cfg)
    ref = sim.events.AsyncSwarm(seed_state(16, 16), blob_params, 6, cfg)
    sw.run(60.0)
    ref.run(60.0)
    assert_same(sw, ref, 60.0)
    m = sw.metrics()
    assert m["cell_updates"] < be.calls < m["wakeups"]          # sleeping cells are not called
    with pytest.raises(NotImplementedError):
        sw.set_params(blob_params)


def test_make_backend(blob, blob_params):
    assert "float" in backend_names()
    be = make_backend("float", blob, 90.0)
    assert isinstance(be, FloatBackend)
    np.testing.assert_array_equal(be.params.kxy, blob_params.rotated(90.0).kxy)
    assert make_backend("float", blob_params).params is blob_params
    with pytest.raises(BackendError, match="unknown cell backend 'fixed-pointy'.*float"):
        make_backend("fixed-pointy", blob)
    with pytest.raises(ValueError):                    # BackendError is a ValueError too
        make_backend("", blob)
    register_backend("counting", lambda model, angle: CountingBackend(make_backend("float", model, angle)))
    assert isinstance(make_backend("counting", blob), CountingBackend)


def test_bad_arguments(blob_params):
    with pytest.raises(ValueError):
        SimPySwarm(np.zeros((4, 4, 15), np.float32), blob_params)
    with pytest.raises(ValueError):
        SimPySwarm(seed_state(4, 4), blob_params, mode="sync")
    with pytest.raises(ValueError):
        SimPySwarm(seed_state(4, 4), blob_params, config=sim.rules.AsyncConfig(loss=2.0))
    sw = SimPySwarm(seed_state(4, 6), blob_params)
    with pytest.raises(ValueError):
        sw.damage(np.zeros((6, 4), bool))
    sw.run(5.0)
    with pytest.raises(ValueError):
        sw.schedule_damage(4.0, np.zeros((4, 6), bool))


# ---------------------------------------------------------------- questionable in sim.events
def test_reference_now_never_goes_back(blob_params):
    ref = sim.events.AsyncSwarm(seed_state(8, 8), blob_params, 1)
    ref.run(20.0)
    ref.run(5.0)
    assert ref.now == 20.0


def test_reference_damage_checks_mask_shape(blob_params):
    ref = sim.events.AsyncSwarm(seed_state(4, 6), blob_params, 1)
    with pytest.raises(ValueError):
        ref.damage(np.ones((6, 4), bool))
