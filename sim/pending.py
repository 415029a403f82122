"""Entry points whose implementation has not landed yet: `--help` works and
describes the command; running it says so in one line (exit 2)."""
from __future__ import annotations

from collections.abc import Sequence

from .errors import ArgParser, UserError


def pending_command(prog: str, description: str, options: Sequence[tuple[Sequence[str], dict]]):
    """Build the main() of a command that is documented but not yet available."""
    def main(argv: Sequence[str] | None = None) -> int:
        ap = ArgParser(prog=prog, description=description)
        for flags, kw in options:
            ap.add_argument(*flags, **kw)
        ap.parse_args(argv)
        raise UserError("not yet available in this version of the toolchain")
    main.prog = prog   # type: ignore[attr-defined]
    return main
