"""Byte transports of the cell link: `open_port` (pyserial: a URL or device;
socket:// reaches an emulated board), `HostLink` (the host build of the link
firmware, libnca_link.so, in-process: the same C parser and slots, for fast
protocol tests) and `FaultyTransport` (corrupts, truncates, duplicates, reorders
and drops frames in both directions: the emulators never lose a byte; real
UARTs do). A transport is anything with write/read/in_waiting/reset_input_buffer.
"""
from __future__ import annotations

import ctypes
import random
import sys
import time
from typing import Any

import serial

from codegen.toolchain import link_firmware

from . import protocol
from .errors import LinkError


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
        lib.nca_host_link_geometry.argtypes = [ctypes.c_uint16, ctypes.c_uint16]
        lib.nca_host_link_cut_after.argtypes = [ctypes.c_uint32, ctypes.c_int]
        lib.nca_host_link_ops.restype = ctypes.c_uint32
        lib.nca_host_link_powered.restype = ctypes.c_int
        lib.nca_host_link_set_writer.argtypes = [ctypes.c_uint8]
        lib.nca_host_link_led.restype = ctypes.POINTER(ctypes.c_uint8 * 3)
        _HOST_LIB = lib
    return _HOST_LIB


class HostLink:
    """The host build of the link firmware, in-process, as a byte transport.
    Replies are ready as soon as a write returns (`instant`), so a lost frame is
    known at once instead of after a timeout."""

    instant = True

    def __init__(self, lib: ctypes.CDLL | None = None, wipe: bool = True, writer: str = "native"):
        self.lib = lib or host_link_library()
        if wipe:
            self.lib.nca_host_link_wipe()
        # "none": a board that cannot write its slots (an AVR without a boot-section SPM routine)
        self.lib.nca_host_link_set_writer({n: k for k, n in protocol.WRITERS.items()}[writer])
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

    # The slot writer as real flash works, one operation (a page erase, a page or word
    # programmed) at a time, and power cuts between or inside them (firmware/ports/host/link_host.c).
    def geometry(self, erase_bytes: int, write_bytes: int) -> None:
        """Flash operation sizes: erase page and write unit (ATmega328P 128/128, nRF51 1024/4)."""
        self.lib.nca_host_link_geometry(erase_bytes, write_bytes)

    def cut_after(self, n: int, torn: bool = True) -> None:
        """Power dies at the n-th flash operation from now (0: no cut): that one is the last
        to reach the flash, half done if torn; the board then neither reads nor answers
        until power_cycle()."""
        self.lib.nca_host_link_cut_after(n, int(torn))

    @property
    def ops(self) -> int:
        """Flash operations so far."""
        return int(self.lib.nca_host_link_ops())

    @property
    def powered(self) -> bool:
        return bool(self.lib.nca_host_link_powered())

    def flash(self, slot: int) -> ctypes.Array:
        """The slot's bytes (writable: tests corrupt them)."""
        p = self.lib.nca_host_link_flash(slot)
        return (ctypes.c_uint8 * protocol.SLOT_BYTES).from_address(p)

    def led(self) -> tuple[int, int, int]:
        """The colour the firmware last showed (nca_link_led: after every step)."""
        return tuple(self.lib.nca_host_link_led().contents)  # type: ignore[return-value]

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


# Whether a port is opened with DTR and RTS deasserted. An Uno resets when DTR is asserted
# (its auto-reset capacitor turns the edge into a reset pulse). Windows applies the lines'
# state given before the open, so deasserting them there opens the port without a reset.
# Linux and macOS raise DTR and RTS in the open call itself, before pyserial can set them;
# the one way to open without an edge there is to find them still raised from the last
# session (`stty -F /dev/ttyACM0 -hupcl` keeps the close from dropping them), which
# deasserting them during a session would undo, so there they are left as the OS raises them.
DEASSERT_AT_OPEN = sys.platform == "win32"


def open_port(port: str, baud: int = 115200, connect_timeout: float = 10.0) -> Any:
    """pyserial for a URL or device, opened without resetting the board where the OS allows
    it (DEASSERT_AT_OPEN); a socket:// URL is retried until the emulator listens."""
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            ser = serial.serial_for_url(port, baudrate=baud, timeout=0.02, write_timeout=10, do_not_open=True)
            if DEASSERT_AT_OPEN:
                ser.dtr = False
                ser.rts = False
            ser.open()
            return ser
        except (serial.SerialException, OSError, ValueError) as e:
            if not port.startswith("socket://") or time.monotonic() > deadline:
                raise LinkError(f"cannot open {port}: {e}") from None
            time.sleep(0.02)
