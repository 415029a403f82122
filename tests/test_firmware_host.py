"""The generated C compiled for the host equals the golden model bit for bit:
10,000+ random and adversarial cells through the ctypes library, the stdin/stdout
harness, a whole 40x40 swarm for 300 steps; and nca-codegen's command line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codegen import formats as F
from codegen import golden as G
from codegen import toolchain as T
from codegen.quantize import quantize
from sim import rng
from sim.fixture import blob_model
from sim.model import ALPHA, NEIGHBOUR_OFFSETS, seed_state
from sim.weights import save

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def q():
    return quantize(blob_model())


@pytest.fixture(scope="module")
def hostfw(q, tmp_path_factory):
    os.environ["NCA_CODEGEN_CACHE"] = str(tmp_path_factory.mktemp("nca-cache"))
    from codegen.host_cells import HostFirmware
    return HostFirmware(q)


@pytest.fixture(scope="module")
def hostbuild(q, tmp_path_factory):
    return T.build(q, "host", tmp_path_factory.mktemp("host"))


@pytest.fixture(scope="module")
def q_ef():
    """The blob with error feedback: 4 more bits of each own channel."""
    q = quantize(blob_model(), error_feedback=True)
    assert q.fmt.ef_bits == F.EF_BITS
    return q


@pytest.fixture(scope="module")
def hostfw_ef(q_ef, hostfw):
    from codegen.host_cells import HostFirmware
    return HostFirmware(q_ef)


def with_remainders(xs: np.ndarray, seed: int) -> np.ndarray:
    """Own states of error-feedback cells from int8 states xs: random remainders, and
    the extremes (all 0, all 15) on every fifth cell."""
    r = np.random.default_rng(seed)
    nib = r.integers(0, 1 << F.EF_BITS, xs.shape)
    nib[::5] = 0
    nib[1::5] = (1 << F.EF_BITS) - 1
    return (xs.astype(np.int16) << F.EF_BITS) + nib.astype(np.int16)


def adversarial_cells(n_random: int = 10000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random cells, small-valued cells, and hand-made extremes: all dead, all max,
    all min, alternating signs, alphas at the threshold, one living neighbour."""
    r = np.random.default_rng(seed)
    xs = [r.integers(-128, 128, (n_random, 16)), r.integers(-6, 40, (n_random // 4, 16))]
    nbs = [r.integers(-128, 128, (n_random, 8, 16)), r.integers(-6, 40, (n_random // 4, 8, 16))]
    special = []
    for v in (0, 127, -128, 1, -1, F.ALIVE_Q, F.ALIVE_Q + 1):
        special.append((np.full(16, v), np.full((8, 16), v)))
    alt = np.where(np.arange(16) % 2, 127, -128)
    special.append((alt, np.tile(alt, (8, 1))))
    special.append((-alt, np.tile(alt, (8, 1))))
    for s in range(8):                       # one living neighbour at each slot, the rest dead
        nb = np.zeros((8, 16))
        nb[s] = 127
        special.append((np.zeros(16), nb))
        nb2 = np.full((8, 16), -128)
        nb2[s, ALPHA] = F.ALIVE_Q + 1
        special.append((np.full(16, 127), nb2))
    for _ in range(200):                     # saturating mixes
        special.append((r.choice([-128, 127, 0], 16), r.choice([-128, 127, 0, 4], (8, 16))))
    xs.append(np.array([a for a, _ in special]))
    nbs.append(np.array([b for _, b in special]))
    return np.concatenate(xs).astype(np.int8), np.concatenate(nbs).astype(np.int8)


def golden_update(q, xs, nbs, angle=None):
    out = xs.copy()
    codes = np.zeros(len(xs), np.int64)
    G.update_batch(out, nbs, *q.arrays(), G.rotation_array(angle), codes)
    return codes, out


@pytest.mark.parametrize("angle", [None, 45.0, 180.0])
def test_host_library_equals_golden_on_10000_cells(q, hostfw, angle):
    xs, nbs = adversarial_cells(10000, seed=1 if angle is None else int(angle))
    assert len(xs) >= 10000
    codes, out = hostfw.update(xs, nbs, angle)
    gc, go = golden_update(q, xs, nbs, angle)
    np.testing.assert_array_equal(codes, gc)
    np.testing.assert_array_equal(out, go)
    assert set(np.unique(gc)) == {G.DORMANT, G.ZEROED, G.UPDATED}      # every branch was taken
    tent = hostfw.tentative(xs, nbs, angle)
    gt = np.zeros_like(xs)
    G.tentative_batch(xs, nbs, *q.arrays(), G.rotation_array(angle), gt)
    np.testing.assert_array_equal(tent, gt)


@pytest.mark.parametrize("angle", [None, 45.0])
def test_host_library_equals_golden_with_error_feedback(q_ef, hostfw_ef, angle):
    """The int16 own states (int8 state and its 4-bit remainder) through the C, whose
    nca_cell_t carries the remainders packed two per byte."""
    xs8, nbs = adversarial_cells(10000, seed=3 if angle is None else 4)
    xs = with_remainders(xs8, 5)
    codes, out = hostfw_ef.update(xs, nbs, angle)
    gc, go = golden_update(q_ef, xs, nbs, angle)
    np.testing.assert_array_equal(codes, gc)
    np.testing.assert_array_equal(out, go)
    assert set(np.unique(gc)) == {G.DORMANT, G.ZEROED, G.UPDATED}
    # a cell zeroed for a remainder alone (int8 state 0) is reported zeroed, not dormant
    lone = np.zeros((1, 16), np.int16)
    lone[0, 5] = 3
    c1, o1 = hostfw_ef.update(lone, np.zeros((1, 8, 16), np.int8))
    assert c1[0] == G.ZEROED and not o1.any() and golden_update(q_ef, lone, np.zeros((1, 8, 16), np.int8))[0][0] == G.ZEROED
    gt = np.zeros_like(xs)
    G.tentative_batch(xs, nbs, *q_ef.arrays(), G.rotation_array(angle), gt)
    np.testing.assert_array_equal(hostfw_ef.tentative(xs, nbs, angle), gt)
    assert np.count_nonzero(gt & 15) > len(gt)            # the remainders are used, not left at zero


def test_host_library_equals_golden_at_zero_rounding_shifts(monkeypatch, tmp_path):
    """Gradient and hidden shifts 0 and a bias shift (the blob's own format: 1, 7, 0):
    the core's round-and-shift steps at their edge."""
    monkeypatch.setenv("NCA_CODEGEN_CACHE", str(tmp_path))
    from codegen.host_cells import HostFirmware
    q0 = quantize(blob_model(), grad_shift=0, hidden_shift=0)
    assert (q0.fmt.grad_shift, q0.fmt.hidden_shift) == (0, 0) and q0.fmt.bias_shift > 0
    xs, nbs = adversarial_cells(3000, seed=77)
    codes, out = HostFirmware(q0).update(xs, nbs, 30.0)
    gc, go = golden_update(q0, xs, nbs, 30.0)
    np.testing.assert_array_equal(codes, gc)
    np.testing.assert_array_equal(out, go)
    assert (gc == G.UPDATED).sum() > 1000


def test_stdin_harness_equals_golden_and_identifies_the_model(q, hostbuild):
    xs, nbs = adversarial_cells(300, seed=9)
    r = T.run_cells(hostbuild, xs, nbs, F.rotation_q14(20.0))
    gc, go = golden_update(q, xs, nbs, 20.0)
    np.testing.assert_array_equal(r.codes, gc)
    np.testing.assert_array_equal(r.states, go)
    version, h = T.identify(hostbuild)
    assert version == 2 and h == q.model_hash
    # the LED colour command
    req = b"".join(b"C" + x.tobytes() for x in xs[:50]) + b"Q"
    out = subprocess.run([str(hostbuild.artefact)], input=req, capture_output=True, check=True).stdout
    np.testing.assert_array_equal(np.frombuffer(out, np.uint8).reshape(50, 3), G.rgb(xs[:50]))


def firmware_sync_step(hostfw, x: np.ndarray, seed: int, step: int) -> np.ndarray:
    """sim.grid's synchronous step with every fired cell computed by the C (own
    states x; the neighbours and the alive rule see their int8 part)."""
    e = hostfw.q.fmt.ef_bits
    H, W = x.shape[:2]
    fire = rng.fire_mask(seed, step, H, W, 0.5)
    pad = np.pad(x >> e, ((1, 1), (1, 1), (0, 0)))
    ys, xx = np.nonzero(fire)
    nbs = np.stack([pad[ys + 1 + dy, xx + 1 + dx] for dy, dx in NEIGHBOUR_OFFSETS], axis=1)
    tent = x.copy()
    tent[ys, xx] = hostfw.tentative(x[ys, xx], nbs)

    def alive(z):
        p = np.pad((z[..., ALPHA] >> e) > F.ALIVE_Q, 1)
        return np.any([p[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)], axis=0)
    return np.where((alive(x) & alive(tent))[..., None], tent, 0).astype(x.dtype)


@pytest.mark.parametrize("ef", [False, True], ids=["int8", "error-feedback"])
def test_whole_40x40_swarm_trajectory_of_300_steps_is_bit_exact(q, hostfw, q_ef, hostfw_ef, ef):
    qq, fw = (q_ef, hostfw_ef) if ef else (q, hostfw)
    a = qq.arrays()
    xg = F.quantize_fine(seed_state(40, 40), qq.fmt)
    xf = xg.copy()
    for k in range(300):
        xg = G.sync_step(xg, 11, k, 0.5, *a, G.NO_ROTATION)
        xf = firmware_sync_step(fw, xf, 11, k)
        if not np.array_equal(xg, xf):
            pytest.fail(f"trajectories differ at step {k}")
    assert ((xg[..., ALPHA] >> qq.fmt.ef_bits) > F.ALIVE_Q).sum() > 400       # the blob grew over the grid


# ---------------------------------------------------------------- nca-codegen
def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codegen.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600, check=False)


def test_cli_generates_and_builds_host(model_file, tmp_path):
    out = tmp_path / "fw"
    r = run_cli("--model", model_file, "--target", "host", "--out", out, "--build",
                "--dequantized", tmp_path / "deq.npz")
    assert r.returncode == 0, r.stderr
    from sim.weights import load
    assert "dequantised" in load(tmp_path / "deq.npz").meta["origin"]
    assert (out / "generated" / "nca_model.h").is_file() and (out / "core" / "nca_cell.c").is_file()
    assert (out / "Makefile").is_file() and (out / "build" / "host" / "libnca.so").is_file()
    header = (out / "generated" / "nca_model.h").read_text()
    for k, v in F.header_constants(quantize(blob_model()).fmt).items():
        assert f"#define {k} {v}\n" in header
    # the folder builds on its own with make
    subprocess.run(["make", "-s", "-C", str(out), "clean"], check=True)
    subprocess.run(["make", "-s", "-C", str(out)], check=True, capture_output=True)
    assert (out / "build" / "host" / "nca_host").is_file()


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nca-codegen: error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_cli_bad_inputs(model_file, tmp_path):
    _one_line_error(run_cli("--model", tmp_path / "nope.npz", "--target", "host", "--out", tmp_path / "o"),
                    "no such weights file")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    _one_line_error(run_cli("--model", bad, "--target", "host", "--out", tmp_path / "o"), "not a readable")
    _one_line_error(run_cli("--model", model_file, "--target", "esp32", "--out", tmp_path / "o"),
                    "invalid choice", "esp32")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(run_cli("--model", model_file, "--target", "host", "--out", afile), "not a folder")
    _one_line_error(run_cli("--model", model_file, "--target", "host", "--out", afile / "sub"), "cannot write")
    _one_line_error(run_cli("--model", model_file, "--target", "host", "--out", "/proc/nca-out"), "cannot write")
    _one_line_error(run_cli("--model", model_file, "--target", "host"), "--out")


def test_cli_refuses_an_unquantisable_model_with_the_reason(tmp_path):
    m = blob_model()
    m.params["b2"] = m.params["b2"].copy()
    m.params["b2"][2] = 1e6
    p = save(tmp_path / "huge.npz", m)
    _one_line_error(run_cli("--model", p, "--target", "host", "--out", tmp_path / "o"), "accumulator", "b2")


def test_cli_missing_toolchain_names_the_apt_command(model_file, tmp_path):
    """With a PATH that has python but no cross compiler, --build says what to install."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("make",):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bindir / tool)
    env = dict(os.environ, PATH=f"{bindir}:{Path(sys.executable).parent}")
    r = run_cli("--model", model_file, "--target", "cortex-m0", "--out", tmp_path / "o", "--build", env=env)
    _one_line_error(r, "arm-none-eabi-gcc", "apt-get install -y --no-install-recommends gcc-arm-none-eabi")
    r = run_cli("--model", model_file, "--target", "avr", "--out", tmp_path / "o2", "--report", env=env)
    _one_line_error(r, "avr-gcc", "apt-get install -y --no-install-recommends", "gcc-avr")
