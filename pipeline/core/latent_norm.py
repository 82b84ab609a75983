"""Per-channel latent standardisation (``train.latent_norm: channel``): the flow is trained and sampled on
z' = (z - mean) / std, with the training split's per-channel statistics that stage 1 records in the store, and its
forecasts are mapped back to the VQVAE's latent space before they are stored or decoded.

Why: the interpolant's base draws are N(0, I) (``linear``) or the previous frame plus N(0, eps^2 I) noise (``ours``),
whatever the latents' scale; a VQVAE's latents are neither centred nor of unit spread (the demo's channel means are
2.7 to 4.2 in magnitude, std 0.6 to 1.3), so without it the flow first has to learn that offset. The statistics
travel in every checkpoint (entry ``latent_norm``), so sampling uses exactly the ones the network was trained with;
a checkpoint without the entry (off, or published) samples in the raw latent space. Off, every map is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

@dataclass(frozen=True)
class LatentNorm:
    """z' = (z - mean) / std over the channel axis (dim -3 of [..., C, h, w]); empty = off (the identity)."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.mean)

    def to_flow(self, z: Tensor) -> Tensor:
        """Latents -> the flow's coordinates."""
        if not self.active:
            return z
        mean, std = self._stats(z)
        return (z - mean) / std

    def to_latent(self, x: Tensor) -> Tensor:
        """The flow's coordinates -> latents (the inverse of :meth:`to_flow`)."""
        if not self.active:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if like.ndim < 3 or like.shape[-3] != len(self.mean):
            raise ValueError(f"latents {list(like.shape)} do not have the {len(self.mean)} channels (dim -3) the "
                             "standardisation was recorded for")
        shape = (len(self.mean), 1, 1)
        return (like.new_tensor(self.mean).reshape(shape), like.new_tensor(self.std).reshape(shape))

    def record(self) -> dict[str, list[float]] | None:
        """What a checkpoint stores (None when off)."""
        return {"mean": list(self.mean), "std": list(self.std)} if self.active else None

    @classmethod
    def from_record(cls, record: Any, source: str) -> "LatentNorm":
        """From a checkpoint's ``latent_norm`` entry (None: off); ValueError naming ``source`` when it is malformed."""
        if record is None:
            return cls()
        if not isinstance(record, dict) or not isinstance(record.get("mean"), list) or not isinstance(record.get("std"), list):
            raise ValueError(f"{source}: latent_norm must be {{mean: [...], std: [...]}}, found {str(record)[:200]}")
        mean, std = record["mean"], record["std"]
        numbers = all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean + std)
        if not mean or len(mean) != len(std) or not numbers or min(std) <= 0:
            raise ValueError(f"{source}: latent_norm needs as many finite means as stds (> 0), found mean {mean}, "
                             f"std {std}")
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def training_norm(mode: str, stats: Any, split: str, source: str) -> LatentNorm:
    """The standardisation a run trains with: off for ``none``; for ``channel``, split ``split``'s statistics from the
    store's ``stats`` attribute (``{split: {mean, std, ...}}``, written by stage 1 at ``source``)."""
    if mode == "none":  # the config admits only none | channel
        return LatentNorm()
    entry = stats.get(split) if isinstance(stats, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: no latent statistics for split '{split}' (attribute stats); re-run make encode")
    return LatentNorm.from_record({"mean": entry.get("mean"), "std": entry.get("std")}, f"{source} stats[{split}]")
