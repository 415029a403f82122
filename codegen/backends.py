"""Cell backends of the fixed-point firmware for the SimPy swarm (sim.backends).

- "fixed":    the golden model (codegen/golden.py, numba), one call per wake-up;
- "firmware": the generated C itself, compiled for the host and loaded with
              ctypes (firmware/ports/host/nca_host.c), one call per wake-up.

Both take the swarm's float32 arrays as they are: every state they write is on
the state grid (q/128 for RGBA, q/32 for the hidden channels: exact in float32;
with error feedback 16 times finer), and a value that is not (the float seed's 1.0
on RGBA) is rounded to the nearest step, saturating, on the way in. A message is
the sender's whole state, of which the receiving cell takes the int8 part. Importing
this module registers both names with sim.backends.register_backend.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from sim.backends import CellBackend, ModelLike, as_params, register_backend
from sim.errors import UserError
from sim.reference import Params
from sim.weights import Model, default_meta

from . import formats as F
from . import golden as G
from .quantize import QModel, quantize, recorded_error_feedback, recorded_format


def _model_of(model: ModelLike) -> Model:
    if isinstance(model, Model):
        return model
    if isinstance(model, Params):
        return Model({"w1": model.w1, "b1": model.b1, "w2": model.w2, "b2": model.b2},
                     model.meta if model.meta is not None else default_meta())
    raise TypeError(f"expected a weights.Model or reference.Params, got {type(model).__name__}")


def _weights_key(model: Model) -> str:
    """The weights and what the quantiser reads of the metadata (a recorded QAT format,
    error feedback)."""
    h = hashlib.sha1(repr((recorded_format(model.meta), recorded_error_feedback(model.meta))).encode())
    for k in ("w1", "b1", "w2", "b2"):
        h.update(np.ascontiguousarray(model.params[k], np.float32).tobytes())
    return h.hexdigest()


_QCACHE: dict[str, QModel] = {}
_QLOCK = threading.Lock()


def quantized(model: ModelLike) -> QModel:
    """quantize(), cached by the weights (calibration takes about a second)."""
    m = _model_of(model)
    key = _weights_key(m)
    with _QLOCK:
        if key not in _QCACHE:
            _QCACHE[key] = quantize(m)
        return _QCACHE[key]


def _angle_of(model: ModelLike, angle: float | None) -> float:
    if angle is not None:
        return float(angle)
    if isinstance(model, Params):
        return F.angle_of_kernels(model.kxy)
    return 0.0


def lockstep_check(fmt: F.ModelFormat) -> None:
    """Lockstep mode applies the alive rule itself, on the swarm's float states; a cell
    with error feedback decides it on the int8 part of its state, which that cannot see."""
    if fmt.ef_bits:
        raise UserError("lockstep mode decides the alive rule on the swarm's float states, which differ "
                        "from what a cell with error feedback decides it on; run this model asynchronously")


class FixedBackend(CellBackend):
    """The golden model of the firmware's integer arithmetic."""

    name = "fixed"

    def __init__(self, q: QModel, angle: float = 0.0):
        self.q = q
        self._args = q.arrays()
        self.rot = G.rotation_array(angle)

    def update(self, c: int, state: np.ndarray, inbox: np.ndarray) -> int:
        return G.wakeup_f32(c, state, inbox, *self._args, self.rot)

    def tentative(self, c: int, state: np.ndarray, inbox: np.ndarray, out: np.ndarray) -> None:
        lockstep_check(self.q.fmt)
        G.tentative_f32(c, state, inbox, *self._args, self.rot, out)

    def set_params(self, params: Params) -> None:
        """A new rotation (and, if the weights changed, a new quantised model)."""
        self.q = quantized(params)
        self._args = self.q.arrays()
        self.rot = G.rotation_array(F.angle_of_kernels(params.kxy))


class _Rotation(ctypes.Structure):
    _fields_ = [("cos_q14", ctypes.c_int16), ("sin_q14", ctypes.c_int16)]


