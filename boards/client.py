"""`Board`: the host's client of one cell board over the cell link
(firmware/PROTOCOL.md, `boards.protocol`): identify, flash a genome (resume,
retry, verify, activate), set the neighbours, step, read the state and the LED
colour, reset. `port` is any pyserial URL or device (`socket://127.0.0.1:4321`,
`loop://`, `/dev/ttyACM0`, `COM3`) or a transport object (`boards.transport`).
"""
from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from codegen import formats as F

from . import protocol
from .errors import BoardRefused, LinkError, NoWriter
from .transport import open_port


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
        # Two delimiters: the first ends any partial frame the board holds, so the second is
        # surely an empty frame, on which the board forgets its last reply: a first request
        # that repeats the previous session's last one (the same type, seq and CRC: 1 in 256
        # with a random seq) is run, not answered with that session's reply.
        try:
            self.ser.write(b"\x00\x00")
        except OSError as e:              # serial.SerialException is an OSError
            raise LinkError(f"lost the link to {self.url}: {e}") from None
        self.stats["tx"] += 2

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
        mtype = protocol.MSG[name]
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        frame = protocol.encode_frame(mtype, seq, body)
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
                    t, s, b = protocol.decode_frame(raw)
                except protocol.FrameError:
                    continue                                 # a damaged reply: wait for the timeout
                if t == protocol.NAK:
                    self.stats["naks"] += 1
                    break                                    # the board could not read a frame: resend
                if t == mtype | protocol.REPLY_BIT and s == seq and b:
                    return b[0], b[1:]
                # a stale reply (an earlier request's duplicate): ignore
        raise LinkError(f"no reply from {self.url} to {name} after {self.retries + 1} tries "
                        f"(timeout {timeout or self.timeout:g} s each)")

    def call(self, name: str, body: bytes = b"", timeout: float | None = None) -> bytes:
        """request() that raises BoardRefused unless the board answered OK."""
        st, data = self.request(name, body, timeout)
        if st != protocol.ERR["OK"]:
            raise BoardRefused(f"{name} refused by the board at {self.url}: "
                               f"{protocol.ERROR_TEXT.get(st, f'error {st}')}")
        return data

    # -------------------------------------------------------- commands
    def hello(self) -> protocol.Hello:
        """What the board is and runs (HELLO)."""
        d = self.call("HELLO")
        try:
            return protocol.Hello.parse(d)
        except protocol.FrameError as e:         # intact frame, other layout: not this protocol's firmware
            raise LinkError(f"unreadable HELLO reply from {self.url}: {e}") from None

    # A cell's own state crosses the link whole (protocol.STATE_BYTES: the int8 channels, then
    # the packed error-feedback remainders); here it is the own state in units of
    # 2^-ef_bits steps (formats.split_own), int8 for a genome without error feedback.
    @staticmethod
    def _own_in(state: np.ndarray, ef_bits: int) -> bytes:
        st, r = F.split_own(np.asarray(state).reshape(1, 16), ef_bits)
        return st.tobytes() + r.tobytes()

    @staticmethod
    def _own_out(body: bytes, ef_bits: int) -> np.ndarray:
        raw = np.frombuffer(body[:protocol.STATE_BYTES], np.uint8)
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
    def flash(self, image: protocol.Image, progress: Callable[[int, int], None] | None = None,
              resume: bool = True, stop_after: int | None = None, hello: protocol.Hello | None = None
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
        if hello.writer == "none":
            raise NoWriter(f"{self.url} ({hello.board}) cannot write genomes into its flash: no SPM routine "
                           "in its boot section")
        if hello.capacity != len(image.genome):
            raise BoardRefused(f"the board holds genomes of {hello.capacity} B, this one has {len(image.genome)} B")
        if hello.format_version != image.format_version:
            raise BoardRefused(f"the board runs fixed-point format {hello.format_version}, "
                               f"the model is format {image.format_version}")
        header = image.header()
        session = protocol.crc32(header + struct.pack("<I", image.model_hash))
        begin = header + struct.pack("<IB", session, protocol.SESSION_RESUME if resume else 0)

        def flash_begin() -> int:
            """(Re)open the session; the board answers with the next offset it wants."""
            st, d = self.request("FLASH_BEGIN", begin, timeout=self.slow_timeout)
            if st == protocol.ERR["ERR_NO_WRITER"]:
                raise NoWriter(f"{self.url} ({hello.board}) cannot write genomes into its flash: "
                               f"{protocol.ERROR_TEXT[st]}")
            if st != protocol.ERR["OK"]:
                raise BoardRefused(f"FLASH_BEGIN refused by the board at {self.url}: "
                                   f"{protocol.ERROR_TEXT.get(st, f'error {st}')}")
            return struct.unpack("<I", d)[0]

        nxt = flash_begin()
        resumed = nxt
        total = len(image.genome)
        writes = 0
        while True:
            while nxt < total:
                if stop_after is not None and writes >= stop_after:
                    return FlashResult(time.perf_counter() - t0, 0, 0, 0, resumed, -1, 0, 0, 0)
                chunk = image.genome[nxt:nxt + protocol.CHUNK]
                st, d = self.request("FLASH_WRITE", struct.pack("<I", nxt) + chunk)
                writes += 1
                if st == protocol.ERR["ERR_NO_SESSION"]:
                    nxt = flash_begin()
                    continue
                if st in (protocol.ERR["OK"], protocol.ERR["ERR_OFFSET"]) and len(d) == 4:
                    nxt = struct.unpack("<I", d)[0]
                elif st != protocol.ERR["OK"]:
                    raise BoardRefused(f"FLASH_WRITE at {nxt} refused: {protocol.ERROR_TEXT.get(st, st)}; "
                                       "the previous genome stays active")
                if progress:
                    progress(nxt, total)
            if stop_after is not None:
                return FlashResult(time.perf_counter() - t0, 0, 0, 0, resumed, -1, 0, 0, 0)
            st, d = self.request("FLASH_VERIFY", timeout=self.slow_timeout)
            if st == protocol.ERR["ERR_INCOMPLETE"]:
                nxt = struct.unpack("<I", d)[0]
                continue
            if st == protocol.ERR["ERR_NO_SESSION"]:
                nxt = flash_begin()
                continue
            if st == protocol.ERR["ERR_VERIFY"]:
                raise BoardRefused(f"verify failed: the slot's genome has CRC32 0x{struct.unpack('<I', d)[0]:08x}, "
                                   f"the image 0x{image.crc:08x}; not activated, the previous genome stays active")
            if st != protocol.ERR["OK"]:
                raise BoardRefused(f"FLASH_VERIFY refused: {protocol.ERROR_TEXT.get(st, st)}; "
                                   "not activated, the previous genome stays active")
            break
        st, d = self.request("FLASH_ACTIVATE", timeout=self.slow_timeout)
        if st == protocol.ERR["OK"]:
            slot, mh, gen = struct.unpack("<BII", d)
        else:
            h = self.hello()           # a repeated ACTIVATE whose first reply was lost
            if st != protocol.ERR["ERR_NO_SESSION"] or h.model_hash != image.model_hash:
                raise BoardRefused(f"FLASH_ACTIVATE refused: {protocol.ERROR_TEXT.get(st, st)}; "
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
