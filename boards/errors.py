"""What a link to a board can end in: no reply or a lost port (LinkError), or a
board that answered and will not (BoardRefused)."""
from __future__ import annotations

from sim.errors import UserError


class LinkError(UserError):
    """The link failed (no reply, the port cannot be opened or was lost) or the board
    refused a request (BoardRefused); the message says which and why."""


class BoardRefused(LinkError):
    """The board answered and will not do it (an error status, a CRC mismatch, a genome
    it cannot hold or run): the same request would be refused again, so it is not retried."""


class NoWriter(BoardRefused):
    """The board cannot write genomes into its flash at all (HELLO's writer "none": an AVR
    without an SPM routine in its boot section); nca-flash names the ways out."""
