"""How many torch threads a stage runs: the CPUs this process may use and finds idle, shared by its node's processes.

torch's default is one intra-op thread per CPU it sees. It ignores a container's CPU quota (a 2-CPU quota on a
64-core host gives 64 threads), the other training processes of the node and other busy jobs. On a shared CPU,
threads beyond the CPUs a process really gets wait for each other at every OpenMP barrier: stage 1 once took 7x
its quiet time on 2 cores with another busy process beside it.

Policy (:func:`configure_threads`, called once by a stage's command line that has work to do, ``pipeline/run/cli.py``):

1. ``OMP_NUM_THREADS`` in the environment wins (the user's choice; ``make ... THREADS=N`` sets it, and torchrun
   sets it to 1 for several processes per node when it is unset);
2. else the ``requested`` count, when a caller asks for one;
3. else the usable CPUs (:func:`available_cpus`) that are idle at start (:func:`idle_cpus`: a CPU counts when at
   least half of it sat idle over a 0.3-s look at /proc/stat), divided by the processes on this node, at least 1.
   Beside one busy process on 2 CPUs that is 1 thread, which runs at the speed of the one CPU left instead of
   thrashing (README, "Threads on a shared CPU").

How idle threads wait (:func:`default_wait_policy`, applied when :mod:`pipeline` is imported, before torch loads
OpenMP): ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already names a policy (``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT``). OpenMP's own default spins each idle thread for a while at every barrier; beside another busy
process those spins take the CPU the working threads need, and stage 1 took 9x, a training step 14x their quiet
time. Passive threads sleep instead: 1.2-1.6x / 1.5-2.4x in three runs, for a cost of 20-70 % when the machine is
quiet (README; ``benchmarks/results.md``, thread_contention). The thread count, and so every result, does not
depend on it.

:func:`available_cpus` is the smaller of the CPUs in this process's affinity mask and the cgroup CPU quota
(quota / period, rounded down, at least 1: a thread throttled for part of every period stalls the others).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, MutableMapping

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
IDLE_SAMPLE_S = 0.3  # /proc/stat ticks at 100 Hz: 30 ticks per CPU
PROC_CGROUP = Path("/proc/self/cgroup")
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")  # where cgroup v1 mounts its cpu controller under the root


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where there is no such call)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(cgroup v2 path, cgroup v1 cpu-controller path) of this process from /proc/self/cgroup; None where absent."""
    v2 = v1 = None
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return None, None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, path: str | None) -> list[Path]:
    """``base/path`` and each directory above it up to ``base`` itself (a limit anywhere above applies too)."""
    dirs = [base]
    if path:
        parts = [p for p in path.strip("/").split("/") if p and p != ".."]
        dirs = [base.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)] + [base]
    return dirs


def _read_v2(directory: Path) -> float | None:
    """CPUs allowed by ``cpu.max`` ("<quota> <period>" or "max <period>") in ``directory``; None for no limit."""
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if not fields or fields[0] == "max":
        return None
    try:
        quota = float(fields[0])
        period = float(fields[1]) if len(fields) > 1 else 100_000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_v1(directory: Path) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in ``directory``; None for -1 (no limit)."""
    try:
        quota = float((directory / "cpu.cfs_quota_us").read_text().strip())
        period = float((directory / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota of this process's cgroups (v2 ``cpu.max``, v1 CFS quota), in CPUs; None if none.

    Looked up in this process's own cgroup (as /proc/self/cgroup names it, when that directory is mounted under
    ``root``) and every cgroup above it, and at ``root`` itself (inside a container the mount shows its own cgroup
    there). Missing or unreadable files and "max" / -1 mean no limit.
    """
    v2_path, v1_path = _own_paths(proc_cgroup)
    limits = [_read_v2(d) for d in _ancestors(root, v2_path)]
    for mount in V1_CPU_MOUNTS:
        base = root / mount
        if base.is_dir():
            limits += [_read_v1(d) for d in _ancestors(base, v1_path)]
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process can really use: its affinity mask, capped by the cgroup quota (rounded down); >= 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 1e-9)))
    return max(1, cpus)


def _cpu_ticks(proc_stat: Path) -> dict[int, tuple[int, int]]:
    """Per CPU of /proc/stat: (idle + iowait ticks, all ticks but guest time, which user time already counts)."""
    ticks = {}
    for line in proc_stat.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 4:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            ticks[int(name[3:])] = (values[3] + (values[4] if len(values) > 4 else 0), sum(values))
    return ticks


def idle_cpus(sample_s: float = IDLE_SAMPLE_S, proc_stat: Path = PROC_STAT,
              sleep: Callable[[float], None] = time.sleep) -> float | None:
    """How many of this process's CPUs (its affinity mask) sat idle over ``sample_s`` seconds: the idle share of
    each, summed (2 quiet CPUs: ~2.0; one of them taken by a busy process: ~1.0). None where /proc/stat cannot be
    read (not Linux) or no CPU ticked. This process itself sleeps meanwhile, so what it sees busy is the others."""
    try:
        mask = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mask = None
    try:
        before = _cpu_ticks(proc_stat)
        sleep(sample_s)
        after = _cpu_ticks(proc_stat)
    except (OSError, ValueError):
        return None
    shares = []
    for cpu, (idle_after, total_after) in after.items():
        if cpu in before and (mask is None or cpu in mask):
            idle_before, total_before = before[cpu]
            if total_after > total_before:
                shares.append(min(1.0, max(0.0, (idle_after - idle_before) / (total_after - total_before))))
    return sum(shares) if shares else None


