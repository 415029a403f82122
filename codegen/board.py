"""A cell board over the cell link (firmware/PROTOCOL.md, codegen/link.py): the
pyserial client, transports, and the emulated boards the tests and sim.run use.

- `Board(port)`: identify, flash a genome (resume, retry, verify, activate),
  set the neighbours, step, read the state and the LED colour, reset.  `port` is
  any pyserial URL or device (`socket://127.0.0.1:4321`, `loop://`,
  `/dev/ttyACM0`, `COM3`) or an object with write/read/in_waiting.
- `HostLink`: the host build of the link firmware (libnca_link.so) as such an
  object: the same C parser and slots, in-process, for fast protocol tests.
- `FaultyTransport`: corrupts, truncates, duplicates, reorders and drops frames
  in both directions (the emulators never lose a byte; real UARTs do).
- `Emulator`: a Cortex-M0 under `qemu-system-arm -M microbit` or an ATmega328P
  under simavr (firmware/tools/simavr_bridge.c), its UART on a TCP port.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.backends import CellBackend
from sim.errors import UserError

from . import formats as F
from . import link as L

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
EMULATED = ("cortex-m0", "avr")


class LinkError(UserError):
    """The link failed (no reply, the port cannot be opened or was lost) or the board
    refused a request (BoardRefused); the message says which and why."""


class BoardRefused(LinkError):
    """The board answered and will not do it (an error status, a CRC mismatch, a genome
    it cannot hold or run): the same request would be refused again, so it is not retried."""


# ---------------------------------------------------------------- transports
class HostLink:
    """The host build of the link firmware, in-process, as a byte transport.
    Replies are ready as soon as a write returns (`instant`), so a lost frame is
    known at once instead of after a timeout."""

    instant = True

    def __init__(self, lib: ctypes.CDLL | None = None, wipe: bool = True):
        self.lib = lib or host_link_library()
        if wipe:
            self.lib.nca_host_link_wipe()
        self.lib.nca_host_link_boot()
        self._buf = bytearray()
        self._out = ctypes.create_string_buffer(1 << 16)

    def write(self, data: bytes) -> int:
        n = self.lib.nca_host_link_io(bytes(data), len(data), self._out, len(self._out))
        self._buf += self._out.raw[:n]
        return len(data)

    def read(self, n: int = 1) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self._buf)

    def reset_input_buffer(self) -> None:
        self._buf.clear()

    def power_cycle(self) -> None:
        """RAM state lost (parser, cell, flash session), flash kept: a board restarted."""
        self._buf.clear()
        self.lib.nca_host_link_boot()

    def flash(self, slot: int) -> ctypes.Array:
        """The slot's bytes (writable: tests corrupt them)."""
        p = self.lib.nca_host_link_flash(slot)
        return (ctypes.c_uint8 * L.SLOT_BYTES).from_address(p)

    def close(self) -> None:
        pass


def _split_frames(buf: bytearray) -> list[bytes]:
    """Complete frames (with their delimiter) taken off the front of buf."""
    out = []
    while True:
        k = buf.find(0)
        if k < 0:
            return out
        out.append(bytes(buf[:k + 1]))
        del buf[:k + 1]


