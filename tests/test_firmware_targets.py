"""The firmware on emulated boards: the Cortex-M0 build under QEMU (-M microbit)
and the AVR build under simavr equal the golden model bit for bit, and meet the
budgets (ROM, RAM with the neighbour states and the worst stack, cycles per cell
update) as the toolchains and emulators measure them. Skipped where the tools
are missing (.ci/run installs them)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from test_firmware_host import adversarial_cells, golden_update, with_remainders

from codegen import emit
from codegen import formats as F
from codegen import golden as G
from codegen import toolchain as T
from codegen.quantize import quantize
from sim.fixture import blob_model


def needs(target: str):
    miss = T.missing_tools(target, run=True)
    return pytest.mark.skipif(bool(miss), reason=f"{target} needs {', '.join(e for e, _ in miss)} "
                                                 f"({T.APT_COMMAND})")


@pytest.fixture(scope="module")
def q():
    return quantize(blob_model())


def inputs_200(seed: int):
    """200 cells: random, small, and the adversarial extremes (all dead, all max, ...)."""
    xs, nbs = adversarial_cells(120, seed=seed)
    pick = np.r_[0:120, len(xs) - 80:len(xs)]
    return xs[pick], nbs[pick]


def check_bit_exact(q, b: T.Build, seed: int, angle=None) -> T.RunResult:
    xs, nbs = inputs_200(seed)
    if q.fmt.ef_bits:
        xs = with_remainders(xs, seed)
    assert len(xs) >= 200
    r = T.run_cells(b, xs, nbs, None if angle is None else F.rotation_q14(angle))
    gc, go = golden_update(q, xs, nbs, angle)
    np.testing.assert_array_equal(r.codes, gc)
    np.testing.assert_array_equal(r.states, go)
    rt = T.run_cells(b, xs[:50], nbs[:50], None if angle is None else F.rotation_q14(angle), cmd=b"T")
    gt = np.zeros_like(xs[:50])
    G.tentative_batch(xs[:50], nbs[:50], *q.arrays(), G.rotation_array(angle), gt)
    np.testing.assert_array_equal(rt.states, gt)
    return r


def check_rgb_and_identity(q, b: T.Build) -> None:
    xs, _ = inputs_200(5)
    req = b"".join(b"C" + x.tobytes() for x in xs[:40]) + b"Q"
    out = subprocess.run(T.harness_command(b), input=req, capture_output=True, timeout=120, check=False).stdout
    np.testing.assert_array_equal(np.frombuffer(out[:120], np.uint8).reshape(40, 3), G.rgb(xs[:40]))
    assert T.identify(b) == (2, q.model_hash)


@pytest.fixture(scope="module", params=[(0, 0), (4, 1)], ids=["no-rounding-shifts", "every-shift"])
def q_other(q, request):
    """The blob at the other side of every format switch of the assembly kernels,
    (gradient, hidden) shifts (0, 0): no rounding shifts; (4, 1): every shift on, the
    longest code, whose loops' branches must still reach. Both take a bias shift and
    an accumulator shift in the AVR kernel's unrolled range; with the blob's own
    format (q) each #if of nca_step_m0.S and nca_dense_avr.S is built and run both ways."""
    o = quantize(blob_model(), grad_shift=request.param[0], hidden_shift=request.param[1])
    a, b = q.fmt, o.fmt
    assert a.grad_shift > 0 and a.hidden_shift > 0 and a.bias_shift == 0 and not 5 <= a.acc_shift <= 8
    assert (b.grad_shift, b.hidden_shift) == request.param and b.bias_shift > 0 and 5 <= b.acc_shift <= 8
    return o


@pytest.fixture(scope="module")
def q_ef():
    return quantize(blob_model(), error_feedback=True)


def check_budgets(b: T.Build, xs, nbs) -> dict:
    """ROM, RAM (the cell with its neighbour states, the rotation, statics, the worst
    stack) and cycles per update within the target's budgets; returns the figures."""
    m = T.measure(b)
    ram = m["cell_struct"] + m["rotation"] + m["ram_static"] + m["stack_static"]
    bud = T.BUDGETS[b.target]
    assert ram <= bud["ram"], m
    assert m["rom_weights"] == F.GENOME_BYTES or b.target == "avr"
    if "rom" in bud:
        assert m["rom_total"] <= bud["rom"], m
    if b.target == "cortex-m0":
        cyc = [T.m0_trace_update(b, xs[k], nbs[k], rot)["cycles"]
               for k in (0, 1, 150, 199) for rot in (None, F.rotation_q14(33.0))]
    else:
        r = T.run_cells(b, xs, nbs, F.rotation_q14(10.0))
        assert (r.codes == G.UPDATED).sum() > 100 and len(r.cycles) == len(xs)
        cyc = list(r.cycles[r.codes == G.UPDATED])
    assert max(cyc) <= bud["cycles"], cyc
    return {**m, "ram": ram, "cycles": max(cyc)}


