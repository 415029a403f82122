"""The project as a user installs it: `pip install .` (a wheel, not editable) into a
fresh virtual environment, every command run from another folder. The shipped models
and the firmware sources travel in the wheel (sim.paths finds them there)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from codegen.toolchain import missing_tools
from sim.model import PARAM_SHAPES
from sim.weights import load

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder, a working folder outside the checkout, environment) of a venv holding
    the wheel. The venv sees this interpreter's packages for the dependencies (numpy,
    numba, ...: no download), and the test checks the project itself comes from the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NCA_CODEGEN_CACHE")}
    env["NCA_CODEGEN_CACHE"] = str(root / "cache")
    src = root / "src"           # a copy: setuptools builds in the source folder (build/)
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "out"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(src)], root, env)
    wheel = next(dist.glob("nca_swarm-*.whl"))
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    bindir = root / "venv" / "bin"
    _run([sys.executable, "-m", "pip", "--python", str(bindir / "python"), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    where = _run([str(bindir / "python"), "-c", "import sim, codegen, boards, train, sim.paths as p; "
                  "print(sim.__file__); print(p.WEIGHTS); print(p.FIRMWARE)"], work, env).stdout.split()
    for w in where:
        assert str(root / "venv") in w and str(REPO) not in w, where   # the wheel, not the checkout
    return bindir, work, env


def test_sim_run_grows_the_lizard_with_the_shipped_model(installed):
    bindir, work, env = installed
    _run([str(bindir / "python"), "-m", "sim.run", "--steps", "200", "--json", "run.json",
          "--save-png", "run.png"], work, env)
    m = json.loads((work / "run.json").read_text())
    assert m["model"].endswith("lizard_regenerating.npz") and m["target"] == "lizard"
    assert m["alive_cells"] > 200 and m["loss"] < 0.02          # a lizard-sized body at step 200
    assert (work / "run.png").stat().st_size > 0


def test_codegen_builds_a_shipped_model_by_name_and_the_link_firmware(installed):
    bindir, work, env = installed
    r = _run([str(bindir / "nca-codegen"), "--model", "lizard_regenerating_ef", "--target", "host",
              "--build", "--out", "gen"], work, env)
    assert "built host" in r.stdout and (work / "gen" / "build" / "host" / "libnca.so").is_file()
    r = _run([str(bindir / "nca-codegen"), "--app", "link", "--target", "host", "--out", "link"], work, env)
    assert (work / "link" / "build" / "host" / "libnca_link.so").is_file(), r.stdout


@pytest.mark.skipif(bool(missing_tools("mega2560")), reason="needs gcc-avr, avr-libc, libsimavr-dev")
def test_the_mesh_firmware_builds_and_a_grid_of_boards_runs_from_the_wheel(installed):
    bindir, work, env = installed
    r = _run([str(bindir / "nca-codegen"), "--app", "mesh", "--model", "lizard_regenerating_ef", "--target",
              "mega2560", "--out", "mesh", "--report"], work, env)
    assert "mega2560 mesh firmware: application" in r.stdout and "genome slots 17,280 B" in r.stdout
    assert (work / "mesh" / "build" / "mega2560" / "nca_mesh_2560.hex").is_file()
    _run([str(bindir / "python"), "-m", "sim.run", "--engine", "mesh", "--size", "4", "--steps", "10",
          "--json", "mesh.json"], work, env)
    m = json.loads((work / "mesh.json").read_text())["mesh"]
    assert m["boards_running"] == 16 and m["wakes_replayed"] > 0 and m["replay_mismatches"] == 0


def test_the_other_commands_start(installed):
    bindir, work, env = installed
    assert "--init" in _run([str(bindir / "nca-train"), "--help"], work, env).stdout
    raw = work / "raw.npz"          # bare arrays, as a model from elsewhere comes
    rng = np.random.default_rng(0)
    np.savez(raw, **{k: (0.01 * rng.standard_normal(shape)).astype(np.float32) for k, shape in PARAM_SHAPES.items()})
    _run([str(bindir / "nca-convert"), "--format", "npz", "--order", "concat", "--target", "lizard",
          str(raw), "converted.npz"], work, env)
    assert load(work / "converted.npz").meta["target"] == "lizard"
    _run([str(bindir / "nca-flash"), "--list"], work, env)
    r = subprocess.run([str(bindir / "nca-flash"), "--port", "loop://", "--model", "no_such_model"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no_such_model" in r.stderr
