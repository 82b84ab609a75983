"""The data stage: generate the demo dataset or convert raw videos, into a complete, recorded shard tree.

Splits are first written to a staging directory beside the target and swapped in only when every split is
complete, so a crash or a bad raw file leaves the existing shards untouched. ``<root>/manifest.json`` records
what made the shards (the fingerprint of the settings and the raw file listing, the config, the code version, and
per-shard size and sha256, and for a simulated dataset the same of each split's state sidecar). The tree
follows :mod:`pipeline.run.protocol`: a matching fingerprint with every recorded file in place is "up to date";
other settings, a missing or resized file (a sidecar: changed bytes), a manifest that does not read, or ``force``
rebuild it.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.run.config import Config
from pipeline.data.convert import assign_splits, convert_videos
from pipeline.data.shards import ShardError
from pipeline.data.sources import Simulator, simulator
from pipeline.run.locks import lock_file
from pipeline.run.protocol import Output, Verdict, decide, settle
from pipeline.run.records import MANIFEST, code_version, read_derived, read_json, sha256_file, write_json_atomic

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


def prepare_data(cfg: Config, root: Path, raw: Path | None = None, force: bool = False, dry_run: bool = False,
                 log=print) -> dict[str, Any] | None:
    """Make ``root`` hold the shards ``cfg`` asks for; returns the manifest (None for shards made elsewhere).

    ``data.source: demo`` generates them; ``shards`` converts ``raw`` videos, or, without ``raw``, uses the
    shards already in ``root`` as they are (the authors' preprocessed shards, say), checking that every split the
    settings produce is there. ``dry_run`` says what would be done and does nothing.
    """
    if raw is None and cfg.data.source == "shards":
        return _use_existing_shards(cfg, root, log)
    inputs = data_inputs(cfg, raw)
    sim = simulator(cfg.data.source) if raw is None else None
    out = Output("data", str(root), resumable=False, force_redoes=True, lock=lock_file(root))

    def decision() -> Verdict:
        manifest = read_derived(root / MANIFEST, lambda _: None) or {}  # garbage: no record, so the tree is rebuilt
        damaged = _damaged_files(root, manifest, sim) if manifest else ""
        return decide(out, manifest, inputs, force, complete=not damaged, missing=damaged,
                      detail=f"{sum(manifest.get('videos', {}).values())} videos, ")

    with ExitStack() as held:
        read_derived(root / MANIFEST, lambda line: log(f"data: {line}"))  # says once what is wrong with it, if anything
        verdict = settle(out, decision, held, log, dry_run, (ShardError, ShardError),
                         what=" (demo generator)" if raw is None else f" (converting {raw})")
        if dry_run or verdict.action == "up to date":
            return read_json(root / MANIFEST)
        return _build(cfg, root, raw, sim, verdict, log)


def _build(cfg: Config, root: Path, raw: Path | None, sim: Simulator | None, verdict: Verdict, log) -> dict[str, Any]:
    """Write every split to a staging tree, swap it in, then record the manifest."""
    staging = root.parent / f".{root.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    if sim is not None:
        counts = sim.generate(cfg, staging)
    else:
        counts = convert_videos(assign_splits(raw, cfg.convert), staging, cfg.data.image_size, cfg.convert)
    _swap_in(staging, root, list(counts))
    manifest = {
        "stage": "data",
        "fingerprint": verdict.key,
        "inputs": verdict.inputs,
        "videos": counts,
        "shards": _file_records(root, "*/*.hdf5"),
        "sidecars": _file_records(root, f"*/{sim.sidecar}") if sim else {},
        "config": cfg.to_dict(),
        "code_version": code_version(),
    }
    write_json_atomic(root / MANIFEST, manifest)
    log(f"data: wrote {root} ({', '.join(f'{s}: {n}' for s, n in counts.items())} videos)")
    return manifest


def _use_existing_shards(cfg: Config, root: Path, log) -> None:
    """Shards made elsewhere: check every split the settings produce has shard files, and use them as they are."""
    splits = sorted(cfg.produced_splits()[0])
    counts = {split: len(sorted((root / split).glob("*.hdf5"))) for split in splits}
    missing = [split for split, n in counts.items() if n == 0]
    if missing:
        raise ShardError(
            f"no shards in {', '.join(str(root / s) for s in missing)}: convert raw videos with "
            f"`make data DATASET={cfg.data.name.removesuffix('-smoke')} RAW=/path/to/videos`, or point DATA_DIR at a "
            "directory holding <split>/shard_NNNN.hdf5 (the authors' preprocessed shards work as they are)")
    log(f"data: using the existing shards in {root} ({', '.join(f'{s}: {n} file(s)' for s, n in counts.items())})")
    return None


def _file_records(root: Path, pattern: str) -> dict[str, dict[str, Any]]:
    """``{relative path: {bytes, sha256}}`` of the files of ``root`` matching ``pattern``."""
    return {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(root.glob(pattern))}


def _damaged_files(root: Path, manifest: dict[str, Any], sim: Simulator | None) -> str:
    """What is missing or changed among the recorded files ('' if nothing).

    Every shard the manifest lists must exist with its recorded size (a cheap check: shards can be gigabytes); a
    simulated tree must also hold a state sidecar for every non-empty split with its recorded sha256 (small files,
    so a same-size change is seen too; a manifest from before sidecars lists none: such a tree is rebuilt).
    """
    if not _intact(root, manifest.get("shards", {})):
        return "shard files"
    if sim is not None:
        sidecars = manifest.get("sidecars", {})
        wanted = {f"{split}/{sim.sidecar}" for split, n in manifest.get("videos", {}).items() if n}
        if set(sidecars) != wanted or not _intact(root, sidecars, checksums=True):
            return f"state sidecars ({sim.sidecar})"
    return ""


def _intact(root: Path, files: dict[str, dict[str, Any]], checksums: bool = False) -> bool:
    """Every listed file exists with its recorded size (and, with ``checksums``, its recorded sha256)."""
    return bool(files) and all((root / name).is_file() and (root / name).stat().st_size == info["bytes"]
                               and (not checksums or sha256_file(root / name) == info["sha256"])
                               for name, info in files.items())


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
