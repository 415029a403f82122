"""User-facing errors: one line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user; the message names the problem."""


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors, so cli_entry prints them as one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI main so UserError (and its subclasses) become `prog: error: msg` and exit 2,
    and a closed output pipe ends it without a traceback."""
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
        except BrokenPipeError:   # the reader went away (`| head`): stop quietly, and keep the
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # exit's flush quiet too
            return 1
    wrapped.__doc__ = main.__doc__
    wrapped.__name__ = main.__name__
    return wrapped
