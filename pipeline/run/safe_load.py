"""Load a torch checkpoint without ever executing code from it.

``safe_torch_load(path)`` first tries torch's own ``weights_only=True`` loader (tensors, containers, a few
torch types). Published checkpoints often also pickle arbitrary Python objects (Lightning hyper-parameters,
callback states, a training Config object); for those it retries with a restricted unpickler whose
``find_class`` returns real objects only for the allow-list below (torch's own weights-only allow-list plus
plain containers). Every other global -- a class, or a function such as ``os.system`` named in a
``__reduce__`` payload -- is replaced by an inert :class:`PickledRecord` subclass that merely remembers its
module, name, constructor arguments and state. Nothing is imported and nothing is called, so loading an
untrusted file cannot run its code; callers read tensors and plain values out of the result and ignore (or
print) the records.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import logging
import os
import pickle
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class CheckpointReadError(RuntimeError):
    """The file is missing, unreadable, truncated or not a torch checkpoint; the message names the file."""


class PickledRecord:
    """Inert stand-in for a pickled global that is not on the allow-list.

    Subclasses are made per (module, name) by :func:`record_type`; instances hold what the pickle tried to
    build: ``args``/``kwargs`` (constructor or call arguments), ``state`` (``__setstate__``/``__dict__``),
    ``items`` (dict-style SETITEMS) and ``list_items`` (APPENDS). A record of a *function* (e.g. os.system)
    is the record of a call that was never made.
    """

    __record_module__ = "?"
    __record_name__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledRecord":
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", {})
        object.__setattr__(self, "list_items", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments already stored by __new__
        pass

    # pickle's BUILD / SETITEMS / APPENDS opcodes
    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    @property
    def qualname(self) -> str:
        return f"{self.__record_module__}.{self.__record_name__}"

    def __repr__(self) -> str:
        parts = []
        if self.args:
            parts.append(f"args={self.args!r}")
        if self.kwargs:
            parts.append(f"kwargs={self.kwargs!r}")
        if self.state is not None:
            parts.append(f"state={self.state!r}")
        if self.items:
            parts.append(f"items={self.items!r}")
        if self.list_items:
            parts.append(f"list_items={self.list_items!r}")
        return f"PickledRecord<{self.qualname}>(" + ", ".join(parts) + ")"


_RECORD_TYPES: dict[tuple[str, str], type[PickledRecord]] = {}


def record_type(module: str, name: str) -> type[PickledRecord]:
    """The (cached) inert PickledRecord subclass standing for global ``module.name``."""
    key = (module, name)
    if key not in _RECORD_TYPES:
        safe = "".join(ch if ch.isalnum() else "_" for ch in f"{module}_{name}")
        _RECORD_TYPES[key] = type(
            f"PickledRecord_{safe}",
            (PickledRecord,),
            {"__record_module__": module, "__record_name__": name, "__module__": __name__},
        )
    return _RECORD_TYPES[key]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object that may be returned by find_class: torch's weights-only list + containers."""
    allowed: dict[tuple[str, str], Any] = {}
    try:  # private torch API: used when reachable, the explicit list below covers the essentials otherwise
        from torch import _weights_only_unpickler as wo

        sources = [wo._get_allowed_globals()]
        if hasattr(wo, "_get_user_allowed_globals"):
            sources.append(wo._get_user_allowed_globals())
        for source in sources:
            for qualified, obj in source.items():
                module, _, name = qualified.rpartition(".")
                allowed[(module, name)] = obj
    except Exception as exc:  # pragma: no cover - depends on torch internals
        log.warning("torch weights-only allow-list not reachable (%s); using the built-in minimum", exc)
    import torch._utils as tu

    for fn in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        if hasattr(tu, fn):
            allowed[("torch._utils", fn)] = getattr(tu, fn)
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    for dtype_name in ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"):
        allowed[("torch", dtype_name)] = getattr(torch, dtype_name)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    for builtin in (dict, list, tuple, set, frozenset, bytes, bytearray, complex, int, float, bool, str, slice, range):
        allowed[("builtins", builtin.__name__)] = builtin
    return allowed


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only allow-listed globals; everything else becomes a PickledRecord type.

    It also refuses BUILD (set state) on anything the file did not create: an allow-listed class, function or
    module is shared by the whole process, and setting its attributes (a function's ``__defaults__``, a
    class's method) would change the program beyond the loaded objects. That check needs the opcode dispatch
    of Python's pure-Python unpickler (``pickle._Unpickler``; the C one has no hook for BUILD).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    _allowed: dict[tuple[str, str], Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        self.replaced: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (what pickle's fix_imports does); these modules do not exist in Python 3.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        assert RestrictedUnpickler._allowed is not None
        obj = RestrictedUnpickler._allowed.get((module, name))
        if obj is not None:
            return obj
        self.replaced.append(f"{module}.{name}")
        log.debug("unpickling: %s.%s replaced by an inert record", module, name)
        return record_type(module, name)


    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
            raise pickle.UnpicklingError(f"refusing to set the state of {getattr(target, '__qualname__', target)!r}: "
                                         "the file may only set the state of objects it creates")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# A stand-in "pickle module" for torch.load(pickle_module=...): torch subclasses its Unpickler and calls load().
restricted_pickle = types.ModuleType("pipeline_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
restricted_pickle.loads = _restricted_loads  # type: ignore[attr-defined]
restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
restricted_pickle.__version__ = "1"  # type: ignore[attr-defined]


UNREADABLE = "truncated, corrupt, or not a torch file"
_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, IndexError,
                pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError, ImportError, AssertionError)


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Load a torch checkpoint on CPU; non-allow-listed pickled objects come back as inert PickledRecords.

    Raises CheckpointReadError (naming the file) if the file is missing or cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it was not written with; harmless
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Non-tensor objects (or an unreadable pickle stream): retry restricted; a real corruption fails again.
        first = exc
    except _READ_ERRORS as exc:
        raise CheckpointReadError(f"cannot read checkpoint {path} ({UNREADABLE}): {_reason(exc)}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except _READ_ERRORS as exc:
        raise CheckpointReadError(f"cannot read checkpoint {path} ({UNREADABLE}): {_reason(exc)} (weights-only "
                                  f"load said: {_reason(first)[:120]})") from exc
    log.info("%s: loaded with the restricted unpickler (non-tensor objects kept as inert records)", path)
    return obj


def _reason(exc: BaseException) -> str:
    """The first sentence of an error's first line, after its type: torch appends paragraphs of advice."""
    line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line.split('. ')[0]}"


def find_records(obj: Any, limit: int = 1000) -> list[PickledRecord]:
    """All PickledRecords inside a loaded object (dicts, lists, tuples, records' own contents), depth-first."""
    found: list[PickledRecord] = []
    stack, seen = [obj], set()
    while stack and len(found) < limit:
        item = stack.pop()
        if id(item) in seen or isinstance(item, torch.Tensor):
            continue
        seen.add(id(item))
        if isinstance(item, PickledRecord):
            found.append(item)
            stack.extend([item.args, item.kwargs, item.state, item.items, item.list_items])
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return found
