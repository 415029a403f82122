"""The frames cells wired to each other exchange: the one definition.

A cell board of the mesh (firmware/mesh/) is wired to its 4 orthogonal neighbours,
one UART per face. Everything the boards, the emulated grid (firmware/tools/simavr_mesh.c)
and the host must agree on lives here; the firmware's `nca_mesh_ids.h` is generated
from this module (`python -m boards.mesh_protocol --header`; a test checks the
committed file equals it), and firmware/MESH.md describes the same facts in prose.

Frame on the wire, as the cell link's: COBS(payload || crc16_le) || 0x00, with
payload = type u8 | body (no sequence byte: nothing is acknowledged). Every frame
between boards is unacknowledged and latest-wins.

Faces are N E S W (0..3) of the grid; ports are N E S W of the board as printed on
it. A board may be mounted turned by quarter turns: port q faces grid face
(q + rot) % 4. Every frame between boards names the grid face it left by (the
sender's), so the port it arrives on faces the opposite one: a board learns its
rotation from its neighbours' frames (the board the host plugs into defines north),
by majority. A port that disagrees with the majority is miswired and its frames are
refused; ports whose order only a mirror image explains (port q facing (rot - q) % 4)
make the board report MIRRORED and stay an empty cell that still relays. A STATE
frame sent north or south also carries the sender's latest W and E states (the
diagonals, relayed): the receiver stores them at its NW/NE (from its N face) or
SW/SE (from its S face) inbox slots.
"""
from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

from codegen import formats as F
from codegen.image import Image
from sim import rng, rules
from sim.paths import FIRMWARE

from . import protocol as P

MESH_VERSION = 1
FACES = ("N", "E", "S", "W")
N, E, S, W = range(4)
OPPOSITE = (S, W, N, E)
# (dy, dx) of the neighbour behind each face (y grows southwards, as the grid's rows)
FACE_OFFSETS = ((-1, 0), (0, 1), (1, 0), (0, -1))
# inbox slot (sim.model.NEIGHBOUR_OFFSETS order: NW N NE W E SW S SE) of the state that
# arrives on each face, and of the relayed W and E states (-1: not relayed on that face)
FACE_SLOT = (1, 4, 6, 3)
RELAY_W_SLOT = (0, -1, 5, -1)
RELAY_E_SLOT = (2, -1, 7, -1)
# the UART of each face on the ATmega2560 (Arduino Mega): USART0 is also the USB
# link, so a board on the grid's west edge is where the host plugs in
FACE_USART = (1, 2, 3, 0)
UNKNOWN = 0xFF                   # a coordinate (or face) not yet learned
MOUNT_MIRRORED = 4               # mount = rot | MOUNT_MIRRORED: port q faces (rot - q) % 4


def face_of(mount: int, port: int) -> int:
    """The grid face port `port` of a board mounted `mount` faces."""
    rot = mount & 3
    return (rot - port) % 4 if mount & MOUNT_MIRRORED else (port + rot) % 4

