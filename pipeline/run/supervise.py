"""``python -m pipeline.run.supervise WATCHED_PID -- COMMAND ...``: run COMMAND and end it when WATCHED_PID dies.

The Makefile runs every stage through this, watching ``make``: a stage is make's grandchild (via the recipe shell),
so its own parent-death signal would miss a ``kill -9`` of make. Polls the pid each second, then SIGTERMs the
stage's process group (SIGKILL after a grace period). Exit status: the command's, or 128 + the ending signal.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0
GRACE_S = 5.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux ``prctl``; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _die_with_supervisor() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (best effort: the stage runs regardless)."""
    try:
        parent_death_signal(signal.SIGTERM)
    except OSError:
        pass


def _end(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL if it is still there after the grace period."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def supervise(watched: int, command: list[str]) -> int:
    """Run ``command`` in its own process group until it exits or ``watched`` dies; its exit status."""
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_supervisor)
    forward = lambda sig, _frame: os.killpg(child.pid, sig)  # noqa: E731  Ctrl-C and kill reach the stage
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            return code if code >= 0 else 128 - code
        except subprocess.TimeoutExpired:
            if not _alive(watched):
                print(f"supervise: pid {watched} (make) is gone: stopping {command[0]} ...", file=sys.stderr, flush=True)
                _end(child)
                return 128 + signal.SIGTERM


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m pipeline.run.supervise WATCHED_PID -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    return supervise(int(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
