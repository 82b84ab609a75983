"""What made an output: checksums, fingerprints, manifests and atomic writes.

Every stage output carries a manifest (or Zarr attributes) with the fingerprint of everything it depends on.
A stage recomputes the fingerprint it *would* produce and compares: equal means "up to date", different means
the named inputs changed. Files are written to a temporary name and renamed, so a crash never leaves a file
that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: str | Path, cache: dict[str, Any]) -> str:
    """sha256 of ``path``, reusing ``cache[path]`` while the file's size and mtime are unchanged (updates ``cache``).

    Rehashing gigabytes of shards on every "is it up to date?" check would make reruns slow; a file whose size
    and modification time are unchanged is taken to have unchanged content.
    """
    stat = Path(path).stat()
    key = str(Path(path).resolve())
    entry = cache.get(key)
    if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
        return entry[2]
    digest = sha256_file(path)
    cache[key] = [stat.st_size, stat.st_mtime_ns, digest]
    return digest


def fingerprint(parts: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable description of a stage's inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested input descriptions (for messages)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(changed_keys(a, b, prefix=f"{name}."))
        elif a != b:
            keys.append(name)
    return keys


def code_version() -> str:
    """The git commit of the code (with '+dirty' when modified), or 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync and rename it into place, on error delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete ``*.tmp-<pid>`` leftovers of interrupted atomic writes in ``directory``; return what was removed."""
    removed = []
    for tmp in Path(directory).glob("*.tmp-*"):
        tmp.unlink()
        removed.append(tmp)
    return removed