# ---------------------------------------------------------------- message types
# (name, id, body)
MESSAGES: tuple[tuple[str, int, str], ...] = (
    ("STATE", 0x30, ("model hash u32, seq u16, face u8 (the grid face it left by), x u8, y u8, run u8, "
                    "relay u8 (1: W and E follow), state 16 x i8, [W state 16 x i8, E state 16 x i8]")),
    ("PARAMS", 0x31, ("face u8 (the grid face it left by; UNKNOWN: the host's), x u8, y u8 (sender's), "
                     "run u8, seed u32, width u8, height u8, "
                     "seed x u8, seed y u8, clock u8 (0 exponential, 1 periodic), mean ticks u32, "
                     "jitter ticks u32, seed state 16 x i8, seed remainders 8 x u8, copies u8 (each STATE "
                     "frame sent this many times back to back, 1..MAX_COPIES), seed hash u32 (the model whose "
                     "formats the seed state is in: a seed board running another genome waits for it)")),
    ("STOP", 0x32, "run u8"),
    ("PARAMS_REQ", 0x33, "- (the neighbour answers with PARAMS)"),
    ("SET_COORD", 0x34, "x u8, y u8 (the host tells the board it is plugged into its place)"),
    ("STATUS_GET", 0x35, "-"),
    ("STATUS", 0xB5, "the status block (STATUS_STRUCT)"),
    ("OFFER", 0x36, ("face u8 (the grid face it left by; UNKNOWN: the host's), the header of the sender's "
                     "active genome (32 B, as committed: generation, model hash, genome CRC32)")),
    ("CHUNK_REQ", 0x37, "generation u32, model hash u32, offset u16 (a multiple of CHUNK)"),
    ("CHUNK", 0x38, "generation u32, model hash u32, offset u16, genome bytes (CHUNK, or the rest)"),
    ("CENSUS_REQ", 0x39, "census u8 (a new number starts a new census), host x u8, host y u8"),
    ("CENSUS", 0x3A, ("census u8, boards u16 (that reported, the sender's subtree), then up to "
                      "CENSUS_ENTRIES x (generation u32, model hash u32, boards u16)")),
    ("CENSUS_ACK", 0x3B, "census u8 (the parent, or the host, has the report: the sender stops sending it)"),
)
MSG = {name: mid for name, mid, _ in MESSAGES}

STATE_HEAD = struct.Struct("<BIHBBBBB")        # type, hash, seq, face, x, y, run, relay
PARAMS_STRUCT = struct.Struct("<BBBBBIBBBBBII16s8sBI")
OFFER_HEAD = struct.Struct("<BB")               # type, face; the 32-byte genome header follows
CHUNK_HEAD = struct.Struct("<BIIH")             # type, generation, hash, offset
CENSUS_REQ_STRUCT = struct.Struct("<BBBB")      # type, census, host x, host y
CENSUS_HEAD = struct.Struct("<BBH")             # type, census, boards
CENSUS_ENTRY = struct.Struct("<IIH")            # generation, hash, boards
CENSUS_ENTRIES = 4
MAX_COPIES = 3                   # three relaying STATE frames fit a port's 256-byte TX ring
CLOCK_EXPONENTIAL, CLOCK_PERIODIC = rules.CLOCK_EXPONENTIAL, rules.CLOCK_PERIODIC   # as the simulators'

TICK_US = 64                     # the wake timer's tick: 16 MHz / 1024
PARAMS_RESENDS = 3               # a board sends a run's PARAMS out of every face again, 3 times,
PARAMS_RESEND_TICKS = 1563       # 100 ms apart (a flood on lossy wires can die out)
# Genome gossip: a board offers the newest genome it has out of every face when it starts
# pulling it and when it activates it, OFFER_BURST times OFFER_BURST_TICKS apart (an offer
# may be lost, and a dormant neighbour sends nothing that would bring another), then every
# OFFER_TICKS, and back to a port whose neighbour runs another genome (its STATE or
# OFFER), at most every OFFER_BACK_TICKS per port; a neighbour with an older one pulls it
# CHUNK by CHUNK (asking again after CHUNK_TIMEOUT_TICKS, from the last port that offered
# it), writes it to its inactive slot, verifies it and activates it. A request for a chunk
# the board has not got yet waits there (one per port) and is answered when it arrives.
CHUNK = P.CHUNK
OFFER_TICKS = 125000             # 8 s
OFFER_BURST = 4
OFFER_BURST_TICKS = 7813         # 0.5 s
OFFER_BACK_TICKS = 15625         # 1 s
CHUNK_TIMEOUT_TICKS = 1563       # 100 ms
CHUNK_GIVE_UP = 20               # requests unanswered in a row: wait for the next offer
# A census: the request floods; each board reports its subtree (the boards whose path to
# the host runs through it: along its row towards the host's column, then along that
# column) to its parent, when every child has reported or CENSUS_WAIT_TICKS per hop of
# its subtree's depth have passed, and sends it again every CENSUS_RESEND_TICKS until the
# parent acknowledges it (CENSUS_ACK), at most CENSUS_RESENDS times: a lost report would
# lose a whole subtree.
CENSUS_WAIT_TICKS = 1563         # 100 ms per hop
CENSUS_RESEND_TICKS = 782        # 50 ms
CENSUS_RESENDS = 8
MAX_PAYLOAD = CHUNK_HEAD.size + CHUNK            # the largest frame: a CHUNK
RX_BUFFER = MAX_PAYLOAD + 2

