"""The wires in the training loop (train/links.py): link ages equal a plain
re-implementation of the async engines' "latest arrival wins" rule, bursty loss and
clock spread have the statistics they claim, BPTT through the delays equals central
differences, and a training run with wires resumes exactly."""
from __future__ import annotations

import io

import numpy as np
import pytest

from sim import model as M
from sim import rules as R
from sim import weights
from train import bptt as core
from train import links as L
from train.cli import main
from train.config import TrainConfig
from train.loop import train


def _reference_ages(spec: L.LinkSpec, key: int, shape: tuple[int, int, int], steps: int) -> np.ndarray:
    """Per link: every step's message is lost or arrives at send + latency; the slot
    holds the message that arrived last (ties: the later send); age = now - its send."""
    B, H, W = shape
    cfg = spec.cfg()
    D = spec.max_delay
    p, burst = spec.msg_loss, spec.burst
    out = np.zeros((steps, B, H, W, 8), np.int64)
    for link in range(B * H * W * 8):
        msgs: list[tuple[float, int]] = []
        bad = False
        for t in range(steps):
            lat, u = L.link_draws(key, t, link, cfg)
            lost = False
            if t == 0:
                lat = 0.0
            elif p > 0:
                if burst >= 1:
                    lost = (u >= 1 / burst) if bad else (u < p / (burst * (1 - p)))
                    bad = lost
                else:
                    lost = u < p
            if not lost:
                msgs.append((t + lat, t))
            arr, sent = max(m for m in msgs if m[0] <= t)
            cell, s = divmod(link, 8)
            out[(t, *np.unravel_index(cell, (B, H, W)), s)] = min(t - sent, D)
    return out


def _ages(spec: L.LinkSpec, key: int, shape: tuple[int, int, int], steps: int) -> np.ndarray:
    w = L.Wires(spec, key, shape)
    ages = np.empty((steps, *shape, 8), np.uint8)
    for t in range(steps):
        w.advance(t, ages[t])
    return ages


@pytest.mark.parametrize("spec", [
    L.LinkSpec("exp", 1.3, max_delay=4),
    L.LinkSpec("uniform", 0.2, 2.7, msg_loss=0.2, max_delay=3),
    L.LinkSpec("exp", 0.8, msg_loss=0.3, burst=3.0, max_delay=6),
])
def test_link_ages_equal_the_latest_arrival_rule(spec):
    got = _ages(spec, 11, (2, 3, 4), 40)
    want = _reference_ages(spec, 11, (2, 3, 4), 40)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got[5:])) >= 3          # the draws really vary the ages


@pytest.mark.parametrize("lat,age", [(0.0, 0), (1.0, 1), (1.5, 2), (2.0, 2), (9.0, 6)])
def test_constant_latency_gives_constant_ages(lat, age):
    ages = _ages(L.LinkSpec("const", lat), 3, (1, 5, 5), 12)
    for t in range(12):
        assert np.all(ages[t] == min(age, t)), (t, np.unique(ages[t]))


def test_bursty_loss_has_its_mean_and_run_length():
    spec = L.LinkSpec("const", 0.0, msg_loss=0.1, burst=5.0)
    w = L.Wires(spec, 5, (4, 16, 16))
    ages = np.empty((4, 16, 16, 8), np.uint8)
    lost = []
    for t in range(400):
        w.advance(t, ages)
        if t > 0:
            lost.append(w.bad.copy())
    lost = np.array(lost).reshape(len(lost), -1)
    assert abs(lost.mean() - 0.1) < 0.01
    starts = (lost[1:] & ~lost[:-1]).sum()
    assert abs(lost[1:].sum() / starts - 5.0) < 0.3    # mean run length
    # a lost message keeps the last received state: ages grow during a run
    assert ages.max() == spec.max_delay


def test_clock_spread_draws_per_cell_rates():
    w = L.Wires(L.LinkSpec(drift=0.2), 9, (2, 30, 30))
    assert w.rates.min() >= 0.4 and w.rates.max() <= 0.6
    assert w.rates.std() > 0.04
    fires = np.mean([w.fire(t) for t in range(400)], axis=0)
    assert np.corrcoef(fires.ravel(), w.rates.ravel())[0, 1] > 0.8
    flat = L.Wires(L.LinkSpec(latency=1.0), 9, (2, 30, 30))
    assert np.all(flat.rates == M.FIRE_RATE)


