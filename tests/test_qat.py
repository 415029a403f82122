"""Quantisation-aware fine-tuning: the trainer's integer forward equals the golden
model bit for bit, the fine-tuned model records its format and `quantize` builds
exactly what was trained, and a short fine-tuning lowers the fixed-point loss."""
from __future__ import annotations

import io

import numpy as np
import pytest

from codegen import formats as F
from codegen import golden as G
from train.qat import FakeQuant, recorded_format
from codegen.quantize import build_at, quantize
from sim import weights
from sim.assemble import make_backend
from sim.model import gradient_kernels, seed_state
from sim.spec import Params
from train.config import TrainConfig
from train.cli import main
from train.loop import train
from train.bptt import forward


@pytest.mark.parametrize("ef", [False, True], ids=["int8", "error-feedback"])
def test_integer_forward_equals_the_golden_sync_step(blob, ef):
    """Every step of a 60-step rollout (all cells firing, so that the step is the golden
    model's sync step exactly) is bit for bit the golden model's; with error feedback
    the trainer's states carry the 4 more bits (exact in float32) and its cells see the
    int8 part."""
    fq = FakeQuant.for_model(blob)
    fq.error_feedback = ef
    pq = fq.weights(blob.params)
    q = build_at(blob, fq.grad_shift, fq.hidden_shift, fq.fmt.state_fracs, ef_bits=F.EF_BITS if ef else 0)
    kxy = gradient_kernels(0.0)
    x = fq.on_grid(seed_state(24, 24))[None]         # the seed's 1.0 is not on RGBA's grid
    xi = F.quantize_fine(x[0], q.fmt)
    fire = np.ones((1, 1, 24, 24), bool)
    for k in range(60):
        x = forward(x, pq, 1, fire, kxy, rounding=fq).x
        xi = G.sync_step(xi, 0, k, 1.0, *q.arrays(), G.NO_ROTATION)
        np.testing.assert_array_equal(x[0], F.dequantize_fine(xi, q.fmt), err_msg=f"step {k}")
    assert np.count_nonzero((xi[..., 3] >> q.fmt.ef_bits) > F.ALIVE_Q) > 20    # it grew: a real trajectory
    if ef:
        assert np.count_nonzero(xi & 15) > 100                                  # remainders in play


