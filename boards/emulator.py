"""Emulated boards running the link firmware: a Cortex-M0 (micro:bit) under
`qemu-system-arm -M microbit`, or an ATmega328P under simavr
(firmware/tools/simavr_bridge.c), each with its UART on a TCP port (or, for the
AVR, a pty). The firmware is built once per source version by `codegen.toolchain`.
"""
from __future__ import annotations

import atexit
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from codegen.toolchain import check_toolchain, link_firmware, missing_tools
from sim.errors import UserError

from .client import Board
from .errors import LinkError

EMULATED = ("cortex-m0", "avr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_tools(target: str) -> list[tuple[str, str]]:
    """(executable, Debian package) pairs an emulated board of target lacks."""
    return missing_tools(target, run=True)


_LIVE: set[subprocess.Popen] = set()


@atexit.register
def _kill_left_over() -> None:
    """Emulators this process started and did not stop (an exception mid-run): killed by pid."""
    for p in list(_LIVE):
        if p.poll() is None:
            p.kill()


AVR_BOOTS = ("own", "optiboot", "none")


class Emulator:
    """An emulated board with the link firmware, its UART on 127.0.0.1:port
    (`url` = socket://...).  Stopping kills the process it started, by its pid;
    the AVR bridge keeps its flash in `flash_file`, so a restart keeps the genomes.
    boot (AVR): what the boot section holds: the firmware's own SPM routine ("own", the
    ISP image), the tests' stand-in for Optiboot >= 8's do_spm ("optiboot"), or nothing
    ("none": a boot loader without do_spm; the board refuses to flash genomes).
    log: the emulator's stderr is appended there (the AVR bridge's reports)."""

    def __init__(self, target: str, flash_file: Path | None = None, log: Path | None = None,
                 pty: bool = False, boot: str = "own"):
        if target not in EMULATED:
            raise UserError(f"no emulated board {target!r}; choose one of {', '.join(EMULATED)}")
        check_toolchain(target, run=True)
        self.target = target
        self.elf = link_firmware(target)
        self.flash_file = flash_file
        if pty and target != "avr":
            raise UserError("a pty UART is the simavr bridge's mode (target avr); QEMU boards use TCP")
        self.pty = pty
        if boot not in AVR_BOOTS or (boot != "own" and target != "avr"):
            raise UserError(f"boot {boot!r}: the AVR board's boot section is one of {', '.join(AVR_BOOTS)}")
        self.boot = boot
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
        boot = {"own": [], "none": ["--boot", "none"],
                "optiboot": ["--boot", str(self.elf.parent / "optiboot_shim.elf")]}[self.boot]
        return [str(bridge)] + (["--pty"] if self.pty else ["--tcp", str(port)]) + (
            ["--flash", str(self.flash_file)] if self.flash_file else []) + boot + [str(self.elf)]

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
