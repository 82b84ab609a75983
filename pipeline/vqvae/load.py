"""Model weights out of the published VQVAE checkpoint wrappers (docs/METHOD.md §2.4), loaded strictly.

Layouts (read with :func:`pipeline.run.safe_load.safe_torch_load`): Lightning ``.ckpt`` (KTH taming VQ,
``state_dict``; the training loss's ``loss.*`` dropped), RIVER ``.pth`` (CLEVRER VQ, ``model``; a leading
``module.`` stripped) or a flat ``{name: tensor}`` (our demo checkpoint, maybe float16). Any missing, unexpected
or mis-shaped weight raises one :class:`CheckpointMismatchError` listing every name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.run.safe_load import safe_torch_load

#: prefixes of training-only weights that Lightning checkpoints carry beside the model
IGNORED_PREFIXES = ("loss.",)
#: wrapper prefixes stripped from the start of every key (DDP, RIVER's model wrapper)
STRIPPED_PREFIXES = ("module.", "backbone.")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's weights do not fit the model; ``missing``/``unexpected``/``mismatched`` list the names."""

    def __init__(self, path: str, missing: list[str], unexpected: list[str], mismatched: list[str], layout: str):
        self.path, self.missing, self.unexpected, self.mismatched = path, missing, unexpected, mismatched
        lines = [f"checkpoint {path} ({layout}) does not match the model:"]
        for title, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if names:
                shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
                lines.append(f"  {title} ({len(names)}): {shown}")
        super().__init__("\n".join(lines))


class CheckpointFormatError(RuntimeError):
    """The file loads but holds no recognisable state dict; the message names the file and its top-level keys."""


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, path: str | os.PathLike[str] = "<object>") -> tuple[dict[str, torch.Tensor], str]:
    """(the model weights in a loaded checkpoint object, layout: ``lightning`` | ``river`` | ``flat``)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        raw, layout = obj["state_dict"], "lightning"
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        raw, layout = obj["model"], "river"
    elif _is_tensor_dict(obj):
        raw, layout = obj, "flat"
    else:
        keys = list(obj.keys())[:20] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointFormatError(
            f"{path}: no model weights found (expected a 'state_dict' or 'model' entry or a flat "
            f"{{name: tensor}} dict); top level: {keys}"
        )
    out: dict[str, torch.Tensor] = {}
    not_tensors = []
    for key, value in raw.items():
        key = str(key)
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if key.startswith(IGNORED_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            not_tensors.append(key)
            continue
        if key in out:
            raise CheckpointFormatError(f"{path}: weight {key!r} appears twice after stripping wrapper prefixes")
        out[key] = value
    if not_tensors:
        raise CheckpointFormatError(f"{path}: entries that are not tensors: {not_tensors[:20]}")
    return out, layout


def load_weights_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, layout: str = "flat") -> None:
    """Copy ``state`` into ``model``; every name must exist on both sides with the same shape. Floats are cast to
    the model's dtype, integer buffers keep theirs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(str(path), missing, unexpected, mismatched, layout)
    cast = {}
    for k, v in expected.items():
        src = state[k]
        cast[k] = src.to(v.dtype) if (src.is_floating_point() and v.is_floating_point()) else src
    model.load_state_dict(cast, strict=True)


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike[str]) -> str:
    """Read ``path`` safely, extract its model weights and load them strictly; returns the layout found."""
    path = Path(path)
    obj = safe_torch_load(path)
    state, layout = extract_state_dict(obj, path)
    load_weights_strict(model, state, str(path), layout)
    return layout
