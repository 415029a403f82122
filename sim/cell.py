"""The float32 arithmetic of one cell update, shared by every float engine.

The synchronous grid, the lockstep and event-driven references and the SimPy
swarm all call these numba functions, so they round identically and can be
compared bit for bit. The summation order is fixed here and nowhere else:
`perceive` and `mlp` state it. They are written as explicit 16-lane LLVM vector
code with fused multiply-adds: plain numba loops vectorised poorly (the
compiler cannot prove the arrays do not alias) and ran ~3x slower. fma is
exactly rounded, so results do not depend on the CPU or on inlining. All
arrays must be C-contiguous float32 of the model's shapes.

A neighbourhood is a float32 (3, 3, 16) array indexed [dy+1, dx+1, channel]
with zeros for missing neighbours (zero padding).
"""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .model import ALIVE_THRESHOLD, CHANNELS, HIDDEN, PERCEPTION


LANES = 16
_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_I64 = ir.IntType(64)


def _vload(builder, base, offset):
    ptr = builder.gep(base, [ir.Constant(_I64, offset)])
    return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)


def _vstore(builder, value, base, offset):
    ptr = builder.gep(base, [ir.Constant(_I64, offset)])
    builder.store(value, builder.bitcast(ptr, _VEC.as_pointer()), align=4)


def _c_float32(*tys) -> bool:
    """The vector code reads raw data pointers: only C-contiguous float32 arrays."""
    return all(isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C" for t in tys)


def _splat(builder, scalar):
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined), mask)


@intrinsic
def perceive(typingctx, nbhd, kxy, p):
    """p[16k+c]: state, x-gradient, y-gradient (model.ORDER_CONCAT) of the
    centre of a (3, 3, 16) neighbourhood. Each gradient is an fma chain over the
    9 taps in row-major order, starting from 0, one lane per channel."""
    if not _c_float32(nbhd, kxy, p):
        return None
    sig = types.void(nbhd, kxy, p)

    def codegen(context, builder, signature, args):
        nb_p, k_p, p_p = (context.make_array(t)(context, builder, v).data
                          for t, v in zip(signature.args, args))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")
        gx = gy = ir.Constant(_VEC, [0.0] * LANES)
        for tap in range(9):
            v = _vload(builder, nb_p, tap * CHANNELS)
            kx = _splat(builder, builder.load(builder.gep(k_p, [ir.Constant(_I64, tap)])))
            ky = _splat(builder, builder.load(builder.gep(k_p, [ir.Constant(_I64, 9 + tap)])))
            gx = builder.call(fma, [kx, v, gx])
            gy = builder.call(fma, [ky, v, gy])
        _vstore(builder, _vload(builder, nb_p, 4 * CHANNELS), p_p, 0)
        _vstore(builder, gx, p_p, CHANNELS)
        _vstore(builder, gy, p_p, 2 * CHANNELS)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mlp(typingctx, p, w1, b1, w2, b2, dx):
    """dx = W2^T relu(W1^T p + b1) + b2, in exactly this arithmetic:
      h_j  = fma chain over i = 0..47: acc = fma(p_i, W1[i,j], acc), acc0 = b1_j
      h_j  = h_j if h_j > 0 else 0
      o_m  = fma chain over j = m, m+4, ... (m = 0..3), o_m0 = 0
      dx_c = b2_c + ((o_0 + o_1) + (o_2 + o_3))
    """
    if not _c_float32(p, w1, b1, w2, b2, dx):
        return None
    sig = types.void(p, w1, b1, w2, b2, dx)

    def codegen(context, builder, signature, args):
        pp, w1p, b1p, w2p, b2p, dxp = (context.make_array(t)(context, builder, v).data
                                       for t, v in zip(signature.args, args))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")
        nh = HIDDEN // LANES
        acc = [_vload(builder, b1p, k * LANES) for k in range(nh)]
        for i in range(PERCEPTION):
            pi = _splat(builder, builder.load(builder.gep(pp, [ir.Constant(_I64, i)])))
            for k in range(nh):
                acc[k] = builder.call(fma, [pi, _vload(builder, w1p, i * HIDDEN + k * LANES), acc[k]])
        zero = ir.Constant(_VEC, [0.0] * LANES)
        h = [builder.select(builder.fcmp_ordered(">", a, zero), a, zero) for a in acc]
        out = [zero] * 4
        for j in range(HIDDEN):
            hj = _splat(builder, builder.extract_element(h[j // LANES], ir.Constant(ir.IntType(32), j % LANES)))
            out[j % 4] = builder.call(fma, [hj, _vload(builder, w2p, j * CHANNELS), out[j % 4]])
        total = builder.fadd(builder.fadd(out[0], out[1]), builder.fadd(out[2], out[3]))
        _vstore(builder, builder.fadd(_vload(builder, b2p, 0), total), dxp, 0)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, inline="always")
def cell_delta(nbhd, kxy, w1, b1, w2, b2, p, dx):
    """Update vector of the centre cell of `nbhd` (scratch p[48]; result in dx[16])."""
    perceive(nbhd, kxy, p)
    mlp(p, w1, b1, w2, b2, dx)


@nb.njit(cache=True, inline="always")
def alive_value(alpha) -> bool:
    return alpha > ALIVE_THRESHOLD


def scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Buffers for cell_delta: (nbhd, p, dx)."""
    return (np.zeros((3, 3, CHANNELS), np.float32), np.zeros(PERCEPTION, np.float32),
            np.zeros(CHANNELS, np.float32))

