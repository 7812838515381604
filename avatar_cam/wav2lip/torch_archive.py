"""Read and write PyTorch `torch.save` files without PyTorch, without running anything they contain, and
without allocating more than a budget allows.

A `.pth` file is a pickle, and a pickle can call any function on load. `safe_pickle` unpickles with an
allow-list (the tensor rebuild functions, storage types, OrderedDict and plain containers) and bounded work;
torch_tensors checks what storages and tensors declare. Here the archive's own sizes are checked before
anything is allocated: the inflated size of each zip member, the pickle's length, each storage's bytes. Tensors
come out lazy (`LazyTensor`): the caller checks names and shapes first and then reads only the storages it
needs (`Archive.read`), so a file cannot make us decode what we would reject.

Two layouts exist and both are read:
- the zip archive (PyTorch >= 1.6): `<root>/data.pkl` plus one `<root>/data/<key>` entry per storage;
- the legacy stream (PyTorch < 1.6, the layout of files saved in 2020): five pickles in a row, then the raw
  bytes of each storage. Checkpoints from that era are common, so this is not optional.

Writing (`save`, from torch_save) produces the zip layout.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from avatar_cam.errors import CheckpointError
from avatar_cam.wav2lip import safe_pickle
from avatar_cam.wav2lip.safe_pickle import Dict, corrupt, refused
from avatar_cam.wav2lip.torch_save import save  # noqa: F401 - the writing half, re-exported
from avatar_cam.wav2lip.torch_tensors import Budget, LazyTensor, Loader, Storage, gb

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


_CHUNK = 1 << 20
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError)


def _damaged(name: str, exc: BaseException) -> CheckpointError:
    return corrupt(f"{name} is damaged or incomplete ({type(exc).__name__}); it was probably cut short while downloading")


class Archive:
    """An opened checkpoint: `root` is the unpickled object with `LazyTensor`s in it; no storage is read yet."""

    def __init__(self, path: Path, budget: Budget):
        self.path, self.budget = path, budget
        self._loader = Loader(budget)
        self._zip: zipfile.ZipFile | None = None
        self._file = None
        self._legacy_keys: list[str] = []
        self._data_start = 0
        self.root: Any = None
        self.tensors: list[LazyTensor] = []

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in (self._zip, self._file):
            if f is not None:
                f.close()

    # --- opening --------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            head = self._file.read(4)
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.path}: {exc.strerror}") from None
        if head.startswith(b"PK"):
            self._open_zip()
        elif head[:1] == b"\x80":
            self._open_legacy()
        else:
            raise CheckpointError(
                f"{self.path.name} is not a PyTorch checkpoint (it starts with {head!r}); "
                "if it came from a web page, the server may have sent an HTML page instead of the file",
                hint="download it again (avatar-cam models fetch) or import the real .pth file",
            )
        self.tensors = [o for o in safe_pickle.walk(self.root, self.budget.pickle.max_depth) if isinstance(o, LazyTensor)]

    def _open_zip(self) -> None:
        name = self.path.name
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except _ZIP_ERRORS as exc:
            raise _damaged(name, exc) from None
        seen: set[str] = set()
        for info in infos:
            if info.filename in seen:
                raise refused(f"refused: {name} holds two entries called {info.filename[:80]!r}; a checkpoint never does")
            seen.add(info.filename)
        inflated = sum(i.file_size for i in infos)
        limit = self.budget.max_declared_bytes + self.budget.pickle.max_bytes
        if inflated > limit:
            raise refused(
                f"refused: {name} unpacks to {gb(inflated)}, more than a Wav2Lip checkpoint can hold ({gb(limit)} at most); "
                "the file is damaged or built to exhaust memory"
            )
        pkls = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{name} is a zip file but not a PyTorch checkpoint ({len(pkls)} data.pkl entries inside)")
        info = pkls[0]
        self._root_dir = info.filename.rsplit("/", 1)[0]
        if info.file_size > self.budget.pickle.max_bytes:
            raise refused(f"refused: the pickle in {name} is {gb(info.file_size)}; a weights file's is far smaller")
        raw = np.empty(info.file_size, np.uint8)
        self._read_member(info, raw)
        data = raw.tobytes()
        safe_pickle.scan(io.BytesIO(data), self.budget.pickle, len(data))
        self.root = self._loader.unpickle(data)

    def _read_member(self, info: zipfile.ZipInfo, out: np.ndarray) -> None:
        """Fill `out` from the start of a member, never inflating more than `out` holds."""
        try:
            with self._zip.open(info) as f:
                view, pos = memoryview(out), 0
                while pos < len(out):
                    chunk = f.read(min(_CHUNK, len(out) - pos))
                    if not chunk:
                        break
                    view[pos : pos + len(chunk)] = chunk
                    pos += len(chunk)
        except _ZIP_ERRORS as exc:
            raise _damaged(self.path.name, exc) from None
        if pos < len(out):
            raise corrupt(f"{self.path.name} is cut short: a storage holds {pos:,} bytes, {len(out):,} expected")

    def _open_legacy(self) -> None:
        pb = self.budget.pickle
        self._file.seek(0)
        head = self._file.read(min(pb.max_bytes, os.fstat(self._file.fileno()).st_size))  # read(n) allocates n
        stream = io.BytesIO(head)
        objs = []
        for _ in range(5):  # magic, protocol, system info, the object, the storage keys
            start = stream.tell()
            n = safe_pickle.scan(stream, pb, len(head) - start)
            objs.append(self._loader.unpickle(head[start : start + n]))
            if len(objs) == 1 and objs[0] != _LEGACY_MAGIC:
                raise CheckpointError(f"{self.path.name} is not a PyTorch checkpoint")
        self.root, keys = objs[3], objs[4]
        self._data_start = stream.tell()
        storages = self._loader.storages
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
            raise corrupt("the checkpoint's storage table is corrupt")
        if set(keys) != set(storages):
            raise corrupt("the checkpoint's storage table does not match its tensors")
        self._legacy_keys = keys

    # --- reading storages -----------------------------------------------------------------------------

    def read(self, tensors: Iterable[LazyTensor]) -> None:
        """Read the storages these tensors use (each once), within the read budget."""
        wanted = {t.storage.key: t.storage for t in tensors if t.storage.array is None}
        total = sum(s.nbytes for s in wanted.values())
        if total > self.budget.max_read_bytes:
            raise refused(
                f"refused: the weights' storages hold {gb(total)}, more than a Wav2Lip generator needs "
                f"({gb(self.budget.max_read_bytes)} at most)"
            )
        if not wanted:
            return
        if self._zip is not None:
            for key, storage in wanted.items():
                try:
                    info = self._zip.getinfo(f"{self._root_dir}/data/{key}")
                except KeyError:
                    raise corrupt(f"{self.path.name} is incomplete: storage {key[:40]!r} is missing") from None
                if info.file_size < storage.nbytes:
                    raise corrupt(f"{self.path.name} is cut short: a storage holds {info.file_size:,} bytes, {storage.nbytes:,} expected")
                raw = np.empty(storage.nbytes, np.uint8)
                self._read_member(info, raw)
                storage.fill(raw)
        else:
            self._read_legacy(wanted)

    def _read_legacy(self, wanted: dict[str, Storage]) -> None:
        f, size = self._file, os.fstat(self._file.fileno()).st_size
        f.seek(self._data_start)
        for key in self._legacy_keys:
            header = f.read(8)
            if len(header) != 8:
                raise corrupt("the checkpoint is cut short: its data ends early")
            storage = self._loader.storages[key]
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise corrupt("the checkpoint is corrupt: a storage's size does not match its description")
            if storage.nbytes > size - f.tell():  # never allocate what the file cannot hold
                raise corrupt("the checkpoint is cut short: a storage is larger than the rest of the file")
            if key in wanted:
                raw = np.empty(storage.nbytes, np.uint8)
                if f.readinto(memoryview(raw)) != storage.nbytes:
                    raise corrupt("the checkpoint is cut short: its data ends early")
                storage.fill(raw)
                if all(s.array is not None for s in wanted.values()):
                    return
            else:
                f.seek(storage.nbytes, os.SEEK_CUR)


def open_archive(path: str | Path, budget: Budget | None = None) -> Archive:
    """Open a `torch.save` file: unpickle it within `budget` (nothing in it runs), read no tensor data yet."""
    archive = Archive(Path(path), budget or Budget())
    try:
        archive._open()
    except BaseException:
        archive.close()
        raise
    return archive


def load(path: str | Path, budget: Budget | None = None) -> Any:
    """Load a whole `torch.save` file into plain containers holding numpy arrays. Nothing in it is executed."""
    with open_archive(path, budget) as archive:
        archive.read(archive.tensors)
        return _materialize(archive.root, {})


def _materialize(obj: Any, memo: dict[int, Any]) -> Any:
    """Shared objects stay shared (each is converted once); the walk at open bounded the depth."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, LazyTensor):
        out: Any = obj.array()
    elif isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, Dict) else {}
        memo[id(obj)] = out
        for k, v in obj.items():
            out[_materialize(k, memo)] = _materialize(v, memo)
    elif isinstance(obj, list):
        out = memo[id(obj)] = []
        out.extend(_materialize(v, memo) for v in obj)
    elif isinstance(obj, tuple):
        out = tuple(_materialize(v, memo) for v in obj)
    else:
        out = obj
    memo[id(obj)] = out
    return out