class FaultyTransport:
    """Wraps a transport and mangles whole frames in both directions with the given
    probabilities: corrupt (one byte changed), truncate (cut short), duplicate,
    reorder (held back until after the next frame) and drop."""

    def __init__(self, inner: Any, seed: int = 0, corrupt: float = 0.0, truncate: float = 0.0,
                 duplicate: float = 0.0, reorder: float = 0.0, drop: float = 0.0):
        self.inner = inner
        self.rng = random.Random(seed)
        self.p = dict(corrupt=corrupt, truncate=truncate, duplicate=duplicate, reorder=reorder, drop=drop)
        self.instant = getattr(inner, "instant", False)
        self._wbuf = bytearray()
        self._rbuf_raw = bytearray()
        self._rbuf = bytearray()
        self._held: dict[str, bytes | None] = {"w": None, "r": None}
        self.faults = dict.fromkeys(self.p, 0)

    def _mangle(self, frame: bytes, way: str) -> list[bytes]:
        r, p = self.rng, self.p
        out: list[bytes] = []
        if r.random() < p["drop"]:
            self.faults["drop"] += 1
        elif r.random() < p["corrupt"]:
            self.faults["corrupt"] += 1
            b = bytearray(frame)
            k = r.randrange(len(b))
            b[k] = (b[k] + r.randrange(1, 256)) & 0xFF
            out.append(bytes(b))
        elif r.random() < p["truncate"] and len(frame) > 2:
            self.faults["truncate"] += 1
            out.append(frame[:r.randrange(1, len(frame) - 1)] + b"\x00")
        else:
            out.append(frame)
        if out and r.random() < p["duplicate"]:
            self.faults["duplicate"] += 1
            out.append(out[0])
        if self._held[way] is not None:
            out.append(self._held[way])   # type: ignore[arg-type]
            self._held[way] = None
        elif out and r.random() < p["reorder"]:
            self.faults["reorder"] += 1
            self._held[way] = out.pop(0)
        return out

    def write(self, data: bytes) -> int:
        self._wbuf += data
        for f in _split_frames(self._wbuf):
            for g in self._mangle(f, "w"):
                self.inner.write(g)
        return len(data)

    def _pull(self) -> None:
        n = self.inner.in_waiting
        if n:
            self._rbuf_raw += self.inner.read(n)
            for f in _split_frames(self._rbuf_raw):
                for g in self._mangle(f, "r"):
                    self._rbuf += g

    def read(self, n: int = 1) -> bytes:
        self._pull()
        if not self._rbuf and not self.instant:
            self._rbuf_raw += self.inner.read(1)
            self._pull()
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rbuf)

    def reset_input_buffer(self) -> None:
        self._rbuf.clear()
        self._rbuf_raw.clear()
        self.inner.reset_input_buffer()

    def close(self) -> None:
        self.inner.close()


def open_port(port: str, baud: int = 115200, connect_timeout: float = 10.0) -> Any:
    """pyserial for a URL or device; a socket:// URL is retried until the emulator listens."""
    import serial
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            return serial.serial_for_url(port, baudrate=baud, timeout=0.02, write_timeout=10)
        except (serial.SerialException, OSError, ValueError) as e:
            if not port.startswith("socket://") or time.monotonic() > deadline:
                raise LinkError(f"cannot open {port}: {e}") from None
            time.sleep(0.02)


# ---------------------------------------------------------------- the client
@dataclass
class FlashResult:
    """What a flash did: for the one-line report and the benchmark."""
    seconds: float
    bytes_on_wire: int        # both directions, frames included
    requests: int
    retries: int
    resumed_from: int
    slot: int
    generation: int
    model_hash: int
    crc: int