# The status block: what a board knows of itself, in RAM (the emulator's camera reads
# it there) and in the STATUS reply. Flags: bit 0 running, 1 coordinates known, 2 a
# port disagrees with the board's mount now (miswired), 3 a frame of another model
# seen, 4 asleep (dormant, no wake due), 5 mounted mirrored (an empty cell that
# relays), 6-7 the board's rotation (quarter turns clockwise, valid with coordinates).
STATUS_FIELDS = ("state", "resid", "x", "y", "run", "flags", "wakes", "updates", "sent", "received",
                 "corrupt", "refused", "lost", "miswired", "foreign", "generation", "model_hash", "genome_bytes",
                 "activations")
STATUS_STRUCT = struct.Struct("<16s8sBBBBIIIIIIIHHIIHH")
COUNTERS = ("wakes", "updates", "sent", "received", "corrupt", "refused", "lost", "miswired", "foreign")
FLAG_RUNNING, FLAG_COORDS, FLAG_MISWIRED, FLAG_FOREIGN, FLAG_ASLEEP, FLAG_MIRRORED = 1, 2, 4, 8, 16, 32
FLAG_ROT_SHIFT, FLAG_ROT_MASK = 6, 0xC0

# Replay marks: the board writes these to GPIOR0 just before and after each wake's
# update; the emulator copies the cell (state, remainders, inbox) at each.
MARK_WAKE_IN, MARK_WAKE_OUT = 0x10, 0x11
# the cell core's struct as the marks see it (core/nca_cell.h, AVR: no padding)
CELL_STATE_AT, CELL_INBOX_AT, CELL_RESID_AT = 0, 80, 208
# One replay record (the emulator writes them, boards.mesh reads them): board u16, pad
# u16, the wake counter u32 and the model hash u32 (the status block's), in: state 16 +
# remainders 8 + inbox 128, out: state 16 + remainders 8.
RECORD_BYTES = 12 + 24 + 128 + 24
WAKES_AT = 16 + 8 + 4                                  # the status block's wake counter
HASH_AT = WAKES_AT + 7 * 4 + 2 * 2 + 4                 # ... and model hash

# -ln(x) on the boards: log2 of 1 + i/64, i = 0..64, in Q15 (nca_mesh.c interpolates)
LOG2_TABLE = tuple(round(math.log2(1 + i / 64) * 32768) for i in range(65))
LN2_Q16 = round(math.log(2) * 65536)
# CRC-16/CCITT-FALSE a byte at a time: crc = (crc << 8) ^ CRC16_TABLE[(crc >> 8) ^ byte]
CRC16_TABLE = tuple(P.crc16(bytes([i]), 0) for i in range(256))


def state_frame(model_hash: int, seq: int, face: int, x: int, y: int, run: int, state: bytes,
                relay: tuple[bytes, bytes] | None = None) -> bytes:
    """The wire bytes of a STATE frame (as a board sends it)."""
    body = STATE_HEAD.pack(MSG["STATE"], model_hash, seq, face, x, y, run, 1 if relay else 0) + state
    if relay:
        body += relay[0] + relay[1]
    return P.encode_payload(body)


