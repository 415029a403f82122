"""numba compilation shared by the batched kernels of the reference grid and the trainer."""
from __future__ import annotations

from collections.abc import Callable
from types import FunctionType

import numba as nb


def compiled_variant(f: Callable, suffix: str, parallel: bool,
                     replace: dict[str, Callable] | None = None) -> Callable:
    """A separately cached compilation of the kernel f, named f's name + suffix (the
    on-disk cache is keyed by name), so a serial and a threaded build can coexist:
    waking the worker threads costs more than a small grid's work. `replace` swaps
    globals f calls (name -> another numba function of the same signature), which
    compiles the same loop around other inner work."""
    g = FunctionType(f.__code__, dict(f.__globals__, **(replace or {})), f.__name__ + suffix)
    g.__qualname__ = f.__qualname__ + suffix
    return nb.njit(cache=True, parallel=parallel)(g)
