"""Flow-model checkpoints: ours (exact resume) and the authors' published ones (safe, inert loading).

Ours (atomic, ``weights_only``-loadable)::

    {"format": FORMAT, "model": state_dict, "ema": state_dict, "opt": AdamW state, "step": next step to run,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}, "sampler": {...}, "config": Config.to_dict(),
     "fingerprint": training-run fingerprint, "cache_fingerprint": str, "code_version": str}

Exported for sampling (e.g. ``checkpoints/demo_flow_<interp>.pt``): no ``opt``/``rng``/``sampler``/``ema``; ``model``
holds the EMA weights (maybe float16), ``exported`` says whence; a JSON record with its sha256 sits beside it.
Published (docs/METHOD.md §5): ``model``, ``ema``, ``opt``, a pickled ``Config``, ``step``, or RIVER's trainer format
(``optimizer``, ``lr_scheduler``, ``global_step``); keys may carry ``module.``/``vector_field_regressor.`` prefixes
and ``ae.*`` entries. Read through :mod:`pipeline.run.safe_load`: nothing in the file is executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.run.records import atomic_path, sha256_file, write_error, write_json_atomic
from pipeline.run.safe_load import CheckpointReadError, PickledRecord, safe_torch_load

FORMAT = "latent-interpolants/flow-v1"
PUBLISHED_PREFIXES = ("module.", "vector_field_regressor.")
PUBLISHED_STEP_KEYS = ("step", "global_step", "update_steps")  # the authors' files; RIVER's trainer; the reference's name
EMBEDDED_AUTOENCODER = "ae."


@dataclass
class FlowCheckpoint:
    """A flow checkpoint's weights and what is known about how it was made."""

    path: str
    kind: str  # "pipeline" (written by this project's trainer) | "published" (the authors' files)
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    step: int
    config: dict[str, Any] | PickledRecord | None  # our Config.to_dict(), or the authors' pickled Config (inert)
    raw: dict[str, Any]  # the whole loaded object (optimizer state, RNG states, ... for resuming)

    def weights(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """EMA weights when asked for and present, else the raw model weights."""
        return self.ema if use_ema and self.ema else self.model

    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def holds_ema_weights(self) -> bool:
        """Whether ``model`` already is the EMA (an export for sampling), so a missing ``ema`` entry loses nothing."""
        exported = self.raw.get("exported")
        return isinstance(exported, dict) and exported.get("weights") == "ema"


def clean_published_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the leading ``module.`` / ``vector_field_regressor.`` prefixes (as prefixes only) and drop ``ae.*``."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PUBLISHED_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        if not key.startswith(EMBEDDED_AUTOENCODER):
            cleaned[key] = value
    return cleaned


def load_flow_checkpoint(path: str | Path) -> FlowCheckpoint:
    """Read one of our checkpoints or a published one; CheckpointReadError naming the file and what is wrong (also
    for an inert pickled record where weights or the step belong)."""
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or "model" not in obj:
        found = f"keys {list(obj)[:10]}" if isinstance(obj, dict) else describe(obj)
        raise CheckpointReadError(f"{path}: not a flow checkpoint (expected a dict with a 'model' entry; found {found})")
    ema = obj.get("ema")
    if obj.get("format") == FORMAT:
        step = obj.get("step")
        if not isinstance(step, int):
            raise CheckpointReadError(f"{path}: entry 'step' is {describe(step)}, not a step number")
        return FlowCheckpoint(str(path), "pipeline", _state_dict(obj["model"], "model", path),
                              None if ema is None else _state_dict(ema, "ema", path), step, _recorded_config(obj, path), obj)
    return FlowCheckpoint(
        str(path), "published", _state_dict(obj["model"], "model", path, clean=True),
        _state_dict(ema, "ema", path, clean=True) if isinstance(ema, dict) else None,
        published_step(obj), obj.get("config"), obj,
    )


def _recorded_config(obj: dict[str, Any], path: str | Path) -> dict[str, Any] | None:
    """Our checkpoint's config, validated as a config file is (pipeline.run.config.recorded_config) and completed
    with the defaults of keys added since; CheckpointReadError naming the file and the key."""
    from pipeline.run.config import ConfigError, recorded_config

    if obj.get("config") is None:
        return None
    try:
        return recorded_config(obj["config"], source=f"{path}: recorded config").to_dict()
    except ConfigError as exc:
        raise CheckpointReadError(str(exc)) from None


def published_step(obj: dict[str, Any]) -> int:
    """The training step a published checkpoint records: the first of ``PUBLISHED_STEP_KEYS`` holding a whole
    number (a Python int or integral float, or a one-element integer tensor), else 0."""
    for key in PUBLISHED_STEP_KEYS:
        value = obj.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value.item())
        if isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
    return 0


