"""Damage specs for `python -m sim.run --damage`: which cells to wipe, and when.

Forms (coordinates in the grid's cells: x = column index, y = row index,
(0, 0) the top-left cell; STEP an integer >= 0, the damage happens after STEP
steps, i.e. at the start of step STEP):

    circle:CX,CY,R@STEP        cells with (x-CX)^2 + (y-CY)^2 < R^2  (R > 0; CX, CY may be floats)
    rect:X0,Y0,X1,Y1@STEP      cells with X0 <= x < X1 and Y0 <= y < Y1 (half-open, like slices)
    half:left|right|top|bottom@STEP
                               left: x < W//2, right: x >= W//2, top: y < H//2, bottom: y >= H//2
                               (left/right and top/bottom are complementary; the seed cell at
                               (W//2, H//2) is in right and bottom)

A damaged cell is replaced by a fresh one: all 16 channels zero (and, in the
message-passing engines, an empty inbox). This is the paper's damage: the
regenerating model was trained with circles like these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError

FORMS = "circle:CX,CY,R@STEP, rect:X0,Y0,X1,Y1@STEP or half:left|right|top|bottom@STEP"
HALVES = ("left", "right", "top", "bottom")


class DamageError(UserError, ValueError):
    """A malformed damage spec; the message names the problem and the expected forms."""


@dataclass(frozen=True)
class Damage:
    """One damage event: `kind` (circle | rect | half), its numbers or side, and the step."""
    kind: str
    args: tuple
    step: int
    spec: str = ""

    def mask(self, height: int, width: int) -> np.ndarray:
        """Boolean (height, width): True where the cells are wiped."""
        y, x = np.mgrid[0:height, 0:width]
        if self.kind == "circle":
            cx, cy, r = self.args
            return (x - cx) ** 2 + (y - cy) ** 2 < r * r
        if self.kind == "rect":
            x0, y0, x1, y1 = self.args
            return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        side = self.args[0]
        if side == "left":
            return x < width // 2
        if side == "right":
            return x >= width // 2
        if side == "top":
            return y < height // 2
        return y >= height // 2

    def describe(self) -> str:
        """The canonical spec text (what the user would type)."""
        if self.kind == "half":
            return f"half:{self.args[0]}@{self.step}"
        return f"{self.kind}:{','.join(_fmt(a) for a in self.args)}@{self.step}"


def wipe(state: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The state (H, W, C) with every channel of the cells under the mask zeroed (a cut)."""
    return state * (~mask)[..., None]


def slip(state: np.ndarray, mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The state (H, W, C) with the tissue under the mask moved by dx columns and dy rows:
    each masked cell takes the state of the cell (-dx, -dy) away, the grid wrapping
    round. Nothing is wiped: the masked part is out of line with the rest (a slip)."""
    out = state.copy()
    out[mask] = np.roll(state, (dy, dx), (0, 1))[mask]
    return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _fail(spec: str, problem: str) -> DamageError:
    return DamageError(f"bad damage spec {spec!r}: {problem} (expected {FORMS}; "
                       f"coordinates in cells, x = column, y = row)")


def _numbers(spec: str, text: str, names: tuple[str, ...]) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(names):
        raise _fail(spec, f"needs {len(names)} numbers {','.join(names)}, got {len(parts)}")
    out = []
    for name, p in zip(names, parts):
        try:
            v = float(p)
        except ValueError:
            raise _fail(spec, f"{name} is not a number: {p!r}") from None
        if not math.isfinite(v):
            raise _fail(spec, f"{name} must be finite, got {p!r}")
        out.append(v)
    return tuple(out)


def parse_damage(spec: str) -> Damage:
    """Parse `circle:CX,CY,R@STEP`, `rect:X0,Y0,X1,Y1@STEP` or `half:SIDE@STEP`.

    Raises DamageError (a UserError: one line, exit 2 on the command line) that
    names what is wrong and shows the expected forms.
    """
    text = str(spec).strip()
    if ":" not in text:
        raise _fail(spec, "missing the kind (circle:, rect: or half:)")
    kind, rest = text.split(":", 1)
    kind = kind.strip().lower()
    if kind not in ("circle", "rect", "half"):
        raise _fail(spec, f"unknown kind {kind!r}")
    if rest.count("@") != 1:
        raise _fail(spec, "needs exactly one '@STEP' at the end" if "@" not in rest
                    else "more than one '@'")
    body, step_text = (s.strip() for s in rest.split("@"))
    try:
        step = int(step_text)
    except ValueError:
        raise _fail(spec, f"STEP must be an integer >= 0, got {step_text!r}") from None
    if step < 0:
        raise _fail(spec, f"STEP must be >= 0, got {step}")
    if kind == "circle":
        cx, cy, r = _numbers(spec, body, ("CX", "CY", "R"))
        if r <= 0:
            raise _fail(spec, f"radius R must be > 0, got {_fmt(r)}")
        return Damage("circle", (cx, cy, r), step, text)
    if kind == "rect":
        x0, y0, x1, y1 = _numbers(spec, body, ("X0", "Y0", "X1", "Y1"))
        if not (x1 > x0 and y1 > y0):
            raise _fail(spec, "needs X1 > X0 and Y1 > Y0 (the rectangle is half-open: "
                              "X0 <= x < X1, Y0 <= y < Y1)")
        return Damage("rect", (x0, y0, x1, y1), step, text)
    side = body.lower()
    if side not in HALVES:
        raise _fail(spec, f"half must be one of {'|'.join(HALVES)}, got {body!r}")
    return Damage("half", (side,), step, text)
