"""Target pictures: the paper's emoji (shipped as 40x40 PNGs) or any user image.

A target is a float32 (H, W, 4) RGBA array in [0, 1] with RGB premultiplied by
alpha, because that is what the CA's channels 0..3 hold and what the loss
compares them with. The emoji are rendered once from Noto Color Emoji (the
font the paper's PNGs come from) by `python -m sim.pictures --render` and
shipped, so nothing is fetched at run time (see weights/targets/ATTRIBUTION.md).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .errors import UserError, cli_entry

TARGET_SIZE = 40       # the notebook's TARGET_SIZE
TARGET_PADDING = 16    # the notebook's TARGET_PADDING: 40 + 2*16 = 72 px training grid

# The paper's ten emoji (Distill demo order).
EMOJI: dict[str, str] = {
    "lizard": "\U0001F98E",     # 🦎
    "smiley": "\U0001F600",     # 😀
    "boom": "\U0001F4A5",       # 💥
    "eye": "\U0001F441",        # 👁
    "fish": "\U0001F420",       # 🐠
    "butterfly": "\U0001F98B",  # 🦋
    "ladybug": "\U0001F41E",    # 🐞
    "web": "\U0001F578",        # 🕸
    "pretzel": "\U0001F968",    # 🥨
    "tree": "\U0001F384",       # 🎄
}
TARGET_NAMES: tuple[str, ...] = tuple(EMOJI)

TARGETS_DIR = paths.TARGETS
DEFAULT_TARGET = "lizard"
NOTO_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_NOTO_BITMAP_SIZE = 109   # CBDT strike: the only size at which FreeType loads the font
_NOTO_PNG_SIZE = 128      # noto-emoji's png/128 files, which the notebook downloads


class TargetError(UserError):
    """A target that cannot be loaded; the message names the problem."""


def _known() -> str:
    return ", ".join(TARGET_NAMES)


def target_path(name: str) -> Path:
    """Path of a shipped target PNG (by name, e.g. 'lizard', or by its emoji character)."""
    canonical = _canonical_name(name)
    if canonical is None:
        raise TargetError(f"unknown target {name!r}; known names: {_known()}")
    return TARGETS_DIR / f"{canonical}.png"


def _canonical_name(name: str) -> str | None:
    if name in EMOJI:
        return name
    stripped = name.replace("\ufe0f", "")          # accept the emoji itself, with or without VS16
    for n, ch in EMOJI.items():
        if stripped == ch:
            return n
    return None


def render_emoji(char: str, size: int = TARGET_SIZE, font_path: str = NOTO_EMOJI_FONT) -> np.ndarray:
    """Render one emoji from Noto Color Emoji as uint8 (size, size, 4) straight-alpha RGBA.

    Reproduces the notebook's input: the font's bitmap for a glyph is noto-emoji's
    128x128 PNG padded to 136x128, so the glyph cell is centre-cropped back to that
    128x128 square (keeping Noto's own margins, as in the paper) and then resized to
    `size` with LANCZOS, as `thumbnail((40, 40), ANTIALIAS)` did. If the drawn cell is
    not that shape (another font), falls back to the alpha bounding box on a square.
    """
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(font_path, _NOTO_BITMAP_SIZE)
    except OSError as e:
        raise TargetError(f"cannot load emoji font {font_path} ({e}); on Debian: "
                          f"apt-get install fonts-noto-color-emoji") from None
    pad = 32
    left, top, right, bottom = font.getbbox(char)
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    origin = (pad - left, pad - top)
    draw.text(origin, char, font=font, embedded_color=True)
    alpha_box = canvas.getchannel("A").getbbox()
    if alpha_box is None:
        raise TargetError(f"the font has no glyph for {char!r} (U+{ord(char[0]):04X})")
    cell = draw.textbbox(origin, char, font=font, embedded_color=True)
    cw, ch = cell[2] - cell[0], cell[3] - cell[1]
    if ch == _NOTO_PNG_SIZE and cw >= ch:
        x0 = cell[0] + (cw - ch) // 2
        square = canvas.crop((x0, cell[1], x0 + ch, cell[3]))
    else:
        glyph = canvas.crop(alpha_box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    if square.size != (_NOTO_PNG_SIZE, _NOTO_PNG_SIZE):
        square = square.resize((_NOTO_PNG_SIZE, _NOTO_PNG_SIZE), Image.LANCZOS)
    # Pillow resizes RGBA in premultiplied space, so edges do not pick up black fringes.
    out = square.resize((size, size), Image.LANCZOS)
    return np.asarray(out, dtype=np.uint8).copy()


def _open_rgba(path: Path, size: int):
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.exists():
        raise TargetError(f"{path}: no such image file (or use a target name: {_known()})")
    if path.is_dir():
        raise TargetError(f"{path}: is a directory, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)   # phone photos: honour the orientation tag
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise TargetError(f"{path}: {im.mode} (high bit depth / float) images are not "
                                  f"supported; save it as 8-bit RGB or RGBA")
            rgba = im.convert("RGBA")
    except TargetError:
        raise
    except UnidentifiedImageError:
        raise TargetError(f"{path}: not an image file Pillow can read") from None
    except Exception as e:   # truncated data, decompression bomb, codec errors
        raise TargetError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if rgba.width > size or rgba.height > size:
        rgba.thumbnail((size, size), Image.LANCZOS, reducing_gap=None)
    if rgba.size != (size, size):
        canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        canvas.paste(rgba, ((size - rgba.width) // 2, (size - rgba.height) // 2))
        rgba = canvas
    return rgba


def load_target(name_or_path: str | Path, size: int = TARGET_SIZE) -> np.ndarray:
    """Load a target as float32 (size, size, 4) premultiplied RGBA in [0, 1].

    A bare name from EMOJI (or the emoji character) loads the shipped PNG; anything
    else is an image path (PNG, JPEG, ...). Images larger than size x size are shrunk
    to fit keeping their aspect (the notebook's thumbnail, LANCZOS); smaller ones are
    not enlarged (that would invent detail). Either way the picture is centred on a
    transparent size x size canvas. Raises TargetError for missing, unreadable or
    unknown inputs.
    """
    if size < 1:
        raise TargetError(f"target size must be positive, got {size}")
    key = str(name_or_path)
    name = _canonical_name(key) if isinstance(name_or_path, str) else None
    if name is not None:
        path = TARGETS_DIR / f"{name}.png"
        if not path.is_file():
            raise TargetError(f"shipped target '{name}' is missing ({path}); re-create it with "
                              f"'python -m sim.pictures --render'")
    else:
        path = Path(key)
        if not path.exists() and path.suffix == "" and "/" not in key and "\\" not in key:
            raise TargetError(f"unknown target '{key}': not a file, and not one of the known "
                              f"names: {_known()}")
    rgba = np.asarray(_open_rgba(path, size), dtype=np.float32) / np.float32(255.0)
    rgba[..., :3] *= rgba[..., 3:4]
    return rgba


def pad_target(t: np.ndarray, pad: int = TARGET_PADDING) -> np.ndarray:
    """Zero-pad H and W by `pad` on each side: the 40x40 target becomes the 72x72 training target."""
    t = np.asarray(t)
    widths = [(0, 0)] * (t.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)]
    return np.pad(t, widths)


def _fit_axis(t: np.ndarray, axis: int, n: int) -> np.ndarray:
    h = t.shape[axis]
    off = n // 2 - h // 2          # grid index of target index 0: target h//2 lands on grid n//2
    lo, hi = max(off, 0), min(off + h, n)
    shape = list(t.shape)
    shape[axis] = n
    out = np.zeros(shape, dtype=t.dtype)
    dst = [slice(None)] * t.ndim
    src = [slice(None)] * t.ndim
    dst[axis] = slice(lo, hi)
    src[axis] = slice(lo - off, hi - off)
    out[tuple(dst)] = t[tuple(src)]
    return out


def fit_target(t: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre a (..., h, w, C) target in a height x width grid (zero pad or centre crop).

    The target's pixel (h//2, w//2) lands on the grid's (height//2, width//2), where the
    seed sits, so the loss can be computed on any grid size; fit_target(t, 72, 72)
    equals pad_target(t, 16) for a 40x40 target.
    """
    t = np.asarray(t)
    if t.ndim < 3:
        raise ValueError(f"target must be (..., H, W, C), got shape {t.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"grid size must be positive, got {height}x{width}")
    t = _fit_axis(t, t.ndim - 3, height)
    return _fit_axis(t, t.ndim - 2, width)


def to_rgba8(state_or_rgba: np.ndarray) -> np.ndarray:
    """Picture of a premultiplied-RGBA array (..., H, W, >=4) on white, as uint8 (..., H, W, 3).

    The paper's display rule: out = 1 - clip(alpha) + clip(rgb), so an empty (zero)
    cell is white and an opaque cell shows its colour. Works on whole CA states.
    """
    x = np.asarray(state_or_rgba)
    if x.ndim < 3 or x.shape[-1] < 4:
        raise ValueError(f"expected (..., H, W, >=4) RGBA or state, got shape {x.shape}")
    x = np.nan_to_num(x[..., :4].astype(np.float64), nan=0.0)   # a diverged state still draws
    a = np.clip(x[..., 3:4], 0.0, 1.0)
    rgb = np.clip(x[..., :3], 0.0, 1.0)
    out = np.clip(1.0 - a + rgb, 0.0, 1.0)
    return np.round(out * 255.0).astype(np.uint8)


def load_target_for(model: Any, name: str | None) -> tuple[np.ndarray, str]:
    """The target picture a run measures against: `name` (a --target), else the recorded
    target of `model` (a weights.Model), else lizard; returns (RGBA array, the name used)."""
    target_name = name or model.meta.get("target") or DEFAULT_TARGET
    try:
        return load_target(target_name), str(target_name)
    except TargetError as e:
        if name is None and model.meta.get("target"):
            raise TargetError(f"{e} (the model's recorded target; choose another with --target)") from None
        raise


def _main(argv: Sequence[str] | None = None) -> int:
    """Render (maintainers) or list the shipped emoji targets."""
    ap = argparse.ArgumentParser(
        prog="python -m sim.pictures",
        description="Shipped emoji targets. --render re-creates weights/targets/*.png from "
                    "Noto Color Emoji (Debian: fonts-noto-color-emoji).")
    ap.add_argument("--render", action="store_true", help="render all targets to --out")
    ap.add_argument("--out", default=str(TARGETS_DIR), help="output folder (default: %(default)s)")
    ap.add_argument("--font", default=NOTO_EMOJI_FONT, help="font file (default: %(default)s)")
    ap.add_argument("--size", type=int, default=TARGET_SIZE, help="pixels (default: %(default)s)")
    args = ap.parse_args(argv)
    if not args.render:
        for name, ch in EMOJI.items():
            print(f"{name:10s} {ch}  U+{ord(ch):04X}  {TARGETS_DIR / (name + '.png')}")
        return 0
    from PIL import Image

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, ch in EMOJI.items():
            img = render_emoji(ch, args.size, args.font)
            Image.fromarray(img, "RGBA").save(out / f"{name}.png", optimize=True)
            print(f"wrote {out / (name + '.png')}")
    except OSError as e:
        raise TargetError(f"cannot write to {out}: {e}") from None
    return 0


_main.prog = "python -m sim.pictures"  # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