def _state_dict(value: Any, name: str, path: str | Path, clean: bool = False) -> dict[str, torch.Tensor]:
    """``value`` if it is a state dict (names -> tensors; published prefixes stripped with ``clean``), else an error."""
    if isinstance(value, dict):
        state = clean_published_keys(value) if clean else value
        odd = [key for key, tensor in state.items() if not isinstance(tensor, torch.Tensor)]
        if not odd:
            return state
        raise CheckpointReadError(f"{path}: entry '{name}' is not a state dict of tensors ('{odd[0]}' is "
                                  f"{describe(state[odd[0]])})")
    raise CheckpointReadError(f"{path}: entry '{name}' is {describe(value)}, not a state dict of tensors")


def describe(value: Any) -> str:
    """What a loaded value is, for messages: a pickled object is named as the inert record it was loaded as."""
    if isinstance(value, PickledRecord):
        return f"a pickled {value.qualname} (loaded as an inert record; nothing in the file was run)"
    return f"a {type(value).__name__}"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (with our format tag) atomically; a failed write (torch: RuntimeError) raises WriteError
    naming the file and the space left."""
    with atomic_path(path) as tmp:
        try:
            torch.save({"format": FORMAT, **payload}, tmp)
        except RuntimeError as exc:
            raise write_error(path, exc) from exc


KEPT_FOR_SAMPLING = ("step", "config", "fingerprint", "cache_fingerprint", "code_version", "latent_norm")


def export_for_sampling(src: str | Path, dst: str | Path, float16: bool = True) -> dict[str, Any]:
    """Write a sampling-only copy of one of our training checkpoints (EMA weights, else the model's; step, config,
    fingerprints) and its JSON record; returns the record. float16 moves sampled latents by ~1e-3 of their scale."""
    ckpt = load_flow_checkpoint(src)
    if ckpt.kind != "pipeline":
        raise CheckpointReadError(f"{src}: only checkpoints written by this project's trainer can be exported")
    weights = "ema" if ckpt.ema else "model"
    state = {name: (t.half() if float16 and t.is_floating_point() else t).contiguous().clone()
             for name, t in ckpt.weights(use_ema=True).items()}
    exported = {"from": str(src), "from_sha256": ckpt.sha256(), "weights": weights,
                "dtype": "float16" if float16 else "float32"}
    save_checkpoint(dst, {"model": state, **{k: ckpt.raw.get(k) for k in KEPT_FOR_SAMPLING}, "exported": exported})
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    record = {"what": "flow checkpoint for sampling, exported by pipeline.run.checkpoints", "sha256": sha256_file(dst),
              "size_bytes": Path(dst).stat().st_size, "step": ckpt.step, "exported": exported,
              "interpolant": config.get("interpolant", {}).get("kind"), "code_version": ckpt.raw.get("code_version"),
              "cache_fingerprint": ckpt.raw.get("cache_fingerprint"), "config": config}
    write_json_atomic(Path(dst).with_suffix(".json"), record)
    return record


def main(src: Path, dst: Path, float32: bool = False) -> None:
    """Export SRC, a training checkpoint (runs/<run>/checkpoints/latest.pt), as DST for sampling: its EMA weights in
    float16 (--float32 keeps float32), step, config and fingerprints, without the optimizer state; DST's .json beside it."""
    try:
        record = export_for_sampling(src, dst, float16=not float32)
    except CheckpointReadError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"exported {src} (step {record['step']}, {record['exported']['weights']} weights) -> {dst} "
          f"({record['size_bytes'] / 1e6:.1f} MB, {record['exported']['dtype']}, sha256 {record['sha256'][:12]})")


if __name__ == "__main__":  # python -m pipeline.run.checkpoints SRC DST [--float32]
    import typer

    typer.run(main)