# ---------------------------------------------------------------- Cortex-M0
@pytest.fixture(scope="module")
def m0(q, tmp_path_factory):
    return T.build(q, "cortex-m0", tmp_path_factory.mktemp("m0"))


@needs("cortex-m0")
def test_cortex_m0_with_error_feedback_equals_golden_and_meets_the_budgets(q_ef, tmp_path):
    """The remainders (8 more bytes of RAM) through the assembly kernel."""
    b = T.build(q_ef, "cortex-m0", tmp_path)
    assert b.ef_bits == F.EF_BITS
    for angle in (None, 60.0):
        check_bit_exact(q_ef, b, seed=23, angle=angle)
    xs, nbs = inputs_200(3)
    m = check_budgets(b, with_remainders(xs, 3), nbs)
    assert m["cell_struct"] == T.CELL_STRUCT_BYTES + T.RESID_BYTES


@needs("cortex-m0")
@pytest.mark.parametrize("angle", [None, 60.0])
def test_cortex_m0_equals_golden_on_200_cells(q, m0, angle):
    check_bit_exact(q, m0, seed=21, angle=angle)


@needs("cortex-m0")
def test_cortex_m0_led_colour_and_model_hash(q, m0):
    check_rgb_and_identity(q, m0)


@needs("cortex-m0")
def test_cortex_m0_budgets(q, m0):
    xs, nbs = inputs_200(3)
    m = check_budgets(m0, xs, nbs)     # cycles: QEMU's instruction trace with the M0 timings
    assert m["stack_static"] >= 24                  # push {r4-r7, lr} + push {lr}
    # the exact instruction count from -icount (the harness's TIMER0) agrees with the trace
    run = T.run_cells(m0, xs[:1], nbs[:1])
    assert run.ticks[0] / T.M0_TICKS_PER_INSTRUCTION == pytest.approx(T.m0_trace_update(m0, xs[0], nbs[0])["instructions"], rel=0.01)


@needs("cortex-m0")
def test_cortex_m0_portable_c_core_is_bit_exact_too(q, tmp_path):
    """KERNEL=c: the portable C99 core alone on the M0 (the reference the assembly replaces)."""
    emit.write_project(q, "cortex-m0", tmp_path)
    subprocess.run(["make", "-s", "-C", str(tmp_path), "TARGET=cortex-m0", "KERNEL=c"], check=True,
                   capture_output=True)
    b = T.Build("cortex-m0", tmp_path)
    xs, nbs = inputs_200(8)
    r = T.run_cells(b, xs[:60], nbs[:60], F.rotation_q14(-75.0))
    gc, go = golden_update(q, xs[:60], nbs[:60], -75.0)
    np.testing.assert_array_equal(r.states, go)
    np.testing.assert_array_equal(r.codes, gc)


@needs("cortex-m0")
def test_cortex_m0_equals_golden_at_the_other_formats(q_other, tmp_path):
    check_bit_exact(q_other, T.build(q_other, "cortex-m0", tmp_path), seed=41, angle=20.0)


# ---------------------------------------------------------------- AVR
@pytest.fixture(scope="module")
def avr(q, tmp_path_factory):
    return T.build(q, "avr", tmp_path_factory.mktemp("avr"))


@needs("avr")
@pytest.mark.parametrize("angle", [None, 150.0])
def test_avr_equals_golden_on_200_cells(q, avr, angle):
    check_bit_exact(q, avr, seed=31, angle=angle)


@needs("avr")
def test_avr_led_colour_and_model_hash(q, avr):
    check_rgb_and_identity(q, avr)


@needs("avr")
def test_avr_budgets(q, avr):
    xs, nbs = inputs_200(4)
    check_budgets(avr, xs, nbs)
    # the weights live in flash (PROGMEM), not in the 2 KB of RAM
    out = subprocess.run(["avr-size", "-A", str(avr.artefact)], capture_output=True, text=True, check=False).stdout
    data = sum(int(ln.split()[1]) for ln in out.splitlines() if ln.startswith((".data", ".bss")))
    assert data < 512