def params_frame(run: int, seed: int, width: int, height: int, seed_x: int, seed_y: int, clock: int,
                 mean_ticks: int, jitter_ticks: int, seed_state: bytes, seed_resid: bytes, seed_hash: int,
                 copies: int = 1, face: int = UNKNOWN, x: int = UNKNOWN, y: int = UNKNOWN) -> bytes:
    """The wire bytes of a PARAMS frame (the host's: the sender's face and place unknown)."""
    if not (0 < width <= 254 and 0 < height <= 254):
        raise ValueError(f"a mesh is at most 254 boards a side, not {width}x{height}")
    if not (0 <= seed_x < width and 0 <= seed_y < height):
        raise ValueError(f"the seed board ({seed_x}, {seed_y}) is outside the {width}x{height} grid")
    if not 1 <= copies <= MAX_COPIES:
        raise ValueError(f"a STATE frame goes out 1 to {MAX_COPIES} times, not {copies}")
    return P.encode_payload(PARAMS_STRUCT.pack(MSG["PARAMS"], face, x, y, run, seed & 0xFFFFFFFF, width, height,
                                               seed_x, seed_y, clock, mean_ticks, jitter_ticks,
                                               seed_state, seed_resid, copies, seed_hash))


def offer_frame(header: bytes) -> bytes:
    """The host's OFFER of a genome (its committed header: generation set)."""
    return P.encode_payload(OFFER_HEAD.pack(MSG["OFFER"], UNKNOWN) + header)


def chunk_frame(generation: int, model_hash: int, offset: int, data: bytes) -> bytes:
    return P.encode_payload(CHUNK_HEAD.pack(MSG["CHUNK"], generation, model_hash, offset) + data)


def census_req_frame(census: int, host_x: int, host_y: int) -> bytes:
    return P.encode_payload(CENSUS_REQ_STRUCT.pack(MSG["CENSUS_REQ"], census & 0xFF, host_x, host_y))


