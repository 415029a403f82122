"""`python -m sim.sweep` (sim/sweep.py, sim/sweep_plots.py): a tiny robustness sweep in worker
processes equals direct simulate() calls, for several models side by side and with sim.run's
clocks and latency distributions; CSV, heat map, robustness plot, one-line errors; the dask
executor when installed."""
from __future__ import annotations

import csv
import importlib.util
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sim import sweep as S
from sim.assemble import simulate
from sim.fixture import blob_model
from sim.pictures import load_target
from sim.rules import (
    CLOCK_PERIODIC,
    LAT_CONSTANT,
    LAT_EXPONENTIAL,
    LAT_UNIFORM,
    AsyncConfig,
)
from sim.sweep_plots import plot_robustness
from sim.weights import load_model

N, STEPS = 16, 20


def _direct(row: dict) -> tuple[float, int]:
    cfg = AsyncConfig(latency=row["latency"], loss=row["msg_loss"], mtbf=row["mtbf"], mttr=row["mttr"],
                      burst=row.get("burst", 0.0) if row["msg_loss"] else 0.0)
    r = simulate(blob_model(), engine="async", steps=STEPS, size=N, seed=row["seed"], target="lizard",
                 async_config=cfg)
    return r.loss, r.alive


def test_tiny_sweep_writes_csv_and_heatmap_equal_to_direct_runs(model_file, tmp_path, capsys):
    out = tmp_path / "sw"
    rc = S.main(["--model", str(model_file), "--size", str(N), "--steps", str(STEPS), "--latencies", "0,0.5",
                 "--losses", "0,0.3", "--seeds", "2", "--workers", "2", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == S.COLUMNS
    assert len(rows) == 8
    keys = {(float(r["latency"]), float(r["msg_loss"]), int(r["seed"])) for r in rows}
    assert keys == {(lat, loss, s) for lat in (0, 0.5) for loss in (0, 0.3) for s in (0, 1)}
    for r in rows:
        row = {k: float(r[k]) for k in ("latency", "msg_loss", "mtbf", "mttr")} | {"seed": int(r["seed"])}
        assert row["mtbf"] == 0.0 and row["mttr"] == 1.0
        loss, alive = _direct(row)
        assert float(r["loss_vs_target"]) == loss            # same bits in another process
        assert int(r["alive_cells"]) == alive and alive > 5
        assert float(r["wall_seconds"]) > 0
    with Image.open(out / "sweep.png") as im:
        im.verify()
    with Image.open(out / "sweep.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert "8 runs" in stdout and "latency \\ loss" in stdout
    assert {r["model"] for r in rows} == {model_file.stem}
    assert {(r["clock"], r["latency_dist"], float(r["drift"])) for r in rows} == {("exp", "const", 0.0)}
    with Image.open(out / "robustness.png") as im:
        assert im.format == "PNG" and im.size[0] > 300      # one line, for one model too


def _rows(out) -> list[dict]:
    with open(out / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_models_side_by_side_equal_direct_runs(model_file, tmp_path, capsys):
    out, n = tmp_path / "two", 12
    rc = S.main(["--model", f"{model_file},lizard_regenerating", "--size", str(n), "--steps", str(STEPS),
                 "--latencies", "0,0.5", "--losses", "0", "--seeds", "1", "--workers", "1", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    rows = _rows(out)
    assert [(r["model"], float(r["latency"])) for r in rows] == [
        (m, lat) for m in (model_file.stem, "lizard_regenerating") for lat in (0.0, 0.5)]
    models = {model_file.stem: load_model(str(model_file))[0], "lizard_regenerating": load_model("lizard_regenerating")[0]}
    losses = {}
    for r in rows:
        res = simulate(models[r["model"]], engine="async", steps=STEPS, size=n, seed=int(r["seed"]),
                       target="lizard", async_config=AsyncConfig(latency=float(r["latency"])))
        assert (float(r["loss_vs_target"]), int(r["alive_cells"])) == (res.loss, res.alive)
        losses[r["model"], float(r["latency"])] = res.loss
    assert losses[model_file.stem, 0.0] != losses["lizard_regenerating", 0.0]    # two models, two results
    for name in ("sweep.png", "robustness.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert "robustness.png" in stdout and "lizard_regenerating, no failures" in stdout


def test_periodic_clock_and_latency_distributions_equal_direct_runs(model_file, tmp_path, capsys):
    out = tmp_path / "clk"
    rc = S.main(["--model", str(model_file), "--size", str(N), "--steps", str(STEPS), "--latencies", "0.5,1",
                 "--losses", "0.2", "--clock", "periodic", "--drift", "0.05", "--latency-dist", "exp",
                 "--seeds", "1", "--workers", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 2
    for r in rows:
        assert (r["clock"], r["latency_dist"], float(r["drift"]), float(r["jitter"]), float(r["mean_interval"])) \
            == ("periodic", "exp", 0.05, 0.0, 2.0)
        cfg = AsyncConfig(clock=CLOCK_PERIODIC, drift=0.05, latency_kind=LAT_EXPONENTIAL,
                          latency=float(r["latency"]), loss=0.2)
        res = simulate(blob_model(), engine="async", steps=STEPS, size=N, seed=int(r["seed"]), target="lizard",
                       async_config=cfg)
        assert (float(r["loss_vs_target"]), int(r["alive_cells"])) == (res.loss, res.alive)
        plain = _direct({"latency": float(r["latency"]), "msg_loss": 0.2, "mtbf": 0.0, "mttr": 1.0,
                         "seed": int(r["seed"])})
        assert float(r["loss_vs_target"]) != plain[0]              # the clock options took effect


def test_job_config_maps_the_clock_and_a_uniform_latency_of_mean_v_to_0_2v():
    (job,) = S.make_jobs(blob_model(), load_target("lizard"), latencies=[0.75], clock="periodic",
                         mean_interval=3.0, jitter=0.5, drift=0.1, latency_dist="uniform", name="m")
    assert job.config() == AsyncConfig(clock=CLOCK_PERIODIC, mean_interval=3.0, jitter=0.5, drift=0.1,
                                       latency_kind=LAT_UNIFORM, latency=0.0, latency_high=1.5)
    assert replace(job, latency_dist="const").config().latency_kind == LAT_CONSTANT
    assert replace(job, latency_dist="const").config().latency == 0.75
    job.config().validate()
    with pytest.raises(ValueError):
        S.make_jobs(blob_model(), load_target("lizard"), clock="sometimes")


def test_robustness_plot_has_a_panel_per_loss_and_failure_and_marks_divergence():
    rows = [{"model": m, "latency": lat, "msg_loss": loss, "mtbf": mtbf, "seed": s,
             "loss_vs_target": float("nan") if (m == "b" and lat == 2.0 and s == 0) else 1e-3 * (1 + lat + s)}
            for m in ("a", "b") for mtbf in (0.0, 50.0) for lat in (0.0, 1.0, 2.0) for loss in (0.0, 0.1)
            for s in (0, 1)]
    fig = plot_robustness(rows, [0.0, 1.0, 2.0], [0.0, 0.1], [0.0, 50.0], 1.0, ["a", "b"], "t")
    axes = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert len(axes) == 4
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["a", "b"] and any("diverged" in t for t in legend)
    assert any(t.get_text() == "breaks" for t in axes[0].texts)
    assert any(t.get_text() == "1/2" for t in axes[0].texts)          # one of two seeds diverged
    clean = plot_robustness([r for r in rows if r["model"] == "a"], [0.0, 1.0, 2.0], [0.0], [0.0], 1.0, ["a"], "t")
    assert not any("diverged" in t.get_text() for t in clean.legends[0].get_texts())


def test_bursty_links_in_a_sweep_equal_direct_runs(model_file, tmp_path, capsys):
    out = tmp_path / "sb"
    rc = S.main(["--model", str(model_file), "--size", str(N), "--steps", str(STEPS), "--latencies", "0",
                 "--losses", "0,0.3", "--burst", "3", "--seeds", "1", "--workers", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["burst"]) for r in rows] == [3.0, 3.0]
    for r in rows:
        row = {k: float(r[k]) for k in ("latency", "msg_loss", "mtbf", "mttr", "burst")} | {"seed": int(r["seed"])}
        assert float(r["loss_vs_target"]) == _direct(row)[0]


def test_failure_settings_make_panels_and_engines_agree(tmp_path):
    jobs = S.make_jobs(blob_model(), load_target("lizard"), steps=12, size=N, latencies=[0.25],
                       losses=[0.1], mtbfs=[0, 15], mttr=2, seeds=1)
    assert [(j.mtbf, j.mttr) for j in jobs] == [(0.0, 2.0), (15.0, 2.0)]
    rows = [S.run_job(j) for j in jobs]
    simpy_rows = [S.run_job(replace(j, engine="simpy")) for j in jobs]
    for a, b in zip(rows, simpy_rows):
        assert (a["loss_vs_target"], a["alive_cells"]) == (b["loss_vs_target"], b["alive_cells"])
    assert rows[0]["loss_vs_target"] != rows[1]["loss_vs_target"]       # failures matter
    fig = S.plot_heatmap(rows, [0.25], [0.1], [0, 15], 2.0, "t")
    assert len([ax for ax in fig.axes if ax.images]) == 2
    text = S.csv_text(rows)
    assert text.splitlines()[0] == ",".join(S.COLUMNS) and len(text.splitlines()) == 3


@pytest.mark.parametrize("argv,words", [
    (["--latencies", "0,abc"], ["--latencies", "'abc' is not a number"]),
    (["--latencies", ""], ["--latencies", "empty entry"]),
    (["--latencies", "0,,1"], ["empty entry"]),
    (["--latencies", "-0.5"], ["outside", ">= 0"]),
    (["--latencies", "0,0"], ["appears twice"]),
    (["--losses", "0,1.5"], ["--losses", "outside [0, 1]"]),
    (["--losses", "nan"], ["--losses"]),
    (["--mtbf", "-1"], ["--mtbf", "outside"]),
    (["--mttr", "0"], ["--mttr", "> 0"]),
    (["--burst", "0.5"], ["--burst", ">= 1"]),
    (["--losses", "0,0.7", "--burst", "2"], ["--losses 0.7", "too high"]),
    (["--seeds", "0"], ["--seeds", ">= 1"]),
    (["--steps", "0"], ["--steps"]),
    (["--workers", "0"], ["--workers"]),
    (["--scheduler", "tcp://127.0.0.1:1"], ["--scheduler needs --executor dask"]),
    (["--engine", "sync"], ["invalid choice"]),
    (["--jitter", "0.1"], ["--jitter needs --clock periodic"]),
    (["--drift", "0.01"], ["--drift needs --clock periodic"]),
    (["--clock", "periodic", "--drift", "-0.05"], ["--drift must be within [0, 1), got -0.05"]),
    (["--clock", "periodic", "--jitter", "2"], ["--jitter must be >= 0 and < period"]),
    (["--mean-interval", "0"], ["--mean-interval must be > 0"]),
    (["--mean-interval", "inf"], ["--mean-interval must be a finite number"]),
    (["--latency-dist", "gauss"], ["--latency-dist", "invalid choice"]),
    (["--clock", "sometimes"], ["--clock", "invalid choice"]),
    (["--model", "lizard_regenerating,no_such_model"], ["--model", "no_such_model", "no such weights file"]),
    (["--model", "lizard_regenerating,"], ["--model", "empty entry"]),
    (["--model", "lizard_regenerating,lizard_regenerating.npz"], ["lizard_regenerating appears twice"]),
])
def test_bad_arguments_are_one_line_errors(argv, words, model_file, tmp_path, capsys):
    rc = S.main(["--model", str(model_file), "--out", str(tmp_path / "o"), *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m sim.sweep: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "o").exists()


def test_dask_missing_says_how_to_install(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)     # import fails as if not installed
    rc = S.main(["--model", str(model_file), "--size", str(N), "--steps", "5", "--latencies", "0",
                 "--losses", "0", "--seeds", "1", "--executor", "dask", "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 2 and len(err.splitlines()) == 1
    assert 'pip install "dask[distributed]"' in err


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask.distributed not installed")
def test_dask_local_cluster_gives_the_same_rows():
    jobs = S.make_jobs(blob_model(), load_target("lizard"), steps=10, size=N, latencies=[0, 0.5],
                       losses=[0.2], seeds=1)
    rows = S.run_sweep(jobs, "dask", workers=1)
    direct = [S.run_job(j) for j in jobs]
    def same(rs):
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rs]

    assert same(rows) == same(direct)
    assert np.isfinite([r["loss_vs_target"] for r in rows]).all()
