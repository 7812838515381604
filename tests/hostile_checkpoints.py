"""Hand-made hostile checkpoints: each class of attack on the checkpoint reader, as the bytes an attacker writes.

The pickles are assembled from opcodes (a real torch.save cannot write most of these), so every field can be a
lie: a size, a stride, an offset, a storage's length, a zip member's inflated size.
"""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np


def value(v) -> bytes:
    """The opcodes that push `v` (plain data only), without PROTO and STOP."""
    return pickle.dumps(v, protocol=2)[2:-1]


def tensor(key: str, numel, offset, size, stride, storage: str = "FloatStorage") -> bytes:
    """The opcodes of one `_rebuild_tensor_v2` call, with whatever values the caller wants in each field."""
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n(("
        + value("storage") + f"ctorch\n{storage}\n".encode() + value(key) + value("cpu") + value(numel)
        + b"tQ" + value(offset) + value(size) + value(stride) + value(False)
        + b"ccollections\nOrderedDict\n)Rt" + b"R"
    )


def dict_of(items: list[tuple[str, bytes]]) -> bytes:
    """A dict whose values are already opcodes."""
    body = b"".join(value(k) + v for k, v in items)
    return b"}" + (b"(" + body + b"u" if items else b"")


def program(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def zip_checkpoint(path: Path, pkl: bytes, storages: dict[str, bytes], extra: list[tuple[str, bytes]] = ()) -> Path:
    """A zip-layout checkpoint; `extra` members are added as they are (duplicate names included)."""
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": that is the point of some of these
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
        for name, raw in extra:
            zf.writestr(name, raw)
    return path


def state_dict_ops(sd: dict[str, np.ndarray]) -> tuple[bytes, dict[str, bytes]]:
    """A genuine state dict as opcodes plus its storages (one per tensor, contiguous)."""
    items, storages = [], {}
    for i, (k, arr) in enumerate(sd.items()):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        strides = tuple(s // 4 for s in arr.strides)
        items.append((k, tensor(f"w{i}", int(arr.size), 0, tuple(arr.shape), strides)))
        storages[f"w{i}"] = arr.tobytes()
    return dict_of(items), storages


def genuine_with(path: Path, sd: dict[str, np.ndarray], extra_ops: bytes, extra_storages: dict[str, bytes] = (),
                 extra_members: list[tuple[str, bytes]] = ()) -> Path:
    """A valid Wav2Lip checkpoint whose `optimizer` entry is whatever opcodes the attacker chose."""
    sd_ops, storages = state_dict_ops(sd)
    pkl = program(dict_of([("state_dict", sd_ops), ("optimizer", extra_ops), ("global_step", value(0))]))
    return zip_checkpoint(path, pkl, {**storages, **dict(extra_storages)}, list(extra_members))


def genuine_with_keys(path: Path, sd: dict[str, np.ndarray], extra_items: bytes) -> Path:
    """A valid state dict with more entries (key and value opcodes) added inside it."""
    sd_ops, storages = state_dict_ops(sd)
    return zip_checkpoint(path, program(dict_of([("state_dict", sd_ops[:-1] + extra_items + b"u")])), storages)


# --- the attacks --------------------------------------------------------------------------------------------


def zero_stride_bomb(size=(30000, 30000)) -> tuple[bytes, dict[str, bytes]]:
    """One float over and over: 4 bytes of storage that claim size[0] x size[1] elements."""
    return tensor("z", 1, 0, size, (0,) * len(size)), {"z": b"\0\0\0\0"}


def billion_laughs(depth: int, leaf: bytes = b"") -> bytes:
    """`depth` nested pairs of one shared list: 2**depth paths to the leaf, a few hundred bytes of pickle."""
    out = b"]" + (b"(" + leaf + b"e" if leaf else b"") + b"q\x00"  # the leaf list, memoised as 0
    for i in range(1, depth + 1):  # level i: [level i-1, level i-1], memoised as i; only the last stays on the stack
        out += b"0(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])
    return out


def nested_lists(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)


def build_on_storage_type() -> bytes:
    """BUILD on an allow-listed global: `torch.FloatStorage.dtype = 'i1'` if the loader's objects were not frozen."""
    return b"ctorch\nFloatStorage\n}" + value("dtype") + value("i1") + b"sb" + b"0" + value(None)


def build_on_rebuild_function() -> bytes:
    return b"ctorch._utils\n_rebuild_tensor_v2\n}" + value("__code__") + value(None) + b"sb" + b"0" + value(None)


def legacy_checkpoint(path: Path, obj_ops: bytes, keys: list[str], storages: list[tuple[int, bytes]]) -> Path:
    """The PyTorch < 1.6 stream: magic, protocol, sys info, the object, the keys, then (numel, bytes) per storage."""
    out = io.BytesIO()
    out.write(pickle.dumps(0x1950A86A20F9469CFC6C, 2))
    out.write(pickle.dumps(1001, 2))
    out.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2))
    out.write(program(obj_ops))
    out.write(pickle.dumps(keys, 2))
    for numel, raw in storages:
        out.write(struct.pack("<q", numel) + raw)
    path.write_bytes(out.getvalue())
    return path


def add_raw_deflated(path: Path, name: str, inflated: int) -> Path:
    """Append a deflated member of `inflated` zeros without ever holding it inflated."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open(name, "w", force_zip64=True) as f:
        block = bytes(16 << 20)
        for _ in range(inflated // len(block)):
            f.write(block)
    return path
