"""The data stage: generate the demo dataset or convert raw videos, into a complete, recorded shard tree.

Splits are first written to a staging directory beside the target and swapped in only when every split is
complete, so a crash or a bad raw file leaves the existing shards untouched. ``<root>/manifest.json`` records
what made the shards (the fingerprint of the settings and the raw file listing, the config, the code version,
and per-shard size and sha256); a rerun whose fingerprint matches is "up to date" and does nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.data.convert import assign_splits, convert_videos
from pipeline.data.demo import generate_demo
from pipeline.records import MANIFEST, changed_keys, code_version, fingerprint, read_json, sha256_file, write_json_atomic

FORMAT_VERSION = 1  # bump when the bytes written for the same inputs change


def data_inputs(cfg: Config, raw: Path | None) -> dict[str, Any]:
    """Everything the shards depend on: generator/converter settings and, for conversions, the raw listing."""
    inputs: dict[str, Any] = {"format": FORMAT_VERSION, "image_size": cfg.data.image_size}
    if raw is None:
        inputs["demo"] = asdict(cfg.demo)
    else:
        inputs["convert"] = asdict(cfg.convert)
        inputs["raw"] = {
            str(p.relative_to(raw)): [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(raw.rglob("*")) if p.is_file()
        }
    return inputs


def prepare_data(cfg: Config, root: Path, raw: Path | None = None, force: bool = False, log=print) -> dict[str, Any]:
    """Make ``root`` hold the shards ``cfg`` asks for; returns the manifest. ``raw=None`` means the demo generator."""
    if raw is None and cfg.data.name != "demo":
        raise ValueError(f"dataset '{cfg.data.name}' is converted from raw videos: pass RAW=<dir> (--raw)")
    inputs = data_inputs(cfg, raw)
    key = fingerprint(inputs)
    manifest = read_json(root / MANIFEST)
    if manifest and not force:
        if manifest.get("fingerprint") == key and _shards_intact(root, manifest):
            log(f"data: {root} is up to date ({sum(manifest['videos'].values())} videos)")
            return manifest
        changed = changed_keys(manifest.get("inputs", {}), inputs) or ["shard files"]
        log(f"data: rebuilding {root}; changed: {', '.join(changed[:8])}")

    staging = root.parent / f".{root.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    if raw is None:
        counts = generate_demo(cfg.demo, cfg.data.image_size, staging)
    else:
        counts = convert_videos(assign_splits(raw, cfg.convert), staging, cfg.data.image_size, cfg.convert)
    _swap_in(staging, root, list(counts))
    manifest = {
        "stage": "data",
        "fingerprint": key,
        "inputs": inputs,
        "videos": counts,
        "shards": {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(root.glob("*/*.hdf5"))},
        "config": cfg.to_dict(),
        "code_version": code_version(),
    }
    write_json_atomic(root / MANIFEST, manifest)
    log(f"data: wrote {root} ({', '.join(f'{s}: {n}' for s, n in counts.items())} videos)")
    return manifest


def _shards_intact(root: Path, manifest: dict[str, Any]) -> bool:
    """Every shard the manifest lists still exists with its recorded size (a cheap staleness check)."""
    shards = manifest.get("shards", {})
    return bool(shards) and all((root / name).is_file() and (root / name).stat().st_size == info["bytes"] for name, info in shards.items())


def _swap_in(staging: Path, root: Path, splits: list[str]) -> None:
    """Replace each split directory of ``root`` by its freshly written staging copy, then drop the staging tree."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)  # from here until the new manifest lands, the tree is "not done"
    for split in splits:
        target = root / split
        old = root / f".{split}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        if (staging / split).exists():
            (staging / split).rename(target)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