def test_periodic_clock_fires_regularly_at_each_cells_rate():
    w = L.Wires(L.LinkSpec(clock="periodic", drift=0.05), 4, (1, 20, 20))
    fires = np.array([w.fire(t) for t in range(400)])
    assert np.abs(fires.mean(axis=0) - w.rates).max() < 0.01      # each cell at its own rate
    gaps = np.concatenate([np.diff(np.flatnonzero(fires[:, 0, y, x])) for y in range(20) for x in range(20)])
    assert set(np.unique(gaps)) <= {1, 2, 3} and np.mean(gaps == 2) > 0.9   # every 2 steps, slipping
    starts = fires[:3].reshape(3, -1)
    assert 0.3 < starts[0].mean() < 0.7 and np.all(starts.sum(axis=0) >= 1)   # random phases
    g = np.random.default_rng(0)
    assert {L.LinkSpec("mix", 1.0, clock="mix").draw(g).clock for _ in range(30)} == {"exp", "periodic"}
    assert {L.LinkSpec("const", 1.0, links="mix").draw(g).links for _ in range(30)} == {"direct", "relay"}


def test_mix_draws_a_kind_and_a_level_per_rollout():
    spec = L.LinkSpec("mix", 2.0, msg_loss=0.2, burst=4.0, drift=0.05)
    gen = np.random.default_rng(0)
    drawn = [spec.draw(gen) for _ in range(200)]
    assert {d.latency_dist for d in drawn} == {"const", "uniform", "exp"}
    assert all(0 <= d.latency <= 2.0 and 0 <= d.msg_loss <= 0.2 and d.burst == 4.0 for d in drawn)
    assert all(d.latency_high == 2 * d.latency for d in drawn if d.latency_dist == "uniform")
    assert L.LinkSpec("exp", 1.0).draw(gen) == L.LinkSpec("exp", 1.0)


def _reference_relay_ages(spec: L.LinkSpec, key: int, fires: np.ndarray) -> np.ndarray:
    """Relayed diagonals told as messages: the direct links' ages as in the async engines;
    at each fire a cell copies the send steps of what its W and E slots hold into its
    outgoing frame (at boot: step 0); a frame sent at tau carries that copy as it was
    at tau; a diagonal is as old as the copy in the frame from the N or S neighbour
    the cell holds."""
    steps, B, H, W = fires.shape
    D = spec.max_delay
    direct = _ages(L.LinkSpec(**{**spec.asdict(), "links": "direct"}), key, (B, H, W), steps).astype(np.int64)
    carried = np.zeros((steps, B, H, W, 2), np.int64)     # send steps a frame sent at t carries (W, E)
    copy = np.zeros((B, H, W, 2), np.int64)
    out = direct.copy()
    for t in range(steps):
        carried[t] = copy
        for b, y, x in zip(*np.nonzero(fires[t])):
            copy[b, y, x] = (t - direct[t, b, y, x, R.SLOT_W], t - direct[t, b, y, x, R.SLOT_E])
        for b, y, x in np.ndindex(B, H, W):
            for relay, dy, diag in ((R.SLOT_N, -1, (R.SLOT_NW, R.SLOT_NE)), (R.SLOT_S, 1, (R.SLOT_SW, R.SLOT_SE))):
                if 0 <= y + dy < H:
                    tau = t - direct[t, b, y, x, relay]
                    for k in range(2):
                        out[t, b, y, x, diag[k]] = min(t - carried[tau, b, y + dy, x, k], D)
    return out


@pytest.mark.parametrize("spec", [
    L.LinkSpec("const", 0.0, links="relay", max_delay=5),
    L.LinkSpec("exp", 1.1, msg_loss=0.2, burst=3.0, links="relay", max_delay=4),
])
def test_relayed_diagonals_are_as_old_as_the_relays_copy(spec):
    shape, steps = (2, 4, 5), 30
    fires = np.random.default_rng(2).random((steps, *shape)) < 0.5
    w = L.Wires(spec, 7, shape)
    got = np.empty((steps, *shape, 8), np.uint8)
    for t in range(steps):
        w.advance(t, got[t])
        w.fired(t, fires[t])
    np.testing.assert_array_equal(got, _reference_relay_ages(spec, 7, fires))
    inner = got[5:, :, 1:-1]
    diag = inner[..., [R.SLOT_NW, R.SLOT_NE, R.SLOT_SW, R.SLOT_SE]]
    orth = inner[..., [R.SLOT_N, R.SLOT_W, R.SLOT_E, R.SLOT_S]]
    assert diag.mean() > orth.mean() + 0.5       # a relay adds the wait for its next fire


