"""The pieces of a PyTorch checkpoint, each checked against a budget before anything is allocated.

Storage types, storages (size and type; bytes read later), tensors as places in a storage (`LazyTensor`), and
the allow-list the unpickler may use to build them (`Loader`). A storage's declared size, a tensor's declared
elements (size x strides can claim far more than the storage holds) and whether it stays inside its storage are
all checked here, as the pickle is read, before one byte of tensor data is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatar_cam.errors import CheckpointError
from avatar_cam.wav2lip import safe_pickle
from avatar_cam.wav2lip.safe_pickle import Call, Dict, Frozen, PickleBudget, corrupt, refused

_MAX_DIMS = 16

# storage type name -> numpy dtype ("bfloat16" is widened to float32 by hand: numpy has no such type)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
DTYPE_STORAGES = {dt: name for name, dt in _STORAGE_DTYPES.items() if isinstance(dt, np.dtype)}


@dataclass(frozen=True)
class Budget:
    """What one file may make us do. Every limit is checked before the memory is allocated."""

    pickle: PickleBudget = field(default_factory=PickleBudget)
    max_declared_bytes: int = 1 << 30  # bytes all storages declare, and (separately) all tensors declare
    max_read_bytes: int = 1 << 30  # storage bytes actually read (only those of the tensors asked for)


def gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class _StorageType(Frozen):
    __slots__ = ("name", "dtype", "itemsize")

    def __init__(self, name: str):
        dtype = _STORAGE_DTYPES[name]
        self._init(name=name, dtype=dtype, itemsize=2 if dtype == "bfloat16" else dtype.itemsize)


class Storage(Frozen):
    """A storage's size and type; its bytes are read only when a tensor that uses it is asked for."""

    __slots__ = ("key", "type", "numel", "array")

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self._init(key=key, type=storage_type, numel=numel, array=None)

    @property
    def nbytes(self) -> int:
        return self.numel * self.type.itemsize

    def fill(self, raw: np.ndarray) -> None:
        """`raw`: exactly `nbytes` bytes (uint8)."""
        if self.type.dtype == "bfloat16":
            array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = raw.view(self.type.dtype)
        object.__setattr__(self, "array", array)


class _View(Frozen):
    """A legacy (PyTorch < 1.0) storage view: `numel` elements of `root` from `offset`."""

    __slots__ = ("root", "offset", "numel")

    def __init__(self, root: Storage, offset: int, numel: int):
        self._init(root=root, offset=offset, numel=numel)


