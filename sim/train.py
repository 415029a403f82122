"""nca-train: train a Growing-NCA model for a target picture (not yet available)."""
from __future__ import annotations

import sys

from .errors import cli_entry
from .pending import pending_command

main = cli_entry(pending_command(
    "nca-train",
    "Train a Growing-NCA model for a target picture with the paper's recipe "
    "(growing, persistent or regenerating).",
    [(["--target"], dict(default="lizard", help="shipped target name or a PNG path")),
     (["--kind"], dict(choices=["growing", "persistent", "regenerating"], default="regenerating")),
     (["--iterations"], dict(type=int, default=8000)),
     (["--out"], dict(help="output .npz"))]))

if __name__ == "__main__":
    sys.exit(main())
