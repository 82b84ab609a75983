"""How a config key is declared and checked: ``key()`` (default, one-line doc, bounds), the ``Section`` base whose
``validate()`` checks bounds then the rules between keys, and the strict pydantic settings every section uses. The
sections themselves: :mod:`pipeline.run.config_sections`."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import operator
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
RECORDED = contextvars.ContextVar("recorded", default=False)  # validating a recorded config: import no code it names
BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _number(value: Any) -> Any:
    """A float key takes text that spells a number: YAML 1.1 reads ``2e-4`` (no dot) as a string."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


Real = Annotated[float, BeforeValidator(_number)]  # a finite float


def key(default: Any, doc: str, **bounds: Any) -> Any:
    """A config key: its default, its one-line doc, and bounds (ge, gt, le, lt) that ``validate()`` checks."""
    meta = {"description": doc, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_bounds(bounds: dict[str, Any]) -> str:
    """``{'ge': 0, 'lt': 1}`` as 'in [0, 1)', ``{'ge': 1}`` as '>= 1'."""
    low, high = [next((b for b in pair if b in bounds), None) for pair in (("ge", "gt"), ("le", "lt"))]
    if low and high:
        opening, closing = "[" if low == "ge" else "(", "]" if high == "le" else ")"
        return f"in {opening}{bounds[low]}, {bounds[high]}{closing}"
    return " and ".join(f"{BOUNDS[b][1]} {limit}" for b, limit in bounds.items())


class FieldError(ValueError):
    """Raised by ``validate()``: the key and what is wrong with it (the loader adds the section and the source)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise FieldError(key, problem)


class Section:
    """A config section: ``validate()`` checks every key's bounds, then the rules between keys (``_check``)."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value, bounds = getattr(self, f.name), f.metadata["bounds"]
            require(all(BOUNDS[b][0](value, limit) for b, limit in bounds.items()), f.name, f"must be {describe_bounds(bounds)}, got {value!r}")
        self._check()

    def _check(self) -> None:
        """Rules that involve more than one key, or more than a bound."""
