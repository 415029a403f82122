"""nca-codegen: quantise a model and emit the fixed-point C firmware of one cell,
or build the board firmware that takes its genome over the cell link.

    nca-codegen --model M.npz --target host|cortex-m0|avr|arduino --out DIR [--build] [--report]
    nca-codegen --app link --target host|cortex-m0|avr --out DIR [--report]
    nca-codegen --app mesh --model M.npz --target mega2560 --out DIR [--report]

DIR receives the generated model (generated/nca_model.h, .c), a copy of the
hand-written core and of the target's port, and a Makefile (`make` builds it);
for "arduino" a sketch folder DIR/nca_cell/. --build runs make. --report builds,
runs the firmware on its emulator and prints the target's ROM, RAM, stack and
cycles per cell update as the toolchain and the emulator measure them, plus the
quantisation's choices and errors; --dequantized writes the int8 weights back
as a float .npz (sim.weights) to run them through the float engines. Bad input (an unreadable or unquantisable
model, an unknown target, a missing toolchain, an output folder that cannot be
written) is one line on stderr and exit status 2.

--app link builds the link firmware (firmware/PROTOCOL.md) into DIR/build/TARGET:
no model is compiled in; `nca-flash` then sends a genome over the serial port.

--app mesh builds the firmware of cells wired to each other (firmware/MESH.md) for
the ATmega2560 with the model compiled in, and the grid emulator, into DIR/build/mega2560;
--report prints its ROM and RAM.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sim.errors import ArgParser, UserError, cli_entry
from sim.weights import load, save

from . import emit, formats, toolchain
from .quantize import QModel, quantize

PROG = "nca-codegen"
APPS = ("harness", "link", "mesh")
MESH_TARGET = "mega2560"


def _parser() -> ArgParser:
    ap = ArgParser(prog=PROG, description="Quantise a model and emit the fixed-point C firmware of one "
                   "cell (host, cortex-m0, avr, arduino).")
    ap.add_argument("--app", choices=APPS, default="harness",
                    help="harness: the cell with the model compiled in, behind the test harness; link: the "
                         "board firmware that takes genomes over the cell link (no --model); mesh: the cell "
                         "wired to its 4 neighbours, for --target mega2560 (default: %(default)s)")
    ap.add_argument("--model", help="weights .npz or a shipped model's name (harness and mesh)")
    ap.add_argument("--target", required=True, choices=(*emit.TARGETS, MESH_TARGET), help="what to generate for")
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--build", action="store_true", help="build after generating (make)")
    ap.add_argument("--report", action="store_true",
                    help="build, run on the emulator and print ROM/RAM/stack/cycles and the quantisation")
    ap.add_argument("--dequantized", metavar="NPZ",
                    help="also write the quantised weights back as a float model (for the float engines)")
    ap.add_argument("--per-tensor", action="store_true",
                    help="one weight scale per tensor instead of per output channel (for comparison)")
    return ap


def check_output_folder(path: str) -> Path:
    """The output folder, created if missing; a UserError if it cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p}: exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".nca-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--out {p}: cannot write there ({e.strerror or e})") from None
    return p


def _row(cells: Sequence[str]) -> str:
    widths = (12, 10, 10, 10, 8, 8, 12, 14)
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def report_lines(target: str, b: toolchain.Build) -> list[str]:
    """The per-target table: ROM (weights, code), RAM, stack, cycles (measured)."""
    head = _row(("target", "ROM code", "ROM wts", "ROM total", "RAM", "stack", "cycles", "budget"))
    if target in ("cortex-m0", "avr"):
        m = toolchain.measure(b)
        rng = np.random.default_rng(0)
        st = rng.integers(-128, 128, (8, 16)).astype(np.int16)
        ib = rng.integers(-128, 128, (8, 8, 16)).astype(np.int8)
        st[:, formats.ALPHA] = 32
        st = (st << b.ef_bits) + rng.integers(0, 1 << b.ef_bits, st.shape)   # own states with their nibbles
        ram = m["cell_struct"] + m["rotation"] + m["ram_static"] + m["stack_static"]
        notes = []
        if target == "cortex-m0":
            r = toolchain.run_cells(b, st, ib)
            instr = float(np.mean(r.ticks)) / toolchain.M0_TICKS_PER_INSTRUCTION
            tr = toolchain.m0_trace_update(b, st[0], ib[0], formats.rotation_q14(30.0))
            cycles = f"{tr['cycles']:,}"
            notes.append(f"cortex-m0: {instr:,.0f} instructions per update (exact: QEMU -icount shift=6, TIMER0); "
                         f"{tr['cycles']:,} cycles estimated: QEMU's instruction trace timed with the Cortex-M0 "
                         f"table ({tr['instructions']:,} instructions in that trace, rotation on; QEMU has no "
                         f"cycle model, on a real nRF51 the harness's TIMER0 ticks are cycles)")
        else:
            r = toolchain.run_cells(b, st, ib)
            cycles = f"{int(r.cycles.max()):,}"
            notes.append(f"avr: exact cycles from simavr (max of {len(r.cycles)} updates, "
                         f"mean {float(r.cycles.mean()):,.0f})")
        bud = toolchain.BUDGETS[target]
        budget = "/".join(f"{k}<={v:,}" for k, v in bud.items())
        lines = [head, _row((target, f"{m['rom_code']:,}", f"{m['rom_weights']:,}", f"{m['rom_total']:,}",
                             f"{ram}", f"{m['stack_static']}", cycles, budget))]
        ef = f", error feedback {toolchain.RESID_BYTES}" if b.ef_bits else ""
        lines.append(f"RAM = nca_cell_t {m['cell_struct']} (state 16, gradients 32, accumulators 32, "
                     f"8 neighbour states 128{ef}) + rotation {m['rotation']} + .data/.bss {m['ram_static']} "
                     f"+ worst stack {m['stack_static']} (-fstack-usage frames {m['stack_frames']}, "
                     f"assembly kernel pushes {m['kernel_stack']})")
        return lines + notes
    if target == "host":
        return [f"host: built {b.library} and {b.artefact} (a reference build; budgets apply to the boards)"]
    return [f"arduino: sketch folder {b.root / 'nca_cell'} (core compiled for the ATmega328P as a check)"]


