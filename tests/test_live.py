"""`python -m sim.run --live` (sim/live.py) driven without a display: the Agg backend, the
app's plain callback methods and real matplotlib mouse events."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")      # before pyplot: no window, whatever DISPLAY says

import numpy as np
import pytest
from matplotlib.backend_bases import MouseEvent
from PIL import Image

import sim.assemble
import sim.run
import sim.simulate
from sim.damage import Damage
from sim.fixture import blob_model
from sim.live import LiveApp, model_choices
from sim.spec import Params
from sim.weights import save

N = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    save(d / "blob.npz", blob_model())
    save(d / "other.npz", blob_model(seed=5, gain=0.8))
    return d / "blob.npz", d / "other.npz"


@pytest.fixture
def app(models):
    a = LiveApp(blob_model(), models[0], size=N, seed=1, speed=2.0, radius=2.0, models=list(models))
    yield a
    a.close()


def _click(app: LiveApp, x: float, y: float, button: int = 1) -> None:
    """A real mouse press at cell (x = column, y = row), through the canvas's event dispatch."""
    app.fig.canvas.draw()                                  # settle the axes' layout
    px, py = app.ax.transData.transform((x, y))
    ev = MouseEvent("button_press_event", app.fig.canvas, px, py, button=button)
    app.fig.canvas.callbacks.process("button_press_event", ev)


def test_click_cuts_a_circle_at_the_clicked_cell(app):
    for _ in range(10):
        app.step_frame()
    before = app.state.copy()
    mask = Damage("circle", (10.0, 6.0, 2.0), 0).mask(N, N)
    assert np.abs(before[mask]).sum() > 0 and before[10, 6].any()   # something to cut, both ways round
    _click(app, 10.0, 6.0)
    after = app.state
    assert not after[mask].any()                           # row 6, column 10: all 16 channels zero
    np.testing.assert_array_equal(after[~mask], before[~mask])
    assert after[10, 6].any()                              # not the transposed cell
    assert app.cuts == 1
    _click(app, 4.0, 4.0, button=3)                        # right button: nothing
    app.fig.canvas.callbacks.process("button_press_event", MouseEvent(
        "button_press_event", app.fig.canvas, 5, 5, button=1))   # outside the swarm: nothing
    assert app.cuts == 1 and np.array_equal(app.state, after)


def test_rotation_changes_params_and_equals_a_scheduled_rotation(app):
    for _ in range(3):
        app.step_frame()                                   # t = 6
    app.on_rotate(90.0)
    assert app.rotate_slider.val == 90.0
    np.testing.assert_array_equal(app.params.kxy, Params.from_model(blob_model()).rotated(90).kxy)
    for _ in range(3):
        app.step_frame()                                   # t = 12
    ref = sim.assemble.simulate(blob_model(), engine="simpy", steps=12, size=N, seed=1, rotations=["90@6"])
    assert app.t == 12.0 and app.state.tobytes() == ref.state.tobytes()


def test_pause_stops_time_and_speed_sets_the_step(app):
    app.step_frame()
    assert app.toggle_pause() is True and app.pause_button.label.get_text() == "Resume"
    t, x = app.t, app.state.copy()
    for _ in range(3):
        app.step_frame()
    assert app.t == t and np.array_equal(app.state, x)
    app.cut(8, 8)                                          # cutting works while paused
    assert not app.state[8, 8].any()
    app.toggle_pause()
    app.on_speed(0.5)
    assert app.speed_slider.val == 0.5
    app.step_frame()
    assert app.t == t + 0.5 and app.engine.now == t + 0.5
    app.on_radius(4.0)
    assert app.cut(8, 8) == int(Damage("circle", (8, 8, 4.0), 0).mask(N, N).sum())


def test_select_model_switches_and_regrows(app, models, tmp_path):
    for _ in range(4):
        app.step_frame()
    assert app.select_model(models[1])
    other = blob_model(seed=5, gain=0.8)
    np.testing.assert_array_equal(app.params.w1, other.params["w1"])
    assert app.t == 0.0 and sim.simulate.alive_cells(app.state) == 1   # back to the seed
    assert app.radio.index_selected == 1
    app._on_radio(app._label(models[0]))                   # the list's click handler
    np.testing.assert_array_equal(app.params.w1, blob_model().params["w1"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    app.step_frame()
    x = app.state.copy()
    assert not app.select_model(bad)
    assert "cannot load" in app.message and np.array_equal(app.state, x)


def test_model_choices_list_weights_but_not_checkpoints(tmp_path, models):
    for name in ("a.npz", "b.ckpt.npz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in model_choices(models[0], tmp_path)] == ["a.npz", "blob.npz"]
    assert [p.name for p in model_choices(tmp_path / "a.npz", tmp_path)] == ["a.npz"]


@pytest.mark.parametrize("engine", ["async", "sync"])
def test_other_engines_run_live(engine, models):
    a = LiveApp(blob_model(), models[0], engine=engine, size=N, speed=0.75, models=[])
    try:
        for _ in range(4):
            a.step_frame()
        assert a.t == 3.0 and a.engine.now == (3.0 if engine == "async" else 3)
        a.on_rotate(30)
        a.cut(8, 8, 3)
        assert not a.state[8, 8].any()
    finally:
        a.close()


def test_cli_screenshot_without_a_display(models, tmp_path, capsys):
    shot = tmp_path / "live.png"
    rc = sim.run.main(["--live", "--model", str(models[0]), "--size", str(N), "--live-frames", "5",
                 "--live-screenshot", str(shot)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "5 frames, time 10.0" in out
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1000, 700)
        pix = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pix, axis=0)) > 20                # widgets and the swarm are drawn


@pytest.mark.parametrize("argv,words", [
    (["--live"], ["needs a display", "xvfb-run"]),
    (["--live", "--damage", "circle:5,5,2@3"], ["--damage", "cannot be combined with --live"]),
    (["--live", "--save-gif", "x.gif"], ["--save-gif", "--live"]),
    (["--live-frames", "3"], ["--live-frames needs --live"]),
    (["--live", "--live-radius", "0"], ["--live-radius"]),
])
def test_live_errors_are_one_line(argv, words, models, capsys):
    rc = sim.run.main(["--model", str(models[0]), "--size", str(N), *argv])
    _, err = capsys.readouterr()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err
