"""Output-bias tuning of a fine-tuned model on its fixed-point swarm (train.tune)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codegen import formats as F
from codegen import golden as G
from codegen.quantize import QuantizeError, quantize
from train.tune import META_KEY, cut_of, rollout_losses, tune_output_biases, with_output_biases
from sim import weights
from sim.model import seed_state
from sim.pictures import load_target
from train.cli import main

ROOT = Path(__file__).resolve().parent.parent
QAT = ROOT / "weights" / "lizard_regenerating_qat.npz"
FLOAT = ROOT / "weights" / "lizard_regenerating.npz"


@pytest.fixture(scope="module")
def qat():
    return weights.load(QAT)


@pytest.fixture(scope="module")
def lizard():
    return load_target("lizard")


def test_float_biases_land_on_the_wanted_integers(qat, tmp_path):
    q = quantize(qat)
    want = q.b2.astype(np.int64) + np.random.default_rng(0).integers(-9, 10, 16)
    m = with_output_biases(qat, want)
    path = tmp_path / "m.npz"
    weights.save(path, m)                                  # float32 on disk
    q2 = quantize(weights.load(path))
    np.testing.assert_array_equal(q2.b2, want)
    for name in ("w1", "b1", "w2", "mult", "tsh"):
        np.testing.assert_array_equal(getattr(q2, name), getattr(q, name))
    assert q2.fmt == q.fmt


def test_only_a_fine_tuned_model_can_be_tuned(qat):
    with pytest.raises(QuantizeError, match="nca-train --qat"):
        with_output_biases(weights.load(FLOAT), np.zeros(16))
    with pytest.raises(QuantizeError, match="16 int16"):
        with_output_biases(qat, np.zeros(15))


def test_rollout_losses_are_the_golden_grids_losses(qat, lizard):
    q = quantize(qat)
    pattern, regrown = [], []
    for seed in (3, 4):
        x = F.quantize_state(seed_state(40, 40), q.fmt)
        got = []
        for k in range(90):
            if k == 60:
                x[cut_of(seed, 60).mask(40, 40)] = 0
            x = G.sync_step(x, seed, k, 0.5, *q.arrays(), G.NO_ROTATION)
            if k + 1 in (40, 60, 80, 90):
                got.append(np.mean((F.dequantize_state(x, q.fmt)[..., :4] - lizard.astype(np.float64)) ** 2))
        pattern.append(np.mean(got[:2]))
        regrown.append(np.mean(got[2:]))
    got = rollout_losses(q, lizard, (3, 4), (40, 60), (20, 30))
    assert got == pytest.approx((np.mean(pattern), np.mean(regrown)), rel=1e-12)
    assert rollout_losses(q, lizard, (3, 4), (40, 60), (20, 30), workers=1) == got
    assert rollout_losses(q, lizard, (3, 4), (40, 60), ())[1] == 0.0
    cuts = {cut_of(s, 600).args for s in range(50)}
    assert len(cuts) == 50 and all(14 <= cx <= 26 and 14 <= cy <= 26 and 6 <= r <= 9 for cx, cy, r in cuts)


def test_rollout_losses_stop_once_the_pattern_cannot_win(qat, lizard):
    q = quantize(qat)
    args = (q, lizard, (3, 4, 5), (40, 60), (20, 30))
    full = rollout_losses(*args)
    assert rollout_losses(*args, pattern_limit=full[0] * 1.01) == full
    lower, regrown = rollout_losses(*args, pattern_limit=full[0] * 0.99)
    assert np.isnan(regrown) and full[0] * 0.99 <= lower <= full[0]
    one_seed = rollout_losses(q, lizard, (3,), (40, 60), (20, 30))[0]
    # seed 3 alone already puts the mean of three above a third of its loss: 4 and 5 skipped
    lower, _ = rollout_losses(*args, pattern_limit=one_seed / 3 * 0.5, workers=1)
    assert lower == pytest.approx(one_seed / 3, rel=1e-12)


def test_pruning_leaves_the_search_unchanged(qat, lizard):
    """The shipped model with two biases pushed off, searched with and without pruning:
    the same changes, losses and sweeps (some candidates win, most lose)."""
    bad = quantize(qat).b2.astype(np.int64)
    bad[F.ALPHA] += 6
    bad[0] -= 3
    m = with_output_biases(qat, bad)
    kw = dict(sweeps=2, seeds=(1000, 1001), checkpoints=(200, 300), regrow=(100,), deltas=(-3, 3, 6, -6),
              channels=(0, F.ALPHA, 5))
    pruned = tune_output_biases(m, lizard, **kw)[1]
    full = tune_output_biases(m, lizard, prune=False, **kw)[1]
    assert pruned == full
    assert pruned["b2_changes"], pruned


def test_a_bias_that_slows_regrowth_is_not_taken(qat, lizard):
    """The rule on fake losses: b2[0] + 1 sharpens the pattern but doubles the regrowth
    loss (refused); b2[0] - 1 sharpens it less and keeps regrowth within 10% (taken)."""
    base = quantize(qat).b2.astype(np.int64)

    def fake(q, target, seeds, checkpoints, regrow, b2, workers, pattern_limit):
        d = int(b2[0] - base[0]) if np.array_equal(b2[1:], base[1:]) else 99
        return {0: (1.0, 1.0), 1: (0.5, 2.0), -1: (0.8, 1.05)}.get(d, (2.0, 1.0))

    _, entry = tune_output_biases(qat, lizard, sweeps=2, deltas=(1, -1), channels=(0,), losses=fake)
    assert entry["b2_changes"] == {"0": -1}
    assert (entry["loss_after"], entry["regrow_after"]) == (0.8, 1.05)


def test_search_puts_back_a_disturbed_bias(qat, lizard):
    """Alpha's output bias pushed 8 accumulator steps up (~2 state steps per update) spoils
    the pattern; the search over that channel finds the way back and stops."""
    q = quantize(qat)
    bad = q.b2.astype(np.int64)
    bad[F.ALPHA] += 8
    m = with_output_biases(qat, bad)
    tuned, entry = tune_output_biases(m, lizard, sweeps=3, seeds=(1000, 1001), checkpoints=(300,),
                                      regrow=(), deltas=(-8, 8), channels=(F.ALPHA,))
    assert entry["b2_changes"] == {str(F.ALPHA): -8}
    assert entry["sweeps"] == 2                         # the second sweep changed nothing
    assert entry["loss_after"] < 0.5 * entry["loss_before"], entry
    np.testing.assert_array_equal(quantize(tuned).b2, q.b2)
    assert tuned.meta[META_KEY] == entry and tuned.meta["training"] == qat.meta["training"]


def test_shipped_model_was_tuned(qat):
    entry = qat.meta[META_KEY]
    assert entry["loss_after"] < entry["loss_before"]
    assert entry["regrow_after"] <= 1.1 * entry["regrow_before"]
    assert not set(entry["seeds"]) & set(range(5))      # not the fidelity test's seeds


def test_tune_biases_cli_errors(capsys, tmp_path, disc_png):
    out = tmp_path / "m.npz"
    cases = (([], "--init"), (["--init", str(FLOAT)], "nca-train --qat"),
             (["--init", str(QAT), "--target", str(disc_png)], "another picture"),
             (["--init", str(QAT), "--qat"], "does not train"),
             (["--init", str(QAT), "--tune-sweeps", "0"], ">= 1"),
             (["--init", str(tmp_path / "none.npz")], "none.npz"))
    for extra, words in cases:
        assert main(["--tune-biases", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not out.exists()