def _link_app(a: argparse.Namespace) -> int:
    """--app link: build the link firmware of the target into --out."""
    if a.model or a.dequantized or a.per_tensor:
        raise UserError("--app link compiles no model in (genomes arrive over the link with nca-flash): "
                        "drop --model, --dequantized and --per-tensor")
    if a.target not in toolchain.LINK_TARGETS:
        raise UserError(f"--app link is built for {', '.join(toolchain.LINK_TARGETS)}, not {a.target}")
    out = check_output_folder(a.out)
    toolchain.check_toolchain(a.target)
    art = toolchain.build_link(a.target, out / "build" / a.target)
    print(f"{PROG}: built the {a.target} link firmware: {art}")
    if a.target == "avr":
        print(f"{PROG}: for an Uno: {art.with_suffix('.hex')} through its serial boot loader (needs Optiboot >= 8), "
              f"or {art.with_name('nca_link_avr_isp.hex')} with an ISP (fuses: firmware/README.md)")
    if a.report and a.target != "host":
        z = toolchain.link_sizes(art, a.target)
        print(f"{a.target} link firmware: ROM {z['rom']:,} B (code, constants and initialised data), "
              f"static RAM {z['ram']:,} B (.data + .bss; the stack comes on top)")
    return 0


def _mesh_app(a: argparse.Namespace, q: QModel, out: Path) -> int:
    """--app mesh: build the wired cell's firmware, the model's genome in its slot A."""
    toolchain.check_toolchain(MESH_TARGET)
    elf = toolchain.build_mesh(q, out / "build" / MESH_TARGET)
    print(f"{PROG}: built the {MESH_TARGET} mesh firmware: {elf} (model hash {q.model_hash:08x}) and the grid "
          f"emulator {elf.with_name(toolchain.MESH_EMULATOR)}")
    if a.report:
        z = toolchain.mesh_sizes(elf)
        print(f"{MESH_TARGET} mesh firmware: application {z['app']:,} B of 32,768 (code, constants and initialised "
              f"data, below genome slot A), genome slots {z['slots']:,} B, boot-section routine {z['boot']:,} B "
              f"of 8,192; static RAM {z['ram']:,} B of 8,192 (.data + .bss: the cell, the 4 faces' parsers and "
              f"rings, the status block, the genome pull and the census; the stack comes on top)")
    return 0


def _main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.app == "link":
        return _link_app(a)
    if (a.app == "mesh") != (a.target == MESH_TARGET):
        raise UserError(f"--app mesh is built for --target {MESH_TARGET}, and {MESH_TARGET} takes --app mesh only")
    if not a.model:
        raise UserError("--model is required (a weights .npz or a shipped model's name; "
                        "--app link needs none)")
    model = load(a.model)
    out = check_output_folder(a.out)
    if a.app == "mesh":
        return _mesh_app(a, quantize(model, per_channel=not a.per_tensor), out)
    if a.build or a.report:
        toolchain.check_toolchain(a.target, run=a.report and a.target in ("cortex-m0", "avr"))
    q = quantize(model, per_channel=not a.per_tensor)
    written = emit.write_project(q, a.target, out)
    if a.dequantized:
        try:
            save(a.dequantized, q.dequantize())
        except OSError as e:
            raise UserError(f"--dequantized {a.dequantized}: cannot write ({e.strerror or e})") from None
    print(f"{PROG}: wrote {len(written)} files to {out} (model hash {q.model_hash:08x}, "
          f"formats: grad_shift {q.fmt.grad_shift}, hidden_shift {q.fmt.hidden_shift}, "
          f"bias_shift {q.fmt.bias_shift}, acc_shift {q.fmt.acc_shift}, "
          f"hidden state fractions {list(q.fmt.state_fracs[formats.RGBA:])})")
    if a.build or a.report:
        root = out
        toolchain.make(root, a.target)
        print(f"{PROG}: built {a.target} in {root / 'build' / a.target}")
    if a.report:
        b = toolchain.Build(a.target, out, q.fmt.ef_bits)
        print(formats.describe(q.fmt))
        errs = q.report["weight_rel_rmse"]
        print(f"quantisation ({q.report['scheme']}): relative RMS weight error " +
              ", ".join(f"{k} {v:.2%}" for k, v in errs.items()))
        for line in report_lines(a.target, b):
            print(line)
    return 0


_main.prog = PROG   # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
