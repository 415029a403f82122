"""nca-codegen: emit fixed-point C firmware for one cell (not yet available)."""
from __future__ import annotations

import sys

from sim.errors import cli_entry
from sim.pending import pending_command

main = cli_entry(pending_command(
    "nca-codegen",
    "Quantise a model and emit the C firmware of one cell (host, cortex-m0, avr, arduino).",
    [(["--model"], dict(help="weights .npz")),
     (["--target"], dict(choices=["host", "cortex-m0", "avr", "arduino"], default="host")),
     (["--out"], dict(help="output folder")),
     (["--build"], dict(action="store_true", help="build after generating")),
     (["--report"], dict(action="store_true", help="print ROM/RAM/stack/cycles per target"))]))

if __name__ == "__main__":
    sys.exit(main())