def cache_dir() -> Path:
    """Where host builds of models are kept (one folder per model hash)."""
    base = os.environ.get("NCA_CODEGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "nca-codegen")
    return Path(base)


_LIBS: dict[int, ctypes.CDLL] = {}


def host_library(q: QModel) -> ctypes.CDLL:
    """The generated C of q compiled as a shared library (built once per model hash)."""
    from . import targets  # build machinery; imported here so "fixed" needs no compiler

    h = q.model_hash
    if h in _LIBS:
        return _LIBS[h]
    root = cache_dir() / f"{h:08x}"
    lib_path = root / "build" / "host" / "libnca.so"
    if not lib_path.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{h:08x}.", dir=root.parent))
        targets.build(q, "host", tmp)
        try:
            os.replace(tmp, root)
        except OSError:      # another process built it first
            pass
    lib = ctypes.CDLL(str(lib_path))
    lib.nca_host_model_hash.restype = ctypes.c_uint32
    lib.nca_host_cell_bytes.restype = ctypes.c_uint32
    if lib.nca_host_model_hash() != h:
        raise RuntimeError(f"{lib_path} reports model hash {lib.nca_host_model_hash():08x}, expected {h:08x}")
    if lib.nca_host_cell_bytes() != targets.cell_struct_bytes(q.fmt.ef_bits):
        raise RuntimeError("nca_cell_t size differs from codegen.targets.cell_struct_bytes")
    fp = ctypes.c_void_p
    lib.nca_host_wakeup_f32.argtypes = [ctypes.c_int32, fp, fp, fp]
    lib.nca_host_wakeup_f32.restype = ctypes.c_int32
    lib.nca_host_tentative_f32.argtypes = [ctypes.c_int32, fp, fp, fp, fp]
    lib.nca_host_tentative_f32.restype = None
    lib.nca_host_update_batch.argtypes = [ctypes.c_int32, fp, fp, fp, fp]
    lib.nca_host_update_batch.restype = None
    lib.nca_host_tentative_batch.argtypes = [ctypes.c_int32, fp, fp, fp, fp]
    lib.nca_host_tentative_batch.restype = None
    _LIBS[h] = lib
    return lib


def rotation_struct(angle: float | None) -> _Rotation | None:
    if angle is None or angle == 0:
        return None
    return _Rotation(*F.rotation_q14(angle))


class HostFirmware:
    """Batch calls into the host build: what the bit-exactness tests use."""

    def __init__(self, q: QModel):
        self.q = q
        self.lib = host_library(q)

    def update(self, states: np.ndarray, inboxes: np.ndarray, angle: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(codes, new own states) of n independent cells: own states (n, 16) in units of
        2^-ef_bits steps (int8 states without error feedback), inboxes int8 (n, 8, 16);
        the new states come back as int16."""
        s = np.ascontiguousarray(states, np.int16).reshape(-1, 16).copy()
        ib = np.ascontiguousarray(inboxes, np.int8).reshape(-1, 128)
        codes = np.zeros(len(s), np.uint8)
        rot = rotation_struct(angle)
        self.lib.nca_host_update_batch(len(s), s.ctypes.data, ib.ctypes.data,
                                       ctypes.addressof(rot) if rot else None, codes.ctypes.data)
        return codes.astype(np.int64), s

    def tentative(self, states: np.ndarray, inboxes: np.ndarray, angle: float | None = None) -> np.ndarray:
        s = np.ascontiguousarray(states, np.int16).reshape(-1, 16)
        ib = np.ascontiguousarray(inboxes, np.int8).reshape(-1, 128)
        out = np.zeros_like(s)
        rot = rotation_struct(angle)
        self.lib.nca_host_tentative_batch(len(s), s.ctypes.data, ib.ctypes.data,
                                          ctypes.addressof(rot) if rot else None, out.ctypes.data)
        return out


class FirmwareBackend(CellBackend):
    """The generated C compiled for the host, one ctypes call per wake-up."""

    name = "firmware"

    def __init__(self, q: QModel, angle: float = 0.0):
        self.q = q
        self.lib = host_library(q)
        self._set_rotation(angle)

    def _set_rotation(self, angle: float) -> None:
        self._rot = rotation_struct(angle)
        self._rot_ptr = ctypes.addressof(self._rot) if self._rot is not None else None

    @staticmethod
    def _ptr(a: np.ndarray) -> int:
        if not (a.dtype == np.float32 and a.flags.c_contiguous):
            raise TypeError("the firmware backend needs C-contiguous float32 arrays")
        return a.ctypes.data

    def update(self, c: int, state: np.ndarray, inbox: np.ndarray) -> int:
        return self.lib.nca_host_wakeup_f32(c, self._ptr(state), self._ptr(inbox), self._rot_ptr)

    def tentative(self, c: int, state: np.ndarray, inbox: np.ndarray, out: np.ndarray) -> None:
        lockstep_check(self.q.fmt)
        self.lib.nca_host_tentative_f32(c, self._ptr(state), self._ptr(inbox), self._rot_ptr, self._ptr(out))

    def set_params(self, params: Params) -> None:
        q = quantized(params)
        if q.model_hash != self.q.model_hash:
            self.q = q
            self.lib = host_library(q)
        self._set_rotation(F.angle_of_kernels(params.kxy))


def _fixed_factory(model: ModelLike, angle: float | None) -> CellBackend:
    return FixedBackend(quantized(model), _angle_of(model, angle))


def _firmware_factory(model: ModelLike, angle: float | None) -> CellBackend:
    return FirmwareBackend(quantized(model), _angle_of(model, angle))


register_backend("fixed", _fixed_factory)
register_backend("firmware", _firmware_factory)

__all__ = ["FirmwareBackend", "FixedBackend", "HostFirmware", "as_params", "host_library", "quantized"]