class Board:
    """A cell board behind a serial port; every method is one or a few requests."""

    def __init__(self, port: str | Any, baud: int = 115200, timeout: float = 1.0, retries: int = 8,
                 connect_timeout: float = 10.0, slow_timeout: float | None = None):
        self.url = port if isinstance(port, str) else type(port).__name__
        self.ser = open_port(port, baud, connect_timeout) if isinstance(port, str) else port
        self.timeout = timeout
        # for the requests that erase or CRC a whole slot (a real AVR: 67 page erases of 4 ms)
        self.slow_timeout = max(timeout, 5.0) if slow_timeout is None else slow_timeout
        self.retries = retries
        self._seq = random.randrange(256)
        self._rx = bytearray()
        self.stats = {"requests": 0, "retries": 0, "naks": 0, "tx": 0, "rx": 0}
        try:
            self.ser.write(b"\x00")       # ends any partial frame the board holds
        except OSError as e:              # serial.SerialException is an OSError
            raise LinkError(f"lost the link to {self.url}: {e}") from None
        self.stats["tx"] += 1

    # -------------------------------------------------------- framing
    def close(self) -> None:
        sock = getattr(self.ser, "_socket", None)
        if sock is not None and type(self.ser).__module__.endswith("protocol_socket"):
            # pyserial's socket:// close() sleeps 0.3 s "for quick reconnects"; the
            # emulators accept a new connection at once, and the cut-off tests reconnect often
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self.ser._socket = None
            self.ser.is_open = False
            return
        try:
            self.ser.close()
        except Exception:
            pass

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_frame(self, deadline: float) -> bytes | None:
        while True:
            k = self._rx.find(0)
            if k >= 0:
                f = bytes(self._rx[:k])
                del self._rx[:k + 1]
                return f
            n = self.ser.in_waiting
            if not n and getattr(self.ser, "instant", False):
                return None
            if time.monotonic() > deadline:
                return None
            data = self.ser.read(n or 1)
            self.stats["rx"] += len(data)
            self._rx += data

    def request(self, name: str, body: bytes = b"", timeout: float | None = None) -> tuple[int, bytes]:
        """Send one request (retransmitted on a timeout or a NAK) -> (status, reply data).
        LinkError when no reply comes or the port fails (a closed socket, an unplugged board)."""
        try:
            return self._request(name, body, timeout)
        except OSError as e:              # serial.SerialException is an OSError
            raise LinkError(f"lost the link to {self.url} during {name}: {e}") from None

    def _request(self, name: str, body: bytes, timeout: float | None) -> tuple[int, bytes]:
        mtype = L.MSG[name]
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        frame = L.encode_frame(mtype, seq, body)
        self.stats["requests"] += 1
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
            self.ser.write(frame)
            self.stats["tx"] += len(frame)
            deadline = time.monotonic() + (timeout or self.timeout)
            while True:
                raw = self._read_frame(deadline)
                if raw is None:
                    break                                    # timeout: send again
                if not raw:
                    continue
                try:
                    t, s, b = L.decode_frame(raw)
                except L.FrameError:
                    continue                                 # a damaged reply: wait for the timeout
                if t == L.NAK:
                    self.stats["naks"] += 1
                    break                                    # the board could not read a frame: resend
                if t == mtype | L.REPLY_BIT and s == seq and b:
                    return b[0], b[1:]
                # a stale reply (an earlier request's duplicate): ignore
        raise LinkError(f"no reply from {self.url} to {name} after {self.retries + 1} tries "
                        f"(timeout {timeout or self.timeout:g} s each)")

    def call(self, name: str, body: bytes = b"", timeout: float | None = None) -> bytes:
        """request() that raises BoardRefused unless the board answered OK."""
        st, data = self.request(name, body, timeout)
        if st != L.ERR["OK"]:
            raise BoardRefused(f"{name} refused by the board at {self.url}: "
                               f"{L.ERROR_TEXT.get(st, f'error {st}')}")
        return data

    # -------------------------------------------------------- commands
    def hello(self) -> L.Hello:
        """What the board is and runs (HELLO)."""
        d = self.call("HELLO")
        try:
            return L.Hello.parse(d)
        except L.FrameError as e:         # intact frame, other layout: not this protocol's firmware
            raise LinkError(f"unreadable HELLO reply from {self.url}: {e}") from None

    # A cell's own state crosses the link whole (L.STATE_BYTES: the int8 channels, then
    # the packed error-feedback remainders); here it is the own state in units of
    # 2^-ef_bits steps (formats.split_own), int8 for a genome without error feedback.
    @staticmethod
    def _own_in(state: np.ndarray, ef_bits: int) -> bytes:
        st, r = F.split_own(np.asarray(state).reshape(1, 16), ef_bits)
        return st.tobytes() + r.tobytes()

    @staticmethod
    def _own_out(body: bytes, ef_bits: int) -> np.ndarray:
        raw = np.frombuffer(body[:L.STATE_BYTES], np.uint8)
        if not ef_bits:
            return raw[:16].view(np.int8).copy()
        return F.join_own(raw[:16].view(np.int8), raw[16:], ef_bits)[0]

    def get_state(self, ef_bits: int = 0) -> np.ndarray:
        return self._own_out(self.call("STATE_GET"), ef_bits)

    def set_state(self, state: np.ndarray, ef_bits: int = 0) -> None:
        self.call("STATE_SET", self._own_in(state, ef_bits))

    def set_neighbours(self, inbox: np.ndarray) -> None:
        self.call("NEIGHBOURS_SET", np.asarray(inbox, np.int8).reshape(128).tobytes())

    @staticmethod
    def _step_body(op: str, fire: bool, rot: tuple[int, int] | None) -> bytes:
        if op not in ("update", "tentative"):
            raise ValueError(f"op must be 'update' or 'tentative', got {op!r}")
        c, s = rot if rot is not None else (0, 0)
        return struct.pack("<BBBhh", op == "tentative", bool(fire), rot is not None, c, s)

    def step(self, op: str = "update", fire: bool = True, rot: tuple[int, int] | None = None,
             ef_bits: int = 0) -> tuple[int, np.ndarray]:
        """One update (alive rule) or tentative step of the board's cell -> (result, new own
        state); result 0 dormant, 1 zeroed, 2 updated, 3 not fired."""
        d = self.call("STEP", self._step_body(op, fire, rot))
        return d[0], self._own_out(d[1:], ef_bits)

    def cell(self, state: np.ndarray, inbox: np.ndarray, op: str = "update", fire: bool = True,
             rot: tuple[int, int] | None = None, ef_bits: int = 0) -> tuple[int, np.ndarray]:
        """Set the own state and the 8 neighbour states (int8) and step, in one round trip."""
        body = (self._own_in(state, ef_bits) + np.asarray(inbox, np.int8).reshape(128).tobytes()
                + self._step_body(op, fire, rot))
        d = self.call("CELL", body)
        return d[0], self._own_out(d[1:], ef_bits)

    def rgb(self) -> np.ndarray:
        return np.frombuffer(self.call("RGB"), np.uint8).copy()

    def reset(self) -> None:
        self.call("RESET")

    # -------------------------------------------------------- flashing
    def flash(self, image: L.Image, progress: Callable[[int, int], None] | None = None,
              resume: bool = True, stop_after: int | None = None, hello: L.Hello | None = None
              ) -> FlashResult:
        """Write image into the inactive slot, verify its CRC32 and activate it.

        A session id derived from the image lets a second run resume where an
        interrupted one stopped (the board keeps the session while it runs).
        stop_after=k stops after k chunk writes, before the verify (the tests' cut-off
        flashes), and returns with slot -1.  hello: this board's HELLO reply when the
        caller has just asked for it (saves the round trip); asked here otherwise.
        BoardRefused when the board cannot take the genome or refuses a step, LinkError
        when the link fails; either way the previous genome stays active."""
        t0 = time.perf_counter()
        s0 = dict(self.stats)
        if hello is None:
            hello = self.hello()
        if hello.capacity != len(image.genome):
            raise BoardRefused(f"the board holds genomes of {hello.capacity} B, this one has {len(image.genome)} B")
        if hello.format_version != image.format_version:
            raise BoardRefused(f"the board runs fixed-point format {hello.format_version}, "
                               f"the model is format {image.format_version}")
        header = image.header()
        session = L.crc32(header + struct.pack("<I", image.model_hash))
        begin = header + struct.pack("<IB", session, L.SESSION_RESUME if resume else 0)

        def flash_begin() -> int:
            """(Re)open the session; the board answers with the next offset it wants."""
            return struct.unpack("<I", self.call("FLASH_BEGIN", begin, timeout=self.slow_timeout))[0]

        nxt = flash_begin()
        resumed = nxt
        total = len(image.genome)
        writes = 0
        while True:
            while nxt < total:
                if stop_after is not None and writes >= stop_after:
                    return FlashResult(time.perf_counter() - t0, 0, 0, 0, resumed, -1, 0, 0, 0)
                chunk = image.genome[nxt:nxt + L.CHUNK]
                st, d = self.request("FLASH_WRITE", struct.pack("<I", nxt) + chunk)
                writes += 1
                if st == L.ERR["ERR_NO_SESSION"]:
                    nxt = flash_begin()
                    continue
                if st in (L.ERR["OK"], L.ERR["ERR_OFFSET"]) and len(d) == 4:
                    nxt = struct.unpack("<I", d)[0]
                elif st != L.ERR["OK"]:
                    raise BoardRefused(f"FLASH_WRITE at {nxt} refused: {L.ERROR_TEXT.get(st, st)}; "
                                       "the previous genome stays active")
                if progress:
                    progress(nxt, total)
            if stop_after is not None:
                return FlashResult(time.perf_counter() - t0, 0, 0, 0, resumed, -1, 0, 0, 0)
            st, d = self.request("FLASH_VERIFY", timeout=self.slow_timeout)
            if st == L.ERR["ERR_INCOMPLETE"]:
                nxt = struct.unpack("<I", d)[0]
                continue
            if st == L.ERR["ERR_NO_SESSION"]:
                nxt = flash_begin()
                continue
            if st == L.ERR["ERR_VERIFY"]:
                raise BoardRefused(f"verify failed: the slot's genome has CRC32 0x{struct.unpack('<I', d)[0]:08x}, "
                                   f"the image 0x{image.crc:08x}; not activated, the previous genome stays active")
            if st != L.ERR["OK"]:
                raise BoardRefused(f"FLASH_VERIFY refused: {L.ERROR_TEXT.get(st, st)}; "
                                   "not activated, the previous genome stays active")
            break
        st, d = self.request("FLASH_ACTIVATE", timeout=self.slow_timeout)
        if st == L.ERR["OK"]:
            slot, mh, gen = struct.unpack("<BII", d)
        else:
            h = self.hello()           # a repeated ACTIVATE whose first reply was lost
            if st != L.ERR["ERR_NO_SESSION"] or h.model_hash != image.model_hash:
                raise BoardRefused(f"FLASH_ACTIVATE refused: {L.ERROR_TEXT.get(st, st)}; "
                                   "the previous genome stays active")
            slot, mh, gen = h.active_slot or 0, h.model_hash or 0, h.generation
        if mh != image.model_hash:
            raise BoardRefused(f"the board activated model 0x{mh:08x}, expected 0x{image.model_hash:08x}")
        if progress:
            progress(total, total)
        return FlashResult(time.perf_counter() - t0,
                           self.stats["tx"] - s0["tx"] + self.stats["rx"] - s0["rx"],
                           self.stats["requests"] - s0["requests"], self.stats["retries"] - s0["retries"],
                           resumed, slot, gen, mh, image.crc)


