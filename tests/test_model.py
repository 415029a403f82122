"""sim/model.py: shapes, kernels, perception order, seed and alive rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sim import model as M


def xcorr(img, k):
    """Cross-correlation (no flip) of a 2-D float64 image with a 3x3 kernel, valid region."""
    h, w = img.shape
    out = np.zeros((h - 2, w - 2))
    for y in range(h - 2):
        for x in range(w - 2):
            out[y, x] = sum(k[i, j] * img[y + i, x + j] for i in range(3) for j in range(3))
    return out


RAMP_RIGHT = np.tile(np.arange(6.0), (6, 1))     # value grows with x (to the right)
RAMP_DOWN = RAMP_RIGHT.T.copy()                    # value grows with y (downwards)


# ---------------------------------------------------------------- parameters
def test_parameter_count():
    assert M.N_PARAMS == 8336
    assert sum(v.size for v in M.empty_params().values()) == 8336
    assert M.PARAM_SHAPES == {"w1": (48, 128), "b1": (128,), "w2": (128, 16), "b2": (16,)}
    assert M.PERCEPTION == 48 and M.CHANNELS == 16 and M.HIDDEN == 128


def test_init_params_paper_initialisation():
    p = M.init_params(np.random.default_rng(0))
    assert all(v.dtype == np.float32 for v in p.values())
    assert not p["b1"].any() and not p["w2"].any() and not p["b2"].any()
    lim = math.sqrt(6.0 / (48 + 128))
    assert np.abs(p["w1"]).max() <= lim and p["w1"].std() > lim / 3


# ---------------------------------------------------------------- kernels
def test_sobel_values():
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8.0
    np.testing.assert_array_equal(M.SOBEL_X, sx)
    np.testing.assert_array_equal(M.SOBEL_Y, sx.T)
    np.testing.assert_array_equal(M.IDENTITY, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_sobel_is_cross_correlation_x_right_y_down():
    # /8 normalisation: a unit-slope ramp gives a gradient of exactly 1.
    np.testing.assert_array_equal(xcorr(RAMP_RIGHT, M.SOBEL_X), 1.0)
    np.testing.assert_array_equal(xcorr(RAMP_RIGHT, M.SOBEL_Y), 0.0)
    np.testing.assert_array_equal(xcorr(RAMP_DOWN, M.SOBEL_Y), 1.0)
    np.testing.assert_array_equal(xcorr(RAMP_DOWN, M.SOBEL_X), 0.0)
    # taps are indexed [dy+1, dx+1]: the right-hand neighbour is column 2
    assert M.SOBEL_X[1, 2] > 0 and M.SOBEL_Y[2, 1] > 0


def test_gradient_kernels_zero_angle():
    k = M.gradient_kernels(0.0)
    assert k.shape == (2, 3, 3) and k.dtype == np.float32
    np.testing.assert_array_equal(k[0], M.SOBEL_X.astype(np.float32))
    np.testing.assert_array_equal(k[1], M.SOBEL_Y.astype(np.float32))


@pytest.mark.parametrize("deg", [37.0, -120.0, 200.0])
def test_gradient_kernels_rotation_formula(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    k = M.gradient_kernels(deg)
    np.testing.assert_allclose(k[0], c * M.SOBEL_X - s * M.SOBEL_Y, atol=1e-7)
    np.testing.assert_allclose(k[1], s * M.SOBEL_X + c * M.SOBEL_Y, atol=1e-7)
    # a unit x-ramp reads (cos, sin) through the rotated kernels
    np.testing.assert_allclose(xcorr(RAMP_RIGHT, k[0].astype(np.float64)), c, atol=1e-6)
    np.testing.assert_allclose(xcorr(RAMP_RIGHT, k[1].astype(np.float64)), s, atol=1e-6)


def test_rotation_90_maps_x_gradient_to_y():
    k = M.gradient_kernels(90.0).astype(np.float64)
    np.testing.assert_allclose(k[0], -M.SOBEL_Y, atol=1e-7)
    np.testing.assert_allclose(k[1], M.SOBEL_X, atol=1e-7)
    np.testing.assert_allclose(xcorr(RAMP_RIGHT, k[0]), 0.0, atol=1e-7)
    np.testing.assert_allclose(xcorr(RAMP_RIGHT, k[1]), 1.0, atol=1e-7)
    np.testing.assert_allclose(xcorr(RAMP_DOWN, k[0]), -1.0, atol=1e-7)


# ---------------------------------------------------------------- perception order
def labelled_w1(order_rows):
    """W1 whose row r carries the label order_rows[r] in every column."""
    return np.repeat(np.asarray(order_rows, np.float64)[:, None], 5, axis=1)


def test_interleaved_to_concat_moves_rows():
    # interleaved row 3c+k holds label 100k + c
    inter = labelled_w1([100 * k + c for c in range(16) for k in range(3)])
    cat = M.interleaved_to_concat(inter)
    assert cat.shape == inter.shape
    for c in range(16):
        for k in range(3):
            assert (cat[16 * k + c] == 100 * k + c).all()
            assert (cat[16 * k + c] == inter[3 * c + k]).all()


def test_concat_to_interleaved_moves_rows():
    cat = labelled_w1([100 * k + c for k in range(3) for c in range(16)])
    inter = M.concat_to_interleaved(cat)
    for c in range(16):
        for k in range(3):
            assert (inter[3 * c + k] == cat[16 * k + c]).all()


def test_order_conversions_are_inverse():
    w = np.random.default_rng(3).standard_normal((48, 128)).astype(np.float32)
    np.testing.assert_array_equal(M.concat_to_interleaved(M.interleaved_to_concat(w)), w)
    np.testing.assert_array_equal(M.interleaved_to_concat(M.concat_to_interleaved(w)), w)
    # a real permutation, not the identity
    assert not np.array_equal(M.interleaved_to_concat(w), w)
    # returns a copy: the input is not touched
    out = M.interleaved_to_concat(w)
    out[:] = 0
    assert w.any()


# ---------------------------------------------------------------- seed
@pytest.mark.parametrize("h,w", [(40, 40), (7, 10), (72, 72)])
def test_seed_state(h, w):
    x = M.seed_state(h, w)
    assert x.shape == (h, w, 16) and x.dtype == np.float32
    assert (x[h // 2, w // 2, :3] == 0).all() and (x[h // 2, w // 2, 3:] == 1).all()
    x[h // 2, w // 2] = 0
    assert not x.any()


def test_seed_state_batch():
    x = M.seed_state(9, 8, batch=3)
    assert x.shape == (3, 9, 8, 16)
    for b in range(3):
        np.testing.assert_array_equal(x[b], M.seed_state(9, 8))


# ---------------------------------------------------------------- alive mask
def test_alive_mask_single_cell_and_threshold_is_strict():
    a = np.zeros((5, 5))
    a[2, 2] = 0.1
    assert not M.alive_mask(a).any()              # alpha == 0.1 is not alive
    a[2, 2] = 0.1000001
    m = M.alive_mask(a)
    expect = np.zeros((5, 5), bool)
    expect[1:4, 1:4] = True                        # the whole 3x3 neighbourhood
    np.testing.assert_array_equal(m, expect)


def test_alive_mask_edges_and_corners():
    a = np.zeros((4, 6))
    a[0, 0] = 0.5          # corner: neighbourhood clipped by the zero padding
    a[3, 4] = 0.2          # bottom edge
    expect = np.zeros((4, 6), bool)
    expect[0:2, 0:2] = True
    expect[2:4, 3:6] = True
    np.testing.assert_array_equal(M.alive_mask(a), expect)


def test_alive_mask_ignores_negative_and_small_values():
    a = np.full((4, 4), 0.09)
    a[1, 1] = -5.0
    assert not M.alive_mask(a).any()
    a[3, 3] = 0.11
    m = M.alive_mask(a)
    assert m[2:, 2:].all() and m.sum() == 4


def test_alive_mask_batched():
    a = np.zeros((2, 5, 5))
    a[1, 0, 4] = 1.0
    m = M.alive_mask(a)
    assert m.shape == (2, 5, 5)
    assert not m[0].any()
    np.testing.assert_array_equal(m[1], M.alive_mask(a[1]))
    assert m[1, :2, 3:].all() and m[1].sum() == 4


def test_alive_mask_agrees_with_engines_on_float32_threshold():
    from sim.cell import alive_value
    a = np.zeros((3, 3), np.float32)
    a[1, 1] = np.float32(0.1)
    assert M.alive_mask(a)[1, 1] == alive_value(np.float32(0.1))
