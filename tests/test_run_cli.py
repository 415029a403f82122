"""`python -m sim.run` (sim/run.py): engines, outputs, damage, determinism, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sim.assemble
import sim.paths
import sim.run
import sim.simulate
from sim.rules import AsyncConfig
from sim.damage import parse_damage
from sim.fixture import blob_model
from sim.weights import default_meta, save

REPO = Path(__file__).resolve().parent.parent
N = 24


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = sim.run.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _raw_npz(path: Path, params: dict, meta: dict) -> Path:
    """Write a weights file without validation (to build broken ones)."""
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **params)
    return path


# ---------------------------------------------------------------- engines and outputs
@pytest.mark.parametrize("engine", ["sync", "lockstep", "async"])
def test_every_engine_writes_its_outputs_and_equals_simulate(engine, model_file, tmp_path, capsys):
    js, st, png = tmp_path / "m.json", tmp_path / "s.npy", tmp_path / "f.png"
    rc, out, err = _run(capsys, "--engine", engine, "--model", model_file, "--size", N, "--steps", 30,
                        "--seed", 3, "--json", js, "--save-state", st, "--save-png", png)
    assert rc == 0, err
    assert err == ""
    state = np.load(st)
    assert state.shape == (N, N, 16) and state.dtype == np.float32
    ref = sim.assemble.simulate(blob_model(), engine=engine, steps=30, size=N, seed=3, target="lizard")
    np.testing.assert_array_equal(state, ref.state)       # the CLI is simulate(), nothing more
    assert ref.alive > 10                                 # the blob grew
    m = json.loads(js.read_text())
    assert m["engine"] == engine and m["steps"] == 30 and m["seed"] == 3
    assert m["loss"] == pytest.approx(ref.loss) and m["alive_cells"] == ref.alive
    assert m["cell_updates"] > 0 and m["wall_seconds"] > 0 and m["cell_updates_per_second"] > 0
    assert m["target"] == "lizard" and m["files"]["save-state"] == str(st)
    hist = m["history"]
    assert [h["step"] for h in hist] == list(range(31))   # every steps//50 = 1 step, final included
    assert hist[0]["alive"] == 1 and hist[-1]["alive"] == m["alive_cells"]
    assert hist[-1]["loss"] == pytest.approx(m["loss"])
    if engine == "async":
        assert m["swarm"]["messages_sent"] > 0 and m["swarm"]["cell_updates"] == m["cell_updates"]
        assert "fire_rate" not in m
    else:
        assert m["fire_rate"] == 0.5 and "swarm" not in m
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (N * 8, N * 8)
        pix = np.asarray(im.convert("RGB"))
    assert (pix[0, 0] == 255).all()                       # an empty corner is white
    assert (pix != 255).any()                             # the blob is drawn
    assert "final loss" in out and str(st) in out and str(png) in out


def test_loss_is_mse_against_the_centred_target(model_file):
    from sim.pictures import fit_target, load_target

    r = sim.assemble.simulate(blob_model(), engine="sync", steps=12, size=N, seed=1, target="lizard")
    t = fit_target(load_target("lizard"), N, N)
    assert r.loss == pytest.approx(float(np.mean((r.state[..., :4].astype(np.float64) - t) ** 2)))
    empty = sim.assemble.simulate(blob_model(), engine="sync", steps=0, size=N, target="lizard")
    assert empty.history == [{"step": 0, "loss": empty.loss, "alive": 1}]


def test_sync_and_lockstep_give_bit_identical_states(model_file, tmp_path, capsys):
    files = {}
    for engine in ("sync", "lockstep"):
        files[engine] = tmp_path / f"{engine}.npy"
        rc, _, err = _run(capsys, "--engine", engine, "--model", model_file, "--size", N, "--steps", 40,
                          "--seed", 11, "--fire-rate", 0.6, "--save-state", files[engine])
        assert rc == 0, err
    a, b = np.load(files["sync"]), np.load(files["lockstep"])
    assert (a[..., 3] > 0.1).sum() > 50
    assert a.tobytes() == b.tobytes()


def test_simpy_and_async_give_bit_identical_states(model_file, tmp_path, capsys):
    files = {}
    for engine in ("async", "simpy"):
        files[engine] = tmp_path / f"{engine}.npy"
        rc, _, err = _run(capsys, "--engine", engine, "--model", model_file, "--size", N, "--steps", 40,
                          "--seed", 5, "--latency", 0.3, "--msg-loss", 0.1, "--mtbf", 60, "--mttr", 4,
                          "--damage", "circle:12,12,4@20", "--save-state", files[engine])
        assert rc == 0, err
    a, b = np.load(files["async"]), np.load(files["simpy"])
    assert (a[..., 3] > 0.1).sum() > 50
    assert a.tobytes() == b.tobytes()


def test_async_run_is_deterministic_and_independent_of_sampling(model_file, tmp_path, capsys):
    cfg = AsyncConfig(latency=0.3, loss=0.2, mtbf=40.0, mttr=2.0)
    a = sim.assemble.simulate(blob_model(), engine="async", steps=40, size=N, seed=7, async_config=cfg)
    b = sim.assemble.simulate(blob_model(), engine="async", steps=40, size=N, seed=7, async_config=cfg,
                   history_every=1, frame_steps=[3, 17])
    np.testing.assert_array_equal(a.state, b.state)
    assert a.metrics["swarm"]["failures"] > 0 and a.metrics["swarm"]["messages_lost"] > 0
    st = tmp_path / "a.npy"
    rc, out, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 40, "--seed", 7,
                        "--latency", 0.3, "--msg-loss", 0.2, "--mtbf", 40, "--mttr", 2, "--save-state", st)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(st), a.state)
    assert "lost" in out and "failures" in out
    c = sim.assemble.simulate(blob_model(), engine="async", steps=40, size=N, seed=8, async_config=cfg)
    assert not np.array_equal(c.state, a.state)            # the seed matters


def test_latency_distributions_reach_the_swarm(model_file, tmp_path, capsys):
    js = tmp_path / "u.json"
    rc, _, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 10, "--latency", 0.1,
                      "--latency-dist", "uniform", "--latency-high", 0.5, "--json", js)
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert m["async_config"]["latency_dist"] == "uniform"
    assert 0.1 < m["swarm"]["mean_message_delay"] < 0.5


# ---------------------------------------------------------------- damage
@pytest.mark.parametrize("engine", ["sync", "lockstep", "async"])
def test_damage_zeroes_the_circle(engine, model_file, tmp_path, capsys):
    spec = "circle:13.5,11,4@40"
    st = tmp_path / "d.npy"
    rc, out, err = _run(capsys, "--engine", engine, "--model", model_file, "--size", N, "--steps", 40,
                        "--damage", spec, "--save-state", st)
    assert rc == 0, err
    x = np.load(st)
    mask = parse_damage(spec).mask(N, N)
    undamaged = sim.assemble.simulate(blob_model(), engine=engine, steps=40, size=N, target="lizard").state
    assert np.abs(undamaged[mask]).sum() > 0               # there was something to wipe
    assert not x[mask].any()                               # all 16 channels zero inside
    np.testing.assert_array_equal(x[~mask], undamaged[~mask])
    assert f"{int(mask.sum())} cells wiped at step 40" in out


def test_damage_mid_run_shows_in_history_and_strip(model_file, tmp_path, capsys):
    js, strip = tmp_path / "h.json", tmp_path / "strip.png"
    rc, _, err = _run(capsys, "--engine", "sync", "--model", model_file, "--size", N, "--steps", 50,
                      "--damage", "half:left@25", "--damage", "rect:0,0,24,4@33",
                      "--json", js, "--save-strip", strip)
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert [d["step"] for d in m["damage"]] == [25, 33]
    assert m["damage"][0]["cells"] == N * N // 2
    alive = {h["step"]: h["alive"] for h in m["history"]}
    assert alive[25] < alive[24]                            # history is sampled after the damage
    with Image.open(strip) as im:
        assert im.width > 5 * im.height                    # frames side by side
    r = sim.assemble.simulate(blob_model(), engine="sync", steps=50, size=N, damage=["half:left@25"],
                   frame_steps=sim.simulate.strip_steps(50, [parse_damage("half:left@25")]))
    steps = [f.step for f in r.frames]
    assert 25 in steps and steps[0] == 0 and steps[-1] == 50 and len(steps) == 9
    f25 = r.frames[steps.index(25)]
    assert f25.damaged and not f25.state[:, : N // 2].any()


def test_rotation_changes_the_run(model_file):
    a = sim.assemble.simulate(blob_model(), engine="sync", steps=20, size=N)
    b = sim.assemble.simulate(blob_model(), engine="sync", steps=20, size=N, rotate=90.0)
    assert not np.array_equal(a.state, b.state)


# ---------------------------------------------------------------- bad input: one line, exit 2
def _bad_models(d: Path) -> dict[str, Path]:
    good = blob_model().params
    (d / "corrupt.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    nan = dict(good, w1=good["w1"].copy())
    nan["w1"][3, 5] = np.nan
    return {
        "missing": d / "nope.npz",
        "corrupt": d / "corrupt.npz",
        "nan": _raw_npz(d / "nan.npz", nan, default_meta()),
        "shape": _raw_npz(d / "shape.npz", dict(good, w1=good["w1"][:47]), default_meta()),
        "order": _raw_npz(d / "order.npz", good, default_meta(perception_order="rgb,sobel")),
    }


def _assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m sim.run: error: ") or lines[0].startswith("run.py: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("kind,words", [
    ("missing", ["nope.npz", "no such weights file"]),
    ("corrupt", ["not a readable .npz"]),
    ("nan", ["NaN"]),
    ("shape", ["shape (47, 128)"]),
    ("order", ["perception_order"]),
])
def test_bad_models(kind, words, tmp_path, capsys):
    path = _bad_models(tmp_path)[kind]
    rc, out, err = _run(capsys, "--engine", "sync", "--model", path, "--size", N, "--steps", 5)
    _assert_one_line_error(rc, err, *words)
    assert out == ""


def test_missing_default_model_says_which_file_and_what_to_do(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sim.paths, "DEFAULT_MODEL", tmp_path / "lizard_regenerating.npz")
    rc, _, err = _run(capsys, "--steps", 5)
    _assert_one_line_error(rc, err, "lizard_regenerating.npz", "does not exist", "--model", "nca-convert")


def test_target_recorded_in_the_model_is_the_default(tmp_path, capsys):
    m = blob_model()
    m.meta["target"] = "smiley"
    save(tmp_path / "s.npz", m)
    js = tmp_path / "t.json"
    rc, out, err = _run(capsys, "--engine", "sync", "--model", tmp_path / "s.npz", "--size", N,
                        "--steps", 3, "--json", js)
    assert rc == 0, err
    assert json.loads(js.read_text())["target"] == "smiley"
    m.meta["target"] = str(tmp_path / "gone.png")
    save(tmp_path / "g.npz", m)
    rc, _, err = _run(capsys, "--engine", "sync", "--model", tmp_path / "g.npz", "--steps", 3)
    _assert_one_line_error(rc, err, "gone.png", "--target")


BAD_ARGS = [
    (["--steps", "-1"], ["--steps", ">= 0"]),
    (["--steps", "1.5"], ["--steps", "invalid int"]),
    (["--size", "2"], ["--size"]),
    (["--seed", "-3"], ["--seed"]),
    (["--damage", "circle:1,2@5"], ["3 numbers", "circle:CX,CY,R@STEP"]),
    (["--damage", "circle:10,10,3"], ["@STEP"]),
    (["--damage", "circle:10,10,-3@2"], ["R must be > 0"]),
    (["--damage", "blob:1@2"], ["unknown kind"]),
    (["--damage", "circle:10,10,3@-2"], ["STEP must be >= 0"]),
    (["--damage", "circle:500,500,3@2"], ["covers no cell", "x = column"]),
    (["--damage", "circle:10,10,3@99"], ["after the end of the run"]),
    (["--msg-loss", "1.5"], ["--msg-loss", "[0, 1]"]),
    (["--msg-loss", "-0.1"], ["--msg-loss"]),
    (["--msg-loss", "nan"], ["--msg-loss", "finite"]),
    (["--burst", "4"], ["--burst", "--msg-loss"]),
    (["--msg-loss", "0.1", "--burst", "0.5"], ["--burst", ">= 1"]),
    (["--msg-loss", "0.9", "--burst", "4"], ["--msg-loss 0.9", "too high", "0.8"]),
    (["--engine", "sync", "--burst", "4"], ["--burst", "async|simpy only"]),
    (["--latency", "-1"], ["--latency", ">= 0"]),
    (["--engine", "sync", "--latency", "0.5"], ["--latency", "async|simpy only"]),
    (["--engine", "lockstep", "--msg-loss", "0.1"], ["--msg-loss", "async|simpy only"]),
    (["--fire-rate", "0.5"], ["--fire-rate", "sync|lockstep"]),
    (["--engine", "sync", "--fire-rate", "2"], ["--fire-rate", "[0, 1]"]),
    (["--latency-dist", "uniform"], ["--latency-high"]),
    (["--latency-dist", "exp"], ["--latency MEAN"]),
    (["--latency-high", "3"], ["--latency-dist uniform"]),
    (["--latency-dist", "uniform", "--latency", "2", "--latency-high", "1"], ["--latency-high"]),
    (["--mttr", "2"], ["--mtbf"]),
    (["--mtbf", "10", "--mttr", "0"], ["--mttr", "> 0"]),
    (["--mean-interval", "0"], ["--mean-interval"]),
    (["--engine", "gpu"], ["invalid choice"]),
    (["--frobnicate"], ["unrecognized"]),
]


@pytest.mark.parametrize("argv,words", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments(argv, words, model_file, capsys):
    rc, out, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 30, *argv)
    _assert_one_line_error(rc, err, *words)
    assert out == ""


def test_bad_target_png(model_file, tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a picture\n")
    rc, _, err = _run(capsys, "--model", model_file, "--steps", 3, "--target", fake)
    _assert_one_line_error(rc, err, "fake.png")
    rc, _, err = _run(capsys, "--model", model_file, "--steps", 3, "--target", "dragon")
    _assert_one_line_error(rc, err, "dragon", "lizard")


def test_unwritable_outputs_fail_before_running(model_file, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for flag in ("--save-png", "--save-state", "--json", "--save-strip"):
        rc, out, err = _run(capsys, "--model", model_file, "--steps", 3, flag, blocker / "out.x")
        _assert_one_line_error(rc, err, flag, "not a directory")
        assert out == ""
    rc, _, err = _run(capsys, "--model", model_file, "--steps", 3, "--json", tmp_path)
    _assert_one_line_error(rc, err, "is a directory")
    rc, _, err = _run(capsys, "--model", model_file, "--steps", 3, "--json", tmp_path / "a",
                      "--save-png", tmp_path / "a")
    _assert_one_line_error(rc, err, "same file")


def test_special_files_are_refused_and_symlinks_followed(model_file, tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    rc, _, err = _run(capsys, "--model", model_file, "--steps", 3, "--json", fifo)
    _assert_one_line_error(rc, err, "not a regular file")
    assert fifo.is_fifo()                                   # not renamed over
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    rc, _, err = _run(capsys, "--engine", "sync", "--model", model_file, "--size", N, "--steps", 2,
                      "--json", link)
    assert rc == 0, err
    assert link.is_symlink() and json.loads(real.read_text())["steps"] == 2


def test_outputs_go_into_new_folders(model_file, tmp_path, capsys):
    st = tmp_path / "new" / "deeper" / "s.npy"
    rc, _, err = _run(capsys, "--engine", "sync", "--model", model_file, "--size", N, "--steps", 2,
                      "--save-state", st)
    assert rc == 0, err
    assert np.load(st).shape == (N, N, 16)
    assert [p.name for p in st.parent.iterdir()] == ["s.npy"]      # no temporary file left


# ---------------------------------------------------------------- the real process
def _proc(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim.run", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_closed_output_pipe_ends_without_a_traceback(model_file):
    """`python -m sim.run ... | head -0`: the reader is gone before the first line; the
    command stops with status 1 and says nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "sim.run", "--engine", "sync", "--model", str(model_file),
                          "--size", str(N), "--steps", "2", "--no-progress"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 1 and err == "", err


