"""nca-flash: write a model's genome to a cell board over its serial port.

    nca-flash --port URL_OR_DEVICE --model M.npz [--baud N] [--reset dtr|rts] [--force]
    nca-flash --list
    nca-flash --image FW --board uno|microbit --port /dev/ttyACM0 [--model M.npz]
    nca-flash --mesh --port /dev/ttyACM0 --model M.npz     (a grid of wired cells, MESH.md)

The genome goes into the board's inactive flash slot in chunks (each acknowledged,
retransmitted on loss), is verified by CRC32 and only then activated, so an
interrupted or failed flash leaves the previous genome running; run the same
command again and it resumes where it stopped (while the board has not restarted).
The port is any pyserial URL or device: socket://127.0.0.1:PORT (an emulated
board), loop://, /dev/ttyACM0, COM3.  --image first writes the firmware itself
with the board's own uploader (avrdude for the Uno's serial boot loader, OpenOCD
over the micro:bit's CMSIS-DAP interface for the nRF51); for the Uno that is the
application alone (nca_link_avr.hex), since a serial boot loader cannot write the
boot section.  A board that cannot write genomes at all (an Uno whose boot loader has
no do_spm) is told the two ways out in one line.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import serial.tools.list_ports

from codegen.quantize import quantized
from sim import paths
from sim.errors import ArgParser, UserError, cli_entry
from sim.progress import Progress
from sim.weights import load

from . import protocol
from .client import Board
from .errors import BoardRefused, LinkError, NoWriter
from .mesh_host import push_genome
from .transport import open_port

PROG = "nca-flash"

# board: (command template, executable, Debian package)
UPLOADERS: dict[str, tuple[list[str], str, str]] = {
    "uno": (["avrdude", "-p", "atmega328p", "-c", "arduino", "-P", "{port}", "-b", "115200", "-D",
             "-U", "flash:w:{image}"], "avrdude", "avrdude"),
    "microbit": (["openocd", "-f", "interface/cmsis-dap.cfg", "-f", "target/nrf51.cfg",
                  "-c", "program {image} verify reset exit"], "openocd", "openocd"),
}


# The two ways out for a board that cannot write its genome slots (HELLO writer "none": an
# Uno whose boot loader has no do_spm).  The fuses: 16 MHz crystal (low 0xFF), a 512-byte
# boot section that the reset enters (high 0xDE), brown-out at 4.3 V (extended 0xFC, what
# 16 MHz needs); lock 0x2F after writing: SPM cannot overwrite the boot loader, and the
# application may read it (how the firmware finds do_spm).  firmware/README.md.
NO_WRITER_HELP = (
    "{what} cannot write genomes into its flash (its boot section has no SPM routine: the Uno's stock "
    "boot loader has none); either upload a harness image with the genome built in (nca-codegen --model "
    "M.npz --target avr --out DIR --build, then nca-flash --image DIR/build/avr/nca_avr.elf --board uno "
    "--port PORT), or install a boot loader with do_spm once with an ISP (Optiboot >= 8, e.g. MiniCore "
    "2.x's optiboot_flash hex for the ATmega328P at 16 MHz and 115200 baud): avrdude -c PROGRAMMER "
    "-P ISP_PORT -p atmega328p -e -U lock:w:0x3F:m -U efuse:w:0xFC:m -U hfuse:w:0xDE:m -U lfuse:w:0xFF:m "
    "-U flash:w:OPTIBOOT_HEX:i -U lock:w:0x2F:m, then nca-flash --image nca_link_avr.hex --board uno "
    "--port PORT")


def elf_sections(path: str) -> set[str]:
    """The section names of an ELF32 file (empty for anything else): a few lines instead of
    a dependency, to see whether an image carries a boot section."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 52 or data[4] != 1:
        return set()
    try:
        shoff, = struct.unpack_from("<I", data, 32)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 46)
        def shdr(i: int) -> tuple[int, ...]:
            return struct.unpack_from("<IIIIII", data, shoff + i * shentsize)
        strtab = shdr(shstrndx)[4]
        names = set()
        for i in range(shnum):
            name = shdr(i)[0]
            names.add(data[strtab + name:data.index(b"\0", strtab + name)].decode("ascii", "replace"))
        return names
    except (struct.error, ValueError, IndexError):
        return set()


