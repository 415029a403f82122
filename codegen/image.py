"""The genome image: a quantised model's genome with its 32-byte header, as it sits in a
board's flash slot (the commit record after the genome) and as it travels, over the cell
link (boards/protocol.py) or from board to board (boards/mesh_protocol.py).  The
firmware's store (firmware/store/nca_store.c) reads the same layout; the ids header
generated from boards/protocol.py carries these numbers to C."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from . import formats as F

CHUNK = 128                      # genome bytes per write (one ATmega328P page, half an ATmega2560 one)
IMAGE_MAGIC = 0x4743414E         # "NCAG" little-endian
IMAGE_VERSION = 1
HEADER_BYTES = 32
# magic u32, image version u8, format version u8, grad/hidden/bias/acc shifts 4 x u8,
# error-feedback bits u8 (0 or formats.EF_BITS), flags u8 (0xFF; KEEP_STATE cleared: a wired
# cell that activates the genome keeps its state, for a genome made to carry on the pattern
# of the one before; the link firmware ignores it), genome length u32,
# model hash u32, genome CRC32 u32,
# generation u32 (written by the board on activation), header CRC32 u32 (of bytes 0..27)
HEADER_STRUCT = struct.Struct("<IBB4BBBIIIII")
KEEP_STATE = 0x01
assert HEADER_STRUCT.size == HEADER_BYTES
SLOT_GENOME_OFFSET = 0           # the genome first, the header (the commit record) after it
SLOT_HEADER_OFFSET = ((F.GENOME_BYTES + CHUNK - 1) // CHUNK) * CHUNK   # page-aligned: 8,448
SLOT_BYTES = SLOT_HEADER_OFFSET + CHUNK                                # 8,576


def crc32(data: bytes) -> int:
    """CRC-32 (zlib/IEEE), the whole-genome check."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Image:
    """A genome with its header: what nca-flash writes into a slot."""
    genome: bytes
    shifts: tuple[int, int, int, int]     # grad, hidden, bias, acc
    model_hash: int
    format_version: int = F.FORMAT_VERSION
    ef_bits: int = 0                      # the cell's error feedback (formats.ModelFormat.ef_bits)
    keep_state: bool = False              # a wired cell keeps its state when it activates the genome

    @property
    def crc(self) -> int:
        return crc32(self.genome)

    def header(self, generation: int = 0xFFFFFFFF) -> bytes:
        """The 32-byte header; the board fills in the generation (and the header CRC) on activation."""
        flags = 0xFF & ~KEEP_STATE if self.keep_state else 0xFF
        head = HEADER_STRUCT.pack(IMAGE_MAGIC, IMAGE_VERSION, self.format_version, *self.shifts, self.ef_bits, flags,
                                  len(self.genome), self.model_hash, self.crc, generation, 0)
        return head[:-4] + struct.pack("<I", crc32(head[:-4]))

    def chunks(self) -> list[tuple[int, bytes]]:
        return [(o, self.genome[o:o + CHUNK]) for o in range(0, len(self.genome), CHUNK)]

    def slot(self, generation: int) -> bytes:
        """A whole slot as committed with `generation` (erased bytes 0xFF): what a factory
        image carries in slot A."""
        body = self.genome.ljust(SLOT_HEADER_OFFSET - SLOT_GENOME_OFFSET, b"\xff")
        return (b"\xff" * SLOT_GENOME_OFFSET + body + self.header(generation)).ljust(SLOT_BYTES, b"\xff")


def image_of(q, keep_state: bool = False) -> Image:
    """The Image of a quantised model (codegen.quantize.QModel)."""
    f = q.fmt
    return Image(q.genome(), (f.grad_shift, f.hidden_shift, f.bias_shift, f.acc_shift), q.model_hash,
                 ef_bits=f.ef_bits, keep_state=keep_state)


