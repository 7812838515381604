"""Read and write PyTorch `torch.save` files without PyTorch, and without running anything they contain.

A `.pth` file is a pickle, and a pickle can call any function on load. We unpickle with an allow-list: the
tensor rebuild functions, storage types, OrderedDict and plain containers. Anything else (os.system,
builtins.eval, a class to instantiate...) is refused before it is looked up, so none of it runs.

Two layouts exist and both are read:
- the zip archive (PyTorch >= 1.6): `<root>/data.pkl` plus one `<root>/data/<key>` entry per storage;
- the legacy stream (PyTorch < 1.6, the layout of files saved in 2020): five pickles in a row, then the raw
  bytes of each storage. Checkpoints from that era are common, so this is not optional.

Writing produces the zip layout, which `torch.load(..., weights_only=True)` reads; benchmarks and tests use it to
make checkpoints in the published format without PyTorch.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from avatar_cam.errors import CheckpointError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

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
_DTYPE_STORAGES = {dt: name for name, dt in _STORAGE_DTYPES.items() if isinstance(dt, np.dtype)}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage's bytes, filled when they are read (after the pickle, in the legacy layout)."""

    def __init__(self, storage_type: _StorageType, numel: int):
        self.type = storage_type
        self.numel = numel
        self.array: np.ndarray | None = None

    def fill(self, raw: bytes) -> None:
        dtype = self.type.dtype
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            self.array = bits.view(np.float32)
        else:
            self.array = np.frombuffer(raw, dtype=dtype)
        if self.array.size < self.numel:
            raise CheckpointError(f"storage holds {self.array.size} values, expected {self.numel}: the file is cut short")


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise CheckpointError("a tensor refers to storage data that is missing from the file")
        if not self.size:  # a 0-d tensor (as_strided would read shape=() as "keep the base's shape")
            return np.array(base[self.offset], dtype=base.dtype)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=False))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= base.size:
            raise CheckpointError("a tensor reaches outside its storage: the file is corrupt")
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :], shape=self.size, strides=[s * item for s in self.stride], writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor rebuild was given something other than a storage")
    return _LazyTensor(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# The allow-list: (module, name) -> what we hand back instead of the real object.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refused: the checkpoint asks to call {module}.{name}, which a weights file never needs. "
                "It may be malicious; nothing from it was run.",
                hint="delete this file and get the checkpoint from a source you trust (avatar-cam models fetch)",
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent reference in the checkpoint: {pid!r:.80}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError("a storage in the checkpoint has an unknown element type")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type, numel)
        return self._storages[key]


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _unpickle(data: BinaryIO, storages: dict[str, _Storage]) -> Any:
    try:
        return _SafeUnpickler(data, storages).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError, RecursionError) as exc:
        raise CheckpointError(f"the checkpoint's pickle is corrupt or cut short ({type(exc).__name__}: {exc})") from None


def _load_zip(path: Path) -> Any:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
            if pkl is None:
                raise CheckpointError(f"{path.name} is a zip file but not a PyTorch checkpoint (no data.pkl inside)")
            root = pkl.rsplit("/", 1)[0]
            storages: dict[str, _Storage] = {}
            obj = _unpickle(io.BytesIO(zf.read(pkl)), storages)
            for key, storage in storages.items():
                storage.fill(zf.read(f"{root}/data/{key}"))
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{path.name} is damaged or incomplete ({exc}); it was probably cut short while downloading",
                              hint="download it again (avatar-cam models fetch) or import a complete copy") from None
    return _materialize(obj)


class _BoundedReader:
    """A file that never hands the unpickler more than the file holds.

    A damaged length field would otherwise make the unpickler allocate whatever it says, gigabytes included.
    """

    def __init__(self, f: BinaryIO, size: int):
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._f.tell()
        return self._f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._f.readline(self._size - self._f.tell())

    def readinto(self, buf) -> int:
        return self._f.readinto(memoryview(buf)[: self._size - self._f.tell()])

    def tell(self) -> int:
        return self._f.tell()


def _load_legacy(path: Path) -> Any:
    storages: dict[str, _Storage] = {}
    size = path.stat().st_size
    with open(path, "rb") as raw:
        f = _BoundedReader(raw, size)
        try:
            magic = _unpickle(f, storages)
            if magic != _LEGACY_MAGIC:
                raise CheckpointError(f"{path.name} is not a PyTorch checkpoint")
            _protocol, _sys_info = _unpickle(f, storages), _unpickle(f, storages)
            obj = _unpickle(f, storages)
            keys = _unpickle(f, storages)
            if not isinstance(keys, list):
                raise CheckpointError("the checkpoint's storage table is corrupt")
            for key in keys:
                storage = storages.get(str(key))
                if storage is None:
                    raise CheckpointError("the checkpoint's storage table names an unknown storage")
                (numel,) = struct.unpack("<q", _read_exact(f, 8))
                itemsize = 2 if storage.type.dtype == "bfloat16" else storage.type.dtype.itemsize
                if numel < 0 or numel * itemsize > size - f.tell():  # never allocate what the file cannot hold
                    raise CheckpointError("the checkpoint is cut short: a storage is larger than the rest of the file")
                storage.fill(_read_exact(f, numel * itemsize))
        except CheckpointError as exc:
            if "cut short" in str(exc) or "corrupt" in str(exc):
                exc.hint = exc.hint or "download it again (avatar-cam models fetch) or import a complete copy"
            raise
    return _materialize(obj)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError("the checkpoint is cut short: its data ends early")
    return data


def load(path: str | Path) -> Any:
    """Load a `torch.save` file into plain Python containers holding numpy arrays. Nothing in it is executed."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    if head.startswith(b"PK"):
        return _load_zip(path)
    if head[:1] == b"\x80":
        return _load_legacy(path)
    raise CheckpointError(
        f"{path.name} is not a PyTorch checkpoint (it starts with {head!r}); "
        "if it came from a web page, the server may have sent an HTML page instead of the file",
        hint="download it again (avatar-cam models fetch) or import the real .pth file",
    )


# ---------------------------------------------------------------------------------------------- writing


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
        storage_name = _DTYPE_STORAGES.get(arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype)
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
