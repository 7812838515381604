"""Write PyTorch `torch.save` zip files without PyTorch (benchmarks and tests make checkpoints in the published
layout with it); `torch.load(..., weights_only=True)` reads them."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from avatar_cam.wav2lip.torch_tensors import DTYPE_STORAGES


class _Writer:
    """Emits the pickle opcodes of the zip layout by hand: PyTorch's own classes are not needed to name them."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: list[np.ndarray] = []

    def op(self, data: bytes) -> None:
        self.out.write(data)

    def global_(self, module: str, name: str) -> None:
        self.op(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def value(self, v: Any) -> None:
        if isinstance(v, (np.ndarray, np.generic)):
            self.tensor(np.asarray(v))
        elif isinstance(v, dict):
            if isinstance(v, OrderedDict):
                self.global_("collections", "OrderedDict")
                self.op(pickle.EMPTY_TUPLE + pickle.REDUCE)
            else:
                self.op(pickle.EMPTY_DICT)
            if v:
                self.op(pickle.MARK)
                for key, item in v.items():
                    self.value(key)
                    self.value(item)
                self.op(pickle.SETITEMS)
        elif isinstance(v, list):  # EMPTY_LIST + APPENDS: the form torch's weights-only loader accepts
            self.op(pickle.EMPTY_LIST)
            if v:
                self.op(pickle.MARK)
                for item in v:
                    self.value(item)
                self.op(pickle.APPENDS)
        elif isinstance(v, tuple):
            self.op(pickle.MARK)
            for item in v:
                self.value(item)
            self.op(pickle.TUPLE)
        elif v is None:
            self.op(pickle.NONE)
        elif isinstance(v, bool):
            self.op(pickle.NEWTRUE if v else pickle.NEWFALSE)
        elif isinstance(v, int):
            if -(2**31) <= v < 2**31:
                self.op(pickle.BININT + struct.pack("<i", v))
            else:
                raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
                self.op(pickle.LONG1 + bytes([len(raw)]) + raw)
        elif isinstance(v, float):
            self.op(pickle.BINFLOAT + struct.pack(">d", v))
        elif isinstance(v, str):
            raw = v.encode("utf-8")
            self.op(pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw)
        else:
            raise TypeError(f"cannot write {type(v).__name__} into a checkpoint")

    def tensor(self, arr: np.ndarray) -> None:
        arr = np.asarray(arr, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
        storage_name = DTYPE_STORAGES.get(arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype)
        if storage_name is None:
            raise TypeError(f"cannot write a {arr.dtype} array into a checkpoint")
        key = str(len(self.storages))
        self.storages.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        strides = tuple(s // arr.itemsize for s in arr.strides) if arr.ndim else ()
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(pickle.MARK)
        self.op(pickle.MARK)
        self.value("storage")
        self.global_("torch", storage_name)
        self.value(key)
        self.value("cpu")
        self.value(int(arr.size))
        self.op(pickle.TUPLE + pickle.BINPERSID)
        self.value(0)
        self.value(tuple(int(n) for n in arr.shape))
        self.value(strides)
        self.value(False)
        self.global_("collections", "OrderedDict")
        self.op(pickle.EMPTY_TUPLE + pickle.REDUCE)
        self.op(pickle.TUPLE + pickle.REDUCE)


def save(obj: Any, path: str | Path) -> None:
    """Write `obj` (dicts, lists, numbers, strings, numpy arrays) as a PyTorch zip checkpoint."""
    writer = _Writer()
    writer.op(pickle.PROTO + bytes([2]))
    writer.value(obj)
    writer.op(pickle.STOP)
    root = Path(path).stem or "archive"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", writer.out.getvalue())
        zf.writestr(f"{root}/byteorder", "little")
        for key, arr in enumerate(writer.storages):
            zf.writestr(f"{root}/data/{key}", arr.tobytes())
        zf.writestr(f"{root}/version", "3\n")
