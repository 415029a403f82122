"""The fixed-point formats of the cell firmware: the one definition.

Every integer format, constant and layout of the firmware lives here; the
quantiser (codegen/quantize.py), the golden model (codegen/golden.py), the C
emitter (codegen/emit.py: the generated nca_model.h takes its constants from
`header_constants`) and the tests import it. The C core
(firmware/core/nca_cell.c) implements exactly this arithmetic.

Why these formats (measured; the fine-tunings made for them: docs/fixed-point.md):
- State: int8, Q0.7 for RGBA (value q/128, range -1 .. 0.992) and, per model,
  one of Q3.4, Q2.5, Q1.6 for each of the 12 hidden channels (q/16 .. q/64; range
  +-8 .. +-2), chosen by the quantiser (the least squared rounding + clipping error
  on its calibration cells, unless Q2.5 for all keeps a short fixed-point run
  closer to the float one) and recorded in the model format. RGBA lives in [0, 1]
  (premultiplied; no target exceeds 1) and is what the loss sees, so it gets the
  finest step. The hidden channels' ranges differ per channel and per model: the
  regenerating lizard's reach 5.3 at step 1,000 in three channels and stay below 2
  in others, and saturating its hidden channels at +-4 alone (everything else
  continuous) takes its loss at step 1,000 from 1.9e-4 to 3.1e-3; post-training
  quantisation (sync, 40x40, 3 seeds): 4.0e-3 with Q2.5 for every hidden channel,
  1.4e-3 with per-channel formats (9.3e-3 with Q2.5 everywhere including RGBA,
  5.8e-3 with RGBA at Q1.6); the persistent lizard's does better with Q2.5 for all
  (6.6e-4 against 1.0e-3), which the short run sees too. int16 would double the 128-byte neighbour buffer and
  break the 256-byte RAM budget. A message between cells is the 16 state bytes.
  The channel scales are folded into the first-layer weights and the output
  multipliers, so the core's arithmetic is the same for every channel and does
  not know the hidden formats; only the alive threshold and the LED colour read
  RGBA's format, and only the host's float conversions the hidden ones.
- Perception: the Sobel kernels are the integer taps (1, 2, 1) with the /8 folded
  into the scale, so a gradient is an exact int16 sum G (|G| <= 1,024; real
  value G/8 state steps of its channel); it is rounded right by a per-model
  GRAD_SHIFT (chosen by the quantiser for the least rounding + clipping error;
  RGBA's sums stay below 4 * 127 for values in [0, 1]) and saturated to int8,
  so that every first-layer product is int8 x int8 (one MULS on AVR).
- Rotation: cos and sin in Q14, applied to the exact sums: G' = (c Gx - s Gy + 2^13) >> 14.
- Weights: int8 in [-127, 127] with a per-output-channel scale. The scale of
  hidden unit j (times 2^HIDDEN_SHIFT) is folded into row j of W2 before W2 is
  quantised (ReLU is positively homogeneous), so the hidden requantisation is a
  pure shift: no per-unit multiplier table in ROM, no multiply per hidden unit.
- Accumulators: first layer exact (|a| <= 48*127*128 < 2^23: int32 on ARM and
  the host, __int24 on AVR). Second layer: each group of 4 hidden units gives an
  exact partial sum t (|t| < 2^17) that is shifted right by ACC_SHIFT (floor;
  the quantiser adds the floors' mean, GROUPS*(1-2^-R)/2, to the output bias,
  which saves an add per output in the innermost loop) into an int16
  accumulator; the quantiser picks ACC_SHIFT so that no input can overflow it
  (worst-case bound, checked). int16 rather than int32 keeps the 16
  accumulators at 32 bytes, which is what fits 256 bytes of RAM.
- Output requantisation: TFLite-Micro's (multiplier, shift) convention at Q15
  width - real = M * 2^(shift-15), M in [2^14, 2^15) - with single rounding
  (TFLite's TFLITE_SINGLE_ROUNDING / CMSIS-NN): dx = (acc*M + 2^(T-1)) >> T,
  T = 15 - shift. acc*M < 2^30 fits int32 on every target. M keeps 10
  significant bits (relative error < 0.05%) so that T fits in its 5 low bits:
  16 bytes of ROM that the Cortex-M0 budget needed.
- Alive threshold: alpha > 0.1 is q > ALIVE_Q = 12 (q/128 > 0.1 <=> q >= 13).
- Error feedback (a model fine-tuned with `nca-train --qat --error-feedback` records
  it): the cell keeps EF_BITS = 4 more fraction bits of its own state, v = q * 16 + r
  with r in 0..15 (packed two per byte: 8 bytes of RAM), so that an update smaller
  than a state step is not rounded away: dx = (acc*M + 2^(T-5)) >> (T-4),
  v = clamp(v + dx, -2048, 2047), q = v >> 4, r = v & 15. The int8 q is still all
  that the network, the alive rule, the neighbours and the LED see (q is the floor of
  v / 16). Rounding every update to the int8 step freezes a cell wherever its update
  falls below half a step, so the grown pattern settles in a different place on every
  run (the int8 lizard's loss on one run 1.7x that of its mean picture over runs); keeping
  the remainder leaves only the neighbours' view rounded. Four bits do what eight do
  (measured) and fit the AVR's 256 bytes.
Rounding elsewhere is "add half, shift right" (round half up); right shifts of
negative numbers are arithmetic (numpy and GCC on every target).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.model import (
    ALIVE_THRESHOLD,
    ALPHA,
    CHANNELS,
    HIDDEN,
    NEIGHBOUR_OFFSETS,
    PERCEPTION,
    SOBEL_X,
    SOBEL_Y,
)

FORMAT_VERSION = 4                   # 3: per-model hidden state formats; 4: error feedback

# ---------------------------------------------------------------- state
STATE_BITS = 8
RGBA = 4                             # channels 0..3: the picture (ALPHA among them)
RGBA_FRAC = 7                        # Q0.7
HIDDEN_FRACS = (4, 5, 6)             # a hidden channel's candidates: Q3.4, Q2.5, Q1.6
LEGACY_HIDDEN_FRAC = 5               # models fine-tuned before the choice were trained at Q2.5
STATE_MIN, STATE_MAX = -(1 << (STATE_BITS - 1)), (1 << (STATE_BITS - 1)) - 1
EF_BITS = 4                          # error feedback: the own state's extra fraction bits
RESID_BYTES = CHANNELS * EF_BITS // 8   # nca_cell_t.resid: channel c's bits in byte c/2, odd c high
if not ALPHA < RGBA:
    raise AssertionError("alpha is not an RGBA channel")
_ALPHA_STEP = 2.0 ** -RGBA_FRAC
ALIVE_Q = math.floor(ALIVE_THRESHOLD * (1 << RGBA_FRAC) + 1e-9)   # alive iff q > ALIVE_Q
if not (ALIVE_Q * _ALPHA_STEP <= ALIVE_THRESHOLD < (ALIVE_Q + 1) * _ALPHA_STEP):
    raise AssertionError("alive threshold does not fall between two state steps")
if ALIVE_Q + 1 == ALIVE_THRESHOLD * (1 << RGBA_FRAC):
    raise AssertionError("alive threshold is a state step: '>' would differ from the float rule")

# ---------------------------------------------------------------- perception
SOBEL_DIV = 8
SOBEL_X_INT = np.rint(SOBEL_X * SOBEL_DIV).astype(np.int64)
SOBEL_Y_INT = np.rint(SOBEL_Y * SOBEL_DIV).astype(np.int64)
if not (np.array_equal(SOBEL_X_INT / SOBEL_DIV, SOBEL_X) and np.array_equal(SOBEL_Y_INT / SOBEL_DIV, SOBEL_Y)):
    raise AssertionError("Sobel kernels are not integer taps / 8")
# taps per inbox slot (model.NEIGHBOUR_OFFSETS order); the centre tap is 0
SOBEL_X_SLOTS = np.array([SOBEL_X_INT[dy + 1, dx + 1] for dy, dx in NEIGHBOUR_OFFSETS], np.int64)
SOBEL_Y_SLOTS = np.array([SOBEL_Y_INT[dy + 1, dx + 1] for dy, dx in NEIGHBOUR_OFFSETS], np.int64)
if SOBEL_X_INT[1, 1] or SOBEL_Y_INT[1, 1]:
    raise AssertionError("Sobel centre tap is not zero")
GRAD_SHIFTS = (0, 1, 2, 3, 4)                # candidates; input unit 2^S * state_scales[c] / 8
HIDDEN_SHIFTS = range(0, 23)                 # K: first-layer sum -> hidden step
BIAS_SHIFTS = range(0, 8)                    # B: b1 in units of 2^B hidden steps
ROT_FRAC = 14                                # cos/sin in Q14


def rotation_q14(angle_deg: float) -> tuple[int, int]:
    """(cos, sin) of the perception rotation in Q14, as the firmware takes them."""
    th = math.radians(angle_deg)
    one = 1 << ROT_FRAC
    return round(math.cos(th) * one), round(math.sin(th) * one)


def angle_of_kernels(kxy: np.ndarray) -> float:
    """The rotation angle (degrees) of `model.gradient_kernels(angle)` output
    (Kx = c Sx - s Sy: its [1, 2] tap is c/4, its [2, 1] tap is -s/4)."""
    k = np.asarray(kxy, np.float64)
    return math.degrees(math.atan2(-4.0 * k[0, 2, 1], 4.0 * k[0, 1, 2]))


# ---------------------------------------------------------------- network
GROUP = 4                                    # hidden units streamed together
GROUPS = HIDDEN // GROUP
HIDDEN_MAX = 255                             # h in 0..255 (uint8)
WEIGHT_MAX = 127                             # symmetric int8 weights
BIAS1_MAX = 127                              # b1 int8, in units of 2^BIAS_SHIFT hidden steps
ACC1_LIMIT = 1 << 23                         # |first-layer sum| bound (fits __int24)
ACC_BITS = 16                                # second-layer accumulator
ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
ACC_SHIFTS = range(1, 16)


def floor_mean(acc_shift: int) -> float:
    """What the GROUPS floors of `acc += t >> R` drop on average (t an integer):
    the quantiser adds it to b2 (in accumulator steps)."""
    return GROUPS * (1 - 2.0 ** -acc_shift) / 2


MULT_FRAC = 15                               # output multiplier Q15 in [2^14, 2^15)
MULT_LOW_BITS = 5                            # ... with its 5 low bits zero: they hold T in the genome
OUT_SHIFT_MIN, OUT_SHIFT_MAX = 1, 30         # T: total right shift of the output requantisation
if PERCEPTION * WEIGHT_MAX * (-STATE_MIN) >= ACC1_LIMIT:
    raise AssertionError("first-layer accumulator bound")
PARTIAL_LIMIT = GROUP * WEIGHT_MAX * HIDDEN_MAX    # |t| of one group, < 2^17

# ---------------------------------------------------------------- genome layout (ROM)
# For each group g of 4 hidden units j = 4g..4g+3:
#   W1[i][j] for i = 0..47 (48 x 4 int8, unit-minor),
#   b1[j]    (4 int8),
#   W2[j][m] for m = 0..15 (16 x 4 int8, unit-minor)
# then out_bias[16] int16 and out_mt[16] uint16 = M | T (M a multiple of 2^MULT_LOW_BITS).
GROUP_W1 = PERCEPTION * GROUP
GROUP_BYTES = GROUP_W1 + GROUP + CHANNELS * GROUP          # 260
GENOME_BYTES = GROUPS * GROUP_BYTES + CHANNELS * (2 + 2)   # 8,384


def state_fracs(hidden: tuple[int, ...] | list[int] | np.ndarray) -> tuple[int, ...]:
    """The 16 channels' fraction bits for the 12 hidden channels' (RGBA is Q0.7)."""
    return (RGBA_FRAC,) * RGBA + tuple(int(f) for f in hidden)


LEGACY_STATE_FRACS = state_fracs([LEGACY_HIDDEN_FRAC] * (CHANNELS - RGBA))


@dataclass(frozen=True)
class ModelFormat:
    """The per-model constants (compile-time in the firmware)."""
    grad_shift: int        # S: gradient input = sat8(round(G / 2^S))
    hidden_shift: int      # K: h = clamp(round(a / 2^K) + (b1 << B), 0, 255)
    bias_shift: int        # B
    acc_shift: int         # R: acc += floor(t / 2^R)
    state_fracs: tuple[int, ...]   # per channel: value = q / 2^f (RGBA_FRAC, then HIDDEN_FRACS)
    ef_bits: int = 0               # error feedback: 0 (off) or EF_BITS more bits of the own state

    @property
    def state_steps(self) -> np.ndarray:
        """Steps per unit value, per channel (float64, exact powers of two)."""
        return 2.0 ** np.array(self.state_fracs, np.float64)

    @property
    def state_scales(self) -> np.ndarray:
        """Real value of one step, per channel (float64, exact powers of two)."""
        return 2.0 ** -np.array(self.state_fracs, np.float64)

    def check(self) -> ModelFormat:
        fr = tuple(self.state_fracs)
        if len(fr) != CHANNELS or fr[:RGBA] != (RGBA_FRAC,) * RGBA or any(f not in HIDDEN_FRACS for f in fr[RGBA:]):
            raise ValueError(f"state fractions {fr}: RGBA must be {RGBA_FRAC}, the {CHANNELS - RGBA} hidden "
                             f"channels one of {HIDDEN_FRACS}")
        if self.grad_shift not in GRAD_SHIFTS:
            raise ValueError(f"grad_shift {self.grad_shift} not in {GRAD_SHIFTS}")
        if self.hidden_shift not in HIDDEN_SHIFTS:
            raise ValueError(f"hidden_shift {self.hidden_shift} out of 0..{HIDDEN_SHIFTS[-1]}")
        if self.bias_shift not in BIAS_SHIFTS:
            raise ValueError(f"bias_shift {self.bias_shift} out of 0..{BIAS_SHIFTS[-1]}")
        if self.acc_shift not in ACC_SHIFTS:
            raise ValueError(f"acc_shift {self.acc_shift} out of 1..15")
        if self.ef_bits not in (0, EF_BITS):
            raise ValueError(f"ef_bits {self.ef_bits}: error feedback is 0 (off) or {EF_BITS} bits")
        return self


def partial_format(state_fracs: tuple[int, ...] | list[int], grad_shift: int = GRAD_SHIFTS[0],
                   hidden_shift: int = HIDDEN_SHIFTS[0], ef_bits: int = 0) -> ModelFormat:
    """A checked format whose bias and accumulator shifts are placeholders (the
    quantiser derives them from the weights): for what depends only on the state
    formats and the shifts given."""
    return ModelFormat(grad_shift, hidden_shift, BIAS_SHIFTS[0], ACC_SHIFTS[0], tuple(state_fracs),
                       ef_bits).check()


def quantize_state(x: np.ndarray, fmt: ModelFormat) -> np.ndarray:
    """Float states (..., 16) -> int8 in each channel's format (round half to even,
    saturate): how a float state enters the fixed-point world; exact for states
    the firmware produced."""
    q = np.rint(np.asarray(x, np.float64) * fmt.state_steps)
    return np.clip(q, STATE_MIN, STATE_MAX).astype(np.int8)


def dequantize_state(q: np.ndarray, fmt: ModelFormat) -> np.ndarray:
    """int8 states (..., 16) -> float32 (exact)."""
    return (np.asarray(q, np.float64) * fmt.state_scales).astype(np.float32)


def quantize_fine(x: np.ndarray, fmt: ModelFormat) -> np.ndarray:
    """Float states (..., 16) -> the own state in units of 2^-ef_bits steps (int16; the
    int8 state itself without error feedback): round half to even, saturate."""
    e = fmt.ef_bits
    q = np.rint(np.asarray(x, np.float64) * fmt.state_steps * (1 << e))
    return np.clip(q, STATE_MIN << e, ((STATE_MAX + 1) << e) - 1).astype(np.int16)


def dequantize_fine(v: np.ndarray, fmt: ModelFormat) -> np.ndarray:
    """quantize_fine's inverse (exact in float32)."""
    return (np.asarray(v, np.float64) * fmt.state_scales / (1 << fmt.ef_bits)).astype(np.float32)


