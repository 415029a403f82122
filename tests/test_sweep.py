"""`python -m sim.sweep` (sim/sweep.py): a tiny robustness sweep in worker processes equals
direct simulate() calls; CSV, heat map, one-line errors; the dask executor when installed."""
from __future__ import annotations

import csv
import importlib.util
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sim import sweep as S
from sim.rules import AsyncConfig
from sim.fixture import blob_model
from sim.assemble import simulate
from sim.pictures import load_target

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