def test_process_runs_and_writes(model_file, tmp_path):
    st = tmp_path / "p.npy"
    p = _proc("--engine", "sync", "--model", model_file, "--size", N, "--steps", 25, "--seed", 2,
              "--save-state", st)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and "final loss" in p.stdout
    ref = sim.assemble.simulate(blob_model(), engine="sync", steps=25, size=N, seed=2)
    np.testing.assert_array_equal(np.load(st), ref.state)


@pytest.mark.parametrize("case", ["missing", "corrupt", "negative steps", "bad damage", "latency+sync"])
def test_process_errors_are_one_line_exit_2(case, model_file, tmp_path):
    args = {
        "missing": ["--model", tmp_path / "none.npz"],
        "corrupt": ["--model", _bad_models(tmp_path)["corrupt"]],
        "negative steps": ["--model", model_file, "--steps", "-5"],
        "bad damage": ["--model", model_file, "--damage", "circle:1,2"],
        "latency+sync": ["--model", model_file, "--engine", "sync", "--latency", "0.2"],
    }[case]
    p = _proc(*args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith("python -m sim.run: error: ")
    assert p.stdout == ""


def test_regrowth_mse_compares_the_end_with_the_pattern_before_the_first_cut(model_file, tmp_path, capsys):
    """--damage puts regrowth_mse in the JSON: the RGBA MSE between the final state and the
    state just before the first cut (which the same run without damage has at that step)."""
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, "--engine", "sync", "--model", model_file, "--size", N, "--steps", 40,
                        "--damage", "circle:12,12,4@20", "--damage", "half:left@30", "--json", js)
    assert rc == 0, err
    m = json.loads(js.read_text())
    before = sim.assemble.simulate(blob_model(), engine="sync", steps=20, size=N).state
    final = sim.assemble.simulate(blob_model(), engine="sync", steps=40, size=N,
                                  damage=["circle:12,12,4@20", "half:left@30"]).state
    want = float(np.mean((final[..., :4].astype(np.float64) - before[..., :4]) ** 2))
    assert m["regrowth_mse"] == pytest.approx(want, rel=1e-12) and want > 0
    assert "regrowth" in out
    rc, _, _ = _run(capsys, "--engine", "sync", "--model", model_file, "--size", N, "--steps", 10, "--json", js)
    assert rc == 0 and json.loads(js.read_text())["regrowth_mse"] is None
    assert json.loads(js.read_text())["regrowth_shift"] is None