@pytest.mark.parametrize("links", ["direct", "relay"])
def test_delayed_gradients_equal_central_differences(links):
    """BPTT through 6 delayed, lossy steps with clock spread (float64, 10x10, fire
    and alive masks held fixed), on direct and relayed links: every entry of b2 and
    w2, and w1, b1 along random directions, against central differences. A backward
    that sent the taps' gradient to the current states instead of the delayed ones
    fails it."""
    r = np.random.default_rng(1)
    B, H, W, N = 2, 10, 10, 6
    params = {k: v.astype(np.float64) for k, v in M.init_params(r).items()}
    params["b1"] = r.normal(0, 0.1, 128)
    params["w2"] = r.normal(0, 0.1, (128, 16))
    params["b2"] = r.normal(0, 0.05, 16)
    x0 = np.zeros((B, H, W, 16))
    x0[:, 3:7, 3:7] = r.uniform(-1, 1, (B, 4, 4, 16))
    x0[:, 3:7, 3:7, 3] = r.uniform(0.2, 1, (B, 4, 4))
    kxy = M.gradient_kernels(0.0).astype(np.float64)
    target = r.uniform(0, 1, (H, W, 4))
    spec = L.LinkSpec("exp", 1.2, msg_loss=0.2, burst=2.0, drift=0.3, max_delay=3, links=links)
    w = L.Wires(spec, 5, (B, H, W))
    fire = np.stack([w.fire(t) for t in range(N)])

    def run(p, masks=None):
        return core.forward(x0, p, N, fire, kxy, np.float64, masks=masks, wires=w.fresh())

    ro = run(params)
    assert ro.ages.max() >= 2 and ro.ages.min() == 0
    plain = core.forward(x0, params, N, fire, kxy, np.float64)
    assert np.abs(plain.x - ro.x).max() > 1e-3         # the delays change the rollout
    masks = (ro.pre.copy(), ro.keep.copy())
    _, _, grads, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks,
                                         wires=w.fresh())

    def loss(p):
        return core.loss_per_sample(run(p, masks).x, target).mean()

    eps = 1e-6
    for name in ("b2", "w2"):
        fd = np.zeros_like(params[name])
        for i in np.ndindex(fd.shape):
            p = {k: v.copy() for k, v in params.items()}
            p[name][i] += eps
            up = loss(p)
            p[name][i] -= 2 * eps
            fd[i] = (up - loss(p)) / (2 * eps)
        assert np.abs(fd).max() > 1e-3, name
        assert np.linalg.norm(grads[name] - fd) / np.linalg.norm(fd) < 1e-5, name
    eps = 1e-7       # along a direction of all of w1 a wider step crosses ReLU kinks
    for name in ("w1", "b1"):
        for _ in range(6):
            d = r.normal(size=params[name].shape)
            p = {k: v.copy() for k, v in params.items()}
            p[name] += eps * d
            up = loss(p)
            p[name] -= 2 * eps * d
            fd = (up - loss(p)) / (2 * eps)
            got = float(np.sum(grads[name] * d))
            assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)) + 1e-9, (name, got, fd)


def test_only_fired_cells_apply_the_alive_rule():
    """A cell that does not fire keeps its state even if nothing alive is around it
    (it has not looked); a fired one without a living neighbour is zeroed."""
    x0 = np.zeros((1, 5, 5, 16), np.float32)
    x0[0, 2, 2, 4] = 0.7                            # hidden channel only: not alive
    fire = np.zeros((1, 1, 5, 5), bool)
    spec = L.LinkSpec("const", 1.0)
    params = M.init_params(np.random.default_rng(0))
    kept = core.forward(x0, params, 1, fire, M.gradient_kernels(0), wires=L.Wires(spec, 1, (1, 5, 5)))
    assert kept.x[0, 2, 2, 4] == np.float32(0.7)
    fire[0, 0, 2, 2] = True
    gone = core.forward(x0, params, 1, fire, M.gradient_kernels(0), wires=L.Wires(spec, 1, (1, 5, 5)))
    assert not gone.x.any()


