"""User-facing errors: one line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """Bad input from the user; the message names the problem."""


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI main so UserError (and its subclasses) become `prog: error: msg` and exit 2."""
    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as e:
            prog = getattr(main, "prog", None) or sys.argv[0].rsplit("/", 1)[-1]
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    wrapped.__doc__ = main.__doc__
    wrapped.__name__ = main.__name__
    return wrapped
