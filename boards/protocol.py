"""The cell link protocol between a host and a cell board: the one definition.

Everything both sides must agree on lives here: message ids, error codes,
limits, the frame format and the CRCs (the genome image's layout: codegen/image.py).  The firmware's
`nca_link_ids.h` is generated from this module (`c_header()`; a test checks the
committed file equals it) and firmware/PROTOCOL.md describes the same facts in
prose.

Frame on the wire: COBS(payload || crc16_le) followed by one 0x00 delimiter.
  payload = type (u8) | seq (u8) | body
  crc16   = CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of the payload
A reply has type = request type | 0x80, the request's seq, and a body that starts
with a status byte (0 = OK, else an error code).  A frame that cannot be read
(bad CRC, too short, too long, bad COBS) is answered with a NAK frame
(type 0xFF, seq 0, status = the reason): the host retransmits.  COBS (rather than
SLIP) because its overhead is bounded (one byte per 254) and 0x00 never appears
inside a frame, so a receiver resynchronises at the next delimiter after garbage.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from cobs import cobs

from codegen import formats as F
from codegen import image
from sim.paths import FIRMWARE

PROTOCOL_VERSION = 2               # 2: states carry the error-feedback remainders
FIRMWARE_VERSION = 1

# ---------------------------------------------------------------- message ids
# (name, id, request body, reply body after the status byte) - the table PROTOCOL.md shows
MESSAGES: tuple[tuple[str, int, str, str], ...] = (
    ("HELLO", 0x01, "-", "proto u8, fw u8, board u8, format u8, max_payload u16, capacity u32, "
                         "active slot u8 (0xFF none), model hash u32, generation u32, shifts 4 x u8, "
                         "error-feedback bits u8, flash writer u8 (0 none: FLASH_BEGIN refused)"),
    ("FLASH_BEGIN", 0x02, "image header (32 B), session u32, flags u8 (bit 0 resume)", "next offset u32"),
    ("FLASH_WRITE", 0x03, "offset u32, data (1..CHUNK B)", "next offset u32"),
    ("FLASH_VERIFY", 0x04, "-", "crc32 u32 of the slot's genome"),
    ("FLASH_ACTIVATE", 0x05, "-", "slot u8, model hash u32, generation u32"),
    ("STATE_GET", 0x06, "-", "state 16 x i8, remainders 8 x u8"),
    ("STATE_SET", 0x07, "state 16 x i8, remainders 8 x u8 (zero unless the genome has error feedback)", "-"),
    ("NEIGHBOURS_SET", 0x08, "inbox 8 x 16 x i8 (slot order NW N NE W E SW S SE)", "-"),
    ("STEP", 0x09, "op u8 (0 update, 1 tentative), fire u8, rot u8, cos i16, sin i16",
     "result u8 (0 dormant, 1 zeroed, 2 updated; 3 not fired), state 16 x i8, remainders 8 x u8"),
    ("RGB", 0x0A, "-", "r u8, g u8, b u8"),
    ("RESET", 0x0B, "-", "- (cell state, neighbours and any flash session cleared; slots rescanned)"),
    ("CELL", 0x0C, "state 16 x i8, remainders 8 x u8, inbox 128 x i8, then the STEP body",
     "as STEP (STATE_SET + NEIGHBOURS_SET + STEP in one round trip)"),
)
MSG = {name: mid for name, mid, _, _ in MESSAGES}
REPLY_BIT = 0x80
NAK = 0xFF

# ---------------------------------------------------------------- status / error codes
ERRORS: tuple[tuple[str, int, str], ...] = (
    ("OK", 0, "success"),
    ("ERR_FRAME_CRC", 1, "frame CRC mismatch (NAK)"),
    ("ERR_FRAME_SHORT", 2, "frame shorter than type + seq + CRC (NAK)"),
    ("ERR_FRAME_LONG", 3, "frame longer than the receive buffer (NAK)"),
    ("ERR_FRAME_COBS", 4, "COBS block runs past the delimiter (NAK)"),
    ("ERR_UNKNOWN", 5, "unknown message type"),
    ("ERR_LENGTH", 6, "body length wrong for the message"),
    ("ERR_ARG", 7, "an argument is out of range"),
    ("ERR_NO_GENOME", 8, "no valid genome is active"),
    ("ERR_NO_SESSION", 9, "FLASH_WRITE/VERIFY/ACTIVATE without FLASH_BEGIN"),
    ("ERR_OFFSET", 10, "write offset beyond the next expected offset (reply carries it)"),
    ("ERR_VERIFY", 11, "genome CRC32 in flash differs from the header's"),
    ("ERR_NOT_VERIFIED", 12, "ACTIVATE before a successful VERIFY"),
    ("ERR_FORMAT", 13, "image header: bad magic, version, format or size"),
    ("ERR_FLASH", 14, "flash read-back differs after a write"),
    ("ERR_INCOMPLETE", 15, "VERIFY before the whole genome was written"),
    ("ERR_NO_WRITER", 16, "the board cannot write its genome slots (an AVR without an SPM routine in its boot section)"),
)
ERR = {name: code for name, code, _ in ERRORS}
ERROR_TEXT = {code: f"{name} ({text})" for name, code, text in ERRORS}

BOARDS = {1: "host", 2: "cortex-m0", 3: "avr"}
# How a board writes its genome slots (HELLO's last byte).  An AVR executes SPM only from
# its boot section, so its firmware needs a routine there: its own (the ISP image) or
# Optiboot >= 8's do_spm; with neither it refuses FLASH_BEGIN (ERR_NO_WRITER).
WRITERS = {0: "none", 1: "native", 2: "boot", 3: "optiboot"}

# ---------------------------------------------------------------- limits
STATE_BYTES = 16 + F.RESID_BYTES  # a cell's own state: int8 channels, then the packed remainders
INBOX_BYTES = 128
STEP_BODY = 7                    # op, fire, rot, cos i16, sin i16
MAX_PAYLOAD = 2 + STATE_BYTES + INBOX_BYTES + STEP_BODY   # the largest request: CELL
RX_BUFFER = MAX_PAYLOAD + 2      # payload + CRC16, decoded
SESSION_RESUME = 1
HELLO_BYTES = 25                 # HELLO reply after the status byte (a board before the writer byte: 24)
# what a board accepts in an image header and genome (ModelFormat.check's ranges; T of out_mt)
SHIFT_LIMITS = {name: (min(r), max(r)) for name, r in (
    ("GRAD", F.GRAD_SHIFTS), ("HIDDEN", F.HIDDEN_SHIFTS), ("BIAS", F.BIAS_SHIFTS), ("ACC", F.ACC_SHIFTS),
    ("OUT", range(F.OUT_SHIFT_MIN, F.OUT_SHIFT_MAX + 1)))}
# M in [2^14, 2^15) (formats.multiplier_q15): what keeps acc*M + 2^(T-1) inside int32
MULT_HIGH_BYTE = ((1 << (F.MULT_FRAC - 1)) >> 8, ((1 << F.MULT_FRAC) - 1) >> 8)
# the genome image the link carries (magic, header, slot layout, CRC32) is codegen/image.py's;
# its names here too, for the link's users
CHUNK, HEADER_BYTES, HEADER_STRUCT = image.CHUNK, image.HEADER_BYTES, image.HEADER_STRUCT
IMAGE_MAGIC, IMAGE_VERSION = image.IMAGE_MAGIC, image.IMAGE_VERSION
SLOT_BYTES, SLOT_GENOME_OFFSET, SLOT_HEADER_OFFSET = image.SLOT_BYTES, image.SLOT_GENOME_OFFSET, image.SLOT_HEADER_OFFSET
Image, crc32, image_of = image.Image, image.crc32, image.image_of


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE, the per-frame check (binascii.crc_hqx is the same function)."""
    import binascii
    return binascii.crc_hqx(data, crc)