def uploader_command(board: str, image: str, port: str | None) -> list[str]:
    """The uploader's command line for the firmware image (what --image runs)."""
    if board not in UPLOADERS:
        raise UserError(f"unknown board {board!r} for --image; choose one of {', '.join(UPLOADERS)}")
    template, _, _ = UPLOADERS[board]
    if "{port}" in " ".join(template) and not port:
        raise UserError(f"--image for {board} needs --port (the serial device of its boot loader)")
    return [a.format(port=port or "", image=image) for a in template]


def upload_image(board: str, image: str, port: str | None, dry_run: bool = False) -> str:
    """Run the board's uploader (one-line error naming the apt package if it is missing)."""
    if not Path(image).is_file():
        raise UserError(f"firmware image {image} does not exist")
    if board == "uno" and ".bootloader" in elf_sections(image):
        raise UserError(f"{image} carries a boot-section routine, which the Uno's serial boot loader cannot (and "
                        "must not) write: upload nca_link_avr.hex (the application alone) with --image, or write "
                        "nca_link_avr_isp.hex with an ISP (fuses: firmware/README.md)")
    cmd = uploader_command(board, image, port)
    exe, pkg = UPLOADERS[board][1], UPLOADERS[board][2]
    if dry_run:
        return " ".join(cmd)
    if shutil.which(exe) is None:
        raise UserError(f"--image for {board} needs {exe}; install it with: "
                        f"apt-get install -y --no-install-recommends {pkg}")
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{exe} failed (exit {r.returncode}): {last}")
    return " ".join(cmd)


def list_ports() -> list[str]:
    """One line per serial port pyserial finds (emulated boards are reached by URL instead)."""
    return [f"{p.device}\t{p.description}" + (f"\t{p.hwid}" if p.hwid and p.hwid != "n/a" else "")
            for p in sorted(serial.tools.list_ports.comports(), key=lambda p: p.device)]


def pulse_reset(ser, line: str) -> None:
    """Reset the board through DTR or RTS where the port has them (ptys and sockets do not)."""
    try:
        setattr(ser, line, False)
        time.sleep(0.1)
        setattr(ser, line, True)
        time.sleep(0.5)        # the Uno's boot loader waits before it starts the firmware
        ser.reset_input_buffer()
    except (OSError, AttributeError, ValueError) as e:
        print(f"{PROG}: warning: cannot pulse {line.upper()} on this port ({e}); not reset", file=sys.stderr)


def _parser() -> ArgParser:
    ap = ArgParser(prog=PROG, description="Flash a model's genome to a cell board over a serial port "
                   "(pyserial URL or device; socket:// reaches an emulated board).")
    ap.add_argument("--port", help="serial URL or device, e.g. socket://127.0.0.1:4321, /dev/ttyACM0, COM3")
    ap.add_argument("--model", help="weights .npz or a shipped model's name (quantised here, as nca-codegen does)")
    ap.add_argument("--baud", type=int, default=115200, help="baud rate (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="list serial ports and exit")
    ap.add_argument("--reset", choices=("none", "dtr", "rts"), default="none",
                    help="pulse DTR or RTS before flashing (the Uno resets on DTR)")
    ap.add_argument("--force", action="store_true", help="flash even if the board already runs this model")
    ap.add_argument("--no-resume", action="store_true", help="start from the first chunk")
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each reply (default: %(default)s)")
    ap.add_argument("--retries", type=int, default=8, help="retransmissions per request (default: %(default)s)")
    ap.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                    help="seconds a socket:// port is tried, per attempt, until the emulated board behind it "
                         "listens (default: %(default)s)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="times the port is opened and the flash resumed when the link fails: no reply, the "
                         "port cannot be opened or is lost; a board's refusal is final (default: %(default)s)")
    ap.add_argument("--progress", action="store_true", default=None, help="progress bar (default: on a terminal)")
    ap.add_argument("--image", metavar="FW", help="first write the firmware image with the board's uploader")
    ap.add_argument("--board", choices=tuple(UPLOADERS), help="the board of --image: uno (avrdude), "
                    "microbit (openocd)")
    ap.add_argument("--dry-run", action="store_true", help="with --image: print the uploader command only")
    ap.add_argument("--mesh", action="store_true", help="the board is the host's board of a grid of wired "
                    "cells (the mesh firmware): the genome goes in as a neighbour would pass it on, and the "
                    "boards spread it through the grid (python -m boards.mesh_host census counts them)")
    ap.add_argument("--keep-state", action="store_true", help="with --mesh: the boards keep their states when "
                    "they activate the genome")
    return ap


