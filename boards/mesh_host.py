"""The host side of a real grid of wired cell boards (firmware/MESH.md, "Real boards"):
plugged into the USB port of the board at the grid's (0, 0) corner (its USART0 is its
west face), it starts a run, stops it, or reads that board's status. After `start`
the grid needs no host: unplug it.

    python -m boards.mesh_host --port /dev/ttyACM0 start --size 2x2 --seed-at 1,1 [--model M]
                               [--seed S] [--wake-ms 500] [--run N]
    python -m boards.mesh_host --port /dev/ttyACM0 status
    python -m boards.mesh_host --port /dev/ttyACM0 stop --run N

Verified in emulation only (the frames are those the emulated grid's host sends);
the serial port itself is pyserial's.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from codegen.quantize import quantized
from sim.errors import ArgParser, UserError, cli_entry
from sim.paths import BOARD_MODEL
from sim.spec import Params
from sim.weights import load_model

from . import mesh_protocol as MP
from .mesh import MeshConfig, start_frames
from .protocol import FrameError, decode_payload
from .transport import open_port

PROG = "python -m boards.mesh_host"


def _pair(text: str, sep: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split(sep))
    except ValueError:
        raise UserError(f"{what} takes two integers separated by {sep!r}, got {text!r}") from None
    return a, b


def read_status(ser, timeout: float = 2.0) -> dict:
    """Ask the board on the port for its status block."""
    ser.reset_input_buffer()
    ser.write(MP.simple_frame("STATUS_GET"))
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf += ser.read(256)
        while b"\x00" in buf:
            raw, buf = buf.split(b"\x00", 1)
            try:
                p = decode_payload(raw)
            except FrameError:
                continue
            if p and p[0] == MP.MSG["STATUS"]:
                return MP.parse_status(p[1:])
    raise UserError("no STATUS from the board within 2 s (is it the mesh firmware, at 115200 baud?)")


def _parser() -> ArgParser:
    ap = ArgParser(prog=PROG, description="Start, stop or ask a grid of wired cell boards through the board "
                                          "plugged into the host.")
    ap.add_argument("--port", required=True, help="the serial port (or a pyserial URL)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="tell the board its place (0, 0) and send the run's parameters")
    s.add_argument("--size", required=True, help="the grid, WxH boards, e.g. 2x2")
    s.add_argument("--seed-at", required=True, help="the seed board's X,Y")
    s.add_argument("--model", help=f"the model the boards were built with (default: {BOARD_MODEL.name}): "
                                   "its seed cell")
    s.add_argument("--seed", type=int, default=0, help="the counter generator's seed (default: 0)")
    s.add_argument("--wake-ms", type=float, default=500.0, help="mean wake interval (default: 500)")
    s.add_argument("--copies", type=int, default=1, help="each state frame sent this many times back to "
                   "back, 1 to 3, for noisy wires (default: 1)")
    s.add_argument("--run", type=int, default=1, help="the run's number, 1..255 (default: 1)")
    sub.add_parser("status", help="print the host's board's status block")
    t = sub.add_parser("stop", help="stop the run (the boards pass it on)")
    t.add_argument("--run", type=int, required=True)
    return ap


def _main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    run = getattr(a, "run", 1)
    if not 1 <= run <= 255:
        raise UserError(f"--run must be within [1, 255], got {run}")
    frames: list[bytes] = []
    if a.cmd == "start":
        w, h = _pair(a.size, "x", "--size")
        x, y = _pair(a.seed_at, ",", "--seed-at")
        if not (0 <= x < w and 0 <= y < h):
            raise UserError(f"--seed-at {x},{y} is outside the {w}x{h} grid")
        model, _ = load_model(a.model or BOARD_MODEL)
        q = quantized(Params.from_model(model))
        cfg = MeshConfig(wake_ms=a.wake_ms, copies=a.copies).validate()
        try:
            frames = start_frames(q, w, h, a.seed, (x, y), cfg, run=a.run)
        except ValueError as e:
            raise UserError(str(e)) from None
    elif a.cmd == "stop":
        frames = [MP.simple_frame("STOP", bytes([a.run]))]
    ser = open_port(a.port)
    try:
        for f in frames:
            ser.write(f)
            time.sleep(0.05)
        st = read_status(ser)
    finally:
        ser.close()
    flags = [n for n, bit in (("running", MP.FLAG_RUNNING), ("placed", MP.FLAG_COORDS),
                              ("miswired", MP.FLAG_MISWIRED), ("foreign", MP.FLAG_FOREIGN),
                              ("asleep", MP.FLAG_ASLEEP), ("MIRRORED", MP.FLAG_MIRRORED)) if st["flags"] & bit]
    if st["flags"] & MP.FLAG_COORDS:
        flags.append(f"turned {90 * ((st['flags'] & MP.FLAG_ROT_MASK) >> MP.FLAG_ROT_SHIFT)} deg")
    print(f"board ({st['x']}, {st['y']}), run {st['run']}, {' '.join(flags) or 'idle'}; " +
          ", ".join(f"{c} {st[c]}" for c in MP.COUNTERS))
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
