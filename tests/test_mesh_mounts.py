"""Boards mounted any way round: each finds its rotation from its neighbours' frames and
maps its ports onto the grid's faces; a mirrored board reports itself
(firmware/mesh/nca_mesh.c, boards/mesh.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import sim.run
from boards import mesh as M
from boards import mesh_protocol as MP
from boards.mesh import Mesh, MeshConfig, MeshError, random_mounts
from codegen.quantize import quantized
from codegen.toolchain import missing_tools
from sim.paths import model_path
from sim.weights import load_model

pytestmark = pytest.mark.skipif(bool(missing_tools("mega2560")), reason="needs gcc-avr, avr-libc, libsimavr-dev")


@pytest.fixture(scope="module")
def q():
    return quantized(load_model(model_path("lizard_regenerating_paper_ef"))[0])


def test_face_of_turns_and_mirrors_the_ports():
    assert [MP.face_of(0, p) for p in range(4)] == [MP.N, MP.E, MP.S, MP.W]
    assert [MP.face_of(1, p) for p in range(4)] == [MP.E, MP.S, MP.W, MP.N]     # a quarter turn clockwise
    assert [MP.face_of(MP.MOUNT_MIRRORED, p) for p in range(4)] == [MP.N, MP.W, MP.S, MP.E]


def test_random_mounts_are_seeded_and_keep_the_host_board_straight():
    a = random_mounts(6, 6, 3, mirrored=(14,))
    assert a == random_mounts(6, 6, 3, mirrored=(14,)) and a != random_mounts(6, 6, 4, mirrored=(14,))
    assert a[0] == "0" and int(a[14]) & MP.MOUNT_MIRRORED
    assert {int(c) for i, c in enumerate(a) if i != 14} == {0, 1, 2, 3}
    with pytest.raises(MeshError, match="mounted straight"):
        MeshConfig(mount="1" * 36).validate()
    with pytest.raises(MeshError, match="one of 0-7"):
        MeshConfig(mount="0" + "8" * 35).validate()


def test_boards_mounted_turned_find_their_mount_and_their_neighbours(q, monkeypatch):
    mount = random_mounts(8, 8, 0)
    with Mesh(q, 8, 8, seed=3, seed_xy=(4, 4), config=MeshConfig(mount=mount)) as m:
        m.advance(40)
        assert m.counts()["boards_placed"] == 64 and m.misplaced() == 0
        assert "".join(map(str, m.mounts())) == mount
        assert not m.status["flags"].__and__(MP.FLAG_MISWIRED | MP.FLAG_MIRRORED).any()
        wakes, mismatches = m.replay()
        assert wakes > 500 and mismatches == 0
        # every inbox slot, relayed diagonals included, held what that neighbour sent
        assert m.inbox_mismatches() == 0
        # ... which a board that had mapped its ports mirrored would fail
        monkeypatch.setattr(M, "NEIGHBOUR_OFFSETS", tuple((dy, -dx) for dy, dx in M.NEIGHBOUR_OFFSETS))
        assert m.inbox_mismatches() > 1000


@pytest.mark.parametrize("code", [4, 5, 6, 7])
def test_a_mirrored_board_reports_itself_and_stays_an_empty_cell(q, code):
    """Board (2, 2) mirrored (and turned by code - 4 quarter turns). Code 6, port q facing
    (2 - q) % 4, is also how a board whose N wire lands on a northern board's N port sees
    its wires."""
    mount = "0" * 14 + str(code) + "0" * 21
    with Mesh(q, 6, 6, seed=0, seed_xy=(3, 3), config=MeshConfig(mount=mount)) as m:
        m.advance(30)
        flags = m.status["flags"]
        assert set(np.flatnonzero(flags & MP.FLAG_MIRRORED)) == {14}
        assert not (flags & MP.FLAG_MISWIRED).any()           # its neighbours see consistent wires
        assert m.mounts()[14] == code and m.misplaced() == 0
        assert not m.own_states()[2, 2].any() and m.own_states()[3, 3].any()
        assert m.status["updates"][14] == 0
        assert m.replay()[1] == 0 and m.inbox_mismatches() == 0   # it relays its neighbours right


def test_sim_run_mounts_the_boards_at_random_and_reports_a_mirror(tmp_path, capsys):
    js = tmp_path / "m.json"
    rc = sim.run.main(["--engine", "mesh", "--size", "6", "--steps", "30", "--mount", "random",
                       "--mirror", "4,1", "--json", str(js)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    b = json.loads(js.read_text())["mesh"]
    assert b["mounted_turned"] > 20 and b["mounted_mirrored"] == [10] and b["boards_mirrored"] == 1
    assert b["mounts_found_wrong"] == 0 and b["inbox_mismatches"] == 0 and b["replay_mismatches"] == 0
    assert "1 mirrored; 1 boards report a mirror" in out


@pytest.mark.parametrize("argv, words", [
    (["--engine", "mesh", "--mirror", "0,0"], "defines north"),
    (["--engine", "mesh", "--mirror", "9,99"], "no such board"),
    (["--engine", "async", "--mount", "random"], "--mount applies to --engine mesh only"),
])
def test_bad_mount_arguments_are_one_line_errors(argv, words, one_line_error):
    one_line_error(argv, words)
