"""The wired cells: the mesh firmware on a grid of emulated ATmega2560 boards
(boards/mesh.py, firmware/mesh, firmware/tools/simavr_mesh.c)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import sim.run
from boards import mesh_host
from boards import mesh_protocol as MP
from boards.mesh import Mesh, MeshConfig, MeshError
from boards.protocol import decode_payload
from codegen.quantize import quantized
from codegen.toolchain import mesh_firmware, missing_tools
from sim.paths import BOARD_MODEL, model_path
from sim.weights import load_model

pytestmark = pytest.mark.skipif(bool(missing_tools("mega2560")), reason="needs gcc-avr, avr-libc, libsimavr-dev")


@pytest.fixture(scope="module")
def q():
    """The mesh's default model, the one the host tool starts a grid with."""
    return quantized(load_model(BOARD_MODEL)[0])


def placed_everywhere(m: Mesh) -> bool:
    return m.counts()["boards_placed"] == m.width * m.height and m.misplaced() == 0


def test_header_is_generated_from_the_protocol():
    assert MP.HEADER_PATH.read_text() == MP.c_header()


def test_an_8x8_grid_learns_its_places_grows_and_replays_bit_exact(q):
    """Every wake of every board, replayed through the golden model, gives the board's output."""
    with Mesh(q, 8, 8, seed=3, seed_xy=(4, 4), config=MeshConfig(wake_ms=100)) as m:
        m.advance(60)
        c = m.counts()
        assert placed_everywhere(m)
        assert c["boards_running"] == 64
        assert c["corrupt"] == c["refused"] == c["lost"] == c["miswired"] == c["foreign"] == 0
        alive = (m.float_states()[..., 3] > 0.1).sum()
        assert alive >= 40                      # grown from one board over the whole small grid
        wakes, mismatches = m.replay()
        assert c["wakes"] - 64 <= wakes <= c["wakes"]   # a board may be inside its update
        assert wakes > 1000
        assert mismatches == 0
        # the status block the camera reads is what the board answers on the host port
        m.host_read()
        m.host(MP.simple_frame("STATUS_GET"))
        m.advance(m.now + 0.2)
        raw = m.host_read()
        frames = [decode_payload(f) for f in raw.split(b"\x00") if f]
        status = [f for f in frames if f[0] == MP.MSG["STATUS"]]
        assert status and MP.parse_status(status[-1][1:])["x"] == 0
        assert MP.parse_status(status[-1][1:])["wakes"] >= int(m.status["wakes"][0]) - 1


def test_runs_replay_the_same_for_any_thread_count(q):
    runs = []
    for threads in (1, 2):
        with Mesh(q, 5, 5, seed=1, seed_xy=(2, 2), config=MeshConfig(threads=threads)) as m:
            m.advance(20)
            runs.append(m.status.copy())
    assert np.array_equal(runs[0], runs[1])


def test_a_miswired_port_is_detected_and_spoils_no_neighbour(q):
    """Board 12's N wire lands on its north neighbour's W port. Each board's other ports
    outvote the wrong one, so both flag it and refuse its frames; nobody is misplaced."""
    with Mesh(q, 5, 5, seed=0, seed_xy=(1, 2), config=MeshConfig(miswire=(12,))) as m:
        m.advance(30)
        flags = m.status["flags"]
        assert set(np.flatnonzero(flags & MP.FLAG_MISWIRED)) == {12, 7}
        assert not (flags & MP.FLAG_MIRRORED).any()
        assert m.counts()["miswired"] > 0 and m.counts()["boards_miswired"] == 2
        assert m.misplaced() == 0
        assert m.replay()[1] == 0 and m.inbox_mismatches() == 0



def test_a_board_with_another_genome_of_the_same_generation_joins_the_grid(q):
    """The seed board was programmed with another genome of the same generation (two
    pushes at once): the grid agrees on one, the higher model hash, and no state of one
    genome reaches a cell of the other (the hash in every STATE frame)."""
    other = quantized(load_model(model_path("lizard_growing"))[0])
    assert other.model_hash != q.model_hash
    elf = mesh_firmware(other).elf
    cfg = MeshConfig(foreign=((5, elf),))
    with Mesh(q, 4, 4, seed=0, seed_xy=(1, 1), config=cfg) as m:   # the seed runs the other model
        m.models[other.model_hash] = other
        m.advance(100)                          # 5 s: a genome takes about 2 s a board
        win = max(q.model_hash, other.model_hash)
        assert m.generations() == {f"1/{win:08x}": 16}
        assert m.replay()[1] == 0 and m.inbox_mismatches() == 0


