"""nca-flash: write a genome to a cell board over a serial port (not yet available)."""
from __future__ import annotations

import sys

from sim.errors import cli_entry
from sim.pending import pending_command

main = cli_entry(pending_command(
    "nca-flash",
    "Flash a model's genome to a board over a serial port (pyserial URL or device; "
    "socket:// reaches an emulated board).",
    [(["--port"], dict(help="serial URL or device, e.g. socket://127.0.0.1:4321 or /dev/ttyACM0")),
     (["--model"], dict(help="weights .npz")),
     (["--baud"], dict(type=int, default=115200)),
     (["--list"], dict(action="store_true", help="list serial ports"))]))

if __name__ == "__main__":
    sys.exit(main())
