"""Atomic file writes: a temporary file in the destination folder, then a rename,
so a failed or interrupted write leaves the previous file intact."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write (by name: for writers such
    as ffmpeg that take a path), renamed over `path` when the block ends without an
    error and removed otherwise.

    The new file gets the mode a plain open() would give (mkstemp's 0600 is not
    what a user expects of a model or a picture)."""
    p = Path(path)
    if p.exists() and not p.is_file():   # never rename over a device, FIFO or folder
        raise IsADirectoryError(f"{p}: not a regular file") if p.is_dir() else OSError(f"{p}: not a regular file")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True) -> Path:
    """Call write(f) on a temporary file beside `path` (flushed to disk), then rename it
    over `path` (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)