@needs("avr")
def test_avr_with_error_feedback_equals_golden_and_meets_the_budgets(q_ef, tmp_path):
    b = T.build(q_ef, "avr", tmp_path)
    for angle in (None, 150.0):
        check_bit_exact(q_ef, b, seed=33, angle=angle)
    xs, nbs = inputs_200(4)
    m = check_budgets(b, with_remainders(xs, 4), nbs)
    assert m["cell_struct"] == T.CELL_STRUCT_BYTES + T.RESID_BYTES


@needs("avr")
def test_avr_equals_golden_at_the_other_formats(q_other, tmp_path):
    check_bit_exact(q_other, T.build(q_other, "avr", tmp_path), seed=43, angle=-110.0)


# ---------------------------------------------------------------- Arduino sketch
@pytest.mark.skipif(shutil.which("avr-gcc") is None, reason="needs avr-gcc")
def test_arduino_sketch_folder_builds(q, tmp_path):
    emit.write_project(q, "arduino", tmp_path)
    sketch = tmp_path / "nca_cell"
    assert {p.name for p in sketch.iterdir()} >= {"nca_cell.ino", "nca_cell.c", "nca_cell.h", "nca_model.c",
                                                  "nca_model.h", "nca_rom.h"}
    T.make(tmp_path, "arduino")
    assert (tmp_path / "build" / "arduino" / "nca_cell.o").is_file()
    assert "nca_cell_update(&cell, NULL)" in (sketch / "nca_cell.ino").read_text()


ARDUINO_STUB = """#include <stdint.h>
#include <stdlib.h>
#define OUTPUT 1
void pinMode(uint8_t pin, uint8_t mode);
void analogWrite(uint8_t pin, int value);
void delay(unsigned long ms);
struct SerialStub { void begin(unsigned long); void print(int); void print(char); void println(); };
extern SerialStub Serial;
"""


def sketch_array(ino: str, name: str) -> list[int]:
    m = re.search(rf"{name}\[[^]]*\] = \{{([^}}]*)\}};", ino)
    assert m, name
    return [int(v) for v in m.group(1).split(",")]


@pytest.mark.skipif(shutil.which("avr-g++") is None, reason="needs avr-g++ (gcc-avr)")
@pytest.mark.parametrize("ef", [False, True], ids=["int8", "error-feedback"])
def test_arduino_sketch_seeds_the_models_seed_and_drives_the_rgb_led(tmp_path, ef):
    """The sketch starts from sim.model's seed in the model's formats (alpha and every hidden
    channel 1.0, with the remainders under error feedback), shows the colour by PWM on
    D9/D10/D11, and compiles as C++ for the ATmega328P (against a stub of Arduino.h)."""
    from test_backends_fixed import with_error_feedback

    from sim.model import seed_state
    q = quantize(with_error_feedback(blob_model()) if ef else blob_model())
    emit.write_project(q, "arduino", tmp_path)
    ino = (tmp_path / "nca_cell" / "nca_cell.ino").read_text()
    own = F.quantize_fine(seed_state(1, 1)[0, 0], q.fmt)
    st, resid = F.split_own(own, q.fmt.ef_bits)
    assert sketch_array(ino, "NCA_SEED") == st[0].tolist()
    assert st[0, 3] == 127 and st[0, :3].tolist() == [0, 0, 0]                  # alpha 1.0 saturates Q0.7
    assert st[0, 4:].tolist() == [1 << f for f in q.fmt.state_fracs[4:]]        # 1.0 in each hidden format
    if ef:
        assert sketch_array(ino, "NCA_SEED_RESID") == resid[0].tolist() and resid[0, 1] == 0xF0
    else:
        assert "NCA_SEED_RESID" not in ino
    assert sketch_array(ino, "LED_PINS") == [9, 10, 11]
    assert "analogWrite(LED_PINS[k], rgb[k])" in ino and "LED_BUILTIN" not in ino
    (tmp_path / "Arduino.h").write_text(ARDUINO_STUB)
    r = subprocess.run(["avr-g++", "-mmcu=atmega328p", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                        "-include", str(tmp_path / "Arduino.h"), "-I", str(tmp_path / "nca_cell"),
                        "-x", "c++", str(tmp_path / "nca_cell" / "nca_cell.ino")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
