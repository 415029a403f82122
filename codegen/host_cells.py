"""The generated C compiled for this machine and called through ctypes
(firmware/ports/host/nca_host.c): the "firmware" cell backend of the SimPy swarm
(one call per wake-up) and `HostFirmware`, batch calls for the bit-exactness tests.
Each model is built once, in the cache (`sim.paths.cache_dir`), by its hash.
"""
from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import numpy as np

from sim.cell_backends import CellBackend, ModelLike
from sim.paths import cache_dir
from sim.spec import Params

from . import formats as F
from . import toolchain
from .fixed_cells import angle_of, lockstep_check
from .quantize import QModel, quantized


class _Rotation(ctypes.Structure):
    _fields_ = [("cos_q14", ctypes.c_int16), ("sin_q14", ctypes.c_int16)]


_LIBS: dict[int, ctypes.CDLL] = {}


def host_library(q: QModel) -> ctypes.CDLL:
    """The generated C of q compiled as a shared library (built once per model hash)."""
    h = q.model_hash
    if h in _LIBS:
        return _LIBS[h]
    root = cache_dir() / f"{h:08x}"
    lib_path = root / "build" / "host" / "libnca.so"
    if not lib_path.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{h:08x}.", dir=root.parent))
        toolchain.build(q, "host", tmp)
        try:
            os.replace(tmp, root)
        except OSError:      # another process built it first
            pass
    lib = ctypes.CDLL(str(lib_path))
    lib.nca_host_model_hash.restype = ctypes.c_uint32
    lib.nca_host_cell_bytes.restype = ctypes.c_uint32
    if lib.nca_host_model_hash() != h:
        raise RuntimeError(f"{lib_path} reports model hash {lib.nca_host_model_hash():08x}, expected {h:08x}")
    if lib.nca_host_cell_bytes() != toolchain.cell_struct_bytes(q.fmt.ef_bits):
        raise RuntimeError("nca_cell_t size differs from codegen.toolchain.cell_struct_bytes")
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


def firmware_backend(model: ModelLike, angle: float | None = None) -> CellBackend:
    """The "firmware" backend of a model (a sim.cell_backends.BackendFactory)."""
    return FirmwareBackend(quantized(model), angle_of(model, angle))
