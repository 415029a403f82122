"""`python -m sim.run --live`: the swarm in an interactive matplotlib window, like the
paper's demo: it grows while you watch; a click cuts a circle out of it, a slider
rotates the cells' perception, another sets the speed, a button pauses, a list
switches between the models in weights/.

Every control is a plain method of `LiveApp` (`on_click`, `on_rotate`, `on_speed`,
`on_radius`, `toggle_pause`, `select_model`, `reset`, `step_frame`): the widgets
only forward to them, so tests drive the app under the Agg backend with no display,
and a person gets the same behaviour in the window. Each frame advances the engine
(`sim.engines.make_engine`: the SimPy swarm by default, any engine of `sim.run`) by `speed`
time units; damage and rotation act between two frames, exactly like
`SimPySwarm.schedule_damage` / `schedule_params` at that time.

`--live-frames N --live-screenshot FILE` stops after N frames and saves the window
as a picture (for docs and for checking the window under Xvfb); without a display
(Agg) the same frames run off-screen.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .atomic import atomic_write
from .damage import Damage
from .engines import EVENT_ENGINES, make_engine
from .errors import UserError
from .model import FIRE_RATE, seed_state
from .pictures import fit_target, to_rgba8
from .rules import AsyncConfig
from .simulate import alive_cells, loss_vs
from .spec import Params
from .weights import Model, WeightsError, load

WEIGHTS_DIR = paths.WEIGHTS
SCREENSHOT_FRAMES = 30
NON_GUI_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def model_choices(current: str | os.PathLike | None, folder: Path = WEIGHTS_DIR) -> list[Path]:
    """The .npz files in `folder` (sorted; not the trainer's *.ckpt.npz checkpoints) plus
    `current` if it lives elsewhere."""
    found = sorted(p for p in folder.glob("*.npz") if not p.name.endswith(".ckpt.npz")) \
        if folder.is_dir() else []
    if current is not None:
        cur = Path(current)
        if not any(_same(cur, p) for p in found):
            found.append(cur)
    return found


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def interactive_backend() -> bool:
    """Whether matplotlib's backend opens windows (False for Agg, e.g. without a display)."""
    import matplotlib

    name = matplotlib.get_backend().lower()
    return not (name in NON_GUI_BACKENDS or name.startswith("module://matplotlib_inline"))


class LiveApp:
    """The interactive swarm; see the module docstring. `fig` is a pyplot figure (a window
    on an interactive backend); call `close()` when done without `show()`."""

    def __init__(self, model: Model, model_path: str | os.PathLike | None = None, *,
                 engine: str = "simpy", size: int = 40, seed: int = 0, rotate: float = 0.0,
                 fire_rate: float = FIRE_RATE, config: AsyncConfig | None = None,
                 target: np.ndarray | None = None, radius: float = 5.0, speed: float = 2.0,
                 models: Sequence[str | os.PathLike] | None = None, fps: float = 20.0):
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Button, RadioButtons, Slider

        self.engine_name = engine
        self.size = int(size)
        self.seed = int(seed)
        self.fire_rate = float(fire_rate)
        self.config = config or AsyncConfig()
        self.target = None if target is None else fit_target(np.asarray(target)[..., :4], self.size, self.size)
        self.radius = float(radius)
        self.speed = float(speed)
        self.rotation = float(rotate)
        self.fps = float(fps)
        self.paused = False
        self.cuts = 0
        self.frames = 0
        self.message = ""
        self.model = model
        self.model_path = None if model_path is None else Path(model_path)
        self.base = Params.from_model(model)
        self.paths = [Path(p) for p in models] if models is not None else model_choices(model_path)
        self._limit: int | None = None
        self._screenshot: str | None = None
        self._selecting = False
        self.anim = None
        self._new_engine()

        self.fig = fig = plt.figure(figsize=(10, 7))
        try:
            fig.canvas.manager.set_window_title("NCA swarm (python -m sim.run --live)")
        except AttributeError:
            pass
        self.ax = fig.add_axes((0.03, 0.24, 0.62, 0.70))
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        self.image = self.ax.imshow(self._picture(), interpolation="nearest")
        self.ax.set_title("click to cut a circle out of the swarm", fontsize=10)
        self.status = fig.text(0.68, 0.42, "", fontsize=9, va="top", family="monospace")

        ax_models = fig.add_axes((0.68, 0.50, 0.30, 0.44))
        ax_models.set_title("model", fontsize=10)
        labels = [self._label(p) for p in self.paths] or ["(no .npz in weights/)"]
        active = next((i for i, p in enumerate(self.paths)
                       if self.model_path is not None and _same(p, self.model_path)), 0)
        self.radio = RadioButtons(ax_models, labels, active=active)
        self.radio.on_clicked(self._on_radio)

        self.rotate_slider = Slider(fig.add_axes((0.22, 0.14, 0.38, 0.03)), "rotation (deg)",
                                    -180.0, 180.0, valinit=self.rotation)
        self.rotate_slider.on_changed(self.on_rotate)
        self.speed_slider = Slider(fig.add_axes((0.22, 0.09, 0.38, 0.03)), "speed (steps/frame)",
                                   0.1, 10.0, valinit=self.speed)
        self.speed_slider.on_changed(self.on_speed)
        self.radius_slider = Slider(fig.add_axes((0.22, 0.04, 0.38, 0.03)), "cut radius (cells)",
                                    1.0, max(2.0, self.size / 2), valinit=self.radius)
        self.radius_slider.on_changed(self.on_radius)
        self.pause_button = Button(fig.add_axes((0.70, 0.08, 0.12, 0.06)), "Pause")
        self.pause_button.on_clicked(lambda _ev: self.toggle_pause())
        self.reset_button = Button(fig.add_axes((0.84, 0.08, 0.12, 0.06)), "Reset")
        self.reset_button.on_clicked(lambda _ev: self.reset())
        fig.canvas.mpl_connect("button_press_event", self.on_click)
        self._redraw()

    # ------------------------------------------------------------ state
    def _new_engine(self) -> None:
        state = seed_state(self.size, self.size)
        self.engine = make_engine(self.engine_name, state, self.base.rotated(self.rotation), self.seed,
                                  self.fire_rate, self.config)
        self.t = 0.0

    @property
    def state(self) -> np.ndarray:
        """The swarm's (H, W, 16) state now."""
        return self.engine.state

    @property
    def params(self) -> Params:
        """The parameters the cells compute with now (rotation included)."""
        return self.engine.params

    def _picture(self) -> np.ndarray:
        return to_rgba8(self.state)

    @staticmethod
    def _label(p: Path) -> str:
        return p.stem if p.parent.resolve() == WEIGHTS_DIR.resolve() else str(p)

    # ------------------------------------------------------------ controls
    def on_click(self, event: Any) -> bool:
        """A left click in the swarm cuts a circle of the current radius around the clicked
        cell (event: a matplotlib MouseEvent or anything with inaxes, xdata, ydata, button).
        Returns whether it cut."""
        if event.inaxes is not self.ax or event.xdata is None or event.ydata is None:
            return False
        if int(getattr(event, "button", 1) or 1) != 1:
            return False
        toolbar = getattr(self.fig.canvas, "toolbar", None)
        if toolbar is not None and getattr(toolbar, "mode", ""):   # zooming or panning
            return False
        self.cut(float(event.xdata), float(event.ydata))
        return True

    def cut(self, x: float, y: float, radius: float | None = None) -> int:
        """Wipe the cells within `radius` of (x = column, y = row), now; returns how many."""
        r = self.radius if radius is None else float(radius)
        mask = Damage("circle", (x, y, r), 0).mask(self.size, self.size)
        if mask.any():
            self.engine.damage(mask)
            self.cuts += 1
        self.message = f"cut {int(mask.sum())} cells at ({x:.0f}, {y:.0f})"
        self._redraw()
        return int(mask.sum())

    def on_rotate(self, val: float) -> None:
        """Rotate every cell's perception to `val` degrees from now on (the paper's
        rotation experiment: turning the perception mid-run)."""
        self.rotation = float(val)
        self.engine.set_params(self.base.rotated(self.rotation))
        self._sync(self.rotate_slider, self.rotation)
        self._redraw()

    def on_speed(self, val: float) -> None:
        """Time units (steps) the swarm advances per frame."""
        self.speed = float(val)
        self._sync(self.speed_slider, self.speed)

    def on_radius(self, val: float) -> None:
        """Radius in cells of the circle the next click cuts."""
        self.radius = float(val)
        self._sync(self.radius_slider, self.radius)

    @staticmethod
    def _sync(slider: Any, val: float) -> None:
        """Move a slider to a value set in code (its callback then sees the value it has)."""
        if slider.val != val and slider.valmin <= val <= slider.valmax:
            slider.set_val(val)

    def toggle_pause(self) -> bool:
        """Pause or resume time; returns whether it is paused now."""
        self.paused = not self.paused
        self.pause_button.label.set_text("Resume" if self.paused else "Pause")
        self._redraw()
        return self.paused

    def reset(self) -> None:
        """Start again from one seed cell (same model, rotation, seed)."""
        self._new_engine()
        self.cuts = 0
        self.message = "reset to the seed"
        self._redraw()

    def select_model(self, path: str | os.PathLike) -> bool:
        """Switch to the model in `path` and regrow from the seed (a pattern grown by one
        model means nothing to another). A bad file leaves everything as it was and says
        why in the status; returns whether it switched."""
        try:
            model = load(path)
        except (WeightsError, UserError, OSError, ValueError) as e:
            self.message = f"cannot load {path}: {e}"
            self._redraw()
            return False
        self.model, self.model_path, self.base = model, Path(path), Params.from_model(model)
        for i, p in enumerate(self.paths):
            if _same(p, self.model_path) and self.radio.index_selected != i and not self._selecting:
                self._selecting = True
                try:
                    self.radio.set_active(i)
                finally:
                    self._selecting = False
        self._new_engine()
        self.cuts = 0
        self.message = f"model {self.model_path.name}"
        self._redraw()
        return True

    def _on_radio(self, label: str | None) -> None:
        if self._selecting or label is None:
            return
        for p in self.paths:
            if self._label(p) == label:
                self.select_model(p)
                return

    # ------------------------------------------------------------ frames
    def step_frame(self, _frame: Any = None) -> list:
        """Advance the swarm by `speed` time units unless paused, and redraw."""
        if not self.paused:
            self.t += self.speed
            self.engine.advance(self.t)
        self.frames += 1
        self._redraw()
        if self._limit is not None and self.frames >= self._limit:
            self._finish()
        return [self.image, self.status]

    def _status_text(self) -> str:
        x = self.state
        name = self.model_path.name if self.model_path else "(model)"
        lines = [f"{self.engine_name} engine, {self.size}x{self.size} cells",
                 f"model    {name}",
                 f"time     {self.engine.now if self.engine_name not in EVENT_ENGINES else self.t:.1f}"
                 + ("   PAUSED" if self.paused else ""),
                 f"alive    {alive_cells(x)} cells"]
        if self.target is not None:
            lines.append(f"loss     {loss_vs(x, self.target):.4f} vs target")
        sw = self.engine.swarm
        if sw is not None:
            m = sw.metrics()
            lines.append(f"messages {m['messages_sent']:,} sent, {m['messages_lost']:,} lost")
        lines.append(f"rotation {self.rotation:.0f} deg, cuts {self.cuts}")
        if self.message:
            lines.append(self.message[:60])
        return "\n".join(lines)

    def _redraw(self) -> None:
        if not hasattr(self, "image"):
            return
        self.image.set_data(self._picture())
        self.status.set_text(self._status_text())
        self.fig.canvas.draw_idle()

    def save_screenshot(self, path: str | os.PathLike) -> Path:
        """The whole window (swarm, controls, status) as a PNG, written atomically."""
        return atomic_write(path, lambda f: self.fig.savefig(f, format="png", dpi=100))

    def _finish(self) -> None:
        import matplotlib.pyplot as plt

        self._limit = None
        if self.anim is not None:
            self.anim.event_source.stop()
        if self._screenshot:
            self.save_screenshot(self._screenshot)
        plt.close(self.fig)

    def close(self) -> None:
        """Close the figure (tests; the window's own close button does this for a person)."""
        import matplotlib.pyplot as plt

        plt.close(self.fig)

    def run(self, frames: int | None = None, screenshot: str | os.PathLike | None = None) -> None:
        """Show the window and animate until it is closed, or until `frames` frames (then
        save `screenshot`). Without an interactive backend the frames run off-screen."""
        import matplotlib.pyplot as plt
        from matplotlib.animation import FuncAnimation

        if screenshot is not None and frames is None:
            frames = SCREENSHOT_FRAMES
        self._screenshot = None if screenshot is None else str(screenshot)
        if not interactive_backend():
            if frames is None:
                self.close()
                raise UserError("--live needs a display: no interactive matplotlib backend here "
                                "(set DISPLAY, or run under xvfb-run; --live-screenshot FILE "
                                "--live-frames N works without one)")
            for _ in range(frames - 1):
                self.step_frame()
            self._limit = frames
            self.step_frame()
            return
        self._limit = frames
        self.anim = FuncAnimation(self.fig, self.step_frame, interval=1000.0 / self.fps,
                                  cache_frame_data=False, blit=False)
        plt.show()


def run_live(model: Model, model_path: str | None, *, engine: str = "simpy", size: int = 40,
             seed: int = 0, rotate: float = 0.0, fire_rate: float = FIRE_RATE,
             config: AsyncConfig | None = None, target: np.ndarray | None = None,
             radius: float = 5.0, speed: float = 2.0, frames: int | None = None,
             screenshot: str | None = None) -> int:
    """The `--live` entry of sim.run: build the app, run it, report what was saved."""
    try:
        app = LiveApp(model, model_path, engine=engine, size=size, seed=seed, rotate=rotate,
                      fire_rate=fire_rate, config=config, target=target, radius=radius, speed=speed)
    except Exception as e:   # e.g. TclError: a GUI backend was asked for but no display exists
        if type(e).__name__ in ("TclError", "RuntimeError", "ImportError"):
            raise UserError(f"--live cannot open a window ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            f"set DISPLAY or run under xvfb-run") from None
        raise
    app.run(frames, screenshot)
    if screenshot:
        print(f"live: {app.frames} frames, time {app.t:.1f}; wrote {screenshot}")
    return 0
