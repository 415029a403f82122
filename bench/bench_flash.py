"""Genome flash time over the cell link, per board: the host build in-process,
the Cortex-M0 under QEMU (socket://, nodelay) and the ATmega328P under simavr.

    python bench/bench_flash.py [--model weights/....npz] [--repeat 5] [--boards host,cortex-m0,avr]

"raw" is the measured wall time of a whole flash (BEGIN with the slot erase, every
chunk acknowledged, VERIFY of the CRC32 in flash, ACTIVATE).  QEMU ignores the
baud rate, so "at 115200" adds what the same frames cost on a real 115200-baud
8N1 line (10 bits per byte, both directions, one request in flight): bytes on the
wire x 10 / 115200 s on top of the raw time.  simavr models the UART in simulated
time, so its raw figure already includes the baud rate (it runs faster than real
time).  Also printed: the round trip of one CELL request (set the state and the
neighbours, step).  Boards whose tools are missing are skipped.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boards.client
import boards.emulator
import boards.transport
from boards import protocol as L
from codegen.quantize import quantized
from sim.fixture import blob_model
from sim.weights import load

BAUD = 115200


def bench(board: boards.client.Board, image: L.Image, repeat: int) -> dict[str, float]:
    times, wire = [], 0
    for _ in range(repeat):
        r = board.flash(image)
        times.append(r.seconds)
        wire = r.bytes_on_wire
    x = np.zeros(16, np.int8)
    x[3:] = 32
    nb = np.zeros((8, 16), np.int8)
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        board.cell(x, nb)
    return {"raw": statistics.median(times), "wire": wire, "rtt": (time.perf_counter() - t) / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="weights .npz (default: the blob fixture)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--boards", default="host,cortex-m0,avr")
    a = ap.parse_args()
    model = load(a.model) if a.model else blob_model()
    image = L.image_of(quantized(model))
    print(f"genome {len(image.genome):,} B in {len(image.chunks())} chunks of {L.CHUNK} B; "
          f"median of {a.repeat} flashes")
    print(f"{'board':<11} {'raw s':>8} {'KiB/s':>8} {'wire B':>8} {'at 115200 s':>12} {'CELL rtt ms':>12}")
    for name in a.boards.split(","):
        if name == "host":
            board, emu = boards.client.Board(boards.transport.HostLink()), None
        else:
            miss = boards.emulator.emulator_tools(name)
            if miss:
                print(f"{name:<11} skipped: needs {', '.join(e for e, _ in miss)}")
                continue
            emu = boards.emulator.Emulator(name).start()
            board = emu.board(timeout=10)
        try:
            r = bench(board, image, a.repeat if name != "avr" else max(1, a.repeat // 2))
        finally:
            board.close()
            if emu:
                emu.stop()
        at_baud = r["raw"] + r["wire"] * 10 / BAUD if name != "avr" else r["raw"]
        print(f"{name:<11} {r['raw']:8.3f} {len(image.genome) / r['raw'] / 1024:8.1f} {r['wire']:8,} "
              f"{at_baud:12.3f} {1000 * r['rtt']:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
