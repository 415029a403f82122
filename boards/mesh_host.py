"""The host side of a real grid of wired cell boards (firmware/MESH.md, "Real boards"):
plugged into the USB port of the board at the grid's (0, 0) corner (its USART0 is its
west face), it starts a run, stops it, reads that board's status, flashes a new genome
into that board (the boards pass it on: genome gossip) or asks the grid for a census.
After `start` or `flash` the grid needs no host: unplug it.

    python -m boards.mesh_host --port /dev/ttyACM0 start --size 2x2 --seed-at 1,1 [--model M]
                               [--seed S] [--wake-ms 500] [--run N]
    python -m boards.mesh_host --port /dev/ttyACM0 status
    python -m boards.mesh_host --port /dev/ttyACM0 stop --run N
    python -m boards.mesh_host --port /dev/ttyACM0 flash --model M [--size WxH --seed-at X,Y --run N ...]
    python -m boards.mesh_host --port /dev/ttyACM0 census

Verified in emulation only (the frames are those the emulated grid's host sends);
the serial port itself is pyserial's.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from codegen.image import image_of
from codegen.quantize import QModel, quantized
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


def read_status(ser, timeout: float = 2.0, run: int | None = None) -> dict:
    """Ask the board on the port for its status block (with `run`: one that shows that run,
    as a reply to an earlier request may still be on its way)."""
    ser.reset_input_buffer()
    ser.write(MP.simple_frame("STATUS_GET"))
    buf, deadline, last = b"", time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        buf += ser.read(256)
        while b"\x00" in buf:
            raw, buf = buf.split(b"\x00", 1)
            try:
                p = decode_payload(raw)
            except FrameError:
                continue
            if p and p[0] == MP.MSG["STATUS"]:
                last = MP.parse_status(p[1:])
                if run is None or last["run"] == run:
                    return last
    if last is not None:
        return last
    raise UserError("no STATUS from the board within 2 s (is it the mesh firmware, at 115200 baud?)")


def _frames(ser, buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete frames' payloads read so far, and what is left of a frame in flight."""
    buf += ser.read(256)
    done, _, rest = buf.rpartition(b"\x00")
    return MP.payloads(done), rest


def push_genome(ser, q: QModel, keep_state: bool = False, timeout: float = 120.0) -> int:
    """Flash q's genome into the board on the port as its neighbours would: offer it with
    one generation above the board's and answer its chunk requests until it runs it.
    Returns the generation. The board passes it on to the grid by itself. keep_state: the
    genome's header says the boards keep their states when they activate it."""
    st = read_status(ser)
    if st["model_hash"] == q.model_hash:
        raise UserError(f"the board already runs model {q.model_hash:08x} (generation {st['generation']})")
    server = MP.GenomeServer(image_of(q, keep_state), st["generation"] + 1)
    ser.write(server.offer())
    buf, deadline, asked = b"", time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        payloads, buf = _frames(ser, buf)
        for p in payloads:
            reply = server.answer(p)
            if reply is not None:
                ser.write(reply)
            elif p[0] == MP.MSG["STATUS"] and MP.parse_status(p[1:])["generation"] == server.generation:
                return server.generation
        if server.chunks_sent >= len(server.image.chunks()) and time.monotonic() > asked + 0.5:
            ser.write(MP.simple_frame("STATUS_GET"))     # the last chunk went: is it running it?
            asked = time.monotonic()
    raise UserError(f"the board did not take the genome within {timeout:g} s ({server.chunks_sent} chunks "
                    f"sent): is it the mesh firmware with its boot-section routine (MESH.md)?")


def census(ser, timeout: float = 30.0) -> tuple[int, list[tuple[int, int, int]]]:
    """Ask the grid how many boards run which genome: (boards, [(generation, hash, boards)])."""
    st = read_status(ser)
    number = (int(time.monotonic() * 1000) & 0xFF) or 1
    ser.write(MP.census_req_frame(number, st["x"], st["y"]))
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        payloads, buf = _frames(ser, buf)
        for p in payloads:
            if p[0] == MP.MSG["CENSUS"] and p[1] == number:
                ser.write(MP.simple_frame("CENSUS_ACK", bytes([number])))
                _, boards, entries = MP.parse_census(p)
                return boards, entries
    raise UserError(f"no census came back within {timeout:g} s")


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
    f = sub.add_parser("flash", help="flash a model's genome into the board (the grid passes it on); with "
                                     "--size and --seed-at, then start a run with its seed")
    f.add_argument("--model", required=True, help="weights .npz or a shipped model's name")
    f.add_argument("--size", help="the grid, WxH boards")
    f.add_argument("--seed-at", help="the seed board's X,Y")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--wake-ms", type=float, default=500.0)
    f.add_argument("--copies", type=int, default=1)
    f.add_argument("--run", type=int, default=2, help="the new run's number (default: 2)")
    f.add_argument("--keep-state", action="store_true", help="the boards keep their states when they "
                   "activate the genome (for a genome made to carry on the pattern); no new run")
    sub.add_parser("census", help="count the boards on each genome")
    return ap


def _main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    run = getattr(a, "run", 1)
    if not 1 <= run <= 255:
        raise UserError(f"--run must be within [1, 255], got {run}")
    frames: list[bytes] = []
    if a.cmd == "census":
        return _census(a.port)
    if a.cmd == "flash":
        model, _ = load_model(a.model)
        q = quantized(Params.from_model(model))
        if (a.size is None) != (a.seed_at is None):
            raise UserError("flash: give --size and --seed-at together (to start a run), or neither")
        if a.keep_state and a.size is not None:
            raise UserError("flash: --keep-state goes on with the run: no --size and --seed-at")
        ser = open_port(a.port)
        try:
            gen = push_genome(ser, q, a.keep_state)
        finally:
            ser.close()
        print(f"board (0, 0) runs model {q.model_hash:08x}, generation {gen}; the grid passes it on "
              f"(`census` counts the boards on it)")
        if a.size is None:
            return 0
        a.cmd, a.model = "start", str(a.model)
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
        st = read_status(ser, run=a.run if a.cmd == "start" else None)
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


def _census(port: str) -> int:
    ser = open_port(port)
    try:
        boards, entries = census(ser)
    finally:
        ser.close()
    print(f"census: {boards} boards: " + ", ".join(f"{n} on generation {g} (model {h:08x})" for g, h, n in entries))
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