# ---------------------------------------------------------------- frames
class FrameError(ValueError):
    """A frame that cannot be decoded (bad COBS, short, CRC mismatch)."""


def encode_payload(payload: bytes) -> bytes:
    """payload -> COBS(payload || crc16_le) || 0x00 (the framing every link here uses)."""
    return cobs.encode(bytes(payload) + struct.pack("<H", crc16(payload))) + b"\x00"


def decode_payload(raw: bytes) -> bytes:
    """One frame without its delimiter -> its payload; FrameError if unreadable."""
    try:
        data = cobs.decode(raw)
    except cobs.DecodeError as e:
        raise FrameError(f"bad COBS: {e}") from None
    if len(data) < 3:
        raise FrameError(f"frame of {len(data)} B is too short")
    payload, (crc,) = data[:-2], struct.unpack("<H", data[-2:])
    if crc16(payload) != crc:
        raise FrameError("frame CRC mismatch")
    return payload


def encode_frame(mtype: int, seq: int, body: bytes = b"") -> bytes:
    """A cell-link frame: type u8 | seq u8 | body, framed by encode_payload."""
    payload = bytes([mtype & 0xFF, seq & 0xFF]) + bytes(body)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} B exceeds {MAX_PAYLOAD} B")
    return encode_payload(payload)


def decode_frame(raw: bytes) -> tuple[int, int, bytes]:
    """One cell-link frame without its delimiter -> (type, seq, body); FrameError if unreadable."""
    payload = decode_payload(raw)
    if len(payload) < 2:
        raise FrameError(f"frame of {len(payload) + 2} B is too short")
    return payload[0], payload[1], payload[2:]