def parse_census(payload: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """A CENSUS payload -> (census, boards, [(generation, hash, boards), ...])."""
    _, census, boards = CENSUS_HEAD.unpack_from(payload)
    rest = payload[CENSUS_HEAD.size:]
    entries = [CENSUS_ENTRY.unpack_from(rest, i) for i in range(0, len(rest) - CENSUS_ENTRY.size + 1,
                                                                   CENSUS_ENTRY.size)]
    return census, boards, entries


class GenomeServer:
    """The host's side of a genome push (the emulated grid's and a real grid's host alike):
    it offers the image's genome with `generation` to the board it is plugged into and
    answers that board's CHUNK_REQs, as a neighbour board would."""

    def __init__(self, image: Image, generation: int):
        self.image, self.generation = image, generation
        self.header = image.header(generation)
        self.chunks_sent = 0

    def offer(self) -> bytes:
        return offer_frame(self.header)

    def answer(self, payload: bytes) -> bytes | None:
        """The CHUNK for a CHUNK_REQ of this genome (None for anything else)."""
        if len(payload) != CHUNK_HEAD.size or payload[0] != MSG["CHUNK_REQ"]:
            return None
        _, gen, model_hash, off = CHUNK_HEAD.unpack(payload)
        if (gen, model_hash) != (self.generation, self.image.model_hash) or off % CHUNK or off >= len(self.image.genome):
            return None
        self.chunks_sent += 1
        return chunk_frame(gen, model_hash, off, self.image.genome[off:off + CHUNK])


def payloads(raw: bytes) -> list[bytes]:
    """The readable frames' payloads in bytes read from a port (unreadable ones dropped)."""
    out = []
    for f in raw.split(b"\x00"):
        if f:
            try:
                out.append(P.decode_payload(f))
            except P.FrameError:
                pass
    return out


def simple_frame(name: str, body: bytes = b"") -> bytes:
    return P.encode_payload(bytes([MSG[name]]) + body)


def parse_status(block: bytes) -> dict:
    """A status block (the STATUS reply's body, or the bytes the camera reads)."""
    vals = STATUS_STRUCT.unpack(block[:STATUS_STRUCT.size])
    return dict(zip(STATUS_FIELDS, vals))


# ---------------------------------------------------------------- the C header
def c_header() -> str:
    """firmware/mesh/nca_mesh_ids.h: every id, size and table above as C."""
    lines = [("/* nca_mesh_ids.h - generated by boards/mesh_protocol.py (python -m boards.mesh_protocol "
             "--header); do not edit."), " * The frames of cells wired to each other: firmware/MESH.md. */",
             "#ifndef NCA_MESH_IDS_H", "#define NCA_MESH_IDS_H", "",
             f"#define NCA_MESH_VERSION {MESH_VERSION}", "", "/* faces */"]
    lines += [f"#define NCA_FACE_{f} {i}" for i, f in enumerate(FACES)]
    lines += ["#define NCA_FACES 4", f"#define NCA_MESH_UNKNOWN 0x{UNKNOWN:02X}",
              f"#define NCA_MESH_MOUNT_MIRRORED {MOUNT_MIRRORED}", "", "/* message types */"]
    lines += [f"#define NCA_MESH_{name} 0x{mid:02X}" for name, mid, _ in MESSAGES]
    lines += ["", "/* sizes */",
              f"#define NCA_MESH_STATE_HEAD {STATE_HEAD.size}",
              f"#define NCA_MESH_PARAMS_BYTES {PARAMS_STRUCT.size}",
              f"#define NCA_MESH_OFFER_BYTES {OFFER_HEAD.size + P.HEADER_BYTES}",
              f"#define NCA_MESH_CHUNK_HEAD {CHUNK_HEAD.size}",
              f"#define NCA_MESH_CHUNK_REQ_BYTES {CHUNK_HEAD.size}",
              f"#define NCA_MESH_CENSUS_REQ_BYTES {CENSUS_REQ_STRUCT.size}",
              f"#define NCA_MESH_CENSUS_HEAD {CENSUS_HEAD.size}",
              f"#define NCA_MESH_CENSUS_ENTRY {CENSUS_ENTRY.size}",
              f"#define NCA_MESH_CENSUS_ENTRIES {CENSUS_ENTRIES}",
              f"#define NCA_MESH_OFFER_TICKS {OFFER_TICKS}ul",
              f"#define NCA_MESH_OFFER_BACK_TICKS {OFFER_BACK_TICKS}u",
              f"#define NCA_MESH_OFFER_BURST {OFFER_BURST}",
              f"#define NCA_MESH_OFFER_BURST_TICKS {OFFER_BURST_TICKS}u",
              f"#define NCA_MESH_CHUNK_TIMEOUT_TICKS {CHUNK_TIMEOUT_TICKS}u",
              f"#define NCA_MESH_CHUNK_GIVE_UP {CHUNK_GIVE_UP}",
              f"#define NCA_MESH_CENSUS_WAIT_TICKS {CENSUS_WAIT_TICKS}u",
              f"#define NCA_MESH_CENSUS_RESEND_TICKS {CENSUS_RESEND_TICKS}u",
              f"#define NCA_MESH_CENSUS_RESENDS {CENSUS_RESENDS}",
              f"#define NCA_MESH_MAX_PAYLOAD {MAX_PAYLOAD}",
              f"#define NCA_MESH_RX_BUFFER {RX_BUFFER}",
              f"#define NCA_MESH_STATUS_BYTES {STATUS_STRUCT.size}",
              f"#define NCA_MESH_RESID_BYTES {F.RESID_BYTES}",
              f"#define NCA_MESH_TICK_US {TICK_US}",
              f"#define NCA_MESH_PARAMS_RESENDS {PARAMS_RESENDS}",
              f"#define NCA_MESH_MAX_COPIES {MAX_COPIES}",
              f"#define NCA_MESH_PARAMS_RESEND_TICKS {PARAMS_RESEND_TICKS}u",
              f"#define NCA_MESH_CLOCK_EXPONENTIAL {CLOCK_EXPONENTIAL}",
              f"#define NCA_MESH_CLOCK_PERIODIC {CLOCK_PERIODIC}", "",
              "/* status flags */"]
    lines += [f"#define NCA_MESH_FLAG_{n} {v}" for n, v in (("RUNNING", FLAG_RUNNING), ("COORDS", FLAG_COORDS),
                                                             ("MISWIRED", FLAG_MISWIRED), ("FOREIGN", FLAG_FOREIGN),
                                                             ("ASLEEP", FLAG_ASLEEP), ("MIRRORED", FLAG_MIRRORED))]
    lines += [f"#define NCA_MESH_FLAG_ROT_SHIFT {FLAG_ROT_SHIFT}", f"#define NCA_MESH_FLAG_ROT_MASK 0x{FLAG_ROT_MASK:02X}"]
    lines += ["", "/* replay marks (GPIOR0 on AVR) */",
              f"#define NCA_MESH_MARK_WAKE_IN 0x{MARK_WAKE_IN:02X}",
              f"#define NCA_MESH_MARK_WAKE_OUT 0x{MARK_WAKE_OUT:02X}",
              f"#define NCA_MESH_CELL_STATE_AT {CELL_STATE_AT}",
              f"#define NCA_MESH_CELL_INBOX_AT {CELL_INBOX_AT}",
              f"#define NCA_MESH_CELL_RESID_AT {CELL_RESID_AT}",
              f"#define NCA_MESH_STATUS_WAKES_AT {WAKES_AT}",
              f"#define NCA_MESH_STATUS_HASH_AT {HASH_AT}",
              f"#define NCA_MESH_RECORD_BYTES {RECORD_BYTES}", "",
              "/* inbox slot of each face's state and of the relayed W and E states (-1: none) */",
              "#define NCA_FACE_SLOTS {" + ", ".join(map(str, FACE_SLOT)) + "}",
              "#define NCA_RELAY_W_SLOTS {" + ", ".join(map(str, RELAY_W_SLOT)) + "}",
              "#define NCA_RELAY_E_SLOTS {" + ", ".join(map(str, RELAY_E_SLOT)) + "}",
              "#define NCA_FACE_DY {" + ", ".join(str(d[0]) for d in FACE_OFFSETS) + "}",
              "#define NCA_FACE_DX {" + ", ".join(str(d[1]) for d in FACE_OFFSETS) + "}", "",
              "/* -ln on the boards: log2(1 + i/64) in Q15, i = 0..64, and ln 2 in Q16 */",
              "#define NCA_MESH_LOG2_TABLE {" + ", ".join(f"{v}u" for v in LOG2_TABLE) + "}",
              f"#define NCA_MESH_LN2_Q16 {LN2_Q16}u", "",
              "/* CRC-16/CCITT-FALSE (boards/protocol.py) one byte at a time: crc = (crc << 8) ^ "
              "T[(crc >> 8) ^ byte] */",
              "#define NCA_CRC16_TABLE {" + ", ".join(f"0x{v:04X}u" for v in CRC16_TABLE) + "}",
              "/* the counter generator (sim/rng.py): streams and constants */",
              f"#define NCA_RNG_WAKE {rng.WAKE}",
              f"#define NCA_RNG_INIT {rng.INIT}",
              f"#define NCA_RNG_G 0x{int(rng.G):016X}ull",
              f"#define NCA_RNG_M1 0x{int(rng.M1):016X}ull",
              f"#define NCA_RNG_M2 0x{int(rng.M2):016X}ull", "", "#endif", ""]
    return "\n".join(lines)


HEADER_PATH = FIRMWARE / "mesh" / "nca_mesh_ids.h"


def write_header(path: Path = HEADER_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(c_header())
    return path


if __name__ == "__main__":
    if sys.argv[1:] == ["--header"]:
        print(write_header())
    else:
        print(c_header(), end="")