def split_own(own: np.ndarray, ef_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Own states (n, 16) in 2^-ef_bits steps -> what a cell stores: the int8 states (n, 16)
    and the remainders packed as nca_cell_t.resid (n, RESID_BYTES) uint8, channel c's in
    byte c/2, the high nibble for odd c (zero without error feedback)."""
    v = np.asarray(own, np.int64).reshape(-1, CHANNELS)
    r = (v & ((1 << ef_bits) - 1)).astype(np.uint8)
    return (v >> ef_bits).astype(np.int8), (r[:, 0::2] | (r[:, 1::2] << 4)).astype(np.uint8)


def join_own(state: np.ndarray, resid: np.ndarray, ef_bits: int) -> np.ndarray:
    """split_own's inverse: int8 states (n, 16) and packed remainders (n, RESID_BYTES) ->
    own states (n, 16) int16."""
    q = np.asarray(state, np.int8).reshape(-1, CHANNELS).astype(np.int16) << ef_bits
    if not ef_bits:
        return q
    b = np.asarray(resid, np.uint8).reshape(-1, RESID_BYTES)
    r = np.empty_like(q)
    r[:, 0::2] = b & 15
    r[:, 1::2] = b >> 4
    return q + r


def choose_hidden_fracs(states: np.ndarray) -> tuple[int, ...]:
    """Per hidden channel, the candidate format with the least squared rounding +
    clipping error over float states (..., 16) (ties: the wider range)."""
    x = np.asarray(states, np.float64).reshape(-1, CHANNELS)[:, RGBA:]
    out = []
    for c in range(CHANNELS - RGBA):
        errs = [(float(np.mean((np.clip(np.rint(x[:, c] * 2.0 ** f), STATE_MIN, STATE_MAX) * 2.0 ** -f
                                - x[:, c]) ** 2)), f) for f in HIDDEN_FRACS]
        out.append(min(errs)[1])
    return tuple(out)


def multiplier_q15(real: float) -> tuple[int, int]:
    """TFLite-style (multiplier, shift) of a positive real at Q15:
    real ~= M * 2^(shift - 15), M in [2^14, 2^15) a multiple of 2^MULT_LOW_BITS (10
    significant bits, relative error < 2^-11). Returns (M, T) with T = 15 - shift
    the total right shift the firmware applies."""
    if not (real > 0 and math.isfinite(real)):
        raise ValueError(f"multiplier must be positive and finite, got {real}")
    frac, exp = math.frexp(real)            # real = frac * 2^exp, frac in [0.5, 1)
    step = 1 << MULT_LOW_BITS
    m = round(frac * (1 << MULT_FRAC) / step) * step
    if m == 1 << MULT_FRAC:
        m //= 2
        exp += 1
    return m, MULT_FRAC - exp


def header_constants(fmt: ModelFormat) -> dict[str, int | str]:
    """The #defines of the generated nca_model.h (format constants + the model's)."""
    return {
        "NCA_FORMAT_VERSION": FORMAT_VERSION,
        "NCA_RGBA_FRAC": RGBA_FRAC,
        "NCA_RGBA_CHANNELS": RGBA,
        "NCA_ALIVE_Q": ALIVE_Q,
        "NCA_ALPHA_CHANNEL": ALPHA,
        "NCA_HIDDEN": HIDDEN,
        "NCA_PERCEPTION": PERCEPTION,
        "NCA_GROUPS": GROUPS,
        "NCA_GROUP_BYTES": GROUP_BYTES,
        "NCA_GROUP_W1": GROUP_W1,
        "NCA_GENOME_BYTES": GENOME_BYTES,
        "NCA_ROT_FRAC": ROT_FRAC,
        "NCA_GRAD_SHIFT": fmt.grad_shift,
        "NCA_HIDDEN_SHIFT": fmt.hidden_shift,
        "NCA_BIAS_SHIFT": fmt.bias_shift,
        "NCA_ACC_SHIFT": fmt.acc_shift,
        "NCA_EF_BITS": fmt.ef_bits,
        # a C initializer (host float conversions only; the cell core never reads it)
        "NCA_STATE_FRACS": "{" + ", ".join(str(f) for f in fmt.state_fracs) + "}",
    }


def describe(fmt: ModelFormat | None = None) -> str:
    """One paragraph for --report and the README (with a model's hidden formats)."""
    def q(frac: int) -> str:
        return f"Q{STATE_BITS - frac - 1}.{frac}"
    hidden = ("Q3.4/Q2.5/Q1.6 per channel" if fmt is None
              else "[" + " ".join(q(f) for f in fmt.state_fracs[RGBA:]) + "]")
    ef = "" if fmt is None or not fmt.ef_bits else f" with {fmt.ef_bits} error-feedback bits"
    return (f"state int8{ef}, RGBA {q(RGBA_FRAC)} (step 1/{1 << RGBA_FRAC}), hidden channels {hidden}, "
            f"alive q > {ALIVE_Q}; weights int8 per-channel; "
            f"hidden uint8 by shift; int16 output accumulators; Q15 multiplier+shift output requantisation")
