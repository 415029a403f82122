"""Emulated boards running the link firmware: a Cortex-M0 (micro:bit) under
`qemu-system-arm -M microbit`, or an ATmega328P under simavr
(firmware/tools/simavr_bridge.c), each with its UART on a TCP port (or, for the
AVR, a pty). The firmware is built once per source version by `codegen.toolchain`.
The micro:bit's LED matrix is read back from QEMU's GPIO trace (`leds`).
"""
from __future__ import annotations

import atexit
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from codegen.toolchain import check_toolchain, link_firmware, missing_tools
from sim.errors import UserError

from .client import Board
from .errors import LinkError

EMULATED = ("cortex-m0", "avr")

# micro:bit v1 LED matrix (its schematic): (row, column) of the 3 x 9 wiring -> (x, y)
# of the 5 x 5 LEDs; rows are P0.13-P0.15 (high = on), columns P0.04-P0.12 (low = on).
MICROBIT_MATRIX = {(r, c): xy for c, col in enumerate((
    ((0, 0), (4, 2), (2, 4)), ((2, 0), (0, 2), (4, 4)), ((4, 0), (2, 2), (0, 4)),
    ((4, 3), (1, 0), (0, 1)), ((3, 3), (3, 0), (1, 1)), ((2, 3), (3, 4), (2, 1)),
    ((1, 3), (1, 4), (3, 1)), ((0, 3), None, (4, 1)), ((1, 2), None, (3, 2))))
    for r, xy in enumerate(col) if xy is not None}
_GPIO_OUT = re.compile(r"nrf51_gpio_write offset 0x504 value 0x([0-9a-f]+)")


def microbit_frame(outs: Sequence[int]) -> np.ndarray | None:
    """The 5x5 LEDs (bool, [y, x]) lit by the last full scan (one write of P0's OUT
    per row) among the OUT values `outs`; None before three rows were driven."""
    rows: dict[int, int] = {}
    for v in reversed(outs):
        r = [k for k in range(3) if v >> (13 + k) & 1]
        if len(r) == 1 and r[0] not in rows:
            rows[r[0]] = v
            if len(rows) == 3:
                break
    if len(rows) < 3:
        return None
    img = np.zeros((5, 5), bool)
    for r, v in rows.items():
        for c in range(9):
            if not v >> (4 + c) & 1 and (r, c) in MICROBIT_MATRIX:
                x, y = MICROBIT_MATRIX[(r, c)]
                img[y, x] = True
    return img


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
    Cortex-M0 only: `elf` runs another build of the link firmware, `qemu_args` go to
    QEMU as they are, `leds=True` traces the GPIO writes so that `leds()` reads the
    LED matrix.
    boot (AVR): what the boot section holds: the firmware's own SPM routine ("own", the
    ISP image), the tests' stand-in for Optiboot >= 8's do_spm ("optiboot"), or nothing
    ("none": a boot loader without do_spm; the board refuses to flash genomes).
    log: the emulator's stderr is appended there (the AVR bridge's reports)."""

    def __init__(self, target: str, flash_file: Path | None = None, log: Path | None = None,
                 pty: bool = False, elf: Path | None = None, qemu_args: Sequence[str] = (),
                 leds: bool = False, boot: str = "own"):
        if target not in EMULATED:
            raise UserError(f"no emulated board {target!r}; choose one of {', '.join(EMULATED)}")
        check_toolchain(target, run=True)
        self.target = target
        self.elf = Path(elf) if elf else link_firmware(target)
        self.flash_file = flash_file
        if pty and target != "avr":
            raise UserError("a pty UART is the simavr bridge's mode (target avr); QEMU boards use TCP")
        if (qemu_args or leds) and target != "cortex-m0":
            raise UserError("qemu_args and leds are for the QEMU board (target cortex-m0)")
        self.qemu_args = list(qemu_args)
        self._trace_dir = tempfile.TemporaryDirectory(prefix="nca-qemu-") if leds else None
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
            trace = (["-trace", f"enable=nrf51_gpio_write,file={self._trace_file}"]
                     if self._trace_dir else [])
            return ["qemu-system-arm", "-M", "microbit", "-nographic", "-monitor", "none",
                    "-kernel", str(self.elf),
                    "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on"] + trace + self.qemu_args
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

    @property
    def _trace_file(self) -> Path:
        assert self._trace_dir is not None
        return Path(self._trace_dir.name) / "gpio.log"

    def leds(self) -> np.ndarray | None:
        """The micro:bit's 5x5 LEDs ([y, x], bool) in the last full scan QEMU traced
        (an Emulator made with leds=True); None before one."""
        if self._trace_dir is None:
            raise UserError("leds() reads the GPIO trace of an Emulator made with leds=True")
        f = self._trace_file
        text = f.read_text(errors="replace") if f.exists() else ""
        text = text[:text.rfind("\n") + 1]        # whole lines: QEMU may be writing the last
        return microbit_frame([int(v, 16) for v in _GPIO_OUT.findall(text)])

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
