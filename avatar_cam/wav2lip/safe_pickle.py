"""Unpickle untrusted data: an allow-list of callables, a budget checked before anything is built, and
objects that nothing in the file can change.

A pickle is a small program. Three things keep one from hurting us:

1. A scan first (`scan`), without building anything: every opcode is counted (bounded work), every length
   field must fit inside the data that is really there (no allocation of what a header merely claims), memo
   indices stay small (the unpickler sizes its memo table by the largest index), and opcodes a weights file
   never needs (INST, OBJ, NEWOBJ, the extension registry, out-of-band buffers) are refused.
2. The unpickler (`Unpickler`) looks globals up in an allow-list of our own objects only, so nothing the file
   names is imported or run. What it hands out is fresh or frozen: BUILD (the opcode that sets attributes) is
   refused by everything we own, and dicts take their state from SETITEMS only. A file cannot change the
   loader for a later file.
3. The result is walked iteratively (`walk`), each object once, with a depth limit: shared references
   ("billion laughs") cost nothing extra and deep nesting is an error, not a RecursionError.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from avatar_cam.errors import CheckpointError

# Opcodes a torch.save pickle (any protocol) uses. Anything else is refused before unpickling.
_ALLOWED_OPS = frozenset(
    ["PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PERSID", "BINPERSID", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET"]
)
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


@dataclass(frozen=True)
class PickleBudget:
    max_bytes: int = 32 << 20  # the pickle itself (a genuine Wav2Lip checkpoint's is ~100 KB)
    max_ops: int = 500_000  # opcodes (a genuine one has ~50 000)
    max_depth: int = 64  # container nesting (a genuine one nests 5 deep)


def refused(message: str) -> CheckpointError:
    return CheckpointError(
        message, hint="delete this file and get the checkpoint from a source you trust (avatar-cam models fetch)"
    )


def corrupt(message: str) -> CheckpointError:
    return CheckpointError(
        message, hint="download it again (avatar-cam models fetch) or import a complete copy of the file"
    )


def scan(data: io.BufferedIOBase | io.BytesIO, budget: PickleBudget, limit: int) -> int:
    """Check one pickle from the current position of `data` without building it; return its length in bytes.

    `limit` is how many bytes the pickle may span (what is left of the budget, or of the file).
    """
    start = data.tell()
    ops, name = 0, None
    try:
        for opcode, arg, pos in pickletools.genops(data):
            ops += 1
            if ops > budget.max_ops:
                raise refused(f"the checkpoint's pickle has over {budget.max_ops:,} instructions; a weights file needs far fewer")
            if pos is not None and pos - start > limit:
                raise refused(f"the checkpoint's pickle is over {limit:,} bytes; a weights file's is far smaller")
            name = opcode.name
            if name not in _ALLOWED_OPS:
                raise refused(f"refused: the checkpoint's pickle uses {name}, which a weights file never needs; nothing from it was run")
            if name in _MEMO_PUTS and not 0 <= arg <= budget.max_ops:
                raise corrupt("the checkpoint's pickle is corrupt (a memo index out of range)")
            if name == "FRAME" and arg > limit:
                raise corrupt("the checkpoint's pickle is corrupt or cut short (a frame longer than the file)")
            if name == "STOP":
                break
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes means they are not a pickle
        raise corrupt(f"the checkpoint's pickle is corrupt or cut short ({type(exc).__name__})") from None
    length = data.tell() - start
    if length > limit:
        raise refused(f"the checkpoint's pickle is over {limit:,} bytes; a weights file's is far smaller")
    if name != "STOP":
        raise corrupt("the checkpoint's pickle is cut short")
    return length


class Frozen:
    """Base of everything the unpickler hands out: no instance attributes can be set from the file."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise refused("refused: the checkpoint tries to change a loader object (pickle BUILD); nothing from it was run")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _init(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)


class Call(Frozen):
    """An allow-listed callable: a fresh wrapper each time the file names it, so the function itself is never exposed."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any]):
        self._init(_fn=fn)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


class Dict(dict):
    """What `collections.OrderedDict` becomes: a plain fresh dict. BUILD's state (torch's `_metadata`) is dropped."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        pass


class Unpickler(pickle.Unpickler):
    """Looks globals up in `allowed` ((module, name) -> factory of a fresh or frozen object) and nowhere else."""

    def __init__(self, data: bytes, allowed: dict[tuple[str, str], Callable[[], Any]], persistent: Callable[[Any], Any]):
        super().__init__(io.BytesIO(data))
        self._allowed, self._persistent = allowed, persistent

    def find_class(self, module: str, name: str) -> Any:
        factory = self._allowed.get((module, name))
        if factory is None:
            raise refused(
                f"refused: the checkpoint asks to call {module:.60}.{name:.60}, which a weights file never needs. "
                "It may be malicious; nothing from it was run."
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)


def load(data: bytes, allowed: dict, persistent: Callable[[Any], Any]) -> Any:
    """Unpickle `data` (already passed by `scan`)."""
    try:
        return Unpickler(data, allowed, persistent).load()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: every failure is "corrupt", never a traceback
        raise corrupt(f"the checkpoint's pickle is corrupt or cut short ({type(exc).__name__})") from None


def walk(root: Any, max_depth: int) -> Iterator[Any]:
    """Every object reachable from `root` through containers, each once (shared references are not re-walked)."""
    seen: set[int] = set()
    stack = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            children = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(obj)
        else:
            continue
        if children and depth >= max_depth:
            raise refused(f"the checkpoint nests containers over {max_depth} deep; a weights file nests a few levels")
        stack.extend((child, depth + 1) for child in children)