def test_error_feedback_is_recorded_and_needs_qat(disc_png, tmp_path, capsys):
    base = tmp_path / "disc.npz"
    train(TrainConfig(target=str(disc_png), kind="growing", iterations=20, pad=4, seed=0, lr=5e-3,
                      min_steps=8, max_steps=10), base, checkpoint_every=0, stream=io.StringIO())
    assert main(["--init", str(base), "--error-feedback", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--error-feedback" in err and "--qat" in err and len(err.splitlines()) == 1
    tuned = tmp_path / "ef.npz"
    assert main(["--target", str(disc_png), "--kind", "growing", "--iterations", "23", "--pad", "4",
                 "--min-steps", "8", "--max-steps", "10", "--init", str(base), "--qat",
                 "--error-feedback", "--out", str(tuned)]) == 0
    m = weights.load(tuned)
    assert FakeQuant.for_model(m).error_feedback and quantize(m).fmt.ef_bits == F.EF_BITS
    assert quantize(weights.load(base)).fmt.ef_bits == 0


def test_backward_uses_the_dequantised_values(blob):
    """After the integer forward, the stored perception rows and hidden values are the
    integers times their units (what the straight-through backward multiplies)."""
    fq = FakeQuant.for_model(blob)
    fq.weights(blob.params)
    x0 = fq.on_grid(seed_state(16, 16))[None]
    ro = forward(x0, fq.weights(blob.params), 8, np.ones((8, 1, 16, 16), bool),
                 gradient_kernels(0.0), rounding=fq)
    P, h = ro.ws.P[:ro.rows], ro.ws.h[:ro.rows]
    gunit = np.tile(fq.fmt.state_scales / F.SOBEL_DIV, 2) * 2.0 ** fq.grad_shift
    steps = fq.fmt.state_steps
    np.testing.assert_array_equal(np.rint(P[:, :16] * steps) / steps, P[:, :16])
    np.testing.assert_allclose(np.rint(P[:, 16:48] / gunit) * gunit, P[:, 16:48], rtol=0, atol=1e-7)
    unit_h = fq.q.s1 * 2.0 ** fq.hidden_shift
    steps = h / unit_h[None, :]
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
    assert steps.max() <= F.HIDDEN_MAX + 1e-3 and steps.min() >= 0


def _fixed_loss(model, target: np.ndarray, steps: int = 14, seeds=(0, 1, 2)) -> float:
    q = quantize(model)
    out = []
    for s in seeds:
        x = G.sync_run(F.quantize_state(seed_state(*target.shape[:2]), q.fmt), s, steps, q.arrays())
        d = F.dequantize_state(x, q.fmt)[..., :4].astype(np.float64) - target
        out.append(float(np.mean(d * d)))
    return float(np.mean(out))


def test_fine_tuning_lowers_the_fixed_point_loss(disc_png, tmp_path):
    from sim.pictures import load_target, pad_target
    base = tmp_path / "disc.npz"
    cfg = TrainConfig(target=str(disc_png), kind="growing", iterations=150, pad=4, seed=0, lr=5e-3,
                      min_steps=12, max_steps=16)
    train(cfg, base, checkpoint_every=0, stream=io.StringIO())
    tuned = tmp_path / "disc_qat.npz"
    cfg_q = TrainConfig(target=str(disc_png), kind="growing", iterations=100, pad=4, seed=1, lr=2e-3,
                        min_steps=12, max_steps=16, init=str(base), qat=True)
    train(cfg_q, tuned, checkpoint_every=0, stream=io.StringIO())
    m0, m1 = weights.load(base), weights.load(tuned)
    fq = FakeQuant.for_model(m0)
    assert recorded_format(m1.meta) == (fq.grad_shift, fq.hidden_shift, fq.hidden_fracs)
    assert m1.meta["iterations"] == 250 and len(m1.meta["loss_history"]) == 250
    assert m1.meta["training"]["init"]["iterations"] == 150
    # quantize builds exactly what was trained: the recorded format, no bias correction
    q = quantize(m1)
    ref = build_at(m1, fq.grad_shift, fq.hidden_shift, fq.fmt.state_fracs)
    for a, b in zip(q.arrays(), ref.arrays()):
        np.testing.assert_array_equal(a, b)
    # ... and so do the swarm's fixed-point backends, from the model or from its Params
    for src in (m1, Params.from_model(m1), Params.from_model(m1).rotated(0.0)):
        be = make_backend("fixed", src)
        for a, b in zip(be.q.arrays(), ref.arrays()):
            np.testing.assert_array_equal(a, b)
    target = pad_target(load_target(str(disc_png)), 4)
    before, after = _fixed_loss(m0, target), _fixed_loss(m1, target)
    assert after < 0.8 * before, (before, after)        # measured 0.0024 -> 0.0012


def test_qat_needs_a_model_to_start_from(capsys, tmp_path):
    assert main(["--qat", "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init" in err and len(err.splitlines()) == 1
    assert main(["--qat", "--init", str(tmp_path / "none.npz"), "--out", str(tmp_path / "m.npz")]) == 2
    assert "none.npz" in capsys.readouterr().err


def test_recorded_formats_old_and_bad(blob):
    """A fine-tuning recorded before per-channel state formats was trained at Q2.5 and is
    built so; a recorded format the firmware lacks is refused with the reason."""
    import pytest

    from codegen.quantize import QuantizeError
    from sim.weights import Model, default_meta

    old = Model(dict(blob.params), default_meta(training={"qat": {"grad_shift": 2, "hidden_shift": 7}}))
    assert recorded_format(old.meta) == (2, 7, (F.LEGACY_HIDDEN_FRAC,) * 12)
    assert quantize(old).fmt.state_fracs == F.LEGACY_STATE_FRACS
    for bad in ([5] * 11, [5] * 11 + [7], [3] * 12, "Q2.5"):
        m = Model(dict(blob.params), default_meta(training={"qat": {"grad_shift": 2, "hidden_shift": 7,
                                                                    "hidden_fracs": bad}}))
        with pytest.raises(QuantizeError, match="recorded fixed-point format"):
            quantize(m)


def test_distill_needs_qat_and_a_sane_weight(capsys, tmp_path, blob):
    init = tmp_path / "blob.npz"
    weights.save(init, blob)
    for extra, words in ((["--distill", "0.1"], "--qat"), (["--qat", "--distill", "-1"], ">= 0"),
                         (["--qat", "--distill", "nan"], ">= 0")):
        assert main(["--init", str(init), "--out", str(tmp_path / "m.npz"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "--distill" in err and len(err.splitlines()) == 1, err


def test_state_noise_is_uniform_within_the_state_steps(blob):
    """A float step with StateNoise changes each updated cell's state by the float
    change plus a uniform error at most half a width wide per channel, zero-mean,
    and none where the width is 0; with a rounding it is refused."""
    import pytest

    from train.bptt import StateNoise
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(1, 40, 40, 16)).astype(np.float32)
    x0[..., 3] = 1.0
    on = np.ones((1, 1, 40, 40), bool)
    widths = np.zeros(16, np.float32)
    widths[4:] = 1 / 32
    widths[7] = 1 / 16
    args = (x0, blob.params, 1, on, gradient_kernels(0.0), np.float32, None, (on, on))
    clean = forward(*args).x
    err = forward(*args, noise=StateNoise(widths, rng)).x - clean
    assert np.all(err[..., :4] == 0)
    assert np.all(np.abs(err) <= widths / 2 + 1e-6)
    assert np.all(np.abs(err[..., 4:]).max((0, 1, 2)) > 0.45 * widths[4:])    # spread over the width
    assert np.all(np.abs(err[..., 4:].mean((0, 1, 2))) < 0.05 * widths[4:])    # and centred
    with pytest.raises(ValueError, match="noise"):
        forward(*args, rounding=FakeQuant.for_model(blob), noise=StateNoise(widths, rng))


def test_state_noise_on_chosen_samples_leaves_the_others_clean(blob):
    """StateNoise.samples (--noise-on regrowing): the chosen samples get the noise, the
    others step exactly as without it, whichever position they have in the batch."""
    from train.bptt import StateNoise
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=(3, 24, 24, 16)).astype(np.float32)
    x0[..., 3] = 1.0
    on = np.ones((2, 3, 24, 24), bool)
    widths = np.full(16, 1 / 32, np.float32)
    widths[:4] = 0
    args = (x0, blob.params, 2, on, gradient_kernels(0.0), np.float32, None, (on, on))
    clean = forward(*args).x
    noise = StateNoise(widths, rng)
    noise.samples = np.array([False, True, False])
    err = np.abs(forward(*args, noise=noise).x - clean).max((1, 2, 3))
    assert err[0] == 0 and err[2] == 0 and err[1] > 0.4 / 32


def test_state_noise_training_records_the_formats_that_qat_then_keeps(disc_png, tmp_path):
    """A noise fine-tuning trains against the --init model's state formats and records
    them, so that the --qat fine-tuning after it rounds to the same steps; the noise
    reaches the rollouts (the run differs from the same run without it)."""
    base = tmp_path / "disc.npz"
    small = dict(target=str(disc_png), kind="growing", pad=4, min_steps=12, max_steps=16)
    train(TrainConfig(iterations=60, seed=0, lr=5e-3, **small), base, checkpoint_every=0, stream=io.StringIO())
    noisy, plain = tmp_path / "noisy.npz", tmp_path / "plain.npz"
    for out, w in ((noisy, 1.0), (plain, 0.0)):
        train(TrainConfig(iterations=20, seed=1, lr=1e-3, init=str(base), state_noise=w, **small), out,
              checkpoint_every=0, stream=io.StringIO())
    fq = FakeQuant.for_model(weights.load(base))
    m = weights.load(noisy)
    assert recorded_format(m.meta) == (fq.grad_shift, fq.hidden_shift, fq.hidden_fracs)
    assert m.meta["training"]["state_noise"] == 1.0 and "state noise" in m.meta["origin"]
    assert recorded_format(weights.load(plain).meta) is None
    assert not np.array_equal(m.params["w1"], weights.load(plain).params["w1"])
    assert FakeQuant.for_model(m) == fq


def test_state_noise_refuses_bad_settings(capsys, tmp_path, blob):
    init = tmp_path / "blob.npz"
    weights.save(init, blob)
    out = ["--out", str(tmp_path / "m.npz")]
    for extra, words in ((["--state-noise", "1"], "--init"),
                         (["--init", str(init), "--state-noise", "-1"], ">= 0"),
                         (["--init", str(init), "--state-noise", "inf"], ">= 0"),
                         (["--init", str(init), "--qat", "--state-noise", "1"], "--qat"),
                         (["--init", str(init), "--tune-biases", "--state-noise", "1"], "does not train"),
                         (["--init", str(init), "--state-noise", "1", "--noise-on", "regrowing"], "--regrow-visits"),
                         (["--init", str(init), "--regrow-visits", "2", "--noise-on", "regrowing"], "--state-noise")):
        assert main([*extra, *out]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.npz").exists()


def test_state_noise_is_a_setting_a_checkpoint_keeps(disc_png, tmp_path):
    """--resume refuses to change the noise width; a checkpoint written before the
    setting existed resumes as one without noise."""
    import json

    import pytest

    from train.config import CheckpointError
    from train.checkpoint import checkpoint_path
    base, out = tmp_path / "disc.npz", tmp_path / "noisy.npz"
    small = dict(target=str(disc_png), kind="growing", pad=4, min_steps=12, max_steps=16, seed=1)
    train(TrainConfig(iterations=30, lr=5e-3, **small), base, checkpoint_every=0, stream=io.StringIO())
    cfg = TrainConfig(iterations=4, lr=1e-3, init=str(base), state_noise=1.0, **small)
    train(cfg, out, checkpoint_every=0, keep_checkpoint=True, stream=io.StringIO())
    with pytest.raises(CheckpointError, match="state_noise=1.0, this run has state_noise=0.0"):
        train(TrainConfig(iterations=6, lr=1e-3, init=str(base), **small), out, resume=True,
              stream=io.StringIO())
    ck = checkpoint_path(out)
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["config"]["state_noise"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(ck, **arrays)
    m = train(TrainConfig(iterations=6, lr=1e-3, init=str(base), **small), out, resume=True,
              stream=io.StringIO())
    assert m.meta["iterations"] == 30 + 6