@pytest.mark.parametrize("seed", [2, 5])
def test_corrupted_bytes_are_counted_and_never_reach_a_cell(q, seed):
    """The run's parameters still reach every board (they are sent again: a flood on lossy
    wires can die out), and no corrupted state gets into a cell."""
    cfg = MeshConfig(byte_corrupt=0.01, frame_loss=0.05)
    with Mesh(q, 8, 8, seed=seed, seed_xy=(4, 4), config=cfg) as m:
        m.advance(40)
        c = m.counts()
        assert c["corrupt"] > 0 and c["lost"] > 0
        assert c["boards_running"] == 64
        assert placed_everywhere(m)
        assert m.replay()[1] == 0


def test_copies_of_each_state_frame_get_through_corrupting_wires(q):
    """1 % corrupted bytes fail about half the 65-byte relaying frames; three copies back to
    back lose a frame's news far less often, and the copies are neither counted twice nor
    refused."""
    lost = {}
    for copies in (1, 3):
        cfg = MeshConfig(byte_corrupt=0.01, frame_loss=0.05, copies=copies)
        with Mesh(q, 8, 8, seed=2, seed_xy=(4, 4), config=cfg) as m:
            m.advance(40)
            c = m.counts()
            lost[copies] = c["lost"] / (c["received"] + c["lost"])
            assert c["refused"] == 0 and c["sent"] > copies * 3 * c["wakes"]
            assert m.replay()[1] == 0 and m.inbox_mismatches() == 0
    assert lost[1] > 0.3 and lost[3] < 0.12


def test_power_cycled_boards_rejoin(q):
    with Mesh(q, 5, 5, seed=0, seed_xy=(2, 2)) as m:
        m.advance(30)
        before = m.status["wakes"].copy()
        m.power_cycle(np.array([7, 12]))
        m.advance(m.now + 0.01)
        assert m.status["wakes"][7] == 0 and m.status["run"][7] == 0      # restarted from nothing
        m.advance(60)
        assert m.status["run"][7] == m.status["run"][0] == 1              # asked a neighbour for the run
        assert placed_everywhere(m)
        assert m.status["wakes"][12] > 0 and before[12] > 0
        assert m.replay()[1] == 0


def test_bad_mesh_options_are_errors(q):
    with pytest.raises(MeshError, match="wake interval"):
        MeshConfig(wake_ms=0).validate()
    with pytest.raises(MeshError, match="frame loss"):
        MeshConfig(frame_loss=1.5).validate()
    with pytest.raises(MeshError, match="boards a side"):
        Mesh(q, 1, 300, seed=0, seed_xy=(0, 0))


# ---------------------------------------------------------------- python -m sim.run --engine mesh
def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = sim.run.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sim_run_engine_mesh_reports_the_boards_and_power_cycles_the_damage(tmp_path, capsys):
    js = tmp_path / "m.json"
    rc, out, err = _run(capsys, "--engine", "mesh", "--size", 8, "--steps", 40, "--seed", 2,
                        "--damage", "circle:4,4,2@30", "--byte-corrupt", 0.002, "--json", js)
    assert rc == 0, err
    m = json.loads(js.read_text())
    b = m["mesh"]
    assert m["engine"] == "mesh" and m["model"].endswith("lizard_regenerating_robust_ef.npz")
    assert b["boards_running"] == b["boards_placed"] == 64 and b["misplaced"] == 0
    assert b["wakes_replayed"] > 500 and b["replay_mismatches"] == 0
    assert b["corrupt"] > 0 and b["byte_corrupt"] == 0.002
    assert m["damage"][0]["cells"] > 4 and m["regrowth_mse"] is not None
    assert b["update_cycles"] > 0 and b["emulated_cycles"] > b["active_cycles"] > b["update_cycles"]
    assert m["cell_updates"] == b["updates"] > 0
    assert "mesh: 64 boards running" in out and "0 mismatches" in out


