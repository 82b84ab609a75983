"""Issue 30, item 1: ``--force`` on training keeps the good run until the new one is complete.

The forced run trains beside (``runs/<run>.rebuild``) and replaces the run when it has trained all its steps; a kill -9
at any point leaves the old run whole or the new one complete, and the rerun resumes the rebuild.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

import pipeline.run.records as records_module
import pipeline.stages.train as train_module
from pipeline.run.layout import Layout
from pipeline.run.locks import lock_file, output_lock
from pipeline.stages.train import TrainingError, train
from test_robustness import (ONE_THREAD, QUIET, TORCHRUN, Killed, _cfg, _kill_all, _run, _step, _stop_at,
                             _train_cli, _training_rows, _wait_for)

pytestmark = pytest.mark.usefixtures("one_thread")
OLD = ["train.steps=4", "train.latest_every=2", "train.log_every=1"]
NEW = ["train.lr=5e-4", "train.latest_every=2", "train.log_every=1"]


def _files(run: Path) -> dict[str, bytes]:
    """The bytes of a run's training outputs: run.json, metrics.jsonl and every checkpoint."""
    paths = [run / "run.json", run / "metrics.jsonl", *sorted((run / "checkpoints").glob("*.pt"))]
    return {str(path.relative_to(run)): path.read_bytes() for path in paths}


def _fingerprint(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text()).get("fingerprint")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_a_forced_training_killed_midway_keeps_the_old_run_and_the_rerun_resumes_it_under_ddp(
        tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    run = tmp_path / "demo-smoke" / "runs" / "ours"
    beside = run.with_name("ours.rebuild")
    assert train(_cfg(repo, overrides, *OLD), store, run, **QUIET) == "trained"
    old, old_key = _files(run), _fingerprint(run)
    forced = subprocess.Popen(_train_cli(repo, overrides, store, tmp_path, *NEW, "train.steps=100000") + ["--force"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    try:  # killed once the new run has a checkpoint (here or, before the fix, in place of the old run)
        _wait_for(lambda: _step(beside / "run.json") >= 2 or _fingerprint(run) not in (old_key, None), 120,
                  "the forced run to checkpoint")
        os.kill(forced.pid, signal.SIGKILL)
        forced.wait()
    finally:
        _kill_all(forced, [])
    assert _files(run) == old, "the old run's checkpoints, metrics or record changed"
    assert Layout(str(tmp_path), "demo-smoke").trained_runs() == ["ours"]  # the rebuild is not a run of its own
    reached = _step(beside / "run.json")
    assert reached >= 2

    command = _train_cli(repo, overrides, store, tmp_path, *NEW, f"train.steps={reached + 2}") + ["--force"]
    rerun = _run([*TORCHRUN, *command[1:]])
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert f"resuming the rebuild of {run} in {beside}" in rerun.stdout, rerun.stdout
    assert f"{run} replaced by its rebuild" in rerun.stdout, rerun.stdout
    assert not beside.exists() and not run.with_name("ours.old").exists()
    assert _training_rows(run) == list(range(1, reached + 3))  # continued, not restarted
    record = json.loads((run / "run.json").read_text())
    assert record["step"] == reached + 2 and record["fingerprint"] != old_key and record["world_size"] == 1
    assert record["world_sizes"][-1] == {"from_step": reached, "processes": 2}


def test_a_kill_between_the_renames_of_the_swap_is_finished_by_the_next_launch(tiny_store, tmp_path: Path,
                                                                                repo: Path) -> None:
    _, overrides, store = tiny_store
    run = tmp_path / "run"
    assert train(_cfg(repo, overrides, *OLD), store, run, **QUIET) == "trained"
    new = _cfg(repo, overrides, *NEW, "train.steps=2")
    with pytest.MonkeyPatch.context() as patch:  # killed after the old run moved aside, before the new one moved in
        _stop_at(patch, records_module.os, "rename", lambda source, _: str(source).endswith(".rebuild"))
        with pytest.raises(Killed):
            train(new, store, run, force=True, **QUIET)
    assert not run.exists() and _step(Path(f"{run}.rebuild") / "run.json") == 2 and Path(f"{run}.old").is_dir()
    lines: list[str] = []
    assert train(new, store, run, log=lines.append) == "up to date"  # no --force needed: the swap was decided
    assert any("put the finished rebuild" in line for line in lines), lines
    assert _training_rows(run) == [1, 2] and not Path(f"{run}.old").exists()


def test_a_forecast_being_written_in_the_run_holds_the_swap_back_until_the_next_force(tiny_store, tmp_path: Path,
                                                                                       repo: Path) -> None:
    _, overrides, store = tiny_store
    run = tmp_path / "run"
    assert train(_cfg(repo, overrides, *OLD), store, run, **QUIET) == "trained"
    old, new = _files(run), _cfg(repo, overrides, *NEW, "train.steps=2")
    forecasts = run / "forecasts.zarr"
    with output_lock(lock_file(forecasts), forecasts, "test"):  # this test process is a forecast writing there
        with pytest.raises(TrainingError, match=f"{forecasts} is being written by pid {os.getpid()}") as refused:
            train(new, store, run, force=True, **QUIET)
    assert f"{run}.rebuild has finished but cannot replace {run} now" in str(refused.value)
    assert _files(run) == old and _step(Path(f"{run}.rebuild") / "run.json") == 2
    lines: list[str] = []
    assert train(new, store, run, force=True, log=lines.append) == "trained"  # nothing left to train: swapped in
    assert f"train: {run} replaced by its rebuild" in lines and _training_rows(run) == [1, 2]


def test_a_kill_between_the_checkpoint_and_run_json_loses_no_metrics_rows_and_the_run_finishes(
        tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg, run = _cfg(repo, overrides, *OLD), tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:  # latest.pt holds step 4, run.json still says 2
        _stop_at(patch, train_module, "write_json_atomic", lambda path, data: data.get("step") == 4)
        with pytest.raises(Killed):
            train(cfg, store, run, **QUIET)
    assert _step(run / "run.json") == 2 and _training_rows(run) == [1, 2, 3, 4]
    assert train(cfg, store, run, **QUIET) == "trained"  # nothing to train: the record catches up
    assert _training_rows(run) == [1, 2, 3, 4] and _step(run / "run.json") == 4
    assert train(cfg, store, run, **QUIET) == "up to date"
