"""Output files of the command-line tools: checked before a long run starts (so a
bad path fails in a second, not after an hour) and written atomically through
`sim.atomic` (a failed write leaves the previous file intact)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def check_output(path: str, flag: str) -> None:
    """Fail before a long run, not after it, when an output cannot be written."""
    p = Path(os.path.realpath(path))
    if any(str(q).startswith(("/dev/", "/proc/")) for q in (p, Path(path).absolute())):
        raise UserError(f"{flag} {path}: not a regular file (outputs are written to a temporary "
                        f"file and renamed into place, so /dev and /proc paths cannot be used)")
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a directory")
    if p.exists() and not p.is_file():   # a rename over a device or FIFO would replace it
        raise UserError(f"{flag} {path}: not a regular file (outputs are written to a temporary "
                        f"file and renamed into place)")
    _check_parent(p.parent if str(p.parent) else Path("."), path, flag)


def _check_parent(anc: Path, path: str, flag: str) -> None:
    while not anc.exists():
        if anc.is_symlink() or anc == anc.parent:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise UserError(f"{flag} {path}: cannot write there ({anc} is not a directory)")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write there (no write permission in {anc})")


def check_output_dir(path: str, flag: str) -> None:
    """A folder for several outputs: an existing folder or one that can be made."""
    p = Path(os.path.realpath(path))
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path}: not a directory")
    _check_parent(p, path, flag)


def write_output(path: str, flag: str, writer: Callable[[str], object]) -> None:
    """Write through symlinks (the rename then replaces the file the link points to, not the link)."""
    try:
        writer(os.path.realpath(path))
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
