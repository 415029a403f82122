"""Boards as cells of the simulated swarm (hardware in the loop): `BoardCells`, a
cell backend in which some cells are computed by boards over the cell link, and
`BoardEngine`, the simpy engine whose cells at given places are boards.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from codegen import formats as F
from codegen.fixed_cells import FixedBackend, lockstep_check
from codegen.quantize import quantized
from sim.cell_backends import CellBackend
from sim.engines import RunError, SimPyEngine
from sim.errors import UserError
from sim.rules import AsyncConfig
from sim.spec import Params

from . import protocol
from .client import Board
from .emulator import EMULATED, Emulator
from .errors import LinkError


def _angle(params: Any) -> float:
    return F.angle_of_kernels(params.kxy)


class BoardCells(CellBackend):
    """A swarm backend (sim.cell_backends.CellBackend) in which some cells are boards.

    Cell c in `boards` is computed by its board: the swarm sends it the cell's own
    state and its 8 neighbours' states (what the cell knows) with the fire decision
    and the rotation, in one CELL request, and takes the new state from the reply;
    every other cell runs on `base` (the fixed-point golden model by default).
    States cross the link in the state formats exactly as the "fixed" backend reads and
    writes the swarm's float32 arrays (the own state whole, with its error-feedback
    remainders; the neighbours' int8 part), so the run equals an all-"fixed" one bit
    for bit."""

    name = "board"

    def __init__(self, base: Any, boards: dict[int, Board], model_hash: int, fmt: F.ModelFormat,
                 angle: float = 0.0):
        self.base = base
        self.boards = dict(boards)
        self.model_hash = model_hash
        self.fmt = fmt              # the model's state formats (fixed by its hash)
        self._set_angle(angle)
        self.calls = 0

    def _set_angle(self, angle: float | None) -> None:
        self.rot = None if angle is None or angle == 0 else F.rotation_q14(angle)

    def _run(self, c: int, state: np.ndarray, inbox: np.ndarray, op: str) -> tuple[int, np.ndarray]:
        self.calls += 1
        e = self.fmt.ef_bits
        return self.boards[c].cell(F.quantize_fine(state[c], self.fmt), F.quantize_fine(inbox[c], self.fmt) >> e,
                                   op, True, self.rot, e)

    def update(self, c: int, state: np.ndarray, inbox: np.ndarray) -> int:
        if c not in self.boards:
            return self.base.update(c, state, inbox)
        r, s = self._run(c, state, inbox, "update")
        if r != 0:
            state[c] = F.dequantize_fine(s, self.fmt)
        return int(r)

    def tentative(self, c: int, state: np.ndarray, inbox: np.ndarray, out: np.ndarray) -> None:
        if c not in self.boards:
            self.base.tentative(c, state, inbox, out)
            return
        lockstep_check(self.fmt)
        _, s = self._run(c, state, inbox, "tentative")
        out[c] = F.dequantize_fine(s, self.fmt)

    def set_params(self, params: Any) -> None:
        q = quantized(params)
        if q.model_hash != self.model_hash:
            raise LinkError(f"the boards run model 0x{self.model_hash:08x}; the new parameters are model "
                            f"0x{q.model_hash:08x} (flash it first)")
        self.base.set_params(params)
        self._set_angle(_angle(params))


def ensure_model(board: Board, image: protocol.Image, log: Callable[[str], None] | None = None) -> None:
    """Flash image unless the board already runs it (one HELLO for both)."""
    hello = board.hello()
    if hello.model_hash != image.model_hash:
        r = board.flash(image, hello=hello)
        if log:
            log(f"flashed model 0x{image.model_hash:08x} to {board.url} in {r.seconds:.2f} s")


def board_cells(params: Any, boards: dict[int, Board], base: Any = None,
                log: Callable[[str], None] | None = None) -> BoardCells:
    """BoardCells for Params: the boards get the model's genome if they lack it."""
    q = quantized(params)
    image = protocol.image_of(q)
    for b in boards.values():
        ensure_model(b, image, log)
    angle = _angle(params)
    base = base if base is not None else FixedBackend(q, angle)
    return BoardCells(base, boards, q.model_hash, q.fmt, angle)


def parse_board_spec(spec: str) -> tuple[int, int, str]:
    """'X,Y=URL' -> (x, y, url); URL is a pyserial URL or device, or emu:cortex-m0 / emu:avr."""
    try:
        where, url = spec.split("=", 1)
        xs, ys = where.split(",")
        x, y = int(xs), int(ys)
    except ValueError:
        raise UserError(f"--board {spec!r}: expected X,Y=URL (e.g. 3,4=socket://127.0.0.1:4321 or "
                        f"3,4=emu:cortex-m0)") from None
    if not url:
        raise UserError(f"--board {spec!r}: the URL is empty")
    if url.startswith("emu:") and url[4:] not in EMULATED:
        raise UserError(f"--board {spec!r}: no emulated board {url[4:]!r}; choose emu:cortex-m0 or emu:avr")
    return x, y, url


class BoardEngine(SimPyEngine):
    """Hardware in the loop: the simpy engine whose cells at `boards` ({(x, y): URL,
    "emu:cortex-m0" | "emu:avr", or a Board}) run on boards over the cell link
    (`BoardCells`), the rest on `base` (a cell backend; default the fixed-point golden
    model, with which the run equals an all-fixed-point one bit for bit); optionally
    paced to wall time (simpy.rt). close() ends the emulators and ports it opened."""

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: AsyncConfig,
                 base: CellBackend | None, boards: dict, realtime_factor: float | None = None,
                 log: Callable[[str], None] | None = None):
        h, w = state.shape[:2]
        self._opened: list[Any] = []
        cells = {}
        try:
            for (x, y), where in boards.items():
                if not (0 <= x < w and 0 <= y < h):
                    raise RunError(f"board cell ({x},{y}) is outside the {w}x{h} grid "
                                   f"(x = column 0..{w - 1}, y = row 0..{h - 1})")
                if isinstance(where, Board):
                    b = where
                else:
                    url = str(where)
                    if url.startswith("emu:"):
                        emu = Emulator(url[4:]).start()
                        self._opened.append(emu)
                        url = emu.url
                    b = Board(url, timeout=5.0)
                    self._opened.append(b)
                cells[y * w + x] = b
            base = base if base is not None else FixedBackend(quantized(params), F.angle_of_kernels(params.kxy))
            self.cells = board_cells(params, cells, base=base, log=log) if cells else base
            super().__init__(state, params, seed, config, cell=self.cells, realtime_factor=realtime_factor)
            self.backend = base.name
        except BaseException:
            self.close()
            raise

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "boards": {"cells": len(getattr(self.cells, "boards", {})),
                                                "requests": getattr(self.cells, "calls", 0)}}

    def close(self) -> None:
        """Close the ports and stop the emulators (each once, however often it is called)."""
        opened, self._opened = self._opened, []
        for o in reversed(opened):
            o.close()
