"""The trainer (train/bptt.py, train/cli.py): exact gradients, the reference's
forward semantics, that it learns, exact resume, and one-line CLI errors."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import model as M
from sim import rng as R
from train import bptt as core
from train import links as L
from sim import weights
from sim.spec import Params
from sim.grid import run_sync
from train.config import TrainConfig
from train.checkpoint import checkpoint_path
from train.cli import main
from train.cuts import (apply_cut, cut_in_groups, make_circle_masks, make_damage, make_half_masks, path_cells,
                        pick_reseed_and_cuts)
from train.loop import train

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ gradients

def _random_problem(r: np.random.Generator, B: int, H: int, W: int, N: int):
    """float64 parameters with live second layers, a 4x4 patch of random live cells,
    fire masks, kernels, a random target and the rollout: for gradient checks."""
    params = {k: v.astype(np.float64) for k, v in M.init_params(r).items()}
    params["b1"] = r.normal(0, 0.1, 128)
    params["w2"] = r.normal(0, 0.1, (128, 16))
    params["b2"] = r.normal(0, 0.05, 16)
    x0 = np.zeros((B, H, W, 16))
    x0[:, 4:8, 4:8] = r.uniform(-1, 1, (B, 4, 4, 16))
    x0[:, 4:8, 4:8, 3] = r.uniform(0.2, 1, (B, 4, 4))
    fire = r.random((N, B, H, W)) <= 0.5
    kxy = M.gradient_kernels(0.0).astype(np.float64)
    target = r.uniform(0, 1, (H, W, 4))
    return params, x0, fire, kxy, target, core.forward(x0, params, N, fire, kxy, np.float64)


def test_gradients_equal_central_differences():
    """BPTT through 6 steps in float64 on 12x12 (fire and alive masks held fixed)
    against central differences of every entry of every tensor."""
    r = np.random.default_rng(0)
    B, H, W, N = 1, 12, 12, 6
    params, x0, fire, kxy, target, ro = _random_problem(r, B, H, W, N)
    masks = (ro.pre.copy(), ro.keep.copy())
    assert 0 < ro.keep[-1].sum() < H * W          # some cells alive, some dead at the end
    _, _, grads, rows = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks)
    assert rows > 0

    def loss(p):
        return core.loss_per_sample(core.forward(x0, p, N, fire, kxy, np.float64, masks=masks).x,
                                    target).mean()

    eps = 1e-6
    for name in ("b2", "w2", "b1", "w1"):
        fd = np.zeros_like(params[name])
        for i in np.ndindex(fd.shape):
            p = {k: v.copy() for k, v in params.items()}
            p[name][i] += eps
            up = loss(p)
            p[name][i] -= 2 * eps
            fd[i] = (up - loss(p)) / (2 * eps)
        g = grads[name]
        assert np.abs(fd).max() > 1e-3, name        # the tensor really gets gradient
        norm_err = np.linalg.norm(g - fd) / np.linalg.norm(fd)
        big = np.abs(fd) > 1e-3 * np.abs(fd).max()
        elem_err = np.max(np.abs(g - fd)[big] / np.abs(fd[big]))
        assert norm_err < 1e-4 and elem_err < 1e-4, (name, norm_err, elem_err)


def _assert_directional_gradients(loss, params, grads, r: np.random.Generator, eps: float = 1e-6) -> None:
    """grads against central differences of loss(params) along 3 random directions."""
    for _ in range(3):
        d = {k: r.normal(0, 1, v.shape) for k, v in params.items()}
        fd = (loss({k: params[k] + eps * d[k] for k in params})
              - loss({k: params[k] - eps * d[k] for k in params})) / (2 * eps)
        an = sum(float(np.sum(grads[k] * d[k])) for k in params)
        assert abs(an - fd) < 1e-5 * abs(fd) and abs(fd) > 1e-4, (an, fd)


def test_distillation_gradient_and_its_masks():
    """The teacher term: its gradient equals central differences of picture loss +
    w * mean((x_N - x_teacher)^2) along random directions; a teacher equal to the model
    adds nothing; with a Generator, the teacher runs on the very fire masks the model
    draws (the same generator state gives the same masks)."""
    r = np.random.default_rng(3)
    B, H, W, N = 2, 10, 10, 5
    params, x0, fire, kxy, target, ro = _random_problem(r, B, H, W, N)
    masks = (ro.pre.copy(), ro.keep.copy())
    teacher = {k: v + r.normal(0, 0.05, v.shape) for k, v in params.items()}
    w = 0.7
    _, _, grads, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks,
                                         teacher=teacher, teacher_weight=w)
    xt = core.forward(x0, teacher, N, fire, kxy, np.float64, masks=masks).x

    def loss(p):
        x = core.forward(x0, p, N, fire, kxy, np.float64, masks=masks).x
        return core.loss_per_sample(x, target).mean() + w * np.mean((x - xt) ** 2)

    _assert_directional_gradients(loss, params, grads, r)
    # a teacher equal to the model: no pull; the Generator path draws the masks it would draw
    _, x1, g1, _ = core.loss_and_grads(x0, target, params, N, np.random.default_rng(9), kxy, np.float64)
    _, x2, g2, _ = core.loss_and_grads(x0, target, params, N, np.random.default_rng(9), kxy, np.float64,
                                       teacher=params, teacher_weight=w)
    np.testing.assert_array_equal(x1, x2)
    for k in params:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_state_range_gradient_and_no_pull_inside_the_range():
    """The range term: its gradient equals central differences of picture loss +
    w * mean(excess^2) over the hidden channels beyond +-bound; RGBA is left alone,
    and with every hidden value inside the bound it adds nothing."""
    r = np.random.default_rng(5)
    B, H, W, N = 2, 10, 10, 5
    params, x0, fire, kxy, target, ro = _random_problem(r, B, H, W, N)
    masks = (ro.pre.copy(), ro.keep.copy())
    hidden = ro.x[..., M.ALPHA + 1:]
    bound = float(np.quantile(np.abs(hidden[hidden != 0]), 0.5))   # half the live hidden values beyond it
    w = 0.9
    _, _, grads, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks,
                                         range_weight=w, hidden_range=bound)

    def loss(p):
        x = core.forward(x0, p, N, fire, kxy, np.float64, masks=masks).x
        ex = x[..., M.ALPHA + 1:] - np.clip(x[..., M.ALPHA + 1:], -bound, bound)
        return core.loss_per_sample(x, target).mean() + w * np.sum(ex ** 2) / x.size

    _assert_directional_gradients(loss, params, grads, r)
    wide = float(np.abs(hidden).max()) + 1.0
    _, _, g0, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks)
    _, _, g1, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks,
                                      range_weight=w, hidden_range=wide)
    for k in params:
        np.testing.assert_array_equal(g0[k], g1[k])
        assert not np.array_equal(g0[k], grads[k]), k


def test_path_loss_gradient_with_and_without_wires():
    """The path term: its gradient equals central differences of picture loss +
    w * (mean over every 2nd earlier state of the masked picture loss), on the plain
    grid and through delayed, lossy wires; with a mask of nothing it adds nothing."""
    r = np.random.default_rng(7)
    B, H, W, N = 2, 10, 10, 7
    params, x0, fire, kxy, target, _ = _random_problem(r, B, H, W, N)
    mask = r.random((B, H, W)) < 0.6
    w, every = 1.3, 2
    spec = L.LinkSpec("exp", 1.2, msg_loss=0.2, burst=2.0, drift=0.3, max_delay=3)
    wired = L.Wires(spec, 5, (B, H, W))
    for wires in (None, wired):
        fresh = (lambda: None) if wires is None else wires.fresh
        fr = fire if wires is None else np.stack([wires.fire(t) for t in range(N)])
        ro = core.forward(x0, params, N, fr, kxy, np.float64, wires=fresh(), snap_every=every)
        assert sorted(ro.snaps) == [2, 4, 6]
        masks = (ro.pre.copy(), ro.keep.copy())
        _, _, grads, _ = core.loss_and_grads(x0, target, params, N, fr, kxy, np.float64, masks=masks,
                                             wires=fresh(), path_weight=w, path_every=every, path_mask=mask)

        def loss(p):
            ro = core.forward(x0, p, N, fr, kxy, np.float64, masks=masks, wires=fresh(), snap_every=every)
            along = np.mean([np.sum(((v - target) ** 2) * mask[..., None]) / (B * H * W * 4)
                             for v in ro.snaps.values()])
            return core.loss_per_sample(ro.x, target).mean() + w * along

        _assert_directional_gradients(loss, params, grads, r, eps=1e-8)   # ReLU kinks lie within 1e-6
        _, _, g0, _ = core.loss_and_grads(x0, target, params, N, fr, kxy, np.float64, masks=masks, wires=fresh())
        _, _, g1, _ = core.loss_and_grads(x0, target, params, N, fr, kxy, np.float64, masks=masks, wires=fresh(),
                                          path_weight=w, path_every=every, path_mask=np.zeros_like(mask))
        for k in params:
            np.testing.assert_array_equal(g0[k], g1[k])
            assert not np.array_equal(g0[k], grads[k]), k


def test_float32_gradients_match_float64():
    """The training dtype gives the same gradients as the float64 path, to float32 accuracy."""
    r = np.random.default_rng(3)
    B, H, W, N = 2, 16, 16, 10
    params = M.init_params(r)
    params["w2"] = r.normal(0, 0.02, (128, 16)).astype(np.float32)
    x0 = M.seed_state(H, W, B)
    x0[:, 6:10, 6:10, 3:] = 0.5
    fire = r.random((N, B, H, W)) <= 0.5
    kxy = M.gradient_kernels(30.0)
    target = r.uniform(0, 1, (H, W, 4)).astype(np.float32)
    ro64 = core.forward(x0, params, N, fire, kxy, np.float64)
    masks = (ro64.pre.copy(), ro64.keep.copy())
    _, _, g64, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float64, masks=masks)
    _, _, g32, _ = core.loss_and_grads(x0, target, params, N, fire, kxy, np.float32, masks=masks)
    for k in M.PARAM_SHAPES:
        assert g32[k].dtype == np.float32
        assert np.linalg.norm(g32[k] - g64[k]) <= 1e-4 * np.linalg.norm(g64[k]), k


# ------------------------------------------------------------------ forward semantics

def test_forward_equals_reference_run_sync(blob):
    """Same fire masks (the counter generator's) -> the same states as sim.grid."""
    B, H, W, N = 3, 32, 32, 40
    seeds = [5, 6, 7]
    x0 = M.seed_state(H, W, B)
    fire = np.stack([np.stack([R.fire_mask(s, t, H, W, M.FIRE_RATE) for s in seeds]) for t in range(N)])
    ro = core.forward(x0, blob.params, N, fire, M.gradient_kernels(0.0))
    ref = run_sync(x0, Params.from_model(blob), N, seed=np.array(seeds))
    assert (ref[..., 3] > 0.1).sum() > 100
    assert np.array_equal(ro.x[..., 3] > 0.1, ref[..., 3] > 0.1)
    np.testing.assert_allclose(ro.x, ref, atol=1e-5, rtol=0)


def test_forward_with_rotation_equals_reference(blob):
    B, H, W, N = 1, 24, 24, 20
    x0 = M.seed_state(H, W, B)
    fire = np.stack([R.fire_mask(9, t, H, W, M.FIRE_RATE)[None] for t in range(N)])
    ro = core.forward(x0, blob.params, N, fire, M.gradient_kernels(37.0))
    ref = run_sync(x0, Params.from_model(blob, 37.0), N, seed=9)
    np.testing.assert_allclose(ro.x, ref, atol=1e-5, rtol=0)


def test_circle_masks_follow_the_notebook():
    m = make_circle_masks(np.random.default_rng(0), 200, 72, 72)
    assert m.shape == (200, 72, 72) and m.dtype == np.bool_
    area = m.sum(axis=(1, 2))
    r_px = np.sqrt(area / np.pi)
    assert r_px.min() > 3.6 * 0.8 and r_px.max() < 14.2 * 1.1     # radius 0.1..0.4 of 36 px
    assert np.all(area > 0)


def test_straight_cuts_take_a_third_to_a_half_beyond_a_line():
    m = make_half_masks(np.random.default_rng(0), 300, 72, 72)
    frac = m.mean(axis=(1, 2))
    assert frac.min() > 0.25 and frac.max() < 0.65
    for k in range(0, 300, 37):   # a half-plane: every row and every column is cut in one piece
        for line in (*m[k], *m[k].T):
            assert np.count_nonzero(np.diff(line.astype(np.int8))) <= 1


def test_mixed_damage_is_circles_and_straight_cuts_circle_keeps_the_paper_stream():
    gen = np.random.default_rng(3)
    masks, moves = make_damage(gen, "circle", 40, 72, 72)
    np.testing.assert_array_equal(masks, make_circle_masks(np.random.default_rng(3), 40, 72, 72))
    assert not moves.any()
    ref = np.random.default_rng(3)
    make_circle_masks(ref, 40, 72, 72)
    assert gen.random() == ref.random()   # no draw more than the paper's
    circles = make_circle_masks(np.random.default_rng(5), 400, 72, 72)
    mixed, moves = make_damage(np.random.default_rng(5), "mixed", 400, 72, 72)
    same = np.all(mixed == circles, axis=(1, 2))
    assert 150 < np.count_nonzero(same) < 250     # about half stay the paper's circles
    assert mixed[~same].mean(axis=(1, 2)).min() > 0.25   # the rest are the big straight cuts
    assert not moves.any()


def test_slips_move_a_small_disc_by_one_cell_and_wipe_nothing():
    """--damage-shapes slip: a third of the cuts are discs of radius 3.6-9 cells whose
    tissue is moved by one of the eight one-cell moves; the rest are the mixed cuts.
    only-slips: every cut such a disc."""
    circles = make_circle_masks(np.random.default_rng(5), 600, 72, 72)
    masks, moves = make_damage(np.random.default_rng(5), "slip", 600, 72, 72)
    slip = moves.any(axis=1)
    circle = ~slip & np.all(masks == circles, axis=(1, 2))
    assert 150 < slip.sum() < 250 and 150 < circle.sum() < 250
    assert masks[~slip & ~circle].mean(axis=(1, 2)).min() > 0.25     # straight cuts
    r_px = np.sqrt(masks[slip].sum(axis=(1, 2)) / np.pi)
    assert r_px.min() > 3.6 * 0.8 and r_px.max() < 9.0 * 1.1
    assert np.abs(moves).max() == 1 and {tuple(m) for m in moves[slip]} == {
        (a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)}
    only, moves = make_damage(np.random.default_rng(5), "only-slips", 300, 72, 72)
    assert np.all(np.abs(moves).max(axis=1) == 1)
    r_px = np.sqrt(only.sum(axis=(1, 2)) / np.pi)
    assert r_px.min() > 3.6 * 0.8 and r_px.max() < 9.0 * 1.1
    x = np.random.default_rng(1).normal(size=(12, 12, 16)).astype(np.float32)
    disc = np.zeros((12, 12), bool)
    disc[4:8, 3:7] = True
    slipped = apply_cut(x, disc, np.array([-1, 0]))
    np.testing.assert_array_equal(slipped[~disc], x[~disc])                  # outside: untouched
    np.testing.assert_array_equal(slipped[4:8, 3:7], x[5:9, 3:7])            # inside: the row below
    np.testing.assert_array_equal(apply_cut(x, disc, np.zeros(2, np.int64)), x * (~disc)[..., None])


# ------------------------------------------------------------------ training

def test_quick_training_reduces_loss(disc_png, tmp_path):
    cfg = TrainConfig(target=str(disc_png), kind="growing", iterations=150, pad=4, seed=0, lr=5e-3,
                      min_steps=12, max_steps=16)
    out = tmp_path / "disc.npz"
    train(cfg, out, checkpoint_every=0, stream=io.StringIO())
    m = weights.load(out)
    h = np.array(m.meta["loss_history"])
    assert len(h) == 150 and m.meta["iterations"] == 150
    assert m.meta["kind"] == "growing" and m.meta["origin"] == "nca-train"
    factor = h[:10].mean() / h[-10:].mean()
    assert factor >= 3.0, factor                     # measured 4.8x for seed 0
    assert (tmp_path / "curves" / "disc_loss.png").is_file()
    assert (tmp_path / "curves" / "disc_pool.png").is_file()
    assert not checkpoint_path(out).exists()         # removed once the model is saved


def _small(disc_png, iterations: int) -> TrainConfig:
    return TrainConfig(target=str(disc_png), kind="regenerating", iterations=iterations, pad=4,
                       pool=16, seed=3, min_steps=6, max_steps=9)


def test_resume_after_interrupt_equals_uninterrupted_run(disc_png, tmp_path):
    whole = train(_small(disc_png, 14), tmp_path / "a.npz", stream=io.StringIO())
    calls = {"n": 0}

    def stop_after_8():
        calls["n"] += 1
        return calls["n"] > 8

    out = tmp_path / "b.npz"
    with pytest.raises(KeyboardInterrupt):
        train(_small(disc_png, 14), out, checkpoint_every=5, stream=io.StringIO(), stop=stop_after_8)
    assert checkpoint_path(out).is_file() and not out.exists()
    resumed = train(_small(disc_png, 14), out, resume=True, stream=io.StringIO())
    assert resumed.meta["iterations"] == 14
    assert resumed.meta["loss_history"] == whole.meta["loss_history"]
    for k in M.PARAM_SHAPES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])