@pytest.mark.parametrize("argv, words", [
    (["--engine", "mesh", "--latency", "1"], "does not apply to --engine mesh"),
    (["--engine", "mesh", "--links", "relay"], "does not apply to --engine mesh"),
    (["--engine", "async", "--wake-ms", "50"], "--wake-ms applies to --engine mesh only"),
    (["--engine", "mesh", "--wake-ms", "0"], "wake interval must be > 0"),
    (["--engine", "mesh", "--miswire", "3,0"], "no board with a north neighbour"),
    (["--engine", "mesh", "--miswire", "a"], "--miswire takes X,Y"),
    (["--engine", "mesh", "--rotate", "90"], "perceives unrotated"),
    (["--engine", "mesh", "--frame-loss", "1"], "frame loss must be within"),
    (["--engine", "mesh", "--copies", "4"], "goes out 1 to 3 times"),
])
def test_bad_mesh_arguments_are_one_line_errors(argv, words, one_line_error):
    one_line_error(argv, words)


class EmulatedPort:
    """A serial port onto the emulated grid's host port (the grid runs while it is read)."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def write(self, data: bytes) -> int:
        self.mesh.host(data)
        return len(data)

    def read(self, n: int) -> bytes:
        self.mesh.advance(self.mesh.now + 0.2)
        return self.mesh.host_read()

    def reset_input_buffer(self) -> None:
        self.mesh.host_read()

    def close(self) -> None:
        pass


def test_the_host_tool_stops_and_restarts_a_grid(q, monkeypatch, capsys):
    with Mesh(q, 3, 3, seed=0, seed_xy=(1, 1)) as m:
        m.advance(10)
        monkeypatch.setattr(mesh_host, "open_port", lambda port: EmulatedPort(m))
        assert mesh_host.main(["--port", "emu", "status"]) == 0
        assert "board (0, 0), run 1, running placed" in capsys.readouterr().out
        assert mesh_host.main(["--port", "emu", "stop", "--run", "1"]) == 0
        m.advance(m.now + 2)
        assert not (m.status["flags"] & MP.FLAG_RUNNING).any()          # the STOP went round the grid
        woken = m.status["wakes"].copy()
        m.advance(m.now + 10)
        assert np.array_equal(m.status["wakes"], woken)
        assert mesh_host.main(["--port", "emu", "start", "--size", "3x3", "--seed-at", "2,0", "--run", "2",
                               "--wake-ms", "100"]) == 0
        m.advance(m.now + 20)
        assert (m.status["run"] == 2).all() and m.status["wakes"].sum() > woken.sum()
        assert m.replay()[1] == 0
        assert mesh_host.main(["--port", "emu", "start", "--size", "3x3", "--seed-at", "5,0"]) == 2
        assert "outside the 3x3 grid" in capsys.readouterr().err


# ---------------------------------------------------------------- the 40x40 grid (slow)
FLOAT_ASYNC_LOSS = 1.88e-4      # lizard_regenerating_paper (the EF lizards' float source) on the float async engine, 40x40, step 1,000, seeds 0-4


@pytest.mark.slow
def test_1600_emulated_boards_grow_the_lizard_from_one_seed_board(tmp_path, capsys):
    """Loss at 1,000 time units within 1.5x of the float async engine's, every wake
    bit-exact; boards waking once a second on average, every board but the host's mounted
    turned by a random quarter turn (docs/wired-cells.md)."""
    js = tmp_path / "m.json"
    rc, _, err = _run(capsys, "--engine", "mesh", "--size", 40, "--steps", 1000, "--wake-ms", 1000,
                      "--mount", "random", "--json", js)
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert m["loss"] <= 1.5 * FLOAT_ASYNC_LOSS
    b = m["mesh"]
    assert b["replay_mismatches"] == 0 and b["wakes_replayed"] > 300_000
    assert b["boards_placed"] == 1600 and b["misplaced"] == 0
    assert b["mounted_turned"] > 1000 and b["mounts_found_wrong"] == 0 and b["inbox_mismatches"] == 0
