"""Pictures of swarm states: one state as a PNG, or a labelled strip of states.

Cells are drawn with the paper's display rule (`targets.to_rgba8`: colour over
white, an empty cell is white) and upscaled by nearest neighbour, so every cell
stays a crisp square you can count. Files are written atomically (temporary
file beside the target, then a rename): an interrupted run never leaves half a
picture over a previous one. Pillow only; no display is needed.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .pictures import to_rgba8

SCALE = 8
STRIP_SCALE = 4
STRIP_COLUMNS = 10


def picture(state: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """uint8 (H*scale, W*scale, 3) picture of a (H, W, >=4) state or RGBA array."""
    img = to_rgba8(state)
    if img.ndim != 3:
        raise ValueError(f"expected one (H, W, >=4) state, got shape {np.shape(state)}")
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def _format_for(path: Path) -> str:
    from PIL import Image

    return Image.registered_extensions().get(path.suffix.lower(), "PNG")


def _save_image(path: str | os.PathLike, img) -> Path:
    p = Path(path)
    fmt = _format_for(p)
    if fmt == "JPEG" and img.mode != "RGB":
        img = img.convert("RGB")
    return atomic_write(p, lambda f: img.save(f, format=fmt))


def save_png(path: str | os.PathLike, state: np.ndarray, scale: int = SCALE) -> Path:
    """Write the picture of one state, each cell a scale x scale square (PNG unless the
    file name asks for another format Pillow knows)."""
    from PIL import Image

    return _save_image(path, Image.fromarray(picture(state, scale), "RGB"))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):   # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def save_strip(path: str | os.PathLike, states: Sequence[np.ndarray], labels: Sequence[str],
               scale: int = STRIP_SCALE, columns: int = STRIP_COLUMNS) -> Path:
    """Write frames side by side (wrapping after `columns`), each with its label underneath
    (labels may have several lines, e.g. "step 200\\ndamaged"), on a white sheet."""
    from PIL import Image, ImageDraw

    if len(states) == 0:
        raise ValueError("no frames to draw")
    if len(labels) != len(states):
        raise ValueError(f"{len(states)} frames but {len(labels)} labels")
    pics = [picture(s, scale) for s in states]
    fh = max(p.shape[0] for p in pics)
    fw = max(p.shape[1] for p in pics)
    font = _font(max(10, min(16, fw // 8)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(probe.textbbox((0, 0), "Step 0g", font=font)[3], 10) + 2
    label_h = line_h * max(str(t).count("\n") + 1 for t in labels) + 6
    gap = 6
    cols = max(1, min(columns, len(pics)))
    rows = (len(pics) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (fw + gap) + gap, rows * (fh + label_h + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (pic, text) in enumerate(zip(pics, labels)):
        r, c = divmod(i, cols)
        x0 = gap + c * (fw + gap)
        y0 = gap + r * (fh + label_h + gap)
        sheet.paste(Image.fromarray(pic, "RGB"), (x0, y0))
        draw.rectangle((x0 - 1, y0 - 1, x0 + pic.shape[1], y0 + pic.shape[0]), outline=(200, 200, 200))
        for k, line in enumerate(str(text).split("\n")):
            tw = draw.textbbox((0, 0), line, font=font)[2]
            draw.text((x0 + (fw - tw) / 2, y0 + fh + 4 + k * line_h), line, fill=(0, 0, 0), font=font)
    return _save_image(path, sheet)