def test_resume_with_a_new_schedule_is_a_recorded_stage(disc_png, tmp_path):
    """--resume may lower the learning rate or change --damage-n (fine-tuning in stages):
    the steps after the change use it, and the model records when each stage began."""
    out = tmp_path / "s.npz"
    train(_small(disc_png, 6), out, keep_checkpoint=True, stream=io.StringIO())
    cfg = _small(disc_png, 10)
    cfg.lr_after = cfg.lr = 1e-5
    cfg.damage_n = 1
    cfg.damage_shapes = "mixed"
    staged = train(cfg, out, resume=True, stream=io.StringIO())
    whole = train(_small(disc_png, 10), tmp_path / "w.npz", stream=io.StringIO())
    assert staged.meta["loss_history"][:6] == whole.meta["loss_history"][:6]
    assert not np.array_equal(staged.params["w2"], whole.params["w2"])
    stages = staged.meta["training"]["stages"]
    assert [s["from"] for s in stages] == [0, 6]
    assert stages[1]["lr"] == 1e-5 and stages[1]["damage_n"] == 1 and stages[0]["damage_n"] == 3
    assert stages[0]["damage_shapes"] == "circle" and stages[1]["damage_shapes"] == "mixed"
    assert "stages" not in whole.meta["training"]


def test_reseed_and_cuts_spare_the_samples_still_regrowing():
    """Without --regrow-visits (nothing regrowing) it is the paper's recipe: the worst is
    reseeded, the n best are cut. A sample still regrowing is neither reseeded nor cut,
    whatever its loss; when every sample regrows, the worst is reseeded and none is cut."""
    r, cut = pick_reseed_and_cuts(np.zeros(8, np.int32), 3)
    assert r == 0 and cut.tolist() == [5, 6, 7]
    left = np.array([2, 0, 0, 1, 0, 0, 0, 3], np.int32)
    r, cut = pick_reseed_and_cuts(left, 3)
    assert r == 1 and cut.tolist() == [4, 5, 6]
    r, cut = pick_reseed_and_cuts(np.array([1, 1, 0], np.int32), 2)
    assert r == 2 and cut.size == 0
    r, cut = pick_reseed_and_cuts(np.full(4, 2, np.int32), 3)
    assert r == 0 and cut.size == 0


