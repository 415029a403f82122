"""The emulated grid of wired cell boards: W x H ATmega2560 cores on libsimavr, each
running the same unmodified mesh firmware ELF (firmware/mesh, firmware/ports/mega2560),
wired face to face through a fault shim (firmware/tools/simavr_mesh.c).

The host plugs into the west face of board (0, 0), as on real boards: it tells that
board its place (SET_COORD) and sends the run's PARAMS, which the boards pass on; each
board learns its own place from its neighbours. Time zero of the run is when the seed
board starts. The camera reads every board's status block from emulated RAM; the
replay log holds every wake's input and output, which `replay()` runs through the
golden model (codegen/golden.py) bit for bit.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from codegen import emit
from codegen import formats as F
from codegen import golden as G
from codegen.image import image_of
from codegen.quantize import QModel, quantized
from codegen.toolchain import elf_symbol, mesh_firmware
from sim.engines import Engine, RunError
from sim.errors import UserError
from sim.model import ALPHA, NEIGHBOUR_OFFSETS
from sim.spec import Params
from sim.weights import load_model

from . import mesh_protocol as MP

REC = np.dtype([("board", "<u2"), ("pad", "<u2"), ("wake", "<u4"), ("model_hash", "<u4"), ("state_in", "i1", 16),
                ("resid_in", "u1", 8), ("inbox", "i1", (8, 16)), ("state_out", "i1", 16),
                ("resid_out", "u1", 8)])
STATUS = np.dtype([("state", "i1", 16), ("resid", "u1", 8), ("x", "u1"), ("y", "u1"), ("run", "u1"),
                   ("flags", "u1")] + [(c, "<u4") for c in MP.COUNTERS[:7]]
                  + [(c, "<u2") for c in MP.COUNTERS[7:]]
                  + [("generation", "<u4"), ("model_hash", "<u4"), ("genome_bytes", "<u2"), ("activations", "<u2")])
assert STATUS.itemsize == MP.STATUS_STRUCT.size and REC.itemsize == MP.RECORD_BYTES
assert STATUS.fields["wakes"][1] == MP.WAKES_AT and STATUS.fields["model_hash"][1] == MP.HASH_AT


BOOT_NS = 20_000_000                 # 20 ms: every board's start-up is over
HOST_STEP_NS = 5_000_000             # the host answers the board it is plugged into this often


class MeshError(UserError):
    """The emulated grid cannot run as asked (bad options, a build or emulator failure)."""


@dataclass(frozen=True)
class MeshConfig:
    """How the emulated grid runs: the boards' clocks and the wires' faults."""
    wake_ms: float = 100.0           # a board's mean wake interval, ms of its own clock
    mean_interval: float = 2.0       # ... in the simulator's time units (sets the unit's length)
    clock: int = MP.CLOCK_EXPONENTIAL
    jitter: float = 0.0              # periodic clock: +- this many time units
    clock_ppm: float = 5000.0        # each board's clock off by up to this (uniform, seeded)
    frame_loss: float = 0.0          # whole frames lost, per frame and wire
    byte_loss: float = 0.0
    byte_corrupt: float = 0.0        # a byte with one bit flipped
    copies: int = 1                  # each STATE frame sent this many times back to back
    miswire: tuple[int, ...] = ()    # boards whose N wire lands on the north board's W port
    mount: str = ""                  # one of 0-7 a board (rotation, +4 mirrored; board 0: 0); "": straight
    foreign: tuple[tuple[int, Path], ...] = ()   # boards running another firmware ELF
    threads: int = 2
    reflash: tuple[tuple[float, str, bool], ...] = ()  # (time, model, keep state): a genome through the host port
    flash_cuts: int = -1             # this board loses power at every flash operation of its updates

    @property
    def unit_ns(self) -> float:
        return self.wake_ms * 1e6 / self.mean_interval

    def validate(self) -> MeshConfig:
        if not self.wake_ms > 0:
            raise MeshError(f"the mean wake interval must be > 0 ms, got {self.wake_ms}")
        ticks = self.wake_ms * 1000 / MP.TICK_US
        if ticks < 1 or ticks >= 2 ** 31:
            raise MeshError(f"a wake interval of {self.wake_ms} ms is outside the boards' timer "
                            f"({MP.TICK_US} us ticks, at most 2^31)")
        for name in ("frame_loss", "byte_loss", "byte_corrupt"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise MeshError(f"{name.replace('_', ' ')} must be within [0, 1), got {v}")
        if not 0 <= self.clock_ppm < 1e5:
            raise MeshError(f"the clock error must be within [0, 100000) ppm, got {self.clock_ppm}")
        if self.clock == MP.CLOCK_PERIODIC and not 0 <= self.jitter < self.mean_interval:
            raise MeshError("a periodic clock needs 0 <= jitter < the mean interval")
        if not 1 <= self.copies <= MP.MAX_COPIES:
            raise MeshError(f"a STATE frame goes out 1 to {MP.MAX_COPIES} times, not {self.copies}")
        if not 1 <= self.threads <= 64:
            raise MeshError(f"threads must be within [1, 64], got {self.threads}")
        if self.mount and (set(self.mount) - set("01234567") or self.mount[0] != "0"):
            raise MeshError("a mount is one of 0-7 a board (the rotation in quarter turns, +4 mirrored), "
                            "and the host's board (0, 0) is mounted straight")
        return self


def random_mounts(width: int, height: int, seed: int, mirrored: tuple[int, ...] = ()) -> str:
    """Every board but the host's (0, 0) turned by a random quarter turn (seeded), and the
    boards in `mirrored` mounted mirrored too."""
    rots = np.random.default_rng([seed, 0x4D4F554E]).integers(0, 4, width * height)
    rots[0] = 0
    for i in mirrored:
        rots[i] |= MP.MOUNT_MIRRORED
    return "".join(map(str, rots))


def start_frames(q: QModel, width: int, height: int, seed: int, seed_xy: tuple[int, int],
                 config: MeshConfig, run: int = 1) -> list[bytes]:
    """What the host sends the board it is plugged into (the west face of the grid's
    (0, 0)) to start a run: that board's place, then the run's parameters with the
    model's seed cell, which the boards pass on."""
    state, resid = emit.seed_cell(q)
    mean_ticks = round(config.wake_ms * 1000 / MP.TICK_US)
    jitter_ticks = round(config.jitter / config.mean_interval * mean_ticks)
    return [MP.simple_frame("SET_COORD", bytes([0, 0])),
            MP.params_frame(run, seed, width, height, seed_xy[0], seed_xy[1], config.clock, mean_ticks,
                            jitter_ticks, state.tobytes(), resid.tobytes(), q.model_hash, config.copies)]


