"""Targets (sim/pictures.py): shipped emoji, user images, padding/fitting, display."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sim import pictures as T
from sim.errors import UserError

REPO = Path(__file__).resolve().parent.parent
HAVE_FONT = os.path.isfile(T.NOTO_EMOJI_FONT)


# ---------------------------------------------------------------- shipped targets

def test_the_paper_emoji_are_all_there():
    assert set(T.EMOJI) == {"lizard", "smiley", "boom", "eye", "fish", "butterfly", "ladybug",
                            "web", "pretzel", "tree"}
    assert T.TARGET_SIZE == 40 and T.TARGET_PADDING == 16
    assert (T.TARGETS_DIR / "ATTRIBUTION.md").is_file()
    text = (T.TARGETS_DIR / "ATTRIBUTION.md").read_text()
    assert "Open Font License" in text and "fonts-noto-color-emoji" in text


@pytest.mark.parametrize("name", list(T.EMOJI))
def test_shipped_png_is_40x40_rgba(name):
    with Image.open(T.TARGETS_DIR / f"{name}.png") as im:
        assert im.format == "PNG" and im.mode == "RGBA" and im.size == (40, 40)


@pytest.mark.parametrize("name", list(T.EMOJI))
def test_shipped_target_loads_premultiplied(name):
    t = T.load_target(name)
    assert t.shape == (40, 40, 4) and t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert np.all(t[..., :3] <= t[..., 3:4] + 1e-6)          # premultiplied
    coverage = np.mean(t[..., 3] > 0.1)
    assert 0.10 <= coverage <= 0.90, coverage
    assert np.all(t[0, 0] == 0) and np.all(t[-1, -1] == 0)   # corners transparent


def test_premultiplication_matches_the_png():
    with Image.open(T.TARGETS_DIR / "fish.png") as im:
        raw = np.asarray(im, np.float32) / 255
    t = T.load_target("fish")
    np.testing.assert_allclose(t[..., 3], raw[..., 3])
    np.testing.assert_allclose(t[..., :3], raw[..., :3] * raw[..., 3:], rtol=1e-6)


def test_emoji_character_is_accepted_as_a_name():
    np.testing.assert_array_equal(T.load_target("\U0001F98E"), T.load_target("lizard"))
    np.testing.assert_array_equal(T.load_target("\U0001F441\ufe0f"), T.load_target("eye"))


def test_lizard_is_asymmetric():
    """Orientation tests rely on this: a mirrored or flipped lizard must not match the target."""
    t = T.load_target("lizard")
    for other in (t[:, ::-1], t[::-1], t[::-1, ::-1], t.transpose(1, 0, 2)):
        assert not np.array_equal(t, other)
        assert np.mean((t - other) ** 2) > 0.02


def test_lizard_is_right_side_up():
    """Noto's lizard: head with the eyes at the top left, tail at the bottom right."""
    t = T.load_target("lizard")
    a, lum = t[..., 3], t[..., :3].sum(-1)
    ys, xs = np.nonzero((a > 0.9) & (lum < 0.3))             # the black eyes
    assert len(ys) >= 2
    assert ys.max() < 16 and xs.max() < 20
    diagonal = a[:20, :20].sum() + a[20:, 20:].sum()
    anti = a[:20, 20:].sum() + a[20:, :20].sum()
    assert diagonal > 1.5 * anti


def test_size_argument_resizes_shipped_targets():
    t = T.load_target("smiley", size=20)
    assert t.shape == (20, 20, 4)
    assert np.all(t[..., :3] <= t[..., 3:4] + 1e-6)


# ---------------------------------------------------------------- user images