# ---------------------------------------------------------------- builds of the link firmware
def _sources_key() -> str:
    h = hashlib.sha1()
    for sub in ("core", "link", "ports/host", "ports/cortex-m0", "ports/avr", "tools"):
        for f in sorted((FIRMWARE / sub).glob("*")):
            if f.is_file() and f.suffix in (".c", ".h", ".S", ".ld"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    h.update((FIRMWARE / "Makefile").read_bytes())
    return h.hexdigest()[:12]


ARTEFACTS = {"host": "libnca_link.so", "cortex-m0": "nca_link_m0.elf", "avr": "nca_link_avr.elf",
             "fuzz": "nca_link_fuzz"}


def link_firmware(target: str) -> Path:
    """Build (once per source version, in the codegen cache) the link firmware of a target
    and return its artefact: libnca_link.so (host), nca_link_m0.elf or nca_link_avr.elf."""
    from .backends import cache_dir
    from .targets import make
    mk_target = "host" if target == "fuzz" else target
    root = cache_dir() / f"link-{_sources_key()}" / mk_target
    art = root / ARTEFACTS[target]
    if art.exists():
        return art
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mk_target}.", dir=root.parent))
    try:
        make(FIRMWARE, mk_target, variables=("APP=link", f"BUILD={tmp}"))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)     # built meanwhile by another process
    return art