def _main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.list:
        ports = list_ports()
        print("\n".join(ports) if ports else "no serial ports found (emulated boards: use socket://HOST:PORT)")
        return 0
    if a.image:
        if not a.board:
            raise UserError("--image needs --board (uno or microbit)")
        line = upload_image(a.board, a.image, a.port, a.dry_run)
        print(line if a.dry_run else f"{PROG}: firmware {a.image} written with: {line}")
        if not a.model:
            return 0
    if not a.port:
        raise UserError("--port is required (a pyserial URL or device; --list shows the ports)")
    if not a.model:
        raise UserError("--model is required (a weights .npz)")
    if a.baud <= 0 or a.timeout <= 0 or a.retries < 0 or a.attempts < 1 or not a.connect_timeout >= 0:
        raise UserError("--baud and --timeout must be > 0, --retries and --connect-timeout >= 0 and --attempts >= 1")
    if not paths.model_path(a.model).is_file():
        raise UserError(f"model {a.model} does not exist (a weights .npz or a shipped model's name)")
    try:
        model = load(a.model)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read model {a.model}: {e}") from None
    if a.keep_state and not a.mesh:
        raise UserError("--keep-state is for a grid of wired cells: --mesh")
    if a.mesh:
        q = quantized(model)
        ser = open_port(a.port, a.baud)
        try:
            gen = push_genome(ser, q, a.keep_state)
        finally:
            ser.close()
        print(f"{PROG}: the host's board at {a.port} runs model 0x{q.model_hash:08x}, generation {gen}; "
              f"the grid passes it on")
        return 0
    image = protocol.image_of(quantized(model))
    bar = Progress(len(image.genome), "B") if Progress.wanted(a.progress) else None
    last: Exception | None = None
    was_reset = False
    for attempt in range(a.attempts):
        try:
            board = Board(a.port, baud=a.baud, timeout=a.timeout, retries=a.retries,
                          connect_timeout=a.connect_timeout)
        except LinkError as e:
            last = e
            if attempt + 1 < a.attempts:
                time.sleep(a.timeout)   # a resetting board (or one re-enumerating on USB) is back soon
            continue
        try:
            if not was_reset and a.reset != "none":
                pulse_reset(board.ser, a.reset)
                was_reset = True
            hello = board.hello()
            if hello.model_hash == image.model_hash and not a.force:
                print(f"{PROG}: {a.port} ({hello.board}) already runs model 0x{image.model_hash:08x} "
                      f"(slot {'AB'[hello.active_slot or 0]}, generation {hello.generation}); --force flashes again")
                return 0
            r = board.flash(image, progress=bar, resume=not a.no_resume, hello=hello)
            if bar:
                bar.close()
            print(f"{PROG}: flashed model 0x{r.model_hash:08x} to {a.port} ({hello.board}): slot "
                  f"{'AB'[r.slot]}, generation {r.generation}, CRC32 0x{r.crc:08x} verified, "
                  f"{len(image.genome):,} B in {r.seconds:.2f} s ({r.requests} requests, {r.retries} retries"
                  + (f", resumed at {r.resumed_from:,} B" if r.resumed_from else "") + ")")
            return 0
        except NoWriter:
            raise UserError(NO_WRITER_HELP.format(what=f"the board at {a.port}")) from None
        except BoardRefused:
            raise                 # the board answered: asking again gets the same answer
        except LinkError as e:
            last = e              # the link failed: reopen the port and resume
        finally:
            board.close()
    raise UserError(f"{last} (gave up after {a.attempts} attempts; the previous genome stays active)")


main = cli_entry(_main)
main.prog = PROG   # type: ignore[attr-defined]
_main.prog = PROG  # type: ignore[attr-defined]

if __name__ == "__main__":
    sys.exit(main())