def test_user_png_of_another_size(tmp_path):
    rgba = np.zeros((60, 100, 4), np.uint8)                 # 100 wide, 60 high
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[:, :50, 3] = 128                                   # left half half-transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "wide.png")
    t = T.load_target(str(tmp_path / "wide.png"))
    assert t.shape == (40, 40, 4) and t.dtype == np.float32
    assert np.all(t[..., :3] <= t[..., 3:4] + 1e-6)
    rows = np.nonzero(t[:, 20, 3] > 0)[0]                   # 100x60 -> 40x24, centred: rows 8..31
    assert (rows.min(), rows.max()) == (8, 31)
    assert np.all(t[:8] == 0) and np.all(t[32:] == 0)
    np.testing.assert_allclose(t[20, 35], [1, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(t[20, 5], [128 / 255, 0, 0, 128 / 255], atol=1e-6)


def test_path_object_and_small_image_not_enlarged(tmp_path):
    Image.new("RGBA", (10, 6), (0, 255, 0, 255)).save(tmp_path / "small.png")
    t = T.load_target(tmp_path / "small.png")
    assert t.shape == (40, 40, 4)
    ys, xs = np.nonzero(t[..., 3] > 0)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (17, 22, 15, 24)


def test_jpeg_without_alpha(tmp_path):
    Image.new("RGB", (64, 64), (200, 100, 50)).save(tmp_path / "photo.jpg", quality=95)
    t = T.load_target(str(tmp_path / "photo.jpg"))
    assert t.shape == (40, 40, 4)
    np.testing.assert_array_equal(t[..., 3], 1.0)
    np.testing.assert_allclose(t[20, 20, :3], np.array([200, 100, 50]) / 255, atol=0.03)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 255, 255))       # stored landscape ...
    img.paste((0, 0, 0), (0, 0, 10, 20))                    # ... with a black left edge
    exif = Image.Exif()
    exif[0x0112] = 6                                        # "rotate 90 CW to display"
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    t = T.load_target(str(tmp_path / "phone.jpg"))
    ys, xs = np.nonzero(t[..., 3] > 0.5)                    # displayed portrait: 20 wide, 40 high
    assert xs.max() - xs.min() + 1 == 20 and ys.max() - ys.min() + 1 == 40
    assert t[2, 20, :3].max() < 0.2                         # the black edge is now at the top


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (10, 10, 30, 30))
    img.info["transparency"] = 0
    img.save(tmp_path / "pal.png", transparency=0)
    t = T.load_target(str(tmp_path / "pal.png"))
    assert t[0, 0, 3] == 0 and t[20, 20, 3] == 1 and t[20, 20, 0] == 1


def test_missing_file(tmp_path):
    with pytest.raises(T.TargetError, match="no such image file"):
        T.load_target(str(tmp_path / "nope.png"))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(T.TargetError) as e:
        T.load_target("unicorn")
    msg = str(e.value)
    assert "unknown target 'unicorn'" in msg and "lizard" in msg and "tree" in msg
    assert "\n" not in msg


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is text, not a picture\n")
    with pytest.raises(T.TargetError, match="not an image file"):
        T.load_target(str(p))


def test_truncated_image(tmp_path):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(T.TargetError, match="cut.png"):
        T.load_target(str(tmp_path / "cut.png"))


def test_directory(tmp_path):
    with pytest.raises(T.TargetError, match="directory"):
        T.load_target(str(tmp_path))


def test_high_bit_depth_image_is_refused_clearly(tmp_path):
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(T.TargetError, match="8-bit"):
        T.load_target(str(tmp_path / "deep.png"))


def test_target_error_is_a_user_error():
    assert issubclass(T.TargetError, UserError)


# ---------------------------------------------------------------- pad / fit

def test_pad_target():
    t = T.load_target("lizard")
    p = T.pad_target(t)
    assert p.shape == (72, 72, 4) and p.dtype == np.float32
    np.testing.assert_array_equal(p[16:56, 16:56], t)
    assert not p[:16].any() and not p[56:].any() and not p[:, :16].any() and not p[:, 56:].any()
    assert T.pad_target(np.stack([t, t]), 2).shape == (2, 44, 44, 4)     # batched