def test_regrowing_samples_are_kept_and_resume_exactly(disc_png, tmp_path):
    """--regrow-visits K: a cut sample stays in the pool for its next K visits (the counter is
    in the checkpoint), an interrupted run resumes bit for bit, and the trained weights differ
    from the paper's recipe's."""
    def cfg(n):
        c = _small(disc_png, n)
        c.regrow_visits = 3
        return c
    whole = train(cfg(14), tmp_path / "a.npz", keep_checkpoint=True, stream=io.StringIO())
    z = np.load(checkpoint_path(tmp_path / "a.npz"))
    left = z["pool_regrowing"]
    assert left.shape == (16,) and left.max() <= 3 and (left > 0).any()
    calls = {"n": 0}

    def stop_after_8():
        calls["n"] += 1
        return calls["n"] > 8

    out = tmp_path / "b.npz"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(14), out, checkpoint_every=5, stream=io.StringIO(), stop=stop_after_8)
    resumed = train(cfg(14), out, resume=True, stream=io.StringIO())
    assert resumed.meta["loss_history"] == whole.meta["loss_history"]
    for k in M.PARAM_SHAPES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    paper = train(_small(disc_png, 14), tmp_path / "p.npz", stream=io.StringIO())
    assert paper.meta["loss_history"][:1] == whole.meta["loss_history"][:1]   # the same first batch
    assert not np.array_equal(paper.params["w2"], whole.params["w2"])
    assert whole.meta["training"]["regrow_visits"] == 3


