"""Random draws from one generator per batch row, so a row's randomness ignores its batch.

With :class:`RowGenerators`, row i of every draw (leading dimension = batch) comes from generator i with shape
``(1, *rest)``, so a forecast can be split into batches, ranks or resumed runs freely. :func:`randn` and
:func:`randint` also accept a plain ``torch.Generator`` or None (torch's global stream).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor


class RowGenerators:
    """One ``torch.Generator`` per batch row (all on one device)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        if len(generators) == 0:
            raise ValueError("RowGenerators needs at least one generator")
        devices = {g.device.type for g in generators}
        if len(devices) != 1:
            raise ValueError(f"row generators must share one device type, got {sorted(devices)}")
        self.generators = list(generators)
        self.device = generators[0].device

    def __len__(self) -> int:
        return len(self.generators)

    def __getitem__(self, rows: slice) -> "RowGenerators":
        return RowGenerators(self.generators[rows])

    def _check(self, shape: Sequence[int]) -> None:
        if len(shape) == 0 or shape[0] != len(self.generators):
            raise ValueError(f"a draw of shape {list(shape)} does not have one row per generator ({len(self.generators)})")


Generator = Union[torch.Generator, RowGenerators, None]


def randn(shape: Sequence[int], *, generator: Generator, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> Tensor:
    """``torch.randn(shape)``; with :class:`RowGenerators`, row i drawn from generator i."""
    if isinstance(generator, RowGenerators):
        generator._check(shape)
        rest = (1, *shape[1:])
        return torch.cat([torch.randn(rest, generator=g, device=device, dtype=dtype) for g in generator.generators])
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def randint(low: int, high: int, shape: Sequence[int], *, generator: Generator,
            device: torch.device | str | None = None) -> Tensor:
    """``torch.randint(low, high, shape)`` (high exclusive); with :class:`RowGenerators`, row i from generator i."""
    if isinstance(generator, RowGenerators):
        generator._check(shape)
        rest = (1, *shape[1:])
        return torch.cat([torch.randint(low, high, rest, generator=g, device=device) for g in generator.generators])
    return torch.randint(low, high, tuple(shape), generator=generator, device=device)
