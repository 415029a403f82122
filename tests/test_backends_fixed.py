"""The "fixed" (golden model, codegen/fixed_cells.py) and "firmware" (generated C
over ctypes, codegen/host_cells.py) cell backends in the SimPy swarm: found by name
(sim.assemble), equal to each other and to the golden synchronous grid, rotatable;
and the fixed-point swarm's fidelity to the float one (the trained regenerating
lizard when it is there)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codegen import formats as F
from codegen import golden as G
from sim.assemble import backend_names, make_backend
from sim.damage import Damage
from sim.fixture import blob_model
from sim.model import ALPHA, seed_state
from sim.spec import Params
from sim.swarm import SimPySwarm

REPO = Path(__file__).resolve().parent.parent
LIZARD_QAT = REPO / "weights" / "lizard_regenerating_qat.npz"
LIZARD = REPO / "weights" / "lizard_regenerating_paper.npz"   # the float model the fixed-point ones descend from
LIZARD_EF = REPO / "weights" / "lizard_regenerating_paper_ef.npz"   # LIZARD's error-feedback fine-tune
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                               reason="the firmware backend compiles the C with gcc and make")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    os.environ["NCA_CODEGEN_CACHE"] = str(tmp_path_factory.mktemp("nca-cache"))


def test_backends_are_found_by_name_in_a_fresh_process():
    """The names the command line offers (sim.assemble) reach codegen's backends by an
    ordinary import, with nothing imported first."""
    code = ("from sim.assemble import make_backend, backend_names\n"
            "from sim.fixture import blob_model\n"
            "b = make_backend('fixed', blob_model())\n"
            "print(type(b).__name__, 'firmware' in backend_names())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["FixedBackend", "True"]
    assert {"float", "fixed", "firmware"} <= set(backend_names())


def test_lockstep_swarm_on_the_fixed_backend_equals_the_golden_grid():
    m = blob_model()
    sw = SimPySwarm(seed_state(14, 14), make_backend("fixed", m), seed=5, mode="lockstep")
    sw.run(25)
    q = make_backend("fixed", m).q
    x = G.sync_run(F.quantize_state(seed_state(14, 14), q.fmt), 5, 25, q.arrays())
    np.testing.assert_array_equal(sw.grid, F.dequantize_state(x, q.fmt))
    assert (x[..., ALPHA] > F.ALIVE_Q).sum() > 20


@needs_gcc
@pytest.mark.parametrize("mode", ["async", "lockstep"])
def test_firmware_backend_equals_fixed_backend_in_the_swarm(mode):
    """The same swarm (own clocks, messages with latency and loss in async mode) on the
    golden model and on the C itself: bit for bit, every snapshot."""
    from sim.rules import LAT_UNIFORM, AsyncConfig
    m = blob_model()
    cfg = AsyncConfig(latency_kind=LAT_UNIFORM, latency=0.0, latency_high=0.4, loss=0.1) if mode == "async" else None
    a = SimPySwarm(seed_state(16, 16), make_backend("fixed", m), seed=3, config=cfg, mode=mode)
    b = SimPySwarm(seed_state(16, 16), make_backend("firmware", m), seed=3, config=cfg, mode=mode)
    hole = Damage("circle", (8.0, 8.0, 3.0), 15).mask(16, 16)
    for t in (10, 20, 40):
        a.run(t)
        b.run(t)
        np.testing.assert_array_equal(a.grid, b.grid)
        if t == 20:
            a.damage(hole)
            b.damage(hole)
    assert a.metrics()["cell_updates"] == b.metrics()["cell_updates"] > 1000


def with_error_feedback(m):
    """The model marked as fine-tuned for the error-feedback cell (quantize reads the mark)."""
    from codegen.quantize import META_KEY
    from sim.weights import Model
    meta = dict(m.meta)
    meta["training"] = {**(meta.get("training") or {}), META_KEY: {"error_feedback": True}}
    return Model(m.params, meta)


@needs_gcc
def test_error_feedback_swarm_is_the_same_on_the_golden_model_and_the_c():
    """Own states with their remainders live in the swarm's float arrays (exact); a
    message carries the whole state and the receiver takes its int8 part."""
    from sim.rules import LAT_UNIFORM, AsyncConfig
    m = with_error_feedback(blob_model())
    fixed = make_backend("fixed", m)
    assert fixed.q.fmt.ef_bits == F.EF_BITS
    cfg = AsyncConfig(latency_kind=LAT_UNIFORM, latency=0.0, latency_high=0.4, loss=0.1)
    a = SimPySwarm(seed_state(16, 16), fixed, seed=4, config=cfg)
    b = SimPySwarm(seed_state(16, 16), make_backend("firmware", m), seed=4, config=cfg)
    for t in (10, 20, 40):
        a.run(t)
        b.run(t)
        np.testing.assert_array_equal(a.grid, b.grid)
        if t == 20:
            hole = Damage("circle", (8.0, 8.0, 3.0), 20).mask(16, 16)
            a.damage(hole)
            b.damage(hole)
    fine = a.grid * (fixed.q.fmt.state_steps * 2 ** F.EF_BITS).astype(np.float32)
    assert np.array_equal(fine, np.rint(fine))                          # on the fine grid, exactly
    assert np.count_nonzero(fine.astype(np.int64) % (1 << F.EF_BITS)) > 100   # remainders kept
    assert a.metrics()["cell_updates"] == b.metrics()["cell_updates"] > 1000


def test_error_feedback_refuses_lockstep_mode():
    from sim.errors import UserError
    sw = SimPySwarm(seed_state(8, 8), make_backend("fixed", with_error_feedback(blob_model())), seed=1,
                    mode="lockstep")
    with pytest.raises(UserError, match="error feedback"):
        sw.run(3)


@needs_gcc
def test_rotation_through_set_params_in_both_backends():
    m = blob_model()
    grids = []
    for name in ("fixed", "firmware"):
        sw = SimPySwarm(seed_state(16, 16), make_backend(name, m), seed=2, mode="lockstep")
        sw.schedule_params(6.0, Params.from_model(m).rotated(90.0))
        sw.run(20)
        grids.append(sw.grid.copy())
    np.testing.assert_array_equal(grids[0], grids[1])
    q = make_backend("fixed", m).q
    x = F.quantize_state(seed_state(16, 16), q.fmt)
    for k in range(20):
        x = G.sync_step(x, 2, k, 0.5, *q.arrays(), G.rotation_array(90.0 if k >= 6 else None))
    np.testing.assert_array_equal(grids[0], F.dequantize_state(x, q.fmt))


def test_fixed_backend_starting_at_an_angle():
    m = blob_model()
    be = make_backend("fixed", m, 45.0)
    np.testing.assert_array_equal(be.rot, G.rotation_array(45.0))
    be2 = make_backend("fixed", Params.from_model(m, 45.0))
    np.testing.assert_array_equal(be2.rot, G.rotation_array(45.0))


def test_fixed_point_async_swarm_on_the_blob_stays_close_to_float():
    """Fidelity on the fixture (until the trained lizard exists): the async swarm on the
    fixed-point backend grows the same blob as on the float one."""
    m = blob_model()
    sf = SimPySwarm(seed_state(32, 32), make_backend("float", m), seed=1)
    sq = SimPySwarm(seed_state(32, 32), make_backend("fixed", m), seed=1)
    for t in (100, 200, 300):
        sf.run(t)
        sq.run(t)
        err = float(np.mean(np.abs(sf.grid - sq.grid)))
        assert err < 0.15, (t, err)
    af = sf.grid[..., ALPHA] > 0.1
    aq = sq.grid[..., ALPHA] > 0.1
    assert abs(int(af.sum()) - int(aq.sum())) < 0.1 * af.sum()


def _loss(state, target):
    d = state[..., :4].astype(np.float64) - target
    return float(np.mean(d * d))


@pytest.mark.slow
def test_regenerating_lizard_fixed_point_fidelity_and_regrowth():
    """The firmware's arithmetic on the async SimPy swarm (40x40, seeds 0-4, step 1,000),
    against the float engine running the paper-recipe regenerating lizard (measured 1.88e-4)
    and the fixed-point models made from it (lizard_regenerating_paper_ef and _qat).
    Post-training quantisation of that model drifts (2.6e-3; seeds 0-1: 4.3e-3). The
    cell with error feedback and its fine-tuned lizard (float against state noise, then
    quantisation-aware through that cell, distilled) reach 1.97e-4, 1.05x the float
    loss: asserted within the 1.25x the firmware is held to. The int8 cell of the board
    firmware, fine-tuned the same way without it (output biases tuned on other seeds),
    reaches 3.20e-4 (1.70x): asserted within 1.85x and at least 4x better than
    post-training quantisation. Both regrow after a circle cut as the float model does
    (seeds 0-2)."""
    from sim.pictures import fit_target, load_target
    from sim.weights import load
    float_model, qat_model, ef_model = load(LIZARD), load(LIZARD_QAT), load(LIZARD_EF)
    target = fit_target(load_target("lizard"), 40, 40)

    def mean_loss(backend: str, model, seeds=range(5)) -> float:
        out = []
        for seed in seeds:
            sw = SimPySwarm(seed_state(40, 40), make_backend(backend, model), seed=seed)
            sw.run(1000)
            out.append(_loss(sw.grid, target))
        return float(np.mean(out))

    lf = mean_loss("float", float_model)
    lef = mean_loss("fixed", ef_model)
    assert lef <= 1.25 * lf, (lf, lef)
    lptq = mean_loss("fixed", float_model, seeds=range(2))
    lqat = mean_loss("fixed", qat_model)
    assert lqat <= 1.85 * lf, (lf, lqat)
    assert lqat * 4.0 <= lptq, (lptq, lqat)

    def cut_and_regrow(backend: str, model, seed: int) -> tuple[float, float, float, int, int]:
        sw = SimPySwarm(seed_state(40, 40), make_backend(backend, model), seed=seed)
        sw.run(1000)
        before, alive0 = _loss(sw.grid, target), int(np.count_nonzero(sw.grid[..., ALPHA] > 0.1))
        sw.damage(Damage("circle", (20.0, 20.0, 8.0), 1000).mask(40, 40))
        cut = _loss(sw.grid, target)
        sw.run(1600)
        return before, cut, _loss(sw.grid, target), alive0, int(np.count_nonzero(sw.grid[..., ALPHA] > 0.1))

    # The float model itself does not always heal this cut exactly: on seeds 0 and 1 it
    # settles at 1.5e-2 (the picture whole, the belly stripe's colours off), on seed 2 at
    # 1.9e-4; so the fixed point is held to the float engine's regrowth over three seeds
    # (measured: error feedback 1.5e-2, 1.9e-4, 1.5e-2; the int8 cell 1.3e-3, 1.2e-2, 4.5e-4).
    after_float = np.mean([cut_and_regrow("float", float_model, s)[2] for s in range(3)])
    for model in (ef_model, qat_model):
        fixed = [cut_and_regrow("fixed", model, s) for s in range(3)]
        for before, cut, after, alive0, alive1 in fixed:
            assert cut > before * 2 + 1e-3                  # the cut hurt (a third of the body)
            assert after < cut / 2, (before, cut, after)    # most of it grew back
            assert abs(alive1 - alive0) <= 0.1 * alive0, (alive0, alive1)
        after = np.mean([f[2] for f in fixed])
        assert after <= 1.25 * after_float, (after, after_float)


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "weights" / "lizard_persistent.npz").exists(),
                    reason="lizard_persistent.npz is not trained yet")
def test_persistent_lizard_grows_in_fixed_point():
    """A trained model (the persistent lizard): synchronous fixed point from the seed for
    1,000 steps keeps the lizard (loss within 0.005 of a perfect picture, the same number
    of living cells as the float run within 5%)."""
    from codegen.quantize import quantized
    from sim.grid import SyncGrid
    from sim.pictures import fit_target, load_target
    from sim.weights import load
    model = load(REPO / "weights" / "lizard_persistent.npz")
    target = fit_target(load_target("lizard"), 40, 40)
    q = quantized(model)
    for seed in range(3):
        x = G.sync_run(F.quantize_state(seed_state(40, 40), q.fmt), seed, 1000, q.arrays())
        g = SyncGrid(seed_state(40, 40), Params.from_model(model), seed)
        g.run(1000)
        xf = F.dequantize_state(x, q.fmt)
        assert _loss(xf, target) < 0.005
        na, nf = int((x[..., ALPHA] > F.ALIVE_Q).sum()), int((g.state[..., ALPHA] > 0.1).sum())
        assert abs(na - nf) <= 0.05 * nf


@pytest.mark.parametrize("backend", ["fixed", "firmware"])
def test_sim_run_backend_option_runs_the_integer_cell(tmp_path, backend):
    """`python -m sim.run --backend fixed|firmware` is the SimPy swarm on that backend:
    the saved final state equals a swarm driven directly, bit for bit."""
    if backend == "firmware" and shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the firmware for this machine")
    import sim.assemble
    import sim.run
    from sim.weights import load
    path = REPO / "weights" / "fixture_blob.npz"
    out = tmp_path / "final.npy"
    argv = ["--backend", backend, "--model", str(path), "--size", "20", "--steps", "60",
            "--seed", "3", "--latency", "0.2", "--save-state", str(out), "--no-progress"]
    assert sim.run.main(argv) == 0
    sw = SimPySwarm(seed_state(20, 20), make_backend("fixed", load(path)), seed=3,
                    config=sim.assemble.AsyncConfig(latency=0.2))
    sw.run(60)
    np.testing.assert_array_equal(np.load(out), sw.grid)
    assert np.count_nonzero(sw.grid[..., ALPHA] > 0.1) > 10


def test_sim_run_backend_needs_an_event_engine(capsys):
    import sim.assemble
    import sim.run
    assert sim.run.main(["--backend", "fixed", "--engine", "sync", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the async and simpy engines" in err and len(err.splitlines()) == 1


def test_sim_run_firmware_backend_is_not_run_by_the_async_engine(capsys):
    """The generated C is called through ctypes, one cell at a time: only the SimPy
    swarm can drive it, and the async engine says so before anything is built."""
    import sim.run
    assert sim.run.main(["--backend", "firmware", "--engine", "async", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the simpy engine only" in err and len(err.splitlines()) == 1


def test_async_swarm_refuses_a_cell_that_is_not_numba_code():
    from sim.events import AsyncSwarm
    from sim.cell_backends import CellBackend
    with pytest.raises(ValueError, match="not numba code"):
        AsyncSwarm(seed_state(8, 8), Params.from_model(blob_model()), cell=CellBackend())


@pytest.mark.parametrize("error_feedback", [False, True])
def test_async_engine_on_the_fixed_backend_equals_the_simpy_swarm(error_feedback):
    """The golden model inside the async engine's numba event loop is the SimPy swarm on
    the fixed backend bit for bit: with latency, lost messages, failing cells, a cut and
    a turn of the perception (set_params) on the way; the same counts of what happened."""
    from sim.assemble import simulate
    from sim.rules import LAT_UNIFORM, AsyncConfig
    m = with_error_feedback(blob_model()) if error_feedback else blob_model()
    cfg = AsyncConfig(latency_kind=LAT_UNIFORM, latency=0.0, latency_high=0.6, loss=0.1, mtbf=300.0, mttr=5.0)
    runs = [simulate(m, engine, backend="fixed", size=20, steps=90, seed=6, async_config=cfg,
                     damage=["circle:10,10,4@40"], rotations=["90@60"], warm_up=False)
            for engine in ("simpy", "async")]
    np.testing.assert_array_equal(runs[0].state, runs[1].state)
    assert runs[1].metrics["backend"] == "fixed"
    counts = ("cell_updates", "cells_failed_now", "messages_lost", "restarts")
    assert [runs[0].metrics["swarm"][k] for k in counts] == [runs[1].metrics["swarm"][k] for k in counts]
    assert runs[1].metrics["swarm"]["restarts"] > 0 and runs[1].metrics["swarm"]["messages_lost"] > 0
    assert np.count_nonzero(runs[1].state[..., ALPHA] > 0.1) > 10