def _small(disc_png, iterations: int) -> TrainConfig:
    return TrainConfig(target=str(disc_png), kind="regenerating", iterations=iterations, pad=4, pool=16,
                       seed=3, min_steps=6, max_steps=9, latency_dist="mix", latency=2.0, msg_loss=0.2,
                       burst=3.0, drift=0.1, max_delay=4)


def test_training_with_wires_resumes_exactly_and_records_them(disc_png, tmp_path):
    whole = train(_small(disc_png, 10), tmp_path / "a.npz", stream=io.StringIO())
    calls = {"n": 0}

    def stop_after_6():
        calls["n"] += 1
        return calls["n"] > 6

    out = tmp_path / "b.npz"
    with pytest.raises(KeyboardInterrupt):
        train(_small(disc_png, 10), out, checkpoint_every=3, stream=io.StringIO(), stop=stop_after_6)
    resumed = train(_small(disc_png, 10), out, resume=True, stream=io.StringIO())
    assert resumed.meta["loss_history"] == whole.meta["loss_history"]
    for k in M.PARAM_SHAPES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    t = weights.load(out).meta["training"]
    assert (t["latency_dist"], t["latency"], t["msg_loss"], t["burst"], t["drift"]) == ("mix", 2.0, 0.2, 3.0, 0.1)
    assert "wires" in resumed.meta["origin"]
    plain = train(TrainConfig(target=str(disc_png), kind="regenerating", iterations=10, pad=4, pool=16,
                              seed=3, min_steps=6, max_steps=9), tmp_path / "c.npz", stream=io.StringIO())
    assert plain.meta["loss_history"] != whole.meta["loss_history"]


@pytest.mark.parametrize("argv,needle", [
    (["--latency-dist", "gauss"], "--latency-dist"),
    (["--latency", "-1"], "--latency"),
    (["--latency-dist", "uniform", "--latency", "2", "--latency-high", "1"], "--latency-high"),
    (["--msg-loss", "1.5"], "--msg-loss"),
    (["--burst", "0.5", "--msg-loss", "0.1"], "--burst"),
    (["--burst", "2", "--msg-loss", "0.9"], "--msg-loss"),
    (["--drift", "1.2"], "--drift"),
    (["--max-delay", "0", "--latency", "1"], "--max-delay"),
    (["--clock", "sundial"], "--clock"),
    (["--links", "radio"], "--links"),
])
def test_wire_options_fail_in_one_line(capsys, tmp_path, argv, needle):
    assert main(argv + ["--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nca-train: error: ") and needle in err, err


def test_init_takes_a_shipped_model_by_name(disc_png, tmp_path):
    out = tmp_path / "f.npz"
    assert main(["--target", str(disc_png), "--init", "fixture_blob", "--iterations", "1", "--pad", "4",
                 "--pool", "16", "--min-steps", "4", "--max-steps", "5", "--latency", "1",
                 "--out", str(out)]) == 0
    t = weights.load(out).meta["training"]
    assert t["init"]["model"] == "fixture_blob.npz" and t["latency"] == 1.0


def test_resume_may_change_the_wires_as_a_recorded_stage(disc_png, tmp_path):
    out = tmp_path / "g.npz"
    train(_small(disc_png, 4), out, keep_checkpoint=True, stream=io.StringIO())
    cfg = _small(disc_png, 6)
    cfg.clock, cfg.latency, cfg.wiring = "periodic", 1.0, "relay"
    staged = train(cfg, out, resume=True, stream=io.StringIO())
    stages = staged.meta["training"]["stages"]
    assert [s["from"] for s in stages] == [0, 4]
    assert (stages[0]["clock"], stages[1]["clock"], stages[1]["latency"]) == ("exp", "periodic", 1.0)
    assert (stages[0]["wiring"], stages[1]["wiring"], staged.meta["training"]["wiring"]) == ("direct", "relay", "relay")