class Mesh:
    """One emulated grid. `advance(t)` runs it to time t (time units after the seed board
    started) and returns the camera's status blocks; `power_cycle(indices)` reboots
    boards (their state is lost); `replay()` checks every logged wake."""

    def __init__(self, q: QModel, width: int, height: int, seed: int, seed_xy: tuple[int, int],
                 config: MeshConfig = MeshConfig(), log: bool = True):
        self.q, self.width, self.height, self.seed = q, width, height, seed
        self.models = {q.model_hash: q}      # the genomes the grid was given, by hash
        self.run = 1
        self.spread: dict[str, Any] | None = None   # the last reflash: when it reached every board
        self._arrived = np.zeros(0)                 # ... when each board first ran it
        self.flash_cut: dict[str, Any] | None = None     # the flash cuts under way ...
        self.flash_cuts_done: dict[str, Any] | None = None   # ... and over
        self._host_buf = b""                        # a frame from the host's board still arriving
        self._census_id = 0
        self.config = config.validate()
        if not (2 <= width <= 254 and 2 <= height <= 254):
            raise MeshError(f"a mesh is 2 to 254 boards a side, not {width}x{height}")
        fw = mesh_firmware(q)
        self._dir = Path(tempfile.mkdtemp(prefix="nca-mesh-"))
        self.log_path = self._dir / "wakes.bin" if log else None
        cmd = [str(fw.emulator), "--size", str(width), str(height), "--cell", hex(fw.cell_addr),
               "--status", hex(fw.status_addr), "--seed", str(seed & 0xFFFFFFFF),
               "--clock-ppm", repr(config.clock_ppm), "--frame-loss", repr(config.frame_loss),
               "--byte-loss", repr(config.byte_loss), "--byte-corrupt", repr(config.byte_corrupt),
               "--threads", str(config.threads)]
        if not -1 <= config.flash_cuts < width * height:
            raise MeshError(f"--flash-cuts names board {config.flash_cuts}; the grid has {width * height}")
        if config.mount and len(config.mount) != width * height:
            raise MeshError(f"the mount has {len(config.mount)} boards, the grid {width * height}")
        for i in config.miswire:
            cmd += ["--miswire", str(i)]
        if config.mount:
            cmd += ["--mount", config.mount]
        for i, path in config.foreign:
            cmd += ["--other", str(i), str(path), hex(elf_symbol(path, "nca_mesh_cell")),
                    hex(elf_symbol(path, "nca_mesh_status"))]
        if self.log_path:
            cmd += ["--log", str(self.log_path)]
        self._proc = subprocess.Popen(cmd + [str(fw.elf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        # what the emulator reports on the way (a breach of the chip's self-programming
        # rules: "board I: FAIL: ..."), read as it comes so that the pipe never fills
        self.reports: list[str] = []
        self._reader = threading.Thread(target=self._read_reports, daemon=True)
        self._reader.start()
        self.t0_ns = 0
        self.now_ns = 0
        self.sim_cycles = self.active_cycles = self.wall_ns = self.update_cycles = 0
        self.status = np.zeros(width * height, STATUS)
        self.seed_xy = seed_xy
        self._start(seed_xy)

    def _read_reports(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self.reports.append(line.decode(errors="replace").rstrip())

    def flash_rule_breaches(self) -> list[str]:
        """The emulator's reports of a board breaking the chip's self-programming rules."""
        return [r for r in self.reports if "FAIL" in r]

    # ---------------------------------------------------------------- the emulator's commands
    def _command(self, line: str, answers: tuple[bytes, ...] = (b"ok", b"host")) -> bytes:
        p = self._proc
        assert p.stdin is not None and p.stdout is not None
        try:
            p.stdin.write((line + "\n").encode())
            p.stdin.flush()
            answer = p.stdout.readline()
        except BrokenPipeError:
            answer = b""
        if not answer.startswith(answers):
            if p.poll() is not None:
                self._reader.join(timeout=5)
            err = "; ".join(self.reports[-3:]) if p.poll() is not None else answer.decode(errors="replace").strip()
            raise MeshError(f"the grid emulator failed on {line.split()[0]!r}: {err or 'no answer'}")
        return answer

    def _run_to(self, t_ns: int) -> None:
        """Run to t_ns: in short slices while a board's flash cuts need tending."""
        while self.flash_cut is not None and self.now_ns + HOST_STEP_NS < t_ns:
            self._run_slice(self.now_ns + HOST_STEP_NS)
        self._run_slice(t_ns)

    def _run_slice(self, t_ns: int) -> None:
        head = self._command(f"run {int(t_ns)}").split()
        self.now_ns, self.sim_cycles, self.active_cycles = int(head[1]), int(head[2]), int(head[3])
        self.wall_ns += int(head[4])
        self.update_cycles = int(head[5])
        raw = self._proc.stdout.read(self.width * self.height * STATUS.itemsize)  # type: ignore[union-attr]
        self.status = np.frombuffer(raw, STATUS).copy()
        sp = self.spread
        if sp is not None and sp["all_boards_s"] is None:
            t = (self.now_ns - sp["at_ns"]) / 1e9
            on = self.status["generation"] == sp["generation"]
            self._arrived[on & np.isnan(self._arrived)] = t
            if on.all():
                sp["all_boards_s"] = t
                sp["half_of_the_boards_s"], sp["nine_tenths_s"] = (float(v) for v in
                                                                   np.quantile(self._arrived, [0.5, 0.9]))
        if self.flash_cut is not None:
            self._tend_flash_cuts()

    def host(self, frame: bytes) -> None:
        """Bytes to the host port (the west face of board (0, 0))."""
        self._command("host " + frame.hex())

    def host_read(self) -> bytes:
        """What board (0, 0) sent out of its west face since the last call."""
        return bytes.fromhex(self._command("hostread").decode().split(" ", 1)[1].strip())

    def host_payloads(self) -> list[bytes]:
        """The frames board (0, 0) completed on the host port since the last call (a frame
        still arriving waits for the next)."""
        self._host_buf += self.host_read()
        done, _, self._host_buf = self._host_buf.rpartition(b"\x00")
        return MP.payloads(done)

    def _start(self, seed_xy: tuple[int, int]) -> None:
        self._run_to(BOOT_NS)                                # the boards start up (a byte before is lost)
        for frame in start_frames(self.q, self.width, self.height, self.seed, seed_xy, self.config):
            self.host(frame)
        seed_i = seed_xy[1] * self.width + seed_xy[0]
        step = 1_000_000                                     # 1 ms: until the seed board runs
        while not self.status["flags"][seed_i] & MP.FLAG_RUNNING:
            if self.now_ns > 60_000_000_000:
                raise MeshError("the run's parameters did not reach the seed board within 60 s")
            self._run_to(self.now_ns + step)
        self.t0_ns = self.now_ns

    # ---------------------------------------------------------------- the run
    def advance(self, t: float) -> np.ndarray:
        """Run to time t (time units since the seed board started); the status blocks."""
        target = self.t0_ns + round(t * self.config.unit_ns)
        if target > self.now_ns:
            self._run_to(target)
        return self.status

    @property
    def now(self) -> float:
        return (self.now_ns - self.t0_ns) / self.config.unit_ns

    def power_cycle(self, indices: np.ndarray) -> None:
        """Cut the power of these boards and give it back: they restart from nothing."""
        ids = ",".join(str(int(i)) for i in indices)
        self._command(f"off {ids}")
        self._command(f"on {ids}")

    def cut(self, board: int, face: int) -> None:
        """Sever board's wire on that grid face, both ways."""
        self._command(f"cut {int(board)} {int(face)}")

    def own_states(self) -> np.ndarray:
        """(H, W, 16) own states in 2^-ef_bits steps of the current genome's formats."""
        own = F.join_own(self.status["state"], self.status["resid"], self.q.fmt.ef_bits)
        return own.reshape(self.height, self.width, 16)

    def float_states(self) -> np.ndarray:
        """(H, W, 16) the boards' states in floats, each in the formats of the genome it runs
        (a board on a genome nobody gave the grid reads as empty)."""
        out = np.zeros((self.width * self.height, 16), np.float32)
        for h, q in self.models.items():
            on = self.status["model_hash"] == h
            own = F.join_own(self.status["state"][on], self.status["resid"][on], q.fmt.ef_bits)
            out[on] = F.dequantize_fine(own, q.fmt)
        return out.reshape(self.height, self.width, 16)

    # ---------------------------------------------------------------- genomes
    def generations(self) -> dict[str, int]:
        """How many boards run each genome, by the camera: {"generation/hash": boards}."""
        keys = [f"{g}/{h:08x}" for g, h in zip(self.status["generation"], self.status["model_hash"])]
        return {k: keys.count(k) for k in sorted(set(keys))}

    def reflash(self, q: QModel, keep_state: bool = False, timeout_s: float = 60.0) -> dict[str, Any]:
        """Flash q through the host port, as `nca-flash`'s mesh push does on real boards:
        the host offers the genome (one generation above the grid's newest) to the board it
        is plugged into and answers its chunk requests until that board runs it; then a new
        run starts with q's seed (the seed board waits until the genome reaches it), unless
        the genome says the boards keep their state (`keep_state`: the run goes on). The
        boards pass it on by themselves; `spread` records when every board runs it."""
        gen = int(self.status["generation"].max()) + 1
        server = MP.GenomeServer(image_of(q, keep_state), gen)
        self.models[q.model_hash] = q
        t0 = self.now_ns
        self.host_payloads()
        self.host(server.offer())
        while self.status["generation"][0] != gen:
            if self.now_ns - t0 > timeout_s * 1e9:
                raise MeshError(f"the host's board did not take the genome within {timeout_s:g} s "
                                f"({server.chunks_sent} chunks sent)")
            self._run_slice(self.now_ns + HOST_STEP_NS)
            for p in self.host_payloads():
                reply = server.answer(p)
                if reply is not None:
                    self.host(reply)
        self.q = q
        if not keep_state:
            self.run += 1
            for frame in start_frames(q, self.width, self.height, self.seed, self.seed_xy, self.config,
                                      self.run)[1:]:
                self.host(frame)
        self._arrived = np.full(self.width * self.height, np.nan)
        self.spread = {"generation": gen, "model_hash": f"{q.model_hash:08x}", "keep_state": keep_state, "at_ns": t0,
                       "host_board_s": (self.now_ns - t0) / 1e9, "chunks_from_host": server.chunks_sent,
                       "all_boards_s": None}
        return self.spread

    def census(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Ask the grid, through the host port, how many boards run which genome."""
        self._census_id = (self._census_id + 1) & 0xFF
        t0 = self.now_ns
        self.host_payloads()
        self.host(MP.census_req_frame(self._census_id, 0, 0))
        while self.now_ns - t0 < timeout_s * 1e9:
            self._run_slice(self.now_ns + 20 * HOST_STEP_NS)
            for p in self.host_payloads():
                if p[0] == MP.MSG["CENSUS"] and p[1] == self._census_id:
                    self.host(MP.simple_frame("CENSUS_ACK", bytes([self._census_id])))
                    _, boards, entries = MP.parse_census(p)
                    return {"boards": boards, "seconds": (self.now_ns - t0) / 1e9,
                            "genomes": {f"{g}/{h:08x}": n for g, h, n in entries}}
        raise MeshError(f"no census came back within {timeout_s:g} s")

    def cut_at_every_flash_operation(self, board: int) -> None:
        """From now on `board` loses power at its flash operations, one update attempt each:
        the k-th attempt at its k-th operation (torn halfway when k is odd), until an attempt
        completes; each time the power comes back at once (the board reboots). `boots`
        records the genome (generation, hash) the board ran before each cut and at the end."""
        self.flash_cut = {"board": int(board), "k": 1, "cuts": 0, "boots": []}
        self._command(f"flashcut {int(board)} 1 1")

    def _tend_flash_cuts(self) -> None:
        c = self.flash_cut
        assert c is not None
        b = c["board"]
        _, _, ops, fired = self._command(f"flashops {b}", (b"flashops",)).split()
        ran = (int(self.status["generation"][b]), int(self.status["model_hash"][b]))
        if int(fired):
            c["boots"].append(ran)
            c["cuts"] += 1
            c["k"] += 1
            self._command(f"on {b}")
            self._command(f"flashcut {b} {c['k']} {c['k'] % 2}")
        elif self.spread is not None and ran[0] == self.spread["generation"] and not self.status["genome_bytes"][b]:
            c["boots"].append(ran)
            self.flash_cuts_done = dict(c, ops=int(ops))
            self._command(f"flashcut {b} {2 ** 62} 0")      # never: the cuts are over
            self.flash_cut = None

    def counts(self) -> dict[str, int]:
        out = {c: int(self.status[c].sum()) for c in MP.COUNTERS}
        out["boards_running"] = int(((self.status["flags"] & MP.FLAG_RUNNING) > 0).sum())
        out["boards_placed"] = int(((self.status["flags"] & MP.FLAG_COORDS) > 0).sum())
        out["boards_miswired"] = int(((self.status["flags"] & MP.FLAG_MISWIRED) > 0).sum())
        out["boards_foreign"] = int(((self.status["flags"] & MP.FLAG_FOREIGN) > 0).sum())
        out["boards_mirrored"] = int(((self.status["flags"] & MP.FLAG_MIRRORED) > 0).sum())
        return out

    def mounts(self) -> np.ndarray:
        """Each board's mount as it found it (rotation, +4 mirrored; -1: not placed yet)."""
        flags = self.status["flags"].astype(np.int16)
        found = ((flags & MP.FLAG_ROT_MASK) >> MP.FLAG_ROT_SHIFT) | np.where(flags & MP.FLAG_MIRRORED,
                                                                           MP.MOUNT_MIRRORED, 0)
        return np.where(flags & MP.FLAG_COORDS, found, -1)

    def mounts_found_wrong(self) -> int:
        """Placed boards whose mount as found is not the one they were mounted with."""
        given = np.array([int(ch) for ch in self.config.mount or "0" * (self.width * self.height)])
        found = self.mounts()
        return int(((found >= 0) & (found != given)).sum())

    def misplaced(self) -> int:
        """Boards whose learned place is not where they are (a placed board only)."""
        ys, xs = np.divmod(np.arange(self.width * self.height), self.width)
        placed = (self.status["flags"] & MP.FLAG_COORDS) > 0
        return int((placed & ((self.status["x"] != xs) | (self.status["y"] != ys))).sum())

    def _records(self, skip: tuple[int, ...] = ()) -> np.ndarray:
        """The replay log's records (but the boards in `skip`), read once for as long as the
        log does not grow (replay and inbox_mismatches both read it)."""
        if self.log_path is None or not self.log_path.exists():
            return np.zeros(0, REC)
        size = self.log_path.stat().st_size
        if getattr(self, "_log_cache", (None,))[0] != size:
            self._log_cache = (size, np.fromfile(self.log_path, REC))
        recs = self._log_cache[1]
        return recs[~np.isin(recs["board"], np.asarray(skip))] if skip else recs

    def replay(self, skip: tuple[int, ...] = ()) -> tuple[int, int]:
        """(wakes replayed, mismatches): every logged wake through the golden model (but
        the boards in `skip`, e.g. those running another model)."""
        recs = self._records(skip)
        if len(recs) == 0:
            return 0, 0
        bad = int((~np.isin(recs["model_hash"], np.array(list(self.models), np.uint32))).sum())
        for h, q in self.models.items():      # each wake through the genome the board ran
            r = recs[recs["model_hash"] == h]
            if len(r) == 0:
                continue
            ef = q.fmt.ef_bits
            xs = F.join_own(r["state_in"], r["resid_in"], ef).astype(np.int16 if ef else np.int8)
            codes = np.zeros(len(r), np.int64)
            w1, b1, w2, b2, mult, tsh, consts = q.arrays()
            G.update_batch(xs, np.ascontiguousarray(r["inbox"]), w1, b1, w2, b2, mult, tsh, consts,
                           G.rotation_array(None), codes)
            want = F.join_own(r["state_out"], r["resid_out"], ef)
            bad += int(np.any(xs.astype(np.int64) != want, axis=1).sum())
        return len(recs), bad

    def inbox_mismatches(self, skip: tuple[int, ...] = ()) -> int:
        """Inbox entries, over every logged wake, that the neighbour in that slot (the grid's
        NW N NE W E SW S SE) never had as its state: 0 when every board maps its ports, relays
        included, onto the right neighbours whichever way it is mounted. An entry may be
        zero (nothing heard yet, a restart) or the seed board's seed."""
        recs = self._records(skip)
        if len(recs) == 0:
            return 0

        def key(board: np.ndarray, states: np.ndarray) -> np.ndarray:
            halves = np.ascontiguousarray(states, np.int8).view(np.uint64).reshape(len(states), 2)
            return (halves[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ (halves[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)) \
                ^ (board.astype(np.uint64) * np.uint64(0x165667B19E3779F9))

        seed_i = self.seed_xy[1] * self.width + self.seed_xy[0]
        had = np.concatenate([key(recs["board"], recs["state_out"])]
                             + [key(np.array([seed_i]), emit.seed_cell(q)[0][None]) for q in self.models.values()])
        ys, xs = np.divmod(recs["board"].astype(np.int64), self.width)
        bad = 0
        for s, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < self.height) & (nx >= 0) & (nx < self.width)
            got = recs["inbox"][:, s]
            heard = got.any(axis=1)
            known = np.isin(key(np.where(inside, ny * self.width + nx, 0), got), had)
            bad += int((heard & ~(inside & known)).sum())
        return bad

    def close(self) -> None:
        p = self._proc
        if p.poll() is None:
            try:
                p.stdin.write(b"quit\n")   # type: ignore[union-attr]
                p.stdin.close()            # type: ignore[union-attr]
                p.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MeshEngine(Engine):
    """The emulated grid behind the engine interface `sim.simulate` drives (`--engine
    mesh`): time in the simulator's units, damage = the boards in the mask power-cycled,
    the state read by the camera. The seed board is where the starting state's one
    living cell is."""

    backend = "mesh"

    def __init__(self, state: np.ndarray, params: Params, seed: int, config: MeshConfig):
        alive = np.argwhere(np.asarray(state)[..., ALPHA] > 0)
        if len(alive) != 1:
            raise RunError(f"the mesh starts from one seed board; the starting state has {len(alive)} living cells")
        if params.meta is None:
            raise RunError("the mesh needs a model (its firmware is built with the model's genome)")
        if abs(F.angle_of_kernels(params.kxy)) > 1e-9:
            raise RunError("the mesh's boards perceive unrotated (orientation comes with the boards' "
                           "mounting, not a run option)")
        h, w = state.shape[:2]
        self._params = params
        self.q = quantized(params)
        self._reflash = [(float(t), quantized(load_model(name)[0]), keep) for t, name, keep in sorted(config.reflash)]
        self.reflashes: list[dict[str, Any]] = []
        self.mesh = Mesh(self.q, w, h, seed, (int(alive[0][1]), int(alive[0][0])), config)

    def advance(self, t: float) -> None:
        m = self.mesh
        while self._reflash and self._reflash[0][0] <= t:
            at, q, keep = self._reflash.pop(0)
            m.advance(at)
            spread = m.reflash(q, keep)    # filled in as the genome spreads
            spread["step"] = at
            self.reflashes.append(spread)
            if m.config.flash_cuts >= 0:
                m.cut_at_every_flash_operation(m.config.flash_cuts)
        while m.spread is not None and m.spread["all_boards_s"] is None and m.now + 1 < t:
            m.advance(m.now + 1)       # one unit at a time while the genome spreads: its time
        m.advance(t)

    def damage(self, mask: np.ndarray) -> None:
        self.mesh.power_cycle(np.flatnonzero(np.asarray(mask, bool).ravel()))

    def set_params(self, params: Params) -> None:
        raise RunError("the mesh's boards run the model they were built with: no rotation changes mid-run")

    @property
    def params(self) -> Params:
        return self._params

    @property
    def now(self) -> float:
        return self.mesh.now

    @property
    def state(self) -> np.ndarray:
        return self.mesh.float_states()

    @property
    def cell_updates(self) -> int:
        return int(self.mesh.status["updates"].sum())

    def metrics(self) -> dict[str, Any]:
        m = self.mesh
        c = m.config
        wakes, mismatches = m.replay()
        other = tuple(i for i, _ in c.foreign)
        wall = m.wall_ns / 1e9
        return {"mesh": {
            **m.counts(), "misplaced": m.misplaced(), "wakes_replayed": wakes, "replay_mismatches": mismatches,
            "inbox_mismatches": m.inbox_mismatches(skip=other),
            "model_hash": f"{self.q.model_hash:08x}", "wake_ms": c.wake_ms, "unit_ms": c.unit_ns / 1e6,
            "emulated_seconds": (m.now_ns - m.t0_ns) / 1e9, "emulated_cycles": m.sim_cycles,
            "active_cycles": m.active_cycles, "update_cycles": m.update_cycles, "emulator_seconds": wall,
            "emulated_cycles_per_second": m.sim_cycles / wall if wall else None,
            "active_cycles_per_second": m.active_cycles / wall if wall else None,
            "clock_ppm": c.clock_ppm, "frame_loss": c.frame_loss, "byte_loss": c.byte_loss,
            "byte_corrupt": c.byte_corrupt, "copies": c.copies, "miswired_boards": list(c.miswire),
            "mounted_turned": sum(ch not in "04" for ch in c.mount),
            "mounted_mirrored": [i for i, ch in enumerate(c.mount) if int(ch) & MP.MOUNT_MIRRORED],
            "mounts_found_wrong": m.mounts_found_wrong(),
            "foreign_boards": list(other), "threads": c.threads, **self._genome_metrics()}}

    def _genome_metrics(self) -> dict[str, Any]:
        m = self.mesh
        out: dict[str, Any] = {"genomes": m.generations(), "flash_rule_breaches": len(m.flash_rule_breaches())}
        if self.reflashes:
            out["reflash"] = [{k: v for k, v in r.items() if k != "at_ns"} for r in self.reflashes]
            out["census"] = m.census()
            if m.config.flash_cuts >= 0:
                out["flash_cuts"] = m.flash_cuts_done or dict(m.flash_cut or {}, done=False)
        return out

    def close(self) -> None:
        self.mesh.close()
