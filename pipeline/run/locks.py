"""One writer per output: ``fcntl.flock`` on a lock file beside it, which the kernel releases however the holder
ends (kill -9 included). The file records the holder (pid, host, start, command) for a second writer's message; a
record found on taking the lock means the last holder died holding it, and a normal release clears it. The file is
never deleted: two processes could then lock two different files under one name. Under torchrun only rank 0 locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from textwrap import shorten
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from pipeline.run.records import write_error

COMMAND_CHARS = 240  # the holder's command line as recorded: enough to tell runs apart, not a screenful


class LockedError(RuntimeError):
    """Another process holds the lock of the output; the message names it (pid, host, since, command)."""


def lock_file(output: str | Path) -> Path:
    """The lock file of an output file or directory: ``.<name>.lock`` next to it."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


@contextmanager
def output_lock(path: str | Path, what: str, stage: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (of ``what``) for the block; LockedError naming the holder if another
    process has it, WriteError if the lock file cannot be created."""
    handle = _open(Path(path), what)
    try:
        _take(handle, Path(path), what, stage, log)
        try:
            yield
        finally:
            _clear(handle)
    finally:
        handle.close()  # closing the last descriptor releases the lock


@contextmanager
def locks_within(directory: str | Path, stage: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of every output inside ``directory`` (its ``.<name>.lock`` files) for the block, e.g. while the
    directory is moved: LockedError naming the first output another process is writing."""
    with ExitStack() as held:
        for path in sorted(Path(directory).glob(".*.lock")):
            held.enter_context(output_lock(path, path.with_name(path.name[1:].removesuffix(".lock")), stage, log))
        yield


def _open(path: Path, what: str) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
    except OSError as exc:
        raise write_error(what, exc) from None


def _take(handle: IO[str], path: Path, what: str, stage: str, log: Callable[[str], None]) -> None:
    """Lock ``handle`` without waiting and record this process in it; a leftover record means its writer died."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(f"{what} is being written by {describe(_read(handle))} (lock {path}); wait for "
                          "that process to finish, or stop it, then rerun") from None
    previous = _read(handle)
    if previous:
        log(f"{stage}: taking over the lock of {what} from {describe(previous)}, which ended without releasing it")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder()) + "\n")
    handle.flush()


def _clear(handle: IO[str]) -> None:
    """Empty the record on a normal release, so the next holder does not think this process died holding the lock."""
    handle.seek(0)
    handle.truncate()
    handle.flush()


def _read(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:  # a holder that died while writing its record
        return {"pid": "?"}
    return record if isinstance(record, dict) else {"pid": "?"}


def holder() -> dict[str, Any]:
    """What a lock file records about this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shorten(shlex.join([Path(sys.executable).name, *sys.argv]), COMMAND_CHARS, placeholder=" ...")}


def describe(record: dict[str, Any]) -> str:
    """'pid 123 on host h since 2026-05-09 10:00:00 (command: ...)', or what is known of it."""
    if not record:
        return "another process (it has not recorded itself yet)"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('since', '?')} "
            f"(command: {record.get('command', '?')})")
