"""The one progress line of every long command (sim.run, sim.sweep, nca-train,
nca-flash): a bar, units done, rate, ETA, and an optional note (e.g. the loss).

On a terminal it rewrites itself in place; elsewhere it is either silent
(`Progress.wanted` says so) or, with `log_every`, prints a plain line every that
many units, so that a log file shows progress without carriage returns."""
from __future__ import annotations

import math
import sys
import time
from typing import IO


class Progress:
    """One progress line on `stream` (stderr by default) for `total` units.

    Redraws at most every `min_interval` seconds. With `log_every` and a stream
    that is not a terminal, each update whose `done` crosses a multiple of
    `log_every` (and the first and last) is printed as a line of its own."""

    def __init__(self, total: float, unit: str = "steps", stream: IO[str] | None = None,
                 width: int = 24, min_interval: float = 0.2, log_every: int | None = None):
        self.total = max(float(total), 0.0)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.log_every = log_every if log_every and not self.wanted(None, self.stream) else None
        self.start = time.perf_counter()
        self._last = -math.inf
        self._shown = 0
        self._drawn: float | None = None
        self._logged = -math.inf
        self.done = 0.0
        self.note = ""
        self._base: float | None = None    # units already done at the first update (a resumed run)

    @staticmethod
    def wanted(flag: bool | None, stream: IO[str] | None = None) -> bool:
        """--progress / --no-progress if given, else whether the stream is a terminal."""
        if flag is not None:
            return flag
        s = stream if stream is not None else sys.stderr
        try:
            return s.isatty()
        except (AttributeError, ValueError):
            return False

    def line(self, done: float, elapsed: float, note: str = "") -> str:
        """The text for `done` units after `elapsed` seconds (pure, for tests)."""
        frac = min(1.0, done / self.total) if self.total > 0 else 1.0
        fill = int(frac * self.width)
        rate = (done - (self._base or 0.0)) / elapsed if elapsed > 0 else 0.0
        if frac >= 1.0:
            tail = f"in {_clock(elapsed)}"
        elif rate > 0:
            tail = f"ETA {_clock((self.total - done) / rate)}"
        else:
            tail = "ETA --:--"
        return (f"[{'#' * fill}{'-' * (self.width - fill)}] {100 * frac:3.0f}% {done:g}/{self.total:g} {self.unit}  "
                f"{rate:,.1f} {self.unit}/s  {tail}" + (f"  {note}" if note else ""))

    def update(self, done: float, force: bool = False, note: str | None = None) -> None:
        """Record `done` units (and a new note) and redraw when it is time to."""
        self.done = float(done)
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if self._base is None:                   # the clock starts with the work (not the set-up)
            self._base = self.done
            self.start = now
        if self.log_every is not None:
            if done == 0 or done >= self.total or done // self.log_every > self._logged // self.log_every \
                    or self._drawn is None:
                self.stream.write(self.line(self.done, now - self.start, self.note) + "\n")
                self.stream.flush()
                self._logged, self._drawn = self.done, self.done
            return
        if not force and now - self._last < self.min_interval and done < self.total:
            return
        self._last = now
        text = self.line(self.done, now - self.start, self.note)
        pad = " " * max(0, self._shown - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._shown = len(text)
        self._drawn = self.done

    def __call__(self, done: float, total: float | None = None) -> None:
        """A callback taking (done, total), as a flash reports its bytes."""
        if total is not None:
            self.total = max(float(total), 0.0)
        self.update(done)

    def close(self) -> None:
        """Draw the final state (unless just drawn) and end the line."""
        if self._drawn != self.done:
            self.update(self.done, force=True)
        if self.log_every is None:
            self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
