"""Genome gossip on the emulated grid: a genome flashed into the host's board through its
host port spreads to every board (boards/mesh.py `reflash`, firmware/mesh/nca_mesh.c);
older generations and corrupt genomes are never activated; a board that loses power at
any flash operation of its update still boots a whole genome; the census counts the
boards on each genome."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_mesh import EmulatedPort

import sim.run
from boards import flash, mesh_host
from boards import mesh_protocol as MP
from boards.mesh import Mesh, MeshConfig
from codegen.image import image_of
from codegen.quantize import quantized
from codegen.toolchain import missing_tools
from sim.paths import model_path
from sim.weights import load_model

pytestmark = pytest.mark.skipif(bool(missing_tools("mega2560")), reason="needs gcc-avr, avr-libc, libsimavr-dev")


@pytest.fixture(scope="module")
def old():
    return quantized(load_model(model_path("lizard_regenerating_paper_ef"))[0])


@pytest.fixture(scope="module")
def new():
    return quantized(load_model(model_path("lizard_growing"))[0])


def spread(m: Mesh, limit: float = 400) -> None:
    """Run until every board runs the genome of the last reflash."""
    while m.spread["all_boards_s"] is None:
        assert m.now < limit, m.generations()
        m.advance(m.now + 2)


def serve(m: Mesh, server: MP.GenomeServer, seconds: float) -> int:
    """Answer the host's board's chunk requests for `seconds`; the requests seen."""
    asked = 0
    end = m.now_ns + seconds * 1e9
    while m.now_ns < end:
        m._run_slice(m.now_ns + 5_000_000)
        for p in m.host_payloads():
            reply = server.answer(p)
            if p[0] == MP.MSG["CHUNK_REQ"]:
                asked += 1
            if reply is not None:
                m.host(reply)
    return asked


def test_a_genome_flashed_into_one_board_reaches_every_board(old, new):
    """Every board ends on the new genome, the census says so, every wake (on either
    genome) replays bit-exact through the genome it ran, and the lizard of the new model
    grows again from the seed."""
    with Mesh(old, 5, 5, seed=2, seed_xy=(2, 2), config=MeshConfig(wake_ms=100)) as m:
        m.advance(30)
        assert m.generations() == {f"1/{old.model_hash:08x}": 25}
        r = m.reflash(new)
        assert r["generation"] == 2 and r["chunks_from_host"] == len(image_of(new).chunks())
        spread(m)
        assert m.generations() == {f"2/{new.model_hash:08x}": 25}
        assert (m.status["activations"] == 1).all()
        m.advance(m.now + 60)
        assert (m.float_states()[..., 3] > 0.1).sum() >= 15          # grown again, by the new model
        c = m.census()
        assert c["boards"] == 25 and c["genomes"] == {f"2/{new.model_hash:08x}": 25}
        wakes, mismatches = m.replay()
        recs = np.fromfile(m.log_path, "u1").reshape(-1, MP.RECORD_BYTES)
        hashes = set(recs[:, 8:12].copy().view("<u4").ravel().tolist())
        assert hashes == {old.model_hash, new.model_hash}            # wakes on both genomes were checked
        assert wakes > 1000 and mismatches == 0
        assert m.inbox_mismatches() == 0
        assert m.counts()["foreign"] > 0                             # frames of the other genome refused
        assert m.flash_rule_breaches() == []                         # SPM from the boot section only, etc.
        assert m.counts()["miswired"] == 0 and m.misplaced() == 0


def test_a_genome_that_says_so_keeps_the_boards_states(old):
    """A genome whose header says the boards keep their states (here the same lizard
    without error feedback): no board starts again, the run goes on, every wake replays."""
    plain = quantized(load_model(model_path("lizard_regenerating_paper"))[0])
    with Mesh(old, 5, 5, seed=2, seed_xy=(2, 2), config=MeshConfig(wake_ms=100)) as m:
        m.advance(40)
        alive = (m.float_states()[..., 3] > 0.1).sum()
        assert alive >= 15
        m.reflash(plain, keep_state=True)
        spread(m)
        assert m.generations() == {f"2/{plain.model_hash:08x}": 25}
        assert (m.status["run"] == 1).all()                          # no new run
        assert (m.float_states()[..., 3] > 0.1).sum() >= alive - 5    # the pattern carried on
        recs = np.fromfile(m.log_path, "u1").reshape(-1, MP.RECORD_BYTES)
        first = {}
        for r in recs:                                               # each board's first wake on it
            b = int(r[0]) | int(r[1]) << 8
            if int(r[8:12].copy().view("<u4")[0]) == plain.model_hash and b not in first:
                first[b] = r[12:28].view("i1")
        assert sum(bool(v.any()) for v in first.values()) >= 10      # woke on the old states
        assert m.replay()[1] == 0


def test_an_older_generation_or_a_corrupt_genome_is_never_activated(old, new):
    with Mesh(old, 3, 3, seed=1, seed_xy=(1, 1), config=MeshConfig(wake_ms=100)) as m:
        m.advance(10)
        m.reflash(new)
        spread(m)
        # generation 1 of another genome, and generation 2 of one with a lower hash: refused
        for q, gen in ((old, 1), (old, 2) if old.model_hash < new.model_hash else (old, 1)):
            m.host_payloads()
            server = MP.GenomeServer(image_of(q), gen)
            m.host(server.offer())
            assert serve(m, server, 1.0) == 0
        # generation 3, one byte of one chunk flipped on the way: pulled, fails its CRC, not run
        bad = MP.GenomeServer(image_of(old), 3)
        genome = bytearray(bad.image.genome)
        genome[1000] ^= 0x10
        bad.image = type(bad.image)(bytes(genome), bad.image.shifts, bad.image.model_hash,
                                    ef_bits=bad.image.ef_bits)          # the header keeps the true CRC
        corrupt = int(m.status["corrupt"][0])
        m.host(bad.offer())
        assert serve(m, bad, 4.0) >= len(image_of(old).chunks())
        assert m.status["generation"][0] == 2 and m.status["model_hash"][0] == new.model_hash
        assert m.status["corrupt"][0] > corrupt
        m.advance(m.now + 20)
        assert m.generations() == {f"2/{new.model_hash:08x}": 9}
        assert m.replay()[1] == 0


def test_power_cut_at_every_flash_operation_of_one_board(old, new):
    """Board (1, 0) loses power at its k-th flash operation on its k-th attempt (torn
    halfway every other time), for every k: whenever it boots it runs a whole genome (the
    old one, or the new one once its header is whole), and it ends on the new one."""
    with Mesh(old, 3, 3, seed=1, seed_xy=(1, 1), config=MeshConfig(wake_ms=100)) as m:
        m.advance(10)
        m.reflash(new)
        m.cut_at_every_flash_operation(1)
        while m.flash_cut is not None:
            assert m.now < 6000, m.flash_cut
            m.advance(m.now + 5)
        done = m.flash_cuts_done
        ops = 34 + len(image_of(new).chunks()) + 1      # page erases, chunk writes, the header
        assert done["cuts"] == ops and done["k"] == ops + 1
        assert set(done["boots"]) <= {(1, old.model_hash), (2, new.model_hash)}
        assert (1, old.model_hash) in done["boots"]
        spread(m)
        assert m.status["generation"][1] == 2
        assert m.replay()[1] == 0 and m.flash_rule_breaches() == []


def test_boards_rebooting_on_lossy_wires_during_the_spread(old, new):
    """5 % of frames lost and three boards power-cycled mid-spread: every board gets there."""
    with Mesh(old, 4, 4, seed=4, seed_xy=(2, 2), config=MeshConfig(wake_ms=100, frame_loss=0.05)) as m:
        m.advance(20)
        m.reflash(new)
        m.advance(m.now + 10)
        m.power_cycle(np.array([5, 10, 15]))
        m.advance(m.now + 10)
        m.power_cycle(np.array([6]))
        spread(m)
        c = m.census()
        assert c["boards"] == 16 and c["genomes"] == {f"2/{new.model_hash:08x}": 16}
        assert m.replay()[1] == 0


def test_census_counts_what_answers(old):
    """A board without power is missing from the census (its parent stops waiting)."""
    with Mesh(old, 3, 3, seed=1, seed_xy=(1, 1), config=MeshConfig(wake_ms=100)) as m:
        m.advance(10)
        c = m.census()
        assert c["boards"] == 9 and c["genomes"] == {f"1/{old.model_hash:08x}": 9}
        m._command("off 8")
        c = m.census()
        assert c["boards"] == 8


def test_sim_run_reflash_reports_the_spread_and_the_census(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert sim.run.main(["--engine", "mesh", "--size", "4", "--steps", "160", "--reflash", "lizard_growing@20",
                         "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reflash at step 20: generation 2" in text and "census: 16 boards reported" in text
    mesh = json.loads(out.read_text())["mesh"]
    (r,) = mesh["reflash"]
    assert r["step"] == 20 and r["all_boards_s"] is not None and r["all_boards_s"] > r["host_board_s"] > 0
    assert mesh["census"]["boards"] == 16 and len(mesh["genomes"]) == 1 and mesh["flash_rule_breaches"] == 0
    assert mesh["replay_mismatches"] == 0


@pytest.mark.parametrize("args, words", [
    (["--reflash", "nosuchmodel@10"], "nosuchmodel"),
    (["--reflash", "lizard_growing@900"], "--reflash"),
    (["--reflash", "lizard_growing"], "MODEL@STEP"),
    (["--reflash", "lizard_growing@10:kept"], "MODEL@STEP[:keep]"),
    (["--flash-cuts", "1,0"], "--flash-cuts needs --reflash"),
    (["--reflash", "lizard_growing@10", "--flash-cuts", "9,9"], "--flash-cuts"),
    (["--engine", "async", "--reflash", "lizard_growing@10"], "--reflash"),
])
def test_reflash_options_refuse_bad_input_in_one_line(args, words, one_line_error):
    base = [] if "--engine" in args else ["--engine", "mesh"]
    one_line_error(base + ["--size", "4", "--steps", "100"] + args, words)


def test_the_host_tool_flashes_a_genome_and_takes_a_census(old, new, monkeypatch, capsys):
    """`mesh_host flash` through the host port (the frames a real grid's host sends), then a
    new run with the new model's seed, then `census`."""
    with Mesh(old, 3, 3, seed=0, seed_xy=(1, 1), config=MeshConfig(wake_ms=100)) as m:
        m.advance(10)
        monkeypatch.setattr(mesh_host, "open_port", lambda port: EmulatedPort(m))
        assert mesh_host.main(["--port", "emu", "flash", "--model", "lizard_growing", "--size", "3x3",
                               "--seed-at", "1,1", "--wake-ms", "100"]) == 0
        out = capsys.readouterr().out
        assert f"runs model {new.model_hash:08x}, generation 2" in out and "run 2, running" in out, out
        m.models[new.model_hash] = new
        m.advance(m.now + 60)
        assert m.generations() == {f"2/{new.model_hash:08x}": 9} and (m.status["run"] == 2).all()
        assert (m.float_states()[..., 3] > 0.1).sum() >= 5                 # the new model grows
        assert mesh_host.main(["--port", "emu", "census"]) == 0
        assert f"census: 9 boards: 9 on generation 2 (model {new.model_hash:08x})" in capsys.readouterr().out
        assert mesh_host.main(["--port", "emu", "flash", "--model", "lizard_growing"]) == 2
        assert "already runs model" in capsys.readouterr().err
        assert m.replay()[1] == 0


def test_nca_flash_mesh_pushes_the_genome_into_the_hosts_board(old, new, monkeypatch, capsys):
    with Mesh(old, 2, 2, seed=0, seed_xy=(1, 1), config=MeshConfig(wake_ms=100)) as m:
        m.advance(5)
        monkeypatch.setattr(flash, "open_port", lambda port, baud: EmulatedPort(m))
        assert flash.main(["--mesh", "--port", "emu", "--model", "lizard_growing"]) == 0
        assert f"runs model 0x{new.model_hash:08x}, generation 2" in capsys.readouterr().out
        assert m.status["generation"][0] == 2


# ---------------------------------------------------------------- the 40x40 grid (slow)
SPREAD_40_S = 60.0      # every board of the 40x40 grid on the new genome within (docs/wired-cells.md)


@pytest.mark.slow
def test_a_genome_reaches_1600_boards_through_one_corner_board(tmp_path, capsys):
    """Flashed into board (0, 0), on wires that lose 5 % of the frames, with 10 boards
    power-cycled during the spread: every board runs the new genome within SPREAD_40_S
    of emulated time, the census counts all 1,600, every wake replays bit-exact and no
    board broke the chip's self-programming rules."""
    js = tmp_path / "r.json"
    reboots = [f"rect:{x},{y},{x + 1},{y + 1}@{s}" for x, y, s in
               ((5, 5, 15), (10, 30, 20), (30, 10, 25), (20, 20, 30), (35, 35, 35), (15, 25, 40), (25, 15, 45),
                (38, 2, 50), (2, 38, 55), (30, 30, 60))]
    argv = ["--engine", "mesh", "--size", "40", "--steps", "200", "--wake-ms", "1000", "--reflash",
            "lizard_growing@10", "--frame-loss", "0.05", "--json", str(js)]
    for d in reboots:
        argv += ["--damage", d]
    assert sim.run.main(argv) == 0, capsys.readouterr().err
    b = json.loads(js.read_text())["mesh"]
    (r,) = b["reflash"]
    assert r["all_boards_s"] is not None and r["all_boards_s"] <= SPREAD_40_S
    assert b["census"]["boards"] == 1600 and len(b["census"]["genomes"]) == 1
    assert b["genomes"] == b["census"]["genomes"]
    assert b["replay_mismatches"] == 0 and b["inbox_mismatches"] == 0 and b["flash_rule_breaches"] == 0
