"""Thread policy (pipeline/run/threads.py): usable CPUs from the affinity mask and cgroup quotas, the stage's choice,
the OpenMP wait policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.run import threads


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def _cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup root with ``files`` (relative path -> content) and a /proc/self/cgroup saying ``proc``."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc_file = tmp_path / "proc_cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def test_affinity_alone_without_cgroup_files(tmp_path, four_cpus) -> None:
    root, proc = _cgroup(tmp_path, "0::/\n", {})
    assert threads.cgroup_cpu_limit(root, proc) is None
    assert threads.available_cpus(root, proc) == 4
    assert threads.available_cpus(tmp_path / "absent", tmp_path / "absent_proc") == 4  # nothing readable at all


@pytest.mark.parametrize("cpu_max, expected", [
    ("200000 100000\n", 2),   # 2 CPUs of quota
    ("150000 100000\n", 1),   # 1.5 CPUs: rounded down
    ("50000 100000\n", 1),    # half a CPU: at least 1
    ("max 100000\n", 4),      # no limit
    ("800000 100000\n", 4),   # a quota above the affinity mask: the mask
    ("garbage\n", 4),         # unreadable: ignored
])
def test_cgroup_v2_quota(tmp_path, four_cpus, cpu_max, expected) -> None:
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": cpu_max})
    assert threads.available_cpus(root, proc) == expected


def test_cgroup_v2_own_and_parent_cgroups(tmp_path, four_cpus) -> None:
    # the process's own cgroup has no limit, its parent allows 3 CPUs: the parent's limit applies
    root, proc = _cgroup(tmp_path, "0::/jobs/mine\n", {"jobs/cpu.max": "300000 100000", "jobs/mine/cpu.max": "max 100000"})
    assert threads.cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    assert threads.available_cpus(root, proc) == 3
    # the tightest of the chain wins
    (root / "jobs" / "mine" / "cpu.max").write_text("100000 100000")
    assert threads.available_cpus(root, proc) == 1


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path, four_cpus, mount) -> None:
    root, proc = _cgroup(tmp_path, "3:cpu,cpuacct:/\n1:memory:/x\n0::/\n",
                         {f"{mount}/cpu.cfs_quota_us": "200000\n", f"{mount}/cpu.cfs_period_us": "100000\n"})
    assert threads.available_cpus(root, proc) == 2


def test_cgroup_v1_no_quota_and_missing_period(tmp_path, four_cpus) -> None:
    root, proc = _cgroup(tmp_path, "3:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_limit(root, proc) is None
    assert threads.available_cpus(root, proc) == 4
    (root / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_period_us").unlink()
    assert threads.available_cpus(root, proc) == 4  # half a pair of files: no limit


def test_affinity_unavailable_falls_back_to_cpu_count(monkeypatch) -> None:
    monkeypatch.delattr(threads.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    assert threads.available_cpus(Path("/absent"), Path("/absent_proc")) == 6


def test_choice_default_divides_by_processes_per_node() -> None:
    env: dict[str, str] = {}
    assert threads.choose_threads(None, 1, env, cpus=8).threads == 8
    assert threads.choose_threads(None, 2, env, cpus=8).threads == 4
    assert threads.choose_threads(None, 3, env, cpus=8).threads == 2
    assert threads.choose_threads(None, 16, env, cpus=8).threads == 1  # never 0
    assert threads.choose_threads(None, 0, env, cpus=2).threads == 2  # a world size of 0 counts as 1
    assert threads.choose_threads(0, 2, env, cpus=8).source == "default"  # 0 = no request


def test_choice_environment_wins_then_request() -> None:
    assert threads.choose_threads(None, 1, {"OMP_NUM_THREADS": "1"}, cpus=8).threads == 1
    choice = threads.choose_threads(6, 4, {"OMP_NUM_THREADS": "3"}, cpus=8)  # the user's choice wins over a request
    assert (choice.threads, choice.source) == (3, "OMP_NUM_THREADS")
    assert threads.choose_threads(None, 1, {"OMP_NUM_THREADS": "4,2"}, cpus=8).threads == 4  # nested levels: the first
    choice = threads.choose_threads(5, 2, {}, cpus=8)
    assert (choice.threads, choice.source) == (5, "requested")
    for bad in ("", "0", "-2", "many"):  # unusable values: the default, and the line says so
        choice = threads.choose_threads(None, 2, {"OMP_NUM_THREADS": bad}, cpus=8)
        assert (choice.threads, choice.source) == (4, "default")
        assert ("ignored" in choice.reason) == (bad != "")


def test_configure_sets_torch_and_logs_one_line(monkeypatch) -> None:
    before = torch.get_num_threads()
    lines: list[str] = []
    try:
        monkeypatch.setattr(threads, "available_cpus", lambda *a, **k: 3)
        choice = threads.configure_threads(None, 1, log=lines.append, environ={}, what="encode")
        assert choice.threads == 3 and torch.get_num_threads() == 3
        choice = threads.configure_threads(None, 2, log=lines.append, environ={"OMP_NUM_THREADS": "1"}, what="train")
        assert choice.threads == 1 and torch.get_num_threads() == 1
        threads.configure_threads(2, 1, log=None, environ={})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(lines) == 2 and all(line.startswith("threads: ") and "\n" not in line for line in lines)
    assert "encode: 3 torch thread(s)" in lines[0] and "3 usable CPU(s) / 1 process(es)" in lines[0]
    assert "OMP_NUM_THREADS=1 in the environment" in lines[1]
    assert all("idle threads wait by OMP_WAIT_POLICY=" in line for line in lines)


def test_processes_on_node() -> None:
    assert threads.processes_on_node({}) == 1
    assert threads.processes_on_node({"WORLD_SIZE": "4"}) == 4
    assert threads.processes_on_node({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}) == 2  # 2 of the 8 on this node
    assert threads.processes_on_node({"LOCAL_WORLD_SIZE": "x", "WORLD_SIZE": "3"}) == 3


@pytest.mark.parametrize("environ, policy, kept", [
    ({}, "PASSIVE", False),
    ({"OMP_WAIT_POLICY": " "}, "PASSIVE", False),  # blank = unset
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE", True),
    ({"GOMP_SPINCOUNT": "10000"}, None, True),  # a spin count is a choice of how to wait too
])
def test_wait_policy_default_only_where_none_is_chosen(environ, policy, kept) -> None:
    said = threads.default_wait_policy(environ)
    assert environ.get("OMP_WAIT_POLICY") == policy
    assert ("in the environment" in said) == kept and ("pipeline's default" in said) == (not kept)


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in threads.WAIT_POLICY_KEYS}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, check=True)
    return done.stdout.strip()


def test_importing_pipeline_sets_the_policy_before_torch_loads_openmp() -> None:
    """A stage process: pipeline first, so OpenMP starts with PASSIVE; the user's setting wins; torch first is said."""
    code = "import os, pipeline, pipeline.run.threads as t; print(os.environ.get('OMP_WAIT_POLICY'), '|', t.WAIT_POLICY_IN_FORCE)"
    assert _python(code) == "PASSIVE | OMP_WAIT_POLICY=PASSIVE (the pipeline's default)"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE | OMP_WAIT_POLICY=ACTIVE in the environment"
    late = _python("import torch, pipeline.run.threads as t; print(t.WAIT_POLICY_IN_FORCE)")
    assert late.endswith("for child processes only (torch was imported before pipeline)")