_HOST_LIB: ctypes.CDLL | None = None


def host_link_library() -> ctypes.CDLL:
    global _HOST_LIB
    if _HOST_LIB is None:
        lib = ctypes.CDLL(str(link_firmware("host")))
        lib.nca_host_link_io.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        lib.nca_host_link_io.restype = ctypes.c_size_t
        lib.nca_host_link_flash.argtypes = [ctypes.c_uint8]
        lib.nca_host_link_flash.restype = ctypes.c_void_p
        lib.nca_host_link_active.restype = ctypes.c_int
        _HOST_LIB = lib
    return _HOST_LIB


# ---------------------------------------------------------------- emulated boards
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_tools(target: str) -> list[tuple[str, str]]:
    """(executable, Debian package) pairs an emulated board of target lacks."""
    from .targets import missing_tools
    return missing_tools(target, run=True)


_LIVE: set[subprocess.Popen] = set()


@atexit.register
def _kill_left_over() -> None:
    """Emulators this process started and did not stop (an exception mid-run): killed by pid."""
    for p in list(_LIVE):
        if p.poll() is None:
            p.kill()


class Emulator:
    """An emulated board with the link firmware, its UART on 127.0.0.1:port
    (`url` = socket://...).  Stopping kills the process it started, by its pid;
    the AVR bridge keeps its flash in `flash_file`, so a restart keeps the genomes."""

    def __init__(self, target: str, flash_file: Path | None = None, log: Path | None = None,
                 pty: bool = False):
        if target not in EMULATED:
            raise UserError(f"no emulated board {target!r}; choose one of {', '.join(EMULATED)}")
        from .targets import check_toolchain
        check_toolchain(target, run=True)
        self.target = target
        self.elf = link_firmware(target)
        self.flash_file = flash_file
        if pty and target != "avr":
            raise UserError("a pty UART is the simavr bridge's mode (target avr); QEMU boards use TCP")
        self.pty = pty
        self.pty_path = ""
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log = log
        self._logf: Any = None

    @property
    def url(self) -> str:
        """What pyserial opens: socket://127.0.0.1:PORT, or the pty's device path."""
        return self.pty_path if self.pty else f"socket://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        if self.target == "cortex-m0":
            return ["qemu-system-arm", "-M", "microbit", "-nographic", "-monitor", "none",
                    "-kernel", str(self.elf),
                    "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on"]
        bridge = self.elf.parent / "simavr_bridge"
        return [str(bridge)] + (["--pty"] if self.pty else ["--tcp", str(port)]) + (
            ["--flash", str(self.flash_file)] if self.flash_file else []) + [str(self.elf)]

    def _start_pty(self) -> Emulator:
        self._tmp = tempfile.TemporaryDirectory(prefix="nca-simavr-")
        log = Path(self._tmp.name) / "bridge.log"
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(self.command(0), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._logf)
        _LIVE.add(self.proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            for ln in log.read_text(errors="replace").splitlines():
                if ln.startswith("pty "):
                    self.pty_path = ln[4:].strip()
                    return self
            time.sleep(0.02)
        self.stop()
        raise LinkError(f"the simavr bridge did not open a pty ({' '.join(self.command(0))})")

    def start(self) -> Emulator:
        if self.pty:
            return self._start_pty()
        for _ in range(5):
            self.port = free_port()
            self._logf = open(self._log, "ab") if self._log else subprocess.DEVNULL
            self.proc = subprocess.Popen(self.command(self.port), stdin=subprocess.DEVNULL,
                                         stdout=self._logf, stderr=self._logf)
            _LIVE.add(self.proc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        pass
                    break
                except OSError:
                    time.sleep(0.02)
            if self.proc.poll() is None:
                return self
            self.stop()
        raise LinkError(f"the {self.target} emulator did not start ({' '.join(self.command(self.port))})")

    def board(self, **kw: Any) -> Board:
        return Board(self.url, **kw)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            _LIVE.discard(p)
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        if self._logf not in (None, subprocess.DEVNULL):
            self._logf.close()
        self._logf = None

    close = stop

    def restart(self) -> Emulator:
        self.stop()
        return self.start()

    def __enter__(self) -> Emulator:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- boards inside the simulated swarm
def _angle(params: Any) -> float:
    return F.angle_of_kernels(params.kxy)


class BoardCells(CellBackend):
    """A swarm backend (sim.backends.CellBackend) in which some cells are boards.

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
        from .backends import lockstep_check
        lockstep_check(self.fmt)
        _, s = self._run(c, state, inbox, "tentative")
        out[c] = F.dequantize_fine(s, self.fmt)

    def set_params(self, params: Any) -> None:
        from .backends import quantized
        q = quantized(params)
        if q.model_hash != self.model_hash:
            raise LinkError(f"the boards run model 0x{self.model_hash:08x}; the new parameters are model "
                            f"0x{q.model_hash:08x} (flash it first)")
        self.base.set_params(params)
        self._set_angle(_angle(params))


def ensure_model(board: Board, image: L.Image, log: Callable[[str], None] | None = None) -> None:
    """Flash image unless the board already runs it (one HELLO for both)."""
    hello = board.hello()
    if hello.model_hash != image.model_hash:
        r = board.flash(image, hello=hello)
        if log:
            log(f"flashed model 0x{image.model_hash:08x} to {board.url} in {r.seconds:.2f} s")


def board_cells(params: Any, boards: dict[int, Board], base: Any = None,
                log: Callable[[str], None] | None = None) -> BoardCells:
    """BoardCells for Params: the boards get the model's genome if they lack it."""
    from .backends import FixedBackend, quantized
    q = quantized(params)
    image = L.image_of(q)
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
