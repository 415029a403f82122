"""Outputs of `python -m sim.run` (sim/plots.py and the options around them): GIF, MP4 via
ffmpeg (or a one-line error without it), plots, JSON message numbers, --rotate-at, the
periodic clock options and the progress line."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sim.assemble
import sim.progress
import sim.run
import sim.simulate
from sim.rules import CLOCK_PERIODIC, LINKS_DIRECT, LINKS_RELAY, AsyncConfig
from sim.fixture import blob_model
from sim.model import seed_state
from sim.plots import draw_statistics
from sim.swarm import SimPySwarm

N = 16


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = sim.run.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m sim.run: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ---------------------------------------------------------------- files
def test_gif_plots_and_json_of_an_event_run(model_file, tmp_path, capsys):
    gif, plots, js = tmp_path / "run.gif", tmp_path / "plots", tmp_path / "m.json"
    rc, out, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 20, "--latency", 0.3,
                        "--msg-loss", 0.2, "--damage", "circle:8,8,3@10", "--rotate-at", "90@15",
                        "--save-gif", gif, "--frame-every", 5, "--save-plots", plots, "--json", js)
    assert rc == 0, err
    assert err == ""                                      # no progress line when not a terminal
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == len(sim.simulate.movie_steps(20, 5)) == 5
        assert im.size[0] == N * 6 and im.info["loop"] == 0   # 6 px per cell, loops
    assert sorted(p.name for p in plots.iterdir()) == ["loss.png", "messages.png", "wakeups.png"]
    for p in plots.iterdir():
        w, h = _png(p)
        assert w > 300 and h > 200
    m = json.loads(js.read_text())
    msg, sw = m["messages"], m["swarm"]
    assert m["engine"] == "simpy"                         # the default engine
    assert msg["sent"] == sw["messages_sent"] > 0 and msg["lost"] == sw["messages_lost"] > 0
    assert msg["sent"] == msg["lost"] + msg["delivered"] + msg["dropped"] + msg["in_flight"]
    assert msg["mean_delay"] == pytest.approx(0.3) and msg["mean_inbox_staleness"] > 0.3
    assert m["rotations"] == [{"spec": "90@15", "step": 15, "deg": 90.0}]
    assert set(m["files"]["save-plots"]) == {str(plots / n) for n in ("loss.png", "messages.png", "wakeups.png")}
    assert "rotation set to 90 degrees at step 15" in out and "mean inbox staleness" in out


def test_sync_run_plots_loss_only_and_strip_marks_rotation(model_file, tmp_path, capsys):
    plots, strip = tmp_path / "p", tmp_path / "s.png"
    rc, _, err = _run(capsys, "--engine", "sync", "--model", model_file, "--size", N, "--steps", 12,
                        "--rotate-at", "45@7", "--save-plots", plots, "--save-strip", strip)
    assert rc == 0, err
    assert [p.name for p in plots.iterdir()] == ["loss.png"]   # no clocks, no messages
    _png(plots / "loss.png")
    r = sim.assemble.simulate(blob_model(), engine="sync", steps=12, size=N, rotations=["45@7"],
                   frame_steps=sim.simulate.strip_steps(12, extra=[7]))
    f7 = next(f for f in r.frames if f.step == 7)
    assert f7.rotated == 45.0 and "rotated 45 deg" in f7.label()


@pytest.mark.parametrize("links", [LINKS_DIRECT, LINKS_RELAY])
def test_draw_statistics_recount_the_runs_draws_exactly(blob_params, links):
    cfg = AsyncConfig(latency=0.25, loss=0.3, mtbf=30.0, mttr=2.0, links=links)
    sw = SimPySwarm(seed_state(N, N), blob_params, 4, cfg)
    sw.run(25)
    st, m = draw_statistics(sw), sw.metrics()
    d = st["delay"]
    assert d["lost"] == m["messages_lost"] and d["n"] + d["lost"] == m["messages_sent"]
    assert d["counts"].sum() == d["n"] and d["counts"].size == 1      # constant latency: one bar
    assert d["mean"] == pytest.approx(0.25) and d["edges"][0] < 0.25 < d["edges"][-1]
    w = st["wake"]
    assert w["counts"].sum() == w["n"] == int((sw.wake_k - 1).clip(0).sum()) > 1000
    assert w["mean"] == pytest.approx(2.0, rel=0.1) and w["edges"][0] >= 0


def test_periodic_clock_options_reach_the_swarm(model_file, tmp_path, capsys):
    js, plots = tmp_path / "c.json", tmp_path / "p"
    rc, _, err = _run(capsys, "--engine", "async", "--model", model_file, "--size", N, "--steps", 15,
                      "--clock", "periodic", "--mean-interval", 1.5, "--jitter", 0.2, "--drift", 0.05,
                      "--json", js, "--save-plots", plots)
    assert rc == 0, err
    c = json.loads(js.read_text())["async_config"]
    assert (c["clock"], c["mean_interval"], c["jitter"], c["drift"]) == ("periodic", 1.5, 0.2, 0.05)
    cfg = AsyncConfig(clock=CLOCK_PERIODIC, mean_interval=1.5, jitter=0.2, drift=0.05)
    r = sim.assemble.simulate(blob_model(), engine="async", steps=15, size=N, async_config=cfg)
    st = draw_statistics(r.swarm)["wake"]
    lo, hi = 1.5 * 0.95 - 0.2, 1.5 * 1.05 + 0.2
    assert lo <= st["edges"][0] and st["edges"][-1] <= hi    # period +- drift +- jitter
    assert not np.array_equal(r.state, sim.assemble.simulate(blob_model(), engine="async", steps=15, size=N).state)


# ---------------------------------------------------------------- rotation changes
def test_rotate_at_equals_schedule_params_and_async(blob_params):
    cfg = AsyncConfig(latency=0.2)
    r = sim.assemble.simulate(blob_params, engine="simpy", steps=20, size=N, seed=2, async_config=cfg,
                   rotations=["90@8", "-30@14"])
    sw = SimPySwarm(seed_state(N, N), blob_params, 2, cfg)
    sw.schedule_params(8.0, blob_params.rotated(90))
    sw.schedule_params(14.0, blob_params.rotated(-30))
    np.testing.assert_array_equal(r.state, sw.run(20))
    a = sim.assemble.simulate(blob_params, engine="async", steps=20, size=N, seed=2, async_config=cfg,
                   rotations=["90@8", "-30@14"])
    assert a.state.tobytes() == r.state.tobytes()
    plain = sim.assemble.simulate(blob_params, engine="simpy", steps=20, size=N, seed=2, async_config=cfg)
    assert not np.array_equal(plain.state, r.state)


# ---------------------------------------------------------------- mp4
def test_mp4_without_ffmpeg_is_a_one_line_error_before_the_run(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    out_file = tmp_path / "v.mp4"
    rc, out, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 5, "--save-mp4", out_file,
                        "--json", tmp_path / "m.json")
    _one_line_error(rc, err, "--save-mp4", "ffmpeg", "apt-get install ffmpeg")
    assert out == "" and list(tmp_path.iterdir()) == []    # nothing ran, nothing written


def _fake_ffmpeg(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    exe = bin_dir / "ffmpeg"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_mp4_goes_through_ffmpeg_atomically(model_file, tmp_path, capsys, monkeypatch):
    # a stand-in ffmpeg: copies the raw frames it is fed to its output file (the last argument)
    _fake_ffmpeg(tmp_path / "bin", 'for a; do out="$a"; done\ncat > "$out"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    mp4 = tmp_path / "out" / "v.mp4"
    rc, _, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 10, "--frame-every", 2,
                        "--save-mp4", mp4)
    assert rc == 0, err
    h, w = N * 6 + 18, N * 6                               # picture + caption band, even sizes
    assert mp4.stat().st_size == len(sim.simulate.movie_steps(10, 2)) * h * w * 3
    assert [p.name for p in mp4.parent.iterdir()] == ["v.mp4"]     # no temporary file left
    _fake_ffmpeg(tmp_path / "bad", 'echo "Unknown encoder libx264" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bad'}{os.pathsep}{os.environ['PATH']}")
    rc, _, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 4, "--save-mp4", mp4)
    _one_line_error(rc, err, "ffmpeg failed", "libx264")
    assert [p.name for p in mp4.parent.iterdir()] == ["v.mp4"]     # the old video is kept


@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                    reason="ffmpeg not installed")
def test_real_ffmpeg_writes_a_playable_mp4(model_file, tmp_path, capsys):
    import subprocess

    mp4 = tmp_path / "v.mp4"
    rc, _, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 12, "--frame-every", 3,
                      "--save-mp4", mp4)
    assert rc == 0, err
    p = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_name,nb_read_frames", "-of", "csv=p=0", str(mp4)],
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip() == f"h264,{len(sim.simulate.movie_steps(12, 3))}"


# ---------------------------------------------------------------- bad options
BAD = [
    (["--jitter", "0.1"], ["--jitter", "--clock periodic"]),
    (["--clock", "periodic", "--jitter", "2"], ["--jitter", "< period"]),
    (["--clock", "periodic", "--drift", "1"], ["--drift", "[0, 1)"]),
    (["--engine", "sync", "--clock", "periodic"], ["--clock", "async|simpy only"]),
    (["--rotate-at", "90"], ["DEG@STEP"]),
    (["--rotate-at", "x@3"], ["DEG is not a number"]),
    (["--rotate-at", "90@-1"], ["STEP must be >= 0"]),
    (["--rotate-at", "90@99"], ["after the end of the run"]),
    (["--frame-every", "0", "--save-gif", "x.gif"], ["--frame-every", ">= 1"]),
    (["--frame-every", "3"], ["--save-gif"]),
    (["--fps", "0", "--save-gif", "x.gif"], ["--fps"]),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_options(argv, words, model_file, capsys):
    rc, out, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 30, *argv)
    _one_line_error(rc, err, *words)
    assert out == ""


def test_save_plots_onto_a_file_is_refused(model_file, tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    rc, _, err = _run(capsys, "--model", model_file, "--steps", 3, "--save-plots", f)
    _one_line_error(rc, err, "--save-plots", "not a directory")


# ---------------------------------------------------------------- progress
def test_progress_line_and_flag(model_file, capsys):
    bar = sim.progress.Progress(200, "time units", stream=io.StringIO(), width=10)
    assert bar.line(50, 2.0) == "[##--------]  25% 50/200 time units  25.0 time units/s  ETA 0:06"
    assert bar.line(200, 65.0).endswith("in 1:05")
    assert not sim.progress.Progress.wanted(None, io.StringIO()) and sim.progress.Progress.wanted(True, io.StringIO())
    rc, _, err = _run(capsys, "--model", model_file, "--size", N, "--steps", 10, "--progress")
    assert rc == 0
    assert err.startswith("\r[") and "10/10 time units" in err and err.endswith("\n")
