"""Relay links (AsyncConfig.links = LINKS_RELAY, `--links relay`): boards wired to their 4
orthogonal neighbours only; a frame to the N or S neighbour also carries the sender's inbox
slots W and E at send time, which the receiver keeps as its diagonal neighbours' states.
The rule by hand, the two event engines bit for bit, the difference to direct links, the
shipped lizard on relay links (slow) and the command lines."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sim.events
import sim.rules as R
import sim.run
import sim.sweep
from sim.engines import RunError
from sim.model import ALPHA, CHANNELS, NEIGHBOUR_OFFSETS, seed_state
from sim.pictures import load_target
from sim.simulate import simulate
from sim.spec import Params
from sim.swarm import SimPySwarm
from sim.weights import load_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
RELAY = {"links": R.LINKS_RELAY}
ORTHOGONAL = {R.SLOT_N, R.SLOT_W, R.SLOT_E, R.SLOT_S}
ENGINES = {"async": sim.events.AsyncSwarm, "simpy": SimPySwarm}


def still_params() -> Params:
    """A network that is zero everywhere: dx = 0, so living cells keep their states exactly
    and every cell that is not dormant sends the same state at each wake-up."""
    z = {"w1": np.zeros((3 * CHANNELS, 128), np.float32), "b1": np.zeros(128, np.float32),
         "w2": np.zeros((128, CHANNELS), np.float32), "b2": np.zeros(CHANNELS, np.float32)}
    return Params.from_arrays(z)


def marked_grid(h: int, w: int) -> np.ndarray:
    """Every cell alive (alpha 1) with its index in channel 4, so a slot names its source."""
    x = np.zeros((h, w, CHANNELS), np.float32)
    x[..., ALPHA] = 1.0
    x[..., 4] = np.arange(h * w, dtype=np.float32).reshape(h, w) + 1.0
    return x


def where(inbox: np.ndarray, v: np.ndarray) -> list[tuple[int, int]]:
    """(cell, slot) of every inbox slot that holds exactly v."""
    return [(c, s) for c in range(inbox.shape[0]) for s in range(8) if np.array_equal(inbox[c, s], v)]


def marker(v: float) -> np.ndarray:
    m = np.full(CHANNELS, v, np.float32)
    m[ALPHA] = 1.0
    return m


# ---------------------------------------------------------------- the rule
def test_slot_names_and_frame_helpers():
    assert [NEIGHBOUR_OFFSETS[s] for s in (R.SLOT_NW, R.SLOT_N, R.SLOT_NE, R.SLOT_W, R.SLOT_E,
                                            R.SLOT_SW, R.SLOT_S, R.SLOT_SE)] == \
        [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert [s for s in range(8) if R.sends_on(R.LINKS_RELAY, s)] == sorted(ORTHOGONAL)
    assert all(R.sends_on(R.LINKS_DIRECT, s) for s in range(8))
    # a frame from the N neighbour fills N, NW, NE; from S: S, SW, SE; from W or E one slot
    assert R.relay_slots(R.LINKS_RELAY, R.SLOT_N) == (R.SLOT_NW, R.SLOT_NE)
    assert R.relay_slots(R.LINKS_RELAY, R.SLOT_S) == (R.SLOT_SW, R.SLOT_SE)
    for q in range(8):
        if q not in (R.SLOT_N, R.SLOT_S):
            assert R.relay_slots(R.LINKS_RELAY, q) == (-1, -1)
        assert R.relay_slots(R.LINKS_DIRECT, q) == (-1, -1)
    # geometry: the sender at the receiver's slot N/S, its W and E are the receiver's diagonals
    for q in (R.SLOT_N, R.SLOT_S):
        dy, dx = NEIGHBOUR_OFFSETS[q]
        qw, qe = R.relay_slots(R.LINKS_RELAY, q)
        assert NEIGHBOUR_OFFSETS[qw] == (dy, dx - 1) and NEIGHBOUR_OFFSETS[qe] == (dy, dx + 1)


def test_config_field_validation_and_array():
    arr = R.AsyncConfig(latency=0.5, burst=0.0, **RELAY).asarray()
    assert arr.shape == (12,) and arr[R.CFG_LINKS] == R.LINKS_RELAY and arr[5] == 0.5
    assert R.AsyncConfig().asarray()[R.CFG_LINKS] == R.LINKS_DIRECT == R.AsyncConfig().links
    assert R.LINKS == {"direct": R.LINKS_DIRECT, "relay": R.LINKS_RELAY}
    for bad in (2, -1, "relay"):
        with pytest.raises(ValueError, match="links"):
            R.AsyncConfig(links=bad).validate()
    with pytest.raises(ValueError, match="relay"):
        SimPySwarm(seed_state(6, 6), still_params(), config=R.AsyncConfig(**RELAY), mode="lockstep")
    with pytest.raises(RunError, match="relay links need an event engine"):
        simulate(still_params(), engine="sync", steps=2, size=6, async_config=R.AsyncConfig(**RELAY))


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_diagonal_slot_gets_the_relays_inbox_at_send_time(engine):
    """3x3 grid, still network, constant latency 0.5. The relay is cell 1 (top middle), the N
    neighbour of the centre 4. Its inbox W and E are set to markers A just before its first
    wake-up and to markers B right after it: the centre's NW and NE must end up A (captured
    at send time), its N the relay's state; the corner 0's off-grid slots stay zero."""
    seed, lat = 5, 0.5
    cfg = R.AsyncConfig(latency=lat, **RELAY)
    x = marked_grid(3, 3)
    sw = ENGINES[engine](x, still_params(), seed, cfg)
    relay, centre = 1, 4
    t1 = R.wake_interval(seed, cfg.asarray(), relay, 0)
    sw.run(t1)                                   # every event before the relay's first wake-up
    a_w, a_e, b = marker(100.0), marker(200.0), marker(-7.0)
    sw.inbox[relay, R.SLOT_W] = a_w
    sw.inbox[relay, R.SLOT_E] = a_e
    sw.run(np.nextafter(t1, np.inf))             # the relay wakes and sends at t1
    assert sw.sends[relay] == 1
    sw.inbox[relay, R.SLOT_W] = b                # what it knows after sending: never relayed
    sw.inbox[relay, R.SLOT_E] = b
    sw.run(t1 + lat + 1e-9)                      # its frames have arrived
    assert sw.sends[relay] == 1                  # no second frame in between
    np.testing.assert_array_equal(sw.inbox[centre, R.SLOT_NW], a_w)
    np.testing.assert_array_equal(sw.inbox[centre, R.SLOT_NE], a_e)
    np.testing.assert_array_equal(sw.inbox[centre, R.SLOT_N], x[0, 1])
    np.testing.assert_array_equal(sw.inbox[0, R.SLOT_E], x[0, 1])     # W and E got its state
    np.testing.assert_array_equal(sw.inbox[2, R.SLOT_W], x[0, 1])
    # ... and nothing else: the markers are nowhere but in the centre's NW and NE, B nowhere
    assert where(sw.inbox, a_w) == [(centre, R.SLOT_NW)]
    assert where(sw.inbox, a_e) == [(centre, R.SLOT_NE)]
    assert set(where(sw.inbox, b)) <= {(relay, R.SLOT_W), (relay, R.SLOT_E)}
    sw.run(30.0)
    for c in range(9):                           # off-grid slots stay zero however frames go
        for s in range(8):
            if sw.nbr[c, s] < 0:
                assert not sw.inbox[c, s].any(), (c, s)
    # every send is one frame per orthogonal link in the grid
    degree = np.array([sum(1 for s in ORTHOGONAL if sw.nbr[c, s] >= 0) for c in range(9)])
    m = sw.metrics()
    assert m["messages_sent"] == int((sw.sends * degree).sum()) > 0


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_zero_latency_relays_the_inbox_at_once(engine):
    """Latency 0: the frame is written at the send; the relayed slots are the relay's inbox
    then (not its neighbours' states: those may have moved on)."""
    seed = 3
    cfg = R.AsyncConfig(**RELAY)
    x = marked_grid(3, 4)
    sw = ENGINES[engine](x, still_params(), seed, cfg)
    relay, below = 5, 9                          # (1,1) and its S neighbour (2,1)
    t1 = R.wake_interval(seed, cfg.asarray(), relay, 0)
    sw.run(t1)
    sends = sw.sends[relay]
    a_w, a_e = marker(31.0), marker(-32.0)
    sw.inbox[relay, R.SLOT_W] = a_w
    sw.inbox[relay, R.SLOT_E] = a_e
    sw.run(np.nextafter(t1, np.inf))
    assert sw.sends[relay] == sends + 1
    above = 1                                    # (0,1) hears the relay as its S neighbour
    assert where(sw.inbox, a_w) == [(above, R.SLOT_SW), (relay, R.SLOT_W), (below, R.SLOT_NW)]
    assert where(sw.inbox, a_e) == [(above, R.SLOT_SE), (relay, R.SLOT_E), (below, R.SLOT_NE)]
    np.testing.assert_array_equal(sw.inbox[4, R.SLOT_E], x[1, 1])     # W and E: the state only
    np.testing.assert_array_equal(sw.inbox[6, R.SLOT_W], x[1, 1])


def test_a_relayed_living_alpha_wakes_a_sleeping_cell():
    """5x5 grid, still network, one living cell in the corner (0,0). Its diagonal (1,1) is
    wiped at t = 0 and falls asleep (dormant) at its first wake-up; only the relay (0,1)'s
    frames can tell it of the corner (the frame's own state is dead, the relayed W alive),
    and that must wake it: it then works and sends. Equal in both engines."""
    x = np.zeros((5, 5, CHANNELS), np.float32)
    x[0, 0, ALPHA] = 1.0
    x[0, 0, 4] = 0.5
    diag, relay, lat = 6, 1, 0.25
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = True
    cfg = R.AsyncConfig(latency=lat, **RELAY)
    arr = cfg.asarray()
    seed = next(s for s in range(100)     # (1,1) wakes (dormant) before the relay's first frame lands
                if R.wake_interval(s, arr, diag, 0) < R.wake_interval(s, arr, relay, 0) + lat)
    ref = sim.events.AsyncSwarm(x, still_params(), seed, cfg)
    sw = SimPySwarm(x, still_params(), seed, cfg)
    ref.damage(mask)
    sw.damage(mask)
    for t in (R.wake_interval(seed, arr, diag, 0) + 1e-9, 5.0, 40.0):
        ref.run(t)
        sw.run(t)
        assert np.array_equal(ref.inbox, sw.inbox) and np.array_equal(ref.grid, sw.grid)
        mr, ms = ref.metrics(), sw.metrics()
        assert {k: ms[k] for k in mr} == mr
        np.testing.assert_array_equal(ref.sends, sw.sends)
        if t < 5.0:
            assert ref.asleep[diag] and sw.asleep[diag] and ref.sends[diag] == 0
    assert ref.inbox[diag, R.SLOT_NW, ALPHA] == 1.0        # heard of the corner, through the relay
    assert not ref.asleep[diag] and ref.sends[diag] > 5    # woke and went on working
    assert mr["dormant_wakeups"] > 0


# ---------------------------------------------------------------- the engines agree
def assert_same(sw: SimPySwarm, ref: sim.events.AsyncSwarm, when) -> None:
    assert np.array_equal(sw.grid, ref.grid), when
    assert np.array_equal(sw.inbox, ref.inbox), when
    ms, mr = sw.metrics(), ref.metrics()
    assert {k: ms[k] for k in mr} == mr, when
    np.testing.assert_array_equal(sw.failed, ref.failed)
    np.testing.assert_array_equal(sw.wake_k, ref.wake_k)
    np.testing.assert_array_equal(sw.sends, ref.sends)


@pytest.fixture(scope="module")
def lizard():
    model, _ = load_model(str(WEIGHTS / "lizard_regenerating.npz"))
    return Params.from_model(model)


CASES = {
    "zero+loss": {"loss": 0.1},
    "constant+loss": {"latency": 0.3, "loss": 0.1},
    "uniform+faults": {"latency_kind": R.LAT_UNIFORM, "latency": 0.1, "latency_high": 0.9, "loss": 0.1,
                       "mtbf": 40.0, "mttr": 5.0},
    "exp+burst": {"latency_kind": R.LAT_EXPONENTIAL, "latency": 0.4, "loss": 0.2, "burst": 4.0},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_relay_simpy_equals_numba_bit_for_bit(lizard, case):
    """The shipped lizard on a 16x16 grid, relay links with latency, loss, failures and a
    damage at t = 40: the SimPy swarm equals the numba event loop in state, inbox, metrics."""
    n, seed = 16, 4
    cfg = R.AsyncConfig(**CASES[case], **RELAY)
    x = seed_state(n, n)
    ref = sim.events.AsyncSwarm(x, lizard, seed, cfg)
    sw = SimPySwarm(x, lizard, seed, cfg)
    mask = np.zeros((n, n), bool)
    mask[6:10, 5:11] = True
    sw.schedule_damage(40.0, mask)
    for t in (11.3, 40.0, 62.5, 90.0):
        ref.run(t)
        if t == 40.0:
            ref.damage(mask)
        sw.run(t)
        assert_same(sw, ref, (case, t))
    m = sw.metrics()
    assert m["messages_lost"] > 0 and m["messages_delivered"] > 0
    assert (sw.grid[..., ALPHA] > 0.1).sum() > 20           # something grew
    if "faults" in case:
        assert m["failures"] > 0 and m["messages_dropped"] > 0


# ---------------------------------------------------------------- relay is not direct
@pytest.mark.parametrize("latency", [0.0, 0.3])
def test_relay_differs_from_direct(lizard, latency):
    """Same seed, same draws of the orthogonal links: the diagonal states arrive later (and
    fewer messages go out), so the runs part ways; at latency 0 too, since a relayed state
    is as old as the relay's knowledge."""
    n, seed = 16, 1
    runs = {}
    for links in (R.LINKS_DIRECT, R.LINKS_RELAY):
        sw = sim.events.AsyncSwarm(seed_state(n, n), lizard, seed, R.AsyncConfig(latency=latency, links=links))
        sw.run(60.0)
        runs[links] = sw
    d, r = runs[R.LINKS_DIRECT], runs[R.LINKS_RELAY]
    assert not np.array_equal(d.grid, r.grid)
    assert (r.grid[..., ALPHA] > 0.1).sum() > 20
    md, mr = d.metrics(), r.metrics()
    # per send: 8 messages on direct links, 4 frames on relay links (fewer at the edges)
    assert mr["messages_sent"] / (mr["wakeups"] - mr["dormant_wakeups"]) <= 4.0
    assert md["messages_sent"] / (md["wakeups"] - md["dormant_wakeups"]) > 4.0


# ---------------------------------------------------------------- the shipped lizard (slow)
# Measured (async engine, 40x40, step 1000, loss vs the lizard target, latency 0):
# lizard_regenerating seeds 0-4 1.3e-4 .. 1.4e-4 on relay links (direct 1.2e-4),
# 1.5e-4 .. 7.9e-4 at latency 1. (The paper-recipe lizard shipped before: seed 0 2.37e-4,
# seeds 0-4 2.0e-4 .. 8.7e-4, and it broke at latency 1.)
RELAY_LIMIT = 5e-4


@pytest.mark.slow
def test_lizard_grows_on_relay_links():
    model, _ = load_model(str(WEIGHTS / "lizard_regenerating.npz"))
    r = simulate(model, engine="async", steps=1000, size=40, seed=0, target="lizard",
                 async_config=R.AsyncConfig(**RELAY), history_every=1000)
    assert r.loss is not None and r.loss <= RELAY_LIMIT, r.loss
    assert r.alive > 300
    assert r.metrics["async_config"]["links"] == "relay"


# ---------------------------------------------------------------- command lines
def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = sim.run.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_relay_links_async(model_file, tmp_path, capsys):
    js, st = tmp_path / "m.json", tmp_path / "s.npy"
    rc, out, err = _run(capsys, "--engine", "async", "--links", "relay", "--latency", 0.25, "--model", model_file,
                        "--size", 12, "--steps", 20, "--seed", 2, "--json", js, "--save-state", st)
    assert rc == 0, err
    assert "relay links" in out
    m = json.loads(js.read_text())
    assert m["async_config"]["links"] == "relay"
    ref = simulate(load_model(str(model_file))[0], engine="async", steps=20, size=12, seed=2,
                   async_config=R.AsyncConfig(latency=0.25, **RELAY))
    np.testing.assert_array_equal(np.load(st), ref.state)
    rc, _, err = _run(capsys, "--engine", "async", "--latency", 0.25, "--model", model_file, "--size", 12,
                      "--steps", 20, "--seed", 2, "--json", js)
    assert rc == 0, err
    assert json.loads(js.read_text())["async_config"]["links"] == "direct"


@pytest.mark.parametrize("engine", ["sync", "lockstep"])
def test_cli_relay_links_rejected_by_grid_engines(engine, model_file, capsys):
    rc, out, err = _run(capsys, "--engine", engine, "--links", "relay", "--model", model_file,
                        "--size", 8, "--steps", 2)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--links" in lines[0] and "async|simpy" in lines[0] and engine in lines[0]


def test_cli_bad_links_name(model_file, capsys):
    rc, out, err = _run(capsys, "--engine", "async", "--links", "diagonal", "--model", model_file)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert "--links" in err and "relay" in err


def test_sweep_jobs_take_the_links():
    (job,) = sim.sweep.make_jobs(load_model(None)[0], load_target("lizard"), latencies=[0.5], links="relay")
    assert job.config() == R.AsyncConfig(latency=0.5, **RELAY)
    row = sim.sweep.run_job(sim.sweep.Job(**{**job.__dict__, "steps": 5, "size": 8}))
    assert row["links"] == "relay" and "links" in sim.sweep.COLUMNS
    with pytest.raises(ValueError, match="links"):
        sim.sweep.make_jobs(load_model(None)[0], load_target("lizard"), links="diagonal")
    args = sim.sweep._parser().parse_args(["--links", "relay"])
    assert args.links == "relay" and "relay links" in sim.sweep._settings_text(args)
