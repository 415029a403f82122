"""Damage specs (sim/damage.py): parsing, masks in cell coordinates, one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from sim.damage import Damage, DamageError, parse_damage
from sim.errors import UserError


def test_circle_parses_floats_and_step():
    d = parse_damage("circle:20,18.5,8@200")
    assert d == Damage("circle", (20.0, 18.5, 8.0), 200, "circle:20,18.5,8@200")
    assert d.describe() == "circle:20,18.5,8@200"


def test_circle_mask_is_strict_disc_in_column_row_coordinates():
    m = parse_damage("circle:3,1,2@0").mask(5, 8)
    assert m.shape == (5, 8) and m.dtype == bool
    y, x = np.mgrid[0:5, 0:8]
    np.testing.assert_array_equal(m, (x - 3) ** 2 + (y - 1) ** 2 < 4)
    assert m[1, 3] and m[1, 4] and m[2, 3]          # x = column, y = row
    assert not m[1, 5] and not m[3, 3]              # distance exactly R is outside (strict <)
    assert m.sum() == 9


def test_off_centre_circle_is_not_transposed():
    m = parse_damage("circle:6,1,1@0").mask(4, 10)
    assert np.argwhere(m).tolist() == [[1, 6]]      # row 1, column 6


def test_circle_partly_outside_the_grid_is_clipped():
    m = parse_damage("circle:0,0,2.5@3").mask(10, 10)
    assert m[0, 0] and m[2, 1] and not m[2, 2]
    assert m.sum() == 8


def test_rect_is_half_open():
    d = parse_damage("rect:2,1,5,3@7")
    m = d.mask(6, 8)
    assert d.step == 7
    expect = np.zeros((6, 8), bool)
    expect[1:3, 2:5] = True
    np.testing.assert_array_equal(m, expect)


@pytest.mark.parametrize("h,w", [(40, 40), (7, 9)])
def test_halves_are_complementary(h, w):
    left = parse_damage("half:left@1").mask(h, w)
    right = parse_damage("half:right@1").mask(h, w)
    top = parse_damage("half:top@1").mask(h, w)
    bottom = parse_damage("half:bottom@1").mask(h, w)
    assert not (left & right).any() and (left | right).all()
    assert not (top & bottom).any() and (top | bottom).all()
    assert left[:, : w // 2].all() and not left[:, w // 2:].any()
    assert top[: h // 2].all() and not top[h // 2:].any()
    assert right[h // 2, w // 2] and bottom[h // 2, w // 2]     # the seed cell


def test_whitespace_and_case_are_tolerated():
    assert parse_damage(" Circle: 1, 2, 3 @ 4 ").args == (1.0, 2.0, 3.0)
    assert parse_damage("half:LEFT@0").args == ("left",)


@pytest.mark.parametrize("spec,words", [
    ("circle:1,2,3", "@STEP"),
    ("circle:1,2@5", "3 numbers"),
    ("circle:1,2,3,4@5", "3 numbers"),
    ("circle:a,2,3@5", "CX is not a number"),
    ("circle:1,2,0@5", "R must be > 0"),
    ("circle:1,2,-3@5", "R must be > 0"),
    ("circle:1,nan,3@5", "finite"),
    ("circle:1,2,3@-1", "STEP must be >= 0"),
    ("circle:1,2,3@1.5", "STEP must be an integer"),
    ("circle:1,2,3@", "STEP must be an integer"),
    ("circle:1,2,3@4@5", "more than one"),
    ("square:1,2,3@4", "unknown kind"),
    ("1,2,3@4", "missing the kind"),
    ("", "missing the kind"),
    ("rect:5,5,2,2@1", "X1 > X0"),
    ("rect:1,2,3@1", "4 numbers"),
    ("half:middle@3", "left|right|top|bottom"),
])
def test_malformed_specs_name_the_problem_and_the_forms(spec, words):
    with pytest.raises(DamageError) as e:
        parse_damage(spec)
    msg = str(e.value)
    assert words in msg
    assert "circle:CX,CY,R@STEP" in msg and "\n" not in msg
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