@dataclass(frozen=True)
class Hello:
    """What a board says about itself (HELLO reply)."""
    protocol: int
    firmware: int
    board: str
    format_version: int
    max_payload: int
    capacity: int
    active_slot: int | None
    model_hash: int | None
    generation: int
    shifts: tuple[int, int, int, int]
    ef_bits: int = 0
    writer: str | None = None             # WRITERS; None: a board too old to say

    @classmethod
    def parse(cls, body: bytes) -> Hello:
        """Fields are only ever appended: a longer reply (a newer board) is read as far as known."""
        if len(body) < HELLO_BYTES - 1:
            raise FrameError(f"HELLO reply of {len(body)} B, expected {HELLO_BYTES} (or {HELLO_BYTES - 1})")
        p, fw, board, fmt, mp, cap, slot, h, gen = struct.unpack("<BBBBHIBII", body[:19])
        writer = WRITERS.get(body[24], f"writer {body[24]}") if len(body) > 24 else None
        return cls(p, fw, BOARDS.get(board, f"board {board}"), fmt, mp, cap,
                   None if slot == 0xFF else slot, None if slot == 0xFF else h, gen,
                   tuple(body[19:23]), body[23], writer)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the C header
def c_header() -> str:
    """firmware/link/nca_link_ids.h: every id, code and limit above as #defines."""
    consts = F.header_constants(F.partial_format(F.LEGACY_STATE_FRACS))   # model values left out
    model_specific = {"NCA_GRAD_SHIFT", "NCA_HIDDEN_SHIFT", "NCA_BIAS_SHIFT", "NCA_ACC_SHIFT", "NCA_STATE_FRACS",
                      "NCA_EF_BITS"}
    lines = ["/* nca_link_ids.h - generated by boards/protocol.py (python -m boards.protocol --header); do not edit.",
             " * The cell link protocol: firmware/PROTOCOL.md. */",
             "#ifndef NCA_LINK_IDS_H", "#define NCA_LINK_IDS_H", "",
             f"#define NCA_LINK_PROTOCOL_VERSION {PROTOCOL_VERSION}",
             f"#define NCA_LINK_FIRMWARE_VERSION {FIRMWARE_VERSION}", "",
             "/* message types (a reply sets NCA_REPLY_BIT) */"]
    lines += [f"#define NCA_MSG_{name} 0x{mid:02X}" for name, mid, _, _ in MESSAGES]
    lines += [f"#define NCA_REPLY_BIT 0x{REPLY_BIT:02X}", f"#define NCA_MSG_NAK 0x{NAK:02X}", "",
              "/* status codes */"]
    lines += [f"#define NCA_{name} {code}" for name, code, _ in ERRORS]
    lines += ["", "/* boards */"] + [f"#define NCA_BOARD_{n.upper().replace('-', '_')} {k}" for k, n in BOARDS.items()]
    lines += ["", "/* how a board writes its slots (HELLO) */"] + [f"#define NCA_WRITER_{n.upper()} {k}"
                                                                  for k, n in WRITERS.items()]
    lines += ["", "/* limits */",
              f"#define NCA_LINK_CHUNK {CHUNK}",
              f"#define NCA_LINK_MAX_PAYLOAD {MAX_PAYLOAD}",
              f"#define NCA_LINK_RX_BUFFER {RX_BUFFER}",
              f"#define NCA_LINK_STEP_BODY {STEP_BODY}",
              f"#define NCA_LINK_STATE_BYTES {STATE_BYTES}",
              f"#define NCA_EF_BITS_ON {F.EF_BITS}",
              f"#define NCA_RESID_BYTES {F.RESID_BYTES}",
              f"#define NCA_SESSION_RESUME {SESSION_RESUME}", "",
              "/* genome image and slots */",
              f"#define NCA_IMAGE_MAGIC 0x{IMAGE_MAGIC:08X}u",
              f"#define NCA_IMAGE_VERSION {IMAGE_VERSION}",
              f"#define NCA_HEADER_BYTES {HEADER_BYTES}",
              f"#define NCA_HEADER_KEEP_STATE 0x{image.KEEP_STATE:02X}   /* flags bit: cleared, a wired cell keeps its state */",
              f"#define NCA_SLOT_GENOME_OFFSET {SLOT_GENOME_OFFSET}",
              f"#define NCA_SLOT_HEADER_OFFSET {SLOT_HEADER_OFFSET}",
              f"#define NCA_SLOT_BYTES {SLOT_BYTES}", "",
              "/* accepted shifts (lo, hi) of an image */"]
    for k, (lo, hi) in SHIFT_LIMITS.items():
        lines += [f"#define NCA_{k}_SHIFT_LO {lo}", f"#define NCA_{k}_SHIFT_HI {hi}"]
    lines += ["/* accepted high byte of an output multiplier M (out_mt & 0xFFE0) */",
              f"#define NCA_OUT_MULT_HIGH_LO 0x{MULT_HIGH_BYTE[0]:02X}",
              f"#define NCA_OUT_MULT_HIGH_HI 0x{MULT_HIGH_BYTE[1]:02X}"]
    lines += ["",
              "/* the fixed-point format (codegen/formats.py) the board's cell core is built for */"]
    lines += [f"#define {k} {v}" for k, v in consts.items() if k not in model_specific]
    lines += ["", "#endif", ""]
    return "\n".join(lines)


HEADER_PATH = FIRMWARE / "link" / "nca_link_ids.h"


def write_header(path: Path = HEADER_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(c_header())
    return path


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--header"]:
        print(write_header())
    else:
        print(c_header(), end="")
