"""Build the firmware for a target, run it on cell inputs, and measure it.

One request/answer protocol (firmware/ports/common/harness.h) reaches every
build: the host harness on stdin/stdout, the Cortex-M0 build under
`qemu-system-arm -M microbit` (UART on stdio, exit by semihosting) and the AVR
build under simavr through firmware/tools/simavr_bridge.c. Measurements come
from the toolchains and emulators themselves:

- ROM: `size -A` of the core's objects (cell core, kernel, genome) as built,
  plus any libgcc routine they call; RAM: sizeof(nca_cell_t) (own state,
  gradients, accumulators and the 8 neighbour states), the rotation, the core's
  .data/.bss, and the worst stack of nca_cell_update: statically from
  `-fstack-usage` plus the assembly kernel's pushes, and dynamically by painting
  the stack in the harness (the larger is reported).
- Cycles: AVR exact, simavr's cycle counter between GPIOR0 marks. Cortex-M0:
  QEMU has no cycle model, so the figures are instructions: exact from the
  harness's TIMER0 under -icount shift=6 (M0_TICKS_PER_INSTRUCTION), and cycles
  estimated from QEMU's instruction trace of one update timed with the Cortex-M0
  table (`m0_cycles`, from the ARM Cortex-M0 technical reference manual). On a real
  nRF51 the same harness's TIMER0 ticks are CPU cycles (16 MHz both).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import UserError
from sim.paths import FIRMWARE, cache_dir

from . import emit
from . import formats as F
from .quantize import QModel

APT_PACKAGES = " ".join(ln.strip() for ln in (FIRMWARE / "apt-packages.txt").read_text().splitlines()
                        if ln.strip() and not ln.startswith("#"))
APT_COMMAND = f"apt-get install -y --no-install-recommends {APT_PACKAGES}"
TOOLS: dict[str, tuple[tuple[str, str], ...]] = {
    # target: (executable, Debian package)
    "host": (("gcc", "gcc"), ("make", "make")),
    "cortex-m0": (("arm-none-eabi-gcc", "gcc-arm-none-eabi"), ("make", "make")),
    "avr": (("avr-gcc", "gcc-avr"), ("gcc", "gcc"), ("make", "make")),
    "arduino": (("avr-gcc", "gcc-avr"), ("make", "make")),
    "mega2560": (("avr-gcc", "gcc-avr"), ("gcc", "gcc"), ("make", "make")),   # APP=mesh and its emulator
}
RUN_TOOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "cortex-m0": (("qemu-system-arm", "qemu-system-arm"),),
    "avr": (),
}
SIMAVR_HEADER = Path("/usr/include/simavr/sim_avr.h")
# The cell's budgets (docs/design.md, "The fixed-point contract"), asserted by the tests and printed by --report.
BUDGETS = {
    "cortex-m0": {"rom": 9000, "ram": 256, "cycles": 50000},
    "avr": {"ram": 256, "cycles": 120000},
}
# The Cortex-M0 harness times with TIMER0 at 16 MHz; under QEMU -icount shift=6 every
# instruction is 64 ns of virtual time, so 1.024 ticks per instruction.
M0_TICKS_PER_INSTRUCTION = 16e6 * 64e-9
CELL_STRUCT_BYTES = 16 + 32 + 32 + 128     # nca_cell_t (checked against the host build)
RESID_BYTES = F.RESID_BYTES                # ... plus the error-feedback nibbles of a model that has them
ROTATION_BYTES = 4


def cell_struct_bytes(ef_bits: int) -> int:
    """sizeof(nca_cell_t) for a model with ef_bits error-feedback bits."""
    return CELL_STRUCT_BYTES + (RESID_BYTES if ef_bits else 0)


class ToolchainError(UserError):
    """A tool a target needs is missing; the message has the install command."""


class BuildError(UserError):
    """The firmware did not build (the compiler's first error is in the message)."""


def missing_tools(target: str, run: bool = False) -> list[tuple[str, str]]:
    """(executable, package) pairs that are not installed for building (and running) target."""
    need = list(TOOLS[target]) + (list(RUN_TOOLS.get(target, ())) if run else [])
    out = [(exe, pkg) for exe, pkg in need if shutil.which(exe) is None]
    if target in ("avr", "mega2560") and not SIMAVR_HEADER.exists():
        out.append(("simavr headers", "libsimavr-dev"))
    if target in ("avr", "mega2560") and not Path("/usr/lib/avr/include/avr/io.h").exists() and shutil.which("avr-gcc"):
        out.append(("avr-libc headers", "avr-libc"))
    return out


def check_toolchain(target: str, run: bool = False) -> None:
    """Raise ToolchainError naming the exact apt command if a tool is missing."""
    miss = missing_tools(target, run)
    if miss:
        pkgs = " ".join(sorted({p for _, p in miss}))
        raise ToolchainError(f"target {target} needs {', '.join(e for e, _ in miss)}; install with: "
                             f"apt-get install -y --no-install-recommends {pkgs}")


# ---------------------------------------------------------------- build
@dataclass
class Build:
    """A built firmware folder."""
    target: str
    root: Path
    ef_bits: int = 0         # the model's error feedback: the harness sends and returns the nibbles

    @property
    def build_dir(self) -> Path:
        return self.root / "build" / self.target

    @property
    def artefact(self) -> Path:
        return {"host": self.build_dir / "nca_host", "cortex-m0": self.build_dir / "nca_m0.elf",
                "avr": self.build_dir / "nca_avr.elf", "arduino": self.build_dir / "nca_cell.o"}[self.target]

    @property
    def library(self) -> Path:
        return self.build_dir / "libnca.so"


def make(root: Path, target: str, jobs: int = 1, variables: tuple[str, ...] = ()) -> None:
    """Run make in a folder that emit.write_project laid out (or firmware/ itself, with
    variables such as APP=link BUILD=...)."""
    check_toolchain(target)
    r = subprocess.run(["make", "-s", f"-j{jobs}", "-C", str(root), f"TARGET={target}", *variables],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if "error" in ln.lower()]
        first = lines[0].strip() if lines else (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(f"firmware build for {target} failed in {root}: {first}")


def build(q: QModel, target: str, root: Path | None = None) -> Build:
    """Generate the project for `target` into root (a new temporary folder if None) and build it."""
    check_toolchain(target)
    root = Path(tempfile.mkdtemp(prefix=f"nca-{target}-")) if root is None else Path(root)
    emit.write_project(q, target, root)
    make(root, target)
    return Build(target, root, q.fmt.ef_bits)


# ---------------------------------------------------------------- the harness protocol
def own_bytes(own: np.ndarray, ef_bits: int) -> np.ndarray:
    """Own states (n, 16) -> the harness's bytes: the int8 state, then (error feedback)
    the packed remainders (formats.split_own)."""
    st, r = F.split_own(own, ef_bits)
    return np.concatenate([st.view(np.uint8), r], axis=1) if ef_bits else st.view(np.uint8)


def encode(states: np.ndarray, inboxes: np.ndarray, rot: tuple[int, int] | None = None,
           cmd: bytes = b"U", ef_bits: int = 0) -> bytes:
    """Requests for n cells: own states (n, 16) in 2^-ef_bits steps (the int8 states
    without error feedback), inboxes (n, 8, 16) int8; rot = (cos, sin) Q14."""
    own = own_bytes(states, ef_bits)
    inboxes = np.asarray(inboxes, np.int8).reshape(-1, 128)
    head = cmd + (bytes([1]) + struct.pack("<hh", *rot) if rot is not None else bytes([0, 0, 0, 0, 0]))
    return b"".join(head + s.tobytes() + i.tobytes() for s, i in zip(own, inboxes))


def decode(buf: bytes, n: int, cmd: bytes = b"U", ef_bits: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (n,), own states (n, 16) (int8, int16 with error feedback), ticks (n,)) from n answers."""
    nb = 16 + (RESID_BYTES if ef_bits else 0)
    size = (1 if cmd == b"U" else 0) + nb + 4
    if len(buf) < n * size:
        raise RuntimeError(f"harness answered {len(buf)} bytes, expected {n * size}")
    a = np.frombuffer(buf[:n * size], np.uint8).reshape(n, size)
    off = 1 if cmd == b"U" else 0
    codes = a[:, 0].astype(np.int64) if off else np.full(n, -1, np.int64)
    raw = a[:, off:off + nb]
    states = F.join_own(raw[:, :16].view(np.int8), raw[:, 16:], ef_bits) if ef_bits else raw.view(np.int8).copy()
    ticks = a[:, off + nb:].copy().view("<u4").ravel().astype(np.int64)
    return codes, states, ticks


def harness_command(b: Build, icount: bool = True) -> list[str]:
    if b.target == "host":
        return [str(b.artefact)]
    if b.target == "cortex-m0":
        return (["qemu-system-arm", "-M", "microbit", "-display", "none", "-monitor", "none",
                 "-serial", "stdio", "-semihosting-config", "enable=on,target=native"]
                + (["-icount", "shift=6"] if icount else []) + ["-kernel", str(b.artefact)])
    if b.target == "avr":
        return [str(b.build_dir / "simavr_bridge"), str(b.artefact)]
    raise ValueError(f"target {b.target} has no harness to run")


@dataclass
class RunResult:
    codes: np.ndarray
    states: np.ndarray
    ticks: np.ndarray
    cycles: np.ndarray          # AVR: exact cycles per call (else empty)
    stderr: str = ""


def run_cells(b: Build, states: np.ndarray, inboxes: np.ndarray, rot: tuple[int, int] | None = None,
              cmd: bytes = b"U", timeout: float = 300.0) -> RunResult:
    """Run n cells through the built harness (one request each, then 'Q')."""
    check_toolchain(b.target, run=True)
    n = len(states)
    req = encode(states, inboxes, rot, cmd, b.ef_bits) + b"Q"
    r = subprocess.run(harness_command(b), input=req, capture_output=True, timeout=timeout, check=False)
    err = r.stderr.decode(errors="replace")
    if r.returncode != 0:
        raise RuntimeError(f"{b.target} harness exited with {r.returncode}: {err[-500:]}")
    codes, out, ticks = decode(r.stdout, n, cmd, b.ef_bits)
    cycles = np.array([int(m) for m in re.findall(r"^cycles (\d+)$", err, re.MULTILINE)], np.int64)
    return RunResult(codes, out, ticks, cycles, err)


def identify(b: Build, timeout: float = 60.0) -> tuple[int, int]:
    """(harness version, model hash) the build reports."""
    r = subprocess.run(harness_command(b), input=b"IQ", capture_output=True, timeout=timeout, check=False)
    if len(r.stdout) < 8 or r.stdout[:3] != b"NCA":
        raise RuntimeError(f"{b.target} harness did not identify itself: {r.stdout[:16]!r}")
    return r.stdout[3], struct.unpack("<I", r.stdout[4:8])[0]


# ---------------------------------------------------------------- Cortex-M0 cycles from a QEMU trace
_M0_LOADSTORE = re.compile(r"^(ldr|str)")
_M0_BRANCH_COND = re.compile(r"^b(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le)(\.n|\.w)?$")


def _disassemble(elf: Path, objdump: str = "arm-none-eabi-objdump") -> dict[int, tuple[str, str, int]]:
    """address -> (mnemonic, operands, size in bytes)."""
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    table = {}
    rows = []
    for ln in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", ln)
        if m:
            rows.append((int(m.group(1), 16), m.group(2), m.group(3)))
    for k, (addr, mn, ops) in enumerate(rows):
        size = rows[k + 1][0] - addr if k + 1 < len(rows) else 2
        table[addr] = (mn, ops.split(";")[0].split("@")[0].strip(), size if size in (2, 4) else 2)
    return table


def m0_cycles(mnemonic: str, operands: str, taken: bool) -> int:
    """Cortex-M0 cycles of one instruction (zero wait states, single-cycle multiplier)."""
    mn = mnemonic.lower().split(".")[0]
    regs = len(re.findall(r"r\d+|lr|pc|sp|ip|fp|sl|sb", operands.split("{", 1)[1])) if "{" in operands else 0
    if "{" in operands and "-" in operands:    # a register range r4-r7
        lo, hi = re.findall(r"r(\d+)-r(\d+)", operands)[0]
        regs += int(hi) - int(lo) - 1
    if mn in ("push", "stmia", "stm", "ldm", "ldmia"):
        return 1 + regs
    if mn == "pop":
        return 1 + regs + (3 if "pc" in operands else 0)
    if _M0_LOADSTORE.match(mn):
        return 2
    if mn == "bl":
        return 4
    if mn in ("bx", "blx"):
        return 3
    if mn == "b":
        return 3
    if _M0_BRANCH_COND.match(mnemonic.lower()):
        return 3 if taken else 1
    if mn in ("add", "mov") and operands.split(",")[0].strip() == "pc":
        return 3
    if mn in ("wfi", "wfe", "bkpt", "svc"):
        return 1
    return 1


def m0_trace_update(b: Build, state: np.ndarray, inbox: np.ndarray, rot: tuple[int, int] | None = None,
                    timeout: float = 120.0) -> dict[str, int]:
    """Instructions and estimated cycles of one nca_cell_update, from QEMU's
    per-instruction trace (-singlestep -d exec,nochain)."""
    table = _disassemble(b.artefact)
    syms = subprocess.run(["arm-none-eabi-nm", str(b.artefact)], capture_output=True, text=True,
                          check=True).stdout
    entry = next(int(ln.split()[0], 16) for ln in syms.splitlines() if ln.endswith(" nca_cell_update"))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "trace.log"
        cmd = harness_command(b, icount=False)
        cmd[1:1] = ["-singlestep", "-d", "exec,nochain", "-D", str(log)]
        subprocess.run(cmd, input=encode(state[None], inbox[None], rot, ef_bits=b.ef_bits) + b"Q", capture_output=True,
                       timeout=timeout, check=True)
        pcs = [int(m, 16) for m in re.findall(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/", log.read_text(), re.MULTILINE)]
    start = pcs.index(entry)
    ret = pcs[start - 1] + table[pcs[start - 1]][2]      # the instruction after the bl
    end = pcs.index(ret, start)
    cycles = 0
    for k in range(start, end):
        pc = pcs[k]
        mn, ops, size = table[pc]
        cycles += m0_cycles(mn, ops, pcs[k + 1] != pc + size)
    return {"instructions": end - start, "cycles": cycles}


# ---------------------------------------------------------------- sizes and stack
def _size_sections(tool: str, obj: Path) -> dict[str, int]:
    out = subprocess.run([tool, "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    sec = {}
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sec[parts[0]] = sec.get(parts[0], 0) + int(parts[1])
    return sec


def _stack_usage(build_dir: Path) -> dict[str, int]:
    """function -> bytes from the -fstack-usage (.su) files of the core."""
    out: dict[str, int] = {}
    for su in build_dir.rglob("*.su"):
        for ln in su.read_text().splitlines():
            parts = ln.split("\t")
            if len(parts) >= 2:
                out[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return out


def _asm_pushes(src: Path, target: str) -> int:
    """Bytes an assembly kernel pushes on entry (counted from its source)."""
    text = src.read_text()
    if target == "cortex-m0":     # each distinct push on the update path counted once
        lists = {m.group(1).replace(" ", "") for m in re.finditer(r"^\s*push\s*\{([^}]*)\}", text, re.MULTILINE)}
        regs = 0
        for lst in lists - {"r4,lr"}:           # push {r4, lr}: nca_cell_rgb, not on the path
            for part in lst.split(","):
                r = re.findall(r"r(\d+)", part)
                regs += int(r[1]) - int(r[0]) + 1 if "-" in part and len(r) == 2 else 1
        return 4 * regs
    return len(re.findall(r"^\s*push\s+r\d+", text, re.MULTILINE))


def measure(b: Build) -> dict[str, Any]:
    """ROM, RAM and stack of the cell core of a cortex-m0 or avr build."""
    if b.target == "cortex-m0":
        size_tool, kernel, ret = "arm-none-eabi-size", "nca_step_m0", 0
        objs = ["nca_cell.o", "nca_step_m0.o", "nca_model.o"]
        kernel_src = b.root / "ports" / "cortex-m0" / "nca_step_m0.S"
    elif b.target == "avr":
        size_tool, kernel, ret = "avr-size", "nca_dense_avr", 2
        objs = ["nca_cell.o", "nca_dense_avr.o", "nca_model.o"]
        kernel_src = b.root / "ports" / "avr" / "nca_dense_avr.S"
    else:
        raise ValueError("measure() is for cortex-m0 and avr builds")
    rom_code = rom_weights = ram_static = 0
    for name in objs:
        sec = _size_sections(size_tool, b.build_dir / name)
        text = sum(v for k, v in sec.items() if k.startswith((".text", ".rodata", ".progmem")))
        ram_static += sum(v for k, v in sec.items() if k.startswith((".data", ".bss")))
        if name == "nca_model.o":
            rom_weights += text + sum(v for k, v in sec.items() if k.startswith(".data"))
        else:
            rom_code += text + sum(v for k, v in sec.items() if k.startswith(".data"))
    su = _stack_usage(b.build_dir)
    frames = {k: v for k, v in su.items()
              if k in ("nca_cell_update", "nca_cell_tentative", "perceive", "apply", "feedback", "alive")}
    kernel_stack = _asm_pushes(kernel_src, b.target)
    # call chain: caller -> nca_cell_update -> nca_cell_tentative -> one of perceive, the
    # kernel, apply, feedback (the M0 kernel replaces all of it); every call pushes a return
    # address on AVR (2 bytes; on ARM it is in the pushed lr)
    leaf = max(kernel_stack, frames.get("perceive", 0), frames.get("apply", 0), frames.get("feedback", 0))
    stack = ret + frames.get("nca_cell_update", 0) + (ret + frames.get("nca_cell_tentative", 0)
                                                     if b.target == "avr" else 0) + ret + leaf
    return {"rom_code": rom_code, "rom_weights": rom_weights, "rom_total": rom_code + rom_weights,
            "ram_static": ram_static, "cell_struct": cell_struct_bytes(b.ef_bits), "rotation": ROTATION_BYTES,
            "stack_static": stack, "stack_frames": frames, "kernel_stack": kernel_stack,
            "kernel": kernel}


# ---------------------------------------------------------------- builds of the link firmware
def sources_key() -> str:
    h = hashlib.sha1()
    for sub in ("core", "store", "link", "mesh", "ports/host", "ports/cortex-m0", "ports/avr", "ports/mega2560", "tools"):
        for f in sorted((FIRMWARE / sub).glob("*")):
            if f.is_file() and f.suffix in (".c", ".h", ".S", ".ld"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    h.update((FIRMWARE / "Makefile").read_bytes())
    return h.hexdigest()[:12]


ARTEFACTS = {"host": "libnca_link.so", "cortex-m0": "nca_link_m0.elf", "avr": "nca_link_avr.elf",
             "fuzz": "nca_link_fuzz"}


LINK_TARGETS = ("host", "cortex-m0", "avr")


def build_link(target: str, build_dir: Path) -> Path:
    """Build the link firmware of a target (no model compiled in: genomes arrive over the
    cell link) into build_dir, from the firmware sources where they are installed; returns
    its artefact (libnca_link.so, nca_link_m0.elf or nca_link_avr.elf, or the fuzzer)."""
    mk_target = "host" if target == "fuzz" else target
    make(FIRMWARE, mk_target, variables=("APP=link", f"BUILD={Path(build_dir).resolve()}"))
    return Path(build_dir) / ARTEFACTS[target]


def link_sizes(elf: Path, target: str) -> dict[str, int]:
    """ROM (.text + .data) and static RAM (.data + .bss) of a link firmware ELF."""
    sec = _size_sections({"cortex-m0": "arm-none-eabi-size", "avr": "avr-size"}[target], elf)
    data, bss = sec.get(".data", 0), sec.get(".bss", 0)
    return {"rom": sec.get(".text", 0) + data, "ram": data + bss}


def mesh_sizes(elf: Path) -> dict[str, int]:
    """The mesh firmware's flash and RAM: the application (.text + .data, which must stay
    below slot A), the two genome slots, the boot-section routine, static RAM."""
    sec = _size_sections("avr-size", elf)
    data, bss = sec.get(".data", 0), sec.get(".bss", 0)
    return {"app": sec.get(".text", 0) + data, "slots": sec.get(".nca_slot0", 0) + sec.get(".nca_slot1", 0),
            "boot": sec.get(".bootloader", 0), "ram": data + bss}


def cached_build(root: Path, artefact: str, build: Callable[[Path], Any]) -> Path:
    """root / artefact, built once into the cache: build(folder) runs in a fresh folder
    beside root, which then takes root's name whole (a failed build leaves nothing)."""
    art = root / artefact
    if art.exists():
        return art
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        build(tmp)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)     # built meanwhile by another process
    return art


