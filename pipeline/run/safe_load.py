"""Load a torch checkpoint without ever executing code from it.

Foreign pickled globals (Lightning hyper-parameters, a training Config, a hostile ``os.system``) become inert
:class:`PickledRecord` types storing what the file tried to build. Zip files of pickle protocol 2 load with
``torch.load(weights_only=True)`` (``torch.save``'s default), their foreign globals allowed as records. What that
loader refuses to read (pickle protocols >= 3; os/sys globals, blocked even when allowed) loads through a restricted
``pickle.Unpickler``: records, or per-load proxies for the few real globals a tensor pickle names.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch


class CheckpointReadError(RuntimeError):
    """The file is missing, unreadable, truncated or not a torch checkpoint; the message names the file."""


class PickledRecord:
    """Inert stand-in for a foreign global: ``args``/``kwargs`` of the call, ``state`` (BUILD), ``items``
    (SETITEMS), ``list_items`` (APPENDS). A record of a function (os.system) is a call that was never made."""

    __record_module__ = __record_name__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledRecord":
        self = object.__new__(cls)
        self.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, list_items=[])
        return self

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    @property
    def qualname(self) -> str:
        return f"{self.__record_module__}.{self.__record_name__}"

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in vars(self).items() if v or (k == "state" and v is not None)]
        return f"PickledRecord<{self.qualname}>(" + ", ".join(parts) + ")"


class _Shared:
    """A process-wide function or type lent to one load: callable, but the file cannot set its state."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name = obj, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.obj(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set the state of {self.name!r}: the file may only set the state "
                                     "of objects it creates")


def _restricted(record: Any) -> types.ModuleType:
    """A pickle module for torch.load: the globals a tensor pickle needs (the functions tensors and parameters
    reduce to, plain types) come back as :class:`_Shared`, dtypes as themselves, every other global as a record."""
    tagged, parameter = torch.zeros(1), torch.nn.Parameter(torch.zeros(1))
    tagged.tag = parameter.tag = 1  # tensors carrying attributes reduce to other functions
    rebuilds = [x.__reduce_ex__(2)[0] for x in (torch.zeros(1), tagged, torch.nn.Parameter(torch.zeros(1)), parameter)]
    plain = [dict, list, tuple, set, frozenset, bytes, bytearray, complex, int, float, bool, str, slice, range]
    allowed = {id(x) for x in [*rebuilds, *plain, collections.OrderedDict, torch.Size, torch.device, codecs.encode]}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module = "builtins" if module == "__builtin__" else module  # protocol 2's Python 2 name
            obj = getattr(sys.modules.get(module), name, None)  # never imports: an allowed global is loaded already
            if isinstance(obj, torch.dtype):
                return obj
            return _Shared(obj, name) if id(obj) in allowed else record(f"{module}.{name}")

    return types.SimpleNamespace(__name__="restricted", Unpickler=Unpickler, UnpicklingError=pickle.UnpicklingError,
                                 load=lambda file, **kw: Unpickler(file, **kw).load())


UNREADABLE = "truncated, corrupt, or not a torch file"


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Load a torch checkpoint on CPU; foreign pickled objects come back as inert PickledRecords.
    Raises CheckpointReadError (naming the file) if the file is missing or cannot be read as a checkpoint."""
    path, made = Path(path), {}
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint not found: {path}")

    def record(qualified: str) -> type[PickledRecord]:  # one record type per global and load
        module, _, name = qualified.rpartition(".")
        attrs = {"__record_module__": module, "__record_name__": name, "__module__": __name__}
        return made.setdefault(qualified, type(f"PickledRecord_{name}", (PickledRecord,), attrs))

    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip, or a protocol torch's scanner cannot read: the loads below decide
        foreign = []
    with warnings.catch_warnings():  # torch warns about pickle protocols it was not written with; harmless
        warnings.filterwarnings("ignore", message=".*pickle protocol.*")
        try:
            with torch.serialization.safe_globals([(record(name), name) for name in foreign]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # beyond torch's loader; a corrupt file fails again below
            first = exc
        except Exception as exc:  # anything a damaged file makes torch raise
            raise CheckpointReadError(f"cannot read checkpoint {path} ({UNREADABLE}): {_reason(exc)}") from exc
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted(record))
        except Exception as exc:
            raise CheckpointReadError(f"cannot read checkpoint {path} ({UNREADABLE}): {_reason(exc)} (weights-only "
                                      f"load said: {_reason(first)[:120]})") from exc


def _reason(exc: BaseException) -> str:
    """The first sentence of an error's first line, after its type: torch appends paragraphs of advice."""
    line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line.split('. ')[0]}"


def find_records(obj: Any, limit: int = 1000) -> list[PickledRecord]:
    """All PickledRecords inside a loaded object (dicts, lists, tuples, records' own contents), depth-first."""
    found, stack, seen = [], [obj], set()
    while stack and len(found) < limit:
        item = stack.pop()
        if id(item) in seen or isinstance(item, torch.Tensor):
            continue
        seen.add(id(item))
        if isinstance(item, PickledRecord):
            found.append(item)
            stack.extend([item.args, item.kwargs, item.state, item.items, item.list_items])
        elif isinstance(item, (dict, list, tuple, set, frozenset)):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return found