class LazyTensor(Frozen):
    """A tensor's place in its storage, checked to lie inside it. `array()` once `Archive.read` has read it."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self._init(storage=storage, offset=offset, size=size, stride=stride)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    @property
    def dtype(self) -> np.dtype:
        dt = self.storage.type.dtype
        return np.dtype(np.float32) if dt == "bfloat16" else dt

    def array(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise CheckpointError("internal error: a tensor was used before its storage was read")
        n = math.prod(self.size)
        if n == 0:
            return np.zeros(self.size, dtype=base.dtype)
        contiguous = [math.prod(self.size[i + 1 :]) for i in range(len(self.size))]
        if all(s == c or d == 1 for s, c, d in zip(self.stride, contiguous, self.size, strict=True)):
            return base[self.offset : self.offset + n].reshape(self.size)  # a view: no copy
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :], shape=self.size, strides=[s * base.itemsize for s in self.stride], writeable=False
        )
        return np.ascontiguousarray(view)


def _int(value: Any, what: str) -> int:
    if type(value) is not int:  # noqa: E721 - bool, float and str are all wrong here
        raise corrupt(f"the checkpoint is corrupt: a tensor's {what} is a {type(value).__name__}, not a whole number")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_DIMS:
        raise corrupt(f"the checkpoint is corrupt: a tensor's {what} is not a short list of numbers")
    out = tuple(_int(v, what) for v in value)
    if any(v < 0 for v in out):
        raise corrupt(f"the checkpoint is corrupt: a tensor's {what} is negative")
    return out


class Loader:
    """The allow-list and the declared-size budget for one file."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.storages: dict[str, Storage] = {}
        self.declared_storage = 0
        self.declared_tensors = 0
        self.allowed = {
            ("collections", "OrderedDict"): lambda: Call(Dict),
            ("torch._utils", "_rebuild_tensor_v2"): lambda: Call(self.rebuild),
            ("torch._utils", "_rebuild_tensor"): lambda: Call(self.rebuild),
            ("torch._utils", "_rebuild_parameter"): lambda: Call(self.parameter),
            ("torch._utils", "_rebuild_parameter_with_state"): lambda: Call(self.parameter),
            **{("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGE_DTYPES},
        }

    def unpickle(self, data: bytes) -> Any:
        return safe_pickle.load(data, self.allowed, self.persistent)

    def persistent(self, pid: Any) -> Storage | _View:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise corrupt("the checkpoint is corrupt: an unexpected persistent reference")
        storage_type, key, numel = pid[1], pid[2], _int(pid[4], "storage size")
        if not isinstance(storage_type, _StorageType):
            raise corrupt("a storage in the checkpoint has an unknown element type")
        if not isinstance(key, (str, int)) or isinstance(key, bool) or len(str(key)) > 64 or numel < 0:
            raise corrupt("the checkpoint is corrupt: a storage has a bad name or size")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(key, storage_type, numel)
            self.declared_storage += storage.nbytes
            self._check_declared(self.declared_storage, "its storages declare")
        elif storage.type.name != storage_type.name or storage.numel != numel:
            raise corrupt("the checkpoint is corrupt: one storage is described two different ways")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        if not (isinstance(view, tuple) and len(view) == 3):
            raise corrupt("the checkpoint is corrupt: a storage view is malformed")
        offset, size = _int(view[1], "storage view offset"), _int(view[2], "storage view size")
        if offset < 0 or size < 0 or offset + size > numel:
            raise corrupt("the checkpoint is corrupt: a storage view reaches outside its storage")
        return _View(storage, offset, size)

    def _check_declared(self, total: int, what: str) -> None:
        if total > self.budget.max_declared_bytes:
            raise refused(
                f"refused: {what} over {gb(total)}, more than a Wav2Lip checkpoint can hold "
                f"({gb(self.budget.max_declared_bytes)} at most); the file is damaged or built to exhaust memory"
            )

    def rebuild(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> LazyTensor:
        if len(_rest) > 3:
            raise corrupt("the checkpoint is corrupt: a tensor rebuild has too many arguments")
        base = 0
        if isinstance(storage, _View):
            base, limit, storage = storage.offset, storage.numel, storage.root
        elif isinstance(storage, Storage):
            limit = storage.numel
        else:
            raise corrupt("the checkpoint is corrupt: a tensor rebuild was given something other than a storage")
        offset, size, stride = _int(offset, "offset"), _ints(size, "size"), _ints(stride, "stride")
        if offset < 0 or len(size) != len(stride):
            raise corrupt("the checkpoint is corrupt: a tensor has a negative offset, or sizes and strides that do not match")
        n = math.prod(size)
        self.declared_tensors += n * storage.type.itemsize
        self._check_declared(self.declared_tensors, "its tensors declare")
        last = offset + sum((d - 1) * s for d, s in zip(size, stride, strict=True)) if n else offset - 1
        if last >= limit or offset > limit:
            raise corrupt("the checkpoint is corrupt: a tensor reaches outside its storage")
        return LazyTensor(storage, base + offset, size, stride)

    @staticmethod
    def parameter(data: Any, *_rest: Any) -> LazyTensor:
        if not isinstance(data, LazyTensor) or len(_rest) > 3:
            raise corrupt("the checkpoint is corrupt: a parameter holds something other than a tensor")
        return data