WAIT_POLICY_DEFAULT = "PASSIVE"
WAIT_POLICY_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # either one is the user's choice of how threads wait


def default_wait_policy(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) unless it names a wait policy already.

    Returns the policy in force, in words. OpenMP reads the variable once, when torch loads it: this must run before
    ``import torch`` to act on this process (``pipeline/__init__.py`` calls it); child processes (torchrun's
    workers, the stages ``make`` starts) inherit it either way.
    """
    environ = os.environ if environ is None else environ
    chosen = {k: environ[k] for k in WAIT_POLICY_KEYS if environ.get(k, "").strip()}
    if chosen:
        return ", ".join(f"{k}={v}" for k, v in chosen.items()) + " in the environment"
    environ["OMP_WAIT_POLICY"] = WAIT_POLICY_DEFAULT
    return f"OMP_WAIT_POLICY={WAIT_POLICY_DEFAULT} (the pipeline's default)"


def _apply_on_import() -> str:
    """:func:`default_wait_policy` for this process; says so when OpenMP was loaded before (torch imported first)."""
    policy = default_wait_policy()
    if "torch" in sys.modules and "pipeline's default" in policy:
        policy += ", for child processes only (torch was imported before pipeline)"
    return policy


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # torch intra-op threads set
    source: str  # "OMP_NUM_THREADS" | "requested" | "default"
    reason: str  # why, in words (the logged line's parenthesis)


def omp_num_threads(environ: Mapping[str, str]) -> int | None:
    """The thread count OMP_NUM_THREADS asks for (its first level, "4,2" -> 4); None when unset or unusable."""
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def choose_threads(requested: int | None, world_size: int, environ: Mapping[str, str] | None = None,
                   cpus: int | None = None, idle: Callable[[], float | None] | None = None) -> ThreadChoice:
    """The thread count :func:`configure_threads` sets, changing nothing (see the module's policy).

    ``world_size``: the processes sharing this node's CPUs (torchrun's LOCAL_WORLD_SIZE). ``requested`` 0 or None
    means no request. ``idle``: how many CPUs are idle (:func:`idle_cpus`), asked only when the default applies;
    None (or a None answer) counts every usable CPU as free.
    """
    environ = os.environ if environ is None else environ
    per_node = max(1, int(world_size))
    omp = omp_num_threads(environ)
    if omp is not None:
        return ThreadChoice(omp, "OMP_NUM_THREADS", f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']} in the environment")
    if requested:
        if requested < 0:
            raise ValueError(f"requested threads must be >= 1 (or None), got {requested}")
        return ThreadChoice(int(requested), "requested", "requested")
    cpus = available_cpus() if cpus is None else cpus
    bad = environ.get("OMP_NUM_THREADS")
    note = f"; OMP_NUM_THREADS={bad!r} ignored: not a count >= 1" if bad not in (None, "") else ""
    seen = idle() if idle is not None else None
    free = cpus if seen is None else min(cpus, max(1, math.floor(seen + 0.5)))
    load = "" if seen is None else f", {seen:.1f} idle at start"
    threads = max(1, free // per_node)
    return ThreadChoice(threads, "default", f"{cpus} usable CPU(s){load} / {per_node} process(es) on this node{note}")


def configure_threads(requested: int | None, world_size: int, log: Callable[[str], None] | None = print,
                      environ: Mapping[str, str] | None = None, what: str = "",
                      idle: Callable[[], float | None] | None = idle_cpus) -> ThreadChoice:
    """Set torch's intra-op threads by the module's policy and log the decision in one line (``log=None``: silent).

    ``world_size``: the processes sharing this node's CPUs. ``what`` names the stage in the line. ``idle``: how
    many CPUs are idle (default :func:`idle_cpus`, a 0.3-s look, taken only when the default count applies).
    """
    import torch

    choice = choose_threads(requested, world_size, environ, idle=idle)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    if log is not None:
        where = f"{what}: " if what else ""
        log(f"threads: {where}{choice.threads} torch thread(s) per process ({choice.reason}; THREADS=N or "
            f"OMP_NUM_THREADS=N to choose); idle threads wait by {WAIT_POLICY_IN_FORCE}")
    return choice


def processes_on_node(environ: Mapping[str, str] | None = None) -> int:
    """Processes of this launch on this node: torchrun's LOCAL_WORLD_SIZE, else WORLD_SIZE, else 1."""
    environ = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        try:
            return max(1, int(environ[key]))
        except (KeyError, ValueError):
            continue
    return 1


WAIT_POLICY_IN_FORCE = _apply_on_import()  # pipeline/__init__.py imports this module before anything loads torch
