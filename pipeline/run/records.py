"""What made an output: checksums, fingerprints and atomic writes (a crash never leaves a file that looks complete)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class KnownHashes(dict):
    """A hash cache that never hashes: :func:`cached_sha256` gives None for a file it would have to read (the
    torch-free "up to date?" checks then leave the decision to the stage)."""


def cached_sha256(path: str | Path, cache: dict[str, Any]) -> str | None:
    """sha256 of ``path``, reusing ``cache[path]`` while size and mtime are unchanged (so reruns need not rehash
    gigabytes of shards); updates ``cache``. None only for a :class:`KnownHashes` without a current entry."""
    stat = Path(path).stat()
    key = str(Path(path).resolve())
    entry = cache.get(key)
    if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
        return entry[2]
    if isinstance(cache, KnownHashes):
        return None
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
    root = Path(__file__).resolve().parents[2]
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


class WriteError(OSError):
    """An output file could not be written (disk full, read-only file system, ...); the message names the file."""


def write_error(path: str | Path, exc: BaseException) -> WriteError:
    """A WriteError naming ``path`` and the cause; for a full disk (or a writer that hides the errno, as torch's
    does) also the space left on its file system."""
    reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: " + (str(exc).splitlines() or [""])[0]
    full = not isinstance(exc, OSError) or exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return WriteError(f"cannot write {path}: {reason}" + (_free_space(Path(path)) if full else ""))


def _free_space(path: Path) -> str:
    """' (N MiB free on its file system)' for the nearest existing folder of ``path`` ('' if unknown)."""
    for folder in (path, *path.parents):
        try:
            return f" ({shutil.disk_usage(folder).free / 2**20:.1f} MiB free on its file system)"
        except OSError:
            continue
    return ""


@contextmanager
def atomic_path(final: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary ``<name>.tmp-<pid>`` beside ``final`` (``.<stem>.tmp-<pid><suffix>`` with ``keep_suffix``);
    on success fsync and rename it into place, on error delete it (an OSError becomes a WriteError)."""
    final = Path(final)
    name = f".{final.stem}.tmp-{os.getpid()}{final.suffix}" if keep_suffix else f"{final.name}.tmp-{os.getpid()}"
    tmp = final.with_name(name)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(final, exc) from exc
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


def read_derived(path: str | Path, log: Callable[[str], None], read: Callable[[Path], Any] | None = None,
                 what: str = "rebuilding it") -> Any | None:
    """``read(path)`` (default: the JSON object in it) of a file a stage derives and can make again: None when it is
    missing, and also, with a line naming it and ``what`` follows, when it does not read (the stage then rebuilds it:
    a damaged derived file never needs deleting by hand). Inputs are never read this way: they are errors."""
    path = Path(path)
    try:
        value = read(path) if read is not None else json.loads(path.read_text())
        if read is None and not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        return value
    except FileNotFoundError:
        return None
    except Exception as exc:  # garbage raises anything its reader can (JSON, zip, numpy, unicode errors)
        log(f"{path} does not read ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); {what}")
        return None


TEMPORARY = re.compile(r"\.tmp-(\d+)(\.\w+)?$")  # the names atomic_path gives its temporaries


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete (and return) the atomic-write temporaries in ``directory`` whose writer pid is dead on this host."""
    removed = []
    for tmp in Path(directory).glob("*.tmp-*"):
        match = TEMPORARY.search(tmp.name)
        if match and tmp.is_file() and not process_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def clean_temporaries(stage: str, directories: list[Path], log: Callable[[str], None]) -> None:
    """Remove the stale temporaries of ``directories`` (:func:`remove_stale_temporaries`), saying which."""
    removed = [tmp for directory in directories for tmp in remove_stale_temporaries(directory)]
    if removed:
        log(f"{stage}: removed {len(removed)} temporary file(s) left by interrupted writes: "
            + ", ".join(str(tmp) for tmp in removed))


def process_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def replace_directory(new: str | Path, final: str | Path) -> None:
    """Put the complete directory ``new`` in place of ``final`` via ``<final>.old`` (old and new never mix); a crash
    between the renames is finished by :func:`recover_replacement`."""
    old = Path(f"{final}.old")
    if old.exists():
        shutil.rmtree(old)
    if Path(final).exists():
        os.rename(final, old)
    os.rename(new, final)
    if old.exists():
        shutil.rmtree(old)


def recover_replacement(new: str | Path, final: str | Path, new_complete: bool) -> bool:
    """Finish an interrupted :func:`replace_directory`: no ``final`` and a complete ``new`` puts ``new`` in place
    (True); else a leftover ``<final>.old`` is deleted."""
    if not Path(final).exists():
        if new_complete:
            replace_directory(new, final)
        return new_complete
    old = Path(f"{final}.old")
    if old.exists():
        shutil.rmtree(old)
    return False
