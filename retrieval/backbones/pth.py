"""Read PyTorch's legacy (pre-1.6) ``.pth`` state dicts with numpy alone.

Why: the only ImageNet CNN weights that install offline ship as torch
checkpoints, and torch is a multi-gigabyte dependency we do not want. The
legacy format is a run of pickles followed by raw storages, so ``pickle`` and
``numpy`` suffice -- but a pickle can execute arbitrary code, so the unpickler
below refuses every global except the few a plain state dict names.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "load_state_dict"]

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global that a state dict never needs."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it, before its storage is read."""

    key: str
    dtype: type
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    _, storage_type, key, _location, _numel = storage[:5]
    return _TensorRef(str(key), storage_type.dtype, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Allows only OrderedDict, the tensor rebuild function and storage types."""

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(f"refusing to unpickle global {module}.{name}: not part of a state dict")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        return pid


def _safe_load(fh: BinaryIO):
    return _StateDictUnpickler(fh).load()


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the checkpoint's tensors as numpy arrays, keyed as in torch.

    Raises ``UnsafePickleError`` if any pickle in the file names a global
    outside the allow-list, and ``ValueError`` if the file is not a legacy
    torch checkpoint.
    """
    with open(path, "rb") as fh:
        if _safe_load(fh) != _MAGIC:
            raise ValueError(f"{path}: not a legacy torch checkpoint (bad magic number)")
        _safe_load(fh)  # protocol version
        sys_info = _safe_load(fh)
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        refs = _safe_load(fh)
        keys = _safe_load(fh)
        if not isinstance(refs, dict) or not isinstance(keys, list):
            raise ValueError(f"{path}: not a state dict")
        dtypes = {r.key: r.dtype for r in refs.values() if isinstance(r, _TensorRef)}
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            (numel,) = struct.unpack("<q", fh.read(8))
            dtype = np.dtype(dtypes.get(key, np.uint8))
            raw = fh.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise ValueError(f"{path}: truncated storage {key}")
            storages[key] = np.frombuffer(raw, dtype=dtype)

    out: dict[str, np.ndarray] = {}
    for name, ref in refs.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        flat = storages[ref.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride)
        )
        out[name] = np.array(view, order="C")  # a writable copy: np.frombuffer is read-only
    return out