def link_firmware(target: str) -> Path:
    """Build (once per source version, in the codegen cache) the link firmware of a target
    and return its artefact: libnca_link.so (host), nca_link_m0.elf or nca_link_avr.elf."""
    mk_target = "host" if target == "fuzz" else target
    return cached_build(cache_dir() / f"link-{sources_key()}" / mk_target, ARTEFACTS[target],
                        lambda folder: build_link(target, folder))


# ---------------------------------------------------------------- the mesh firmware (cells wired to each other)
MESH_ELF = "nca_mesh_2560.elf"
MESH_EMULATOR = "simavr_mesh"


@dataclass(frozen=True)
class MeshFirmware:
    """The mesh firmware ELF with one model's genome in its slot A, the grid emulator beside it, and
    the data addresses of the two symbols the emulator's camera and replay read."""
    elf: Path
    emulator: Path
    cell_addr: int
    status_addr: int


def elf_symbol(elf: Path, name: str) -> int:
    """The address of a symbol of an AVR ELF (avr-nm; data addresses start at 0x800000)."""
    out = subprocess.run(["avr-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise BuildError(f"{elf} has no symbol {name}")


def build_mesh(q: QModel, build_dir: Path) -> Path:
    """Generate q's model sources and build the mesh firmware and the grid emulator into
    build_dir; returns the ELF."""
    emit.write_mesh_generated(q, build_dir / "generated")
    make(FIRMWARE, "mega2560", variables=("APP=mesh", f"GEN={(build_dir / 'generated').resolve()}",
                                          f"BUILD={Path(build_dir).resolve()}"))
    return build_dir / MESH_ELF


def mesh_firmware(q: QModel) -> MeshFirmware:
    """Build (once per model and source version, in the codegen cache) the mesh firmware
    with q compiled in, and the grid emulator."""
    elf = cached_build(cache_dir() / f"mesh-{sources_key()}-{q.model_hash:08x}", MESH_ELF,
                       lambda folder: build_mesh(q, folder))
    return MeshFirmware(elf, elf.with_name(MESH_EMULATOR), elf_symbol(elf, "nca_mesh_cell"),
                        elf_symbol(elf, "nca_mesh_status"))