def test_regrowth_shift_finds_a_pattern_that_came_back_moved():
    """A pattern that comes back whole but one row higher (or two columns to the right) is
    found moved, with nothing left after moving it back; an unmoved one stays at (0, 0)."""
    rng = np.random.default_rng(4)
    before = np.zeros((20, 20, 16), np.float32)
    before[4:16, 5:15] = rng.random((12, 10, 16))
    up = sim.simulate.shifted(before, -1, 0)
    assert sim.simulate.regrowth_shift(up, before) == {"dy": 1, "dx": 0, "mse": 0.0}
    assert sim.simulate.regrowth_mse(up, before) > 0.01
    right = sim.simulate.shifted(before, 0, 2)
    assert sim.simulate.regrowth_shift(right, before) == {"dy": 0, "dx": -2, "mse": 0.0}
    noisy = before + np.float32(0.01)
    got = sim.simulate.regrowth_shift(noisy, before)
    assert (got["dy"], got["dx"]) == (0, 0) and got["mse"] == pytest.approx(1e-4, rel=1e-4)
    np.testing.assert_array_equal(sim.simulate.shifted(sim.simulate.shifted(before, 2, -1), -2, 1), before)


def test_bursty_loss_reaches_the_swarm_and_the_json(model_file, tmp_path, capsys):
    js = tmp_path / "b.json"
    rc, _, err = _run(capsys, "--engine", "async", "--model", model_file, "--size", N, "--steps", 40,
                      "--msg-loss", "0.2", "--burst", "5", "--json", js)
    assert rc == 0, err
    m = json.loads(js.read_text())
    assert m["async_config"]["burst"] == 5.0 and m["async_config"]["msg_loss"] == 0.2
    want = sim.assemble.simulate(blob_model(), engine="async", steps=40, size=N,
                                 async_config=AsyncConfig(loss=0.2, burst=5.0))
    assert m["messages"]["lost"] == want.metrics["messages"]["lost"] > 0
    iid = sim.assemble.simulate(blob_model(), engine="async", steps=40, size=N, async_config=AsyncConfig(loss=0.2))
    assert iid.metrics["messages"]["lost"] != want.metrics["messages"]["lost"]