@pytest.mark.parametrize("h,w", [(72, 72), (40, 40), (30, 30), (41, 73), (50, 64), (7, 96), (1, 1)])
def test_fit_target_shapes_and_centring(h, w):
    t = np.random.default_rng(0).random((40, 40, 4)).astype(np.float32)
    f = T.fit_target(t, h, w)
    assert f.shape == (h, w, 4) and f.dtype == t.dtype
    np.testing.assert_array_equal(f[h // 2, w // 2], t[20, 20])   # centre on the seed cell
    # every grid pixel either shows the matching target pixel or is zero padding
    for y, x in ((0, 0), (h - 1, w - 1), (h // 2, 0), (0, w // 2)):
        ty, tx = y - h // 2 + 20, x - w // 2 + 20
        if 0 <= ty < 40 and 0 <= tx < 40:
            np.testing.assert_array_equal(f[y, x], t[ty, tx])
        else:
            assert not f[y, x].any()


def test_fit_target_equals_pad_target_and_crops():
    t = T.load_target("tree")
    np.testing.assert_array_equal(T.fit_target(t, 72, 72), T.pad_target(t, 16))
    np.testing.assert_array_equal(T.fit_target(t, 30, 30), t[5:35, 5:35])
    np.testing.assert_array_equal(T.fit_target(t, 40, 40), t)
    assert T.fit_target(np.stack([t] * 3), 56, 56).shape == (3, 56, 56, 4)


# ---------------------------------------------------------------- display

def test_to_rgba8_of_an_empty_state_is_white():
    img = T.to_rgba8(np.zeros((72, 72, 16), np.float32))
    assert img.shape == (72, 72, 3) and img.dtype == np.uint8
    assert np.all(img == 255)


def test_to_rgba8_values():
    x = np.zeros((1, 5, 16), np.float32)
    x[0, 0, :4] = [1, 0, 0, 1]            # opaque red
    x[0, 1, :4] = [0.5, 0, 0, 0.5]        # half-transparent red, premultiplied
    x[0, 2, :4] = [-1, 2, 0.25, 3]        # out of range: clipped, alpha 1
    x[0, 3, :4] = [0, 0, 0, 1]            # opaque black
    x[0, 4, :4] = [np.nan, 0, 0, np.nan]  # a diverged cell still draws
    img = T.to_rgba8(x)
    assert img[0, 0].tolist() == [255, 0, 0]
    assert img[0, 1].tolist() == [255, 128, 128]
    assert img[0, 2].tolist() == [0, 255, 64]
    assert img[0, 3].tolist() == [0, 0, 0]
    assert img[0, 4].tolist() == [255, 255, 255]


def test_to_rgba8_of_a_target_matches_compositing_on_white():
    with Image.open(T.TARGETS_DIR / "butterfly.png") as im:
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        ref = np.asarray(bg.convert("RGB"), np.int16)
    got = T.to_rgba8(T.load_target("butterfly")).astype(np.int16)
    assert np.abs(got - ref).max() <= 1


# ---------------------------------------------------------------- rendering (needs the font)

@pytest.mark.skipif(not HAVE_FONT, reason="Noto Color Emoji not installed (fonts-noto-color-emoji)")
@pytest.mark.parametrize("name", ["lizard", "eye", "web"])
def test_render_reproduces_the_shipped_png(name):
    img = T.render_emoji(T.EMOJI[name])
    assert img.shape == (40, 40, 4) and img.dtype == np.uint8
    with Image.open(T.TARGETS_DIR / f"{name}.png") as im:
        shipped = np.asarray(im).astype(np.int16)
    assert np.abs(img.astype(np.int16) - shipped).max() <= 3   # allow other Pillow/FreeType builds


@pytest.mark.skipif(not HAVE_FONT, reason="Noto Color Emoji not installed (fonts-noto-color-emoji)")
def test_render_cli_writes_all_targets(tmp_path, capsys):
    assert T.main(["--render", "--out", str(tmp_path)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(T.EMOJI)


def test_render_with_a_missing_font_is_a_user_error(tmp_path, capsys):
    rc = T.main(["--render", "--out", str(tmp_path), "--font", str(tmp_path / "none.ttf")])
    err = capsys.readouterr().err
    assert rc == 2 and "fonts-noto-color-emoji" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_module_lists_targets():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "sim.pictures"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert all(name in r.stdout for name in T.EMOJI)