def test_cut_copies_run_one_wound_several_times():
    """--cut-copies K: each group of K cut samples starts from its first sample's state
    with that group's one cut; K = 1 is the paper's one cut per sample, bit for bit."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 10, 10, 16)).astype(np.float32)
    dmg = np.zeros((2, 10, 10), bool)
    dmg[0, :5] = True
    dmg[1, :, 7:] = True
    cut = np.array([1, 2, 4, 5])
    forks = x.copy()
    cut_in_groups(forks, cut, dmg, 2)
    np.testing.assert_array_equal(forks[2], forks[1])
    np.testing.assert_array_equal(forks[5], forks[4])
    np.testing.assert_array_equal(forks[1], x[1] * (~dmg[0])[..., None])
    np.testing.assert_array_equal(forks[4], x[4] * (~dmg[1])[..., None])
    np.testing.assert_array_equal(forks[[0, 3]], x[[0, 3]])
    one, paper = x.copy(), x.copy()
    masks = np.stack([dmg[0], dmg[1], dmg[0], dmg[1]])
    cut_in_groups(one, cut, masks, 1)
    paper[cut] *= (~masks)[..., None]
    assert one.tobytes() == paper.tobytes()


def test_cut_copies_train_and_are_a_stage(disc_png, tmp_path):
    """A run with --cut-copies trains differently from one cut per sample, and a resumed
    run may switch to it (a recorded stage)."""
    out = tmp_path / "a.npz"
    plain = train(_small(disc_png, 6), out, keep_checkpoint=True, stream=io.StringIO())
    cfg = _small(disc_png, 6)
    cfg.damage_n, cfg.cut_copies = 2, 3
    forked = train(cfg, tmp_path / "f.npz", stream=io.StringIO())
    assert not np.array_equal(forked.params["w2"], plain.params["w2"])
    cfg.iterations = 9
    staged = train(cfg, out, resume=True, stream=io.StringIO())
    stages = staged.meta["training"]["stages"]
    assert [(s["from"], s["cut_copies"]) for s in stages] == [(0, 1), (6, 3)]


def test_noise_on_regrowing_is_a_recorded_stage_of_its_own(disc_png, tmp_path):
    """--noise-on regrowing trains differently from the noise on every sample, is
    recorded, and is a schedule setting: a run may switch to it on --resume."""
    base = tmp_path / "base.npz"
    train(_small(disc_png, 6), base, stream=io.StringIO())

    def cfg(n, on):
        c = _small(disc_png, n)
        c.init, c.state_noise, c.regrow_visits, c.noise_on = str(base), 2.0, 2, on
        return c
    every = train(cfg(8, "all"), tmp_path / "a.npz", keep_checkpoint=True, stream=io.StringIO())
    cut = train(cfg(8, "regrowing"), tmp_path / "r.npz", stream=io.StringIO())
    assert cut.meta["training"]["noise_on"] == "regrowing" and every.meta["training"]["noise_on"] == "all"
    assert not np.array_equal(cut.params["w2"], every.params["w2"])
    staged = train(cfg(10, "regrowing"), tmp_path / "a.npz", resume=True, stream=io.StringIO())
    stages = staged.meta["training"]["stages"]
    assert [(s["from"], s["noise_on"]) for s in stages] == [(0, "all"), (8, "regrowing")]


def test_path_cells_spare_the_seed_and_the_cuts():
    """--path-loss compares no cell of the new seed, a cut sample's cells outside its
    cut (each group of --cut-copies its group's cut), every cell of the others."""
    dmg = np.zeros((2, 6, 6), bool)
    dmg[0, :3] = True
    dmg[1, :, 4:] = True
    cells = path_cells(6, 6, 6, 0, np.array([2, 3, 5]), dmg, 2)
    assert not cells[0].any() and cells[1].all() and cells[4].all()
    np.testing.assert_array_equal(cells[2], ~dmg[0])
    np.testing.assert_array_equal(cells[3], ~dmg[0])
    np.testing.assert_array_equal(cells[5], ~dmg[1])
    assert path_cells(3, 4, 4, 2, np.array([], np.int64), None, 1)[:2].all()


def test_path_loss_trains_and_is_a_stage(disc_png, tmp_path):
    """A run with --path-loss trains differently from the end-only loss, its first
    loss (the end picture's) is the same, and a resumed run may switch to it."""
    out = tmp_path / "a.npz"
    plain = train(_small(disc_png, 6), out, keep_checkpoint=True, stream=io.StringIO())
    cfg = _small(disc_png, 6)
    cfg.path_loss, cfg.path_every = 1.0, 3
    held = train(cfg, tmp_path / "p.npz", stream=io.StringIO())
    assert held.meta["loss_history"][:1] == plain.meta["loss_history"][:1]
    assert not np.array_equal(held.params["w2"], plain.params["w2"])
    cfg.iterations = 9
    staged = train(cfg, out, resume=True, stream=io.StringIO())
    stages = staged.meta["training"]["stages"]
    assert [(s["from"], s["path_loss"], s["path_every"]) for s in stages] == [(0, 0.0, 10), (6, 1.0, 3)]


def test_cli_resume_extends_a_finished_run(disc_png, tmp_path):
    out = tmp_path / "c.npz"
    args = ["--target", str(disc_png), "--kind", "persistent", "--pad", "4", "--pool", "16",
            "--seed", "1", "--min-steps", "6", "--max-steps", "8", "--out", str(out)]
    assert main(args + ["--iterations", "6", "--keep-checkpoint"]) == 0
    assert main(args + ["--iterations", "10", "--resume"]) == 0
    straight = tmp_path / "d.npz"
    assert main(args[:-1] + [str(straight), "--iterations", "10"]) == 0
    a, b = weights.load(out), weights.load(straight)
    assert a.meta["iterations"] == 10 and a.meta["loss_history"] == b.meta["loss_history"]
    for k in M.PARAM_SHAPES:
        np.testing.assert_array_equal(a.params[k], b.params[k])


# ------------------------------------------------------------------ CLI errors

def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nca-train: error: "), err
    return err


def test_cli_errors_are_one_line_exit_2(capsys, tmp_path, disc_png):
    out = ["--out", str(tmp_path / "m.npz")]
    assert "unknown target" in _one_line_error(capsys, ["--target", "notanemoji"] + out)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "bad.png" in _one_line_error(capsys, ["--target", str(bad)] + out)
    assert "--iterations" in _one_line_error(capsys, ["--iterations", "0"] + out)
    assert "--regrow-visits" in _one_line_error(capsys, ["--regrow-visits", "-1"] + out)
    assert "--kind regenerating" in _one_line_error(capsys, ["--regrow-visits", "2", "--kind", "persistent"] + out)
    assert "--damage-shapes" in _one_line_error(capsys, ["--damage-shapes", "square"] + out)
    assert "--state-range" in _one_line_error(capsys, ["--state-range", "-1"] + out)
    assert "--cut-copies" in _one_line_error(capsys, ["--cut-copies", "0"] + out)
    assert "--cut-copies" in _one_line_error(capsys, ["--damage-n", "3", "--cut-copies", "3"] + out)
    assert "--kind regenerating" in _one_line_error(capsys, ["--cut-copies", "2", "--kind", "persistent"] + out)
    assert "--path-loss" in _one_line_error(capsys, ["--path-loss", "-1"] + out)
    assert "--path-every" in _one_line_error(capsys, ["--path-loss", "1", "--path-every", "0"] + out)
    assert "a pool" in _one_line_error(capsys, ["--path-loss", "1", "--kind", "growing"] + out)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _one_line_error(capsys, ["--out", str(blocker / "m.npz")])
    _one_line_error(capsys, ["--kind", "sideways"] + out)
    ck = checkpoint_path(tmp_path / "m.npz")
    ck.write_bytes(b"PK\x03\x04 not a zip")
    assert "checkpoint" in _one_line_error(
        capsys, ["--target", str(disc_png), "--pad", "4", "--resume"] + out)
    assert "checkpoint" in _one_line_error(
        capsys, ["--target", str(disc_png), "--pad", "4", "--resume", "--out", str(tmp_path / "n.npz")])


def test_module_entry_point_reports_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "train.cli", "--iterations", "-3",
                        "--out", str(tmp_path / "x.npz")], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--iterations" in r.stderr
    assert not (tmp_path / "x.npz").exists()
