"""Torch threads of a stage: ``OMP_NUM_THREADS`` if set, else a caller's request, else the CPUs this process may use
(affinity mask, capped by the tightest cgroup CPU quota) / processes on its node, at least 1. Importing
:mod:`pipeline` runs this before torch loads OpenMP and sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment chose:
spinning idle threads take the CPU that working threads need beside another busy process."""

from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, MutableMapping, NamedTuple

WAIT_POLICY_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # either one is the user's choice of how threads wait
QUOTA_FILES = (("cpu.max",), ("cpu.cfs_quota_us", "cpu.cfs_period_us"))  # cgroup v2, v1


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota, in CPUs, of this process's cgroups (as ``proc_cgroup`` names them) and all above."""
    own = [line.split(":", 2) for line in (proc_cgroup.read_text() if proc_cgroup.exists() else "").splitlines()]
    v1 = [root / mount for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
    dirs = [root, *v1]
    for _, controllers, path in (line for line in own if len(line) == 3):
        parts = [p for p in path.split("/") if p and p != ".."]
        bases = [root] if controllers == "" else v1 if "cpu" in controllers.split(",") else []
        dirs += [base.joinpath(*parts[:i]) for base in bases for i in range(1, len(parts) + 1)]
    limits = []
    for directory, names in itertools.product(dirs, QUOTA_FILES):
        try:
            fields = " ".join((directory / name).read_text() for name in names).split()
            quota, period = float(fields[0]), float(fields[1]) if len(fields) > 1 else 100_000.0
        except (OSError, ValueError, IndexError):  # absent, unreadable, "max": no limit
            continue
        limits += [quota / period] if quota > 0 and period > 0 else []
    return min(limits, default=None)


def available_cpus(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process can really use: its affinity mask (else the CPU count), capped by the cgroup quota; >= 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(cpus, math.floor(quota + 1e-9)) if quota is not None else cpus)


class ThreadChoice(NamedTuple):
    threads: int
    source: str  # "OMP_NUM_THREADS" | "requested" | "default"
    reason: str  # in words, for the logged line


def choose_threads(requested: int | None, world_size: int, environ: Mapping[str, str] | None = None,
                   cpus: int | None = None) -> ThreadChoice:
    """The module's rule; ``requested`` 0 or None: no request; ``world_size``: processes sharing the node's CPUs."""
    raw = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    first = raw.split(",")[0].strip()  # nested levels ("4,2"): the first
    if first.isdigit() and int(first) >= 1:
        return ThreadChoice(int(first), "OMP_NUM_THREADS", f"OMP_NUM_THREADS={raw} in the environment")
    if requested:
        if requested < 0:
            raise ValueError(f"requested threads must be >= 1 (or None), got {requested}")
        return ThreadChoice(int(requested), "requested", "requested")
    cpus, per_node = available_cpus() if cpus is None else cpus, max(1, int(world_size))
    note = f"; OMP_NUM_THREADS={raw!r} ignored: not a count >= 1" if raw else ""
    return ThreadChoice(max(1, cpus // per_node), "default", f"{cpus} usable CPU(s) / {per_node} process(es) on this node{note}")


def configure_threads(requested: int | None, world_size: int, log: Callable[[str], None] | None = print,
                      environ: Mapping[str, str] | None = None, what: str = "") -> ThreadChoice:
    """Set torch's intra-op threads by :func:`choose_threads`; log it in one line naming the stage ``what``."""
    import torch

    choice = choose_threads(requested, world_size, environ)
    torch.set_num_threads(choice.threads)
    if log is not None:
        log(f"threads: {what + ': ' if what else ''}{choice.threads} torch thread(s) per process ({choice.reason}; "
            f"THREADS=N or OMP_NUM_THREADS=N to choose); idle threads wait by {WAIT_POLICY_IN_FORCE}")
    return choice


def processes_on_node(environ: Mapping[str, str] | None = None) -> int:
    """Processes of this launch on this node: torchrun's LOCAL_WORLD_SIZE, else WORLD_SIZE, else 1."""
    counts = [(os.environ if environ is None else environ).get(k, "").strip() for k in ("LOCAL_WORLD_SIZE", "WORLD_SIZE")]
    return max(1, next((int(c) for c in counts if c.removeprefix("-").isdigit()), 1))


def default_wait_policy(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) unless it names a policy; in words."""
    environ = os.environ if environ is None else environ
    chosen = [f"{k}={environ[k]}" for k in WAIT_POLICY_KEYS if environ.get(k, "").strip()]
    if chosen:
        return ", ".join(chosen) + " in the environment"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "OMP_WAIT_POLICY=PASSIVE (the pipeline's default)"


WAIT_POLICY_IN_FORCE = default_wait_policy()
if "torch" in sys.modules and "pipeline's default" in WAIT_POLICY_IN_FORCE:  # OpenMP already loaded
    WAIT_POLICY_IN_FORCE += ", for child processes only (torch was imported before pipeline)"
