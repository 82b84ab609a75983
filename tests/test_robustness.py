"""Hardening: no orphaned workers, no lost outputs. Every test injects the fault it guards against.

Killed launchers, two writers at once, a kill -9 inside a write, a resume with another world size, bad inputs
given with --force, a full disk, a read-only output directory and checkpoints that hold pickled objects.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import zarr

import pipeline.stages.train as train_module
from conftest import make_tiny_vqvae, run_make
from pipeline.run.checkpoints import save_checkpoint
from pipeline.run.config import load_config
from pipeline.stages.encode import encode_latents
from pipeline.stages.forecast import forecast
from pipeline.run.locks import lock_file, output_lock
from pipeline.core.model import build_model
from pipeline.run.records import process_alive
from pipeline.stages.train import TrainingError, train
from pipeline.stages.train_monitor import SampleVideos

SMALL_NET = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
             "train.sample_every=0"]
FORECAST = ["sample.n_samples=2", "sample.steps=3", "forecast.media_videos=0"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # subprocesses: two OpenMP threads on shared cores crawl
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
QUIET = dict(log=lambda _: None)

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """Stands in for kill -9 at a chosen point: nothing of the stage runs after it (no stage code catches it)."""


def _stop_at(patch: pytest.MonkeyPatch, owner, name: str, when: Callable[..., bool]) -> None:
    """Make ``owner.name`` raise Killed on the call whose arguments satisfy ``when``."""
    original = getattr(owner, name)

    def stopping(*args, **kwargs):
        if when(*args, **kwargs):
            raise Killed
        return original(*args, **kwargs)

    patch.setattr(owner, name, stopping)


def _cfg(repo: Path, overrides: list[str], *extra: str):
    return load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL_NET, *extra], smoke=True)


def _interrupted_run(cfg, store: str, run: Path, step: int) -> None:
    """Train ``run`` until update ``step`` (0-based) starts, then stop as a kill -9 would."""
    with pytest.MonkeyPatch.context() as patch:
        _stop_at(patch, train_module, "train_step", lambda *args: args[-1] == step)
        with pytest.raises(Killed):
            train(cfg, store, run, **QUIET)


def _script(repo: Path, name: str, overrides: list[str], *args: str, smoke: bool = True) -> list[str]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [sys.executable, str(repo / name), "--config", str(repo / "configs" / "demo.yaml"),
            *(["--smoke"] if smoke else []), *sets, *args]


def _train_cli(repo: Path, overrides: list[str], store: str, out: Path, *extra: str) -> list[str]:
    return _script(repo, "train_latent.py", [*overrides, *SMALL_NET, *extra], "--store", store, "--out", str(out))


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD, timeout=300)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one 'error: ...' line of a failed stage, which must end without a traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _step(run_json: Path) -> int:
    try:
        return int(json.loads(run_json.read_text()).get("step", 0))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _training_rows(run: Path) -> list[int]:
    """The steps of the training rows of a run's metrics.jsonl, in file order (validation rows left out)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


def _holder_pid(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text()).get("pid")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _arrays(url: Path | str) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(url), mode="r")
    return {name: np.asarray(array[:]) for name, array in root.arrays()} | {
        f"{group}/{name}": np.asarray(array[:]) for group, sub in root.groups() for name, array in sub.arrays()}


def _assert_unchanged(url: Path | str, before: dict[str, np.ndarray]) -> None:
    after = _arrays(url)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert zarr.open_group(str(url), mode="r").attrs["complete"]


@contextmanager
def _mounted(directory: Path, *mount_args: str) -> Iterator[Path]:
    """``directory`` with a file system mounted on it for the block; skips the test where mounting is not allowed."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", *mount_args, str(directory)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if result.returncode:
        pytest.skip(f"mounting is not permitted here (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


@contextmanager
def _read_only(directory: Path) -> Iterator[Path]:
    """``directory`` bind-mounted read-only onto itself (root bypasses file permissions, not a read-only mount)."""
    with _mounted(directory, "--bind", str(directory)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield directory


# ----------------------------------------------------------------------------------------------------------
# 1. Workers die with their launcher
# ----------------------------------------------------------------------------------------------------------


def test_kill9_of_torchrun_ends_both_ddp_workers(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    command = _train_cli(repo, overrides, store, tmp_path, "train.steps=100000", "train.latest_every=2")
    launcher = subprocess.Popen([*TORCHRUN, *command[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=ONE_THREAD)
    workers: list[int] = []
    try:
        run_json = tmp_path / "demo-smoke" / "runs" / "ours" / "run.json"
        _wait_for(lambda: _step(run_json) >= 2, 240, "both ranks to train")
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        start = time.time()
        _wait_for(lambda: not any(process_alive(pid) for pid in workers), 10, "the orphaned workers to end")
        assert time.time() - start < 5
    finally:
        _kill_all(launcher, workers)


def _kill_all(process: subprocess.Popen, pids: list[int]) -> None:
    """What a test leaves running: the processes ``pids`` that are still alive, then ``process`` (reaped)."""
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.kill()
    process.wait()


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def test_kill9_of_make_ends_the_stage_torchrun_and_its_workers(tiny, tmp_path: Path, repo: Path) -> None:
    """make -> recipe shell -> supervisor -> torchrun -> workers: killing make ends everything below it."""
    _, overrides = tiny
    sets = " ".join(f"--set {shlex.quote(item)}" for item in [*overrides, *SMALL_NET, "train.steps=100000",
                                                               "train.latest_every=2"])
    make = subprocess.Popen(["make", "-s", "train", "NPROC=2", f"OUT={tmp_path / 'out'}", f"PY={sys.executable}",
                             "STAMP=", f"ARGS={sets}"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ONE_THREAD)
    below: list[int] = []
    try:
        _wait_for(lambda: _step(tmp_path / "out" / "demo" / "runs" / "ours" / "run.json") >= 2, 240, "training")
        below = _descendants(make.pid)
        assert len(below) >= 4, below  # shell, supervisor, torchrun, two workers
        os.kill(make.pid, signal.SIGKILL)
        make.wait()
        _wait_for(lambda: not any(process_alive(pid) for pid in below), 15, "everything below make to end")
    finally:
        _kill_all(make, below)


# ----------------------------------------------------------------------------------------------------------
# 2. One writer per output
# ----------------------------------------------------------------------------------------------------------


def test_two_trainings_of_one_run_one_is_refused_then_the_dead_holders_lock_is_taken_over(tiny_store, tmp_path: Path,
                                                                                           repo: Path) -> None:
    _, overrides, store = tiny_store
    run = tmp_path / "demo-smoke" / "runs" / "ours"
    command = _train_cli(repo, overrides, store, tmp_path, "train.steps=100000", "train.latest_every=2")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    try:
        _wait_for(lambda: _holder_pid(lock_file(run)) == first.pid and _step(run / "run.json") >= 2, 120,
                  "the first training to hold the run")
        line = _error_line(_run(command))  # the same command again, while the first one trains
        assert f"pid {first.pid} on host {socket.gethostname()} since " in line and "train_latent.py" in line, line
        assert str(run) in line
    finally:
        first.kill()  # SIGKILL: its lock record stays in the file, its lock goes with it
        first.wait()
    steps_before = _step(run / "run.json")
    again = _run(_train_cli(repo, overrides, store, tmp_path, "train.steps=4", "train.latest_every=2", "train.log_every=1")
                 + ["--force"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"taking over the lock of {run} from pid {first.pid}" in again.stdout, again.stdout
    assert _training_rows(run) == [1, 2, 3, 4] and _step(run / "run.json") == 4 and steps_before >= 2
    assert lock_file(run).read_text() == ""  # released: the next holder will not think this one died


def test_a_held_latent_store_refuses_make_encode_naming_its_holder(tiny, tmp_path: Path) -> None:
    cfg, overrides = tiny
    store = tmp_path / "out" / "demo" / "latents.zarr"
    args = " ".join(f"--set {shlex.quote(item)}" for item in overrides)
    variables = [f"OUT={tmp_path / 'out'}", f"DATA_DIR={cfg.data.root}", f"ARGS={args}"]
    with output_lock(lock_file(store), store, "test"):  # this test process is the other writer
        result = run_make("encode", *variables)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{store} is being written by pid {os.getpid()} on host {socket.gethostname()}" in result.stderr
    assert "pytest" in result.stderr and not store.exists()
    done = run_make("encode", *variables)  # released: the next encode proceeds
    assert done.returncode == 0 and "encode: created" in done.stdout, done.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------
# 3-6. Training: metrics cut short, temporaries of dead writers, sample videos, world size
# ----------------------------------------------------------------------------------------------------------


def test_a_metrics_line_cut_short_by_a_crash_does_not_break_resume(tiny_store, tmp_path: Path, repo: Path,
                                                                    capsys) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.steps=6", "train.latest_every=2", "train.log_every=1")
    run = tmp_path / "run"
    _interrupted_run(cfg, store, run, step=4)  # checkpoint at 4, rows 1-4
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 0.12')  # a row whose write the crash cut short
    capsys.readouterr()
    assert train(cfg, store, run, **QUIET) == "trained"
    assert "metrics.jsonl: dropped 1 unreadable line(s)" in capsys.readouterr().out
    assert _training_rows(run) == [1, 2, 3, 4, 5, 6]


def test_temporaries_of_dead_writers_are_removed_on_resume_and_live_ones_kept(tiny_store, tmp_path: Path,
                                                                             repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.steps=4", "train.latest_every=2")
    run = tmp_path / "run"
    _interrupted_run(cfg, store, run, step=2)
    dead, live = _dead_pid(), subprocess.Popen(["sleep", "60"])
    try:
        stale = [run / "checkpoints" / f"latest.pt.tmp-{dead}", run / f"run.json.tmp-{dead}"]
        writing = run / "checkpoints" / f"0000002.pt.tmp-{live.pid}"  # another process writing right now
        for path in [*stale, writing]:
            path.write_bytes(b"a write that stopped halfway")
        lines: list[str] = []
        assert train(cfg, store, run, log=lines.append) == "trained"
        assert not any(path.exists() for path in stale) and writing.exists()
        assert any("train: removed 2 temporary file(s) left by interrupted writes" in line for line in lines), lines
    finally:
        live.kill()
        live.wait()


def test_the_sample_video_of_a_checkpointed_step_survives_an_interrupt(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.steps=6", "train.latest_every=2", "train.sample_every=2",
               "train.sample_videos=1", "train.sample_steps=2")
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:  # killed while writing the video of step 4
        _stop_at(patch, SampleVideos, "write", lambda self, done, *rest: done == 4)
        with pytest.raises(Killed):
            train(cfg, store, run, **QUIET)
    assert train(cfg, store, run, **QUIET) == "trained"
    assert sorted(p.name for p in (run / "media").iterdir()) == [f"real_raw_ema_{s:07d}.mp4" for s in (2, 4, 6)]


def test_a_multi_process_run_of_an_earlier_trainer_is_not_continued(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.steps=4", "train.latest_every=2")
    run = tmp_path / "run"
    _interrupted_run(cfg, store, run, step=2)
    latest = run / "checkpoints" / "latest.pt"
    ckpt = torch.load(latest, weights_only=True)
    # as written by an earlier version with 2 processes: each drew its own batches from (seed, rank, step)
    ckpt["sampler"] = {"kind": "TripletStream", "next_step": 2, "seed": 0, "world_size": 2}
    torch.save(ckpt, latest)
    with pytest.raises(TrainingError) as refused:
        train(cfg, store, run, **QUIET)
    message = str(refused.value)
    assert str(latest) in message and "earlier version" in message and "2 processes" in message
    assert "RUN=<new name>" in message and "train.init_from" in message
    assert _step(run / "run.json") == 2  # nothing was trained
    ckpt["sampler"]["world_size"] = 1  # one process drew what this version draws: it continues
    torch.save(ckpt, latest)
    assert train(cfg, store, run, **QUIET) == "trained" and _step(run / "run.json") == 4


# ----------------------------------------------------------------------------------------------------------
# 7. Inputs are validated before anything is created or replaced; a rebuild is built beside the old output
# ----------------------------------------------------------------------------------------------------------


def _encode_cli(repo: Path, overrides: list[str], store: Path, *extra: str) -> list[str]:
    return _script(repo, "encode_latents.py", overrides, "--store", str(store), *extra, smoke=False)


def test_a_first_encode_with_a_truncated_vqvae_creates_nothing(tiny, tmp_path: Path, repo: Path) -> None:
    cfg, overrides = tiny
    vq = Path(cfg.vqvae.ckpt)
    good = vq.read_bytes()
    vq.write_bytes(good[: len(good) // 2])
    store = tmp_path / "latents.zarr"
    line = _error_line(_run(_encode_cli(repo, overrides, store)))
    assert str(vq) in line and not store.exists()
    vq.write_bytes(good)
    assert encode_latents(cfg, str(store), **QUIET) == "encoded"  # nothing left behind to refuse it


def test_force_with_a_wrong_architecture_vqvae_keeps_the_latent_store(tiny, tmp_path: Path, repo: Path) -> None:
    cfg, overrides = tiny
    store = tmp_path / "latents.zarr"
    encode_latents(cfg, str(store), **QUIET)
    before = _arrays(store)
    other = load_config(repo / "configs" / "demo.yaml", [*overrides, "vqvae.ch=64"])
    make_tiny_vqvae(other, Path(cfg.vqvae.ckpt))  # another architecture at the configured path
    line = _error_line(_run(_encode_cli(repo, overrides, store, "--force")))
    assert str(cfg.vqvae.ckpt) in line
    _assert_unchanged(store, before)
    assert not Path(f"{store}.rebuild").exists()


def test_a_force_rebuild_killed_midway_keeps_the_old_store_then_resumes(tiny, tmp_path: Path, repo: Path) -> None:
    cfg, overrides = tiny
    overrides = [*overrides, "demo.videos={train: 16, val: 2, test: 2}", "encode.jitter_views=1"]
    from pipeline.stages.data import prepare_data

    cfg = load_config(repo / "configs" / "demo.yaml", overrides)
    prepare_data(cfg, Path(cfg.data.root), **QUIET)
    store, reference = tmp_path / "latents.zarr", tmp_path / "reference.zarr"
    encode_latents(cfg, str(store), **QUIET)
    before = _arrays(store)
    make_tiny_vqvae(cfg, Path(cfg.vqvae.ckpt), seed=1)  # new weights: the store is stale, --force rebuilds
    rebuild = Path(f"{store}.rebuild")
    process = subprocess.Popen(_encode_cli(repo, overrides, store, "--force"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ONE_THREAD)

    def rebuilt() -> int:
        try:
            return int(zarr.open_group(str(rebuild), mode="r")["train"]["done"][:].sum())
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return 0

    _wait_for(lambda: rebuilt() >= 3, 120, "the rebuild to encode a few videos")
    process.kill()
    process.wait()
    assert rebuilt() < 16, "the kill should land mid-rebuild"
    _assert_unchanged(store, before)  # the old store stays whole and usable meanwhile
    resumed = _run(_encode_cli(repo, overrides, store, "--force"))
    assert resumed.returncode == 0 and "resuming the rebuild" in resumed.stdout, resumed.stderr[-3000:]
    assert not rebuild.exists() and not Path(f"{store}.old").exists()
    encode_latents(cfg, str(reference), **QUIET)
    new = _arrays(reference)
    _assert_unchanged(store, new)  # equal to a one-shot build with the new VQVAE


def _flow_checkpoint(cfg, path: Path, **entries) -> Path:
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    save_checkpoint(path, {"model": state, "ema": state, "step": 3, "config": cfg.to_dict(), **entries})
    return path


def _forecast_cli(repo: Path, overrides: list[str], store: str, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return _script(repo, "forecast.py", [*overrides, *SMALL_NET, *FORECAST], "--store", store, "--out", str(out),
                   "--ckpt", str(ckpt), *extra, smoke=False)


def test_forecast_force_with_a_truncated_checkpoint_keeps_the_forecasts(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL_NET, *FORECAST])
    ckpt = _flow_checkpoint(cfg, tmp_path / "flow.pt")
    run = tmp_path / "out" / "demo" / "runs" / "ours"
    assert forecast(cfg, store, run, ckpt=ckpt, **QUIET) == "forecast"
    before = _arrays(run / "forecasts.zarr")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    line = _error_line(_run(_forecast_cli(repo, overrides, store, tmp_path / "out", ckpt, "--force")))
    assert str(ckpt) in line and not (run / "forecasts.zarr.rebuild").exists()
    _assert_unchanged(run / "forecasts.zarr", before)


# ----------------------------------------------------------------------------------------------------------
# 8. Errors are one line naming the file
# ----------------------------------------------------------------------------------------------------------


def test_a_full_disk_during_training_is_one_line_naming_the_checkpoint(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    with _mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as out:  # a checkpoint is ~1.2 MB
        line = _error_line(_run(_train_cli(repo, overrides, store, out, "train.steps=4", "train.latest_every=2")))
        latest = out / "demo-smoke" / "runs" / "ours" / "checkpoints" / "latest.pt"
        assert f"cannot write {latest}: " in line and "MiB free on its file system" in line, line
        assert not list(latest.parent.glob("*.tmp-*"))


def test_a_read_only_output_directory_is_one_line_for_train_and_eval(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL_NET, *FORECAST])
    forecast(cfg, store, tmp_path / "run", ckpt=_flow_checkpoint(cfg, tmp_path / "flow.pt"), **QUIET)
    with _read_only(tmp_path / "out") as out:
        trained = _error_line(_run(_train_cli(repo, overrides, store, out, "train.steps=2")))
        assert str(out / "demo-smoke" / "runs" / "ours") in trained and "Read-only file system" in trained
        evaluate = _script(repo, "evaluate.py", [*overrides, *SMALL_NET, *FORECAST], "--out", str(out),
                           "--forecasts", str(tmp_path / "run" / "forecasts.zarr"), smoke=False)
        evaluated = _error_line(_run(evaluate))
        assert str(out / "demo" / "runs" / "ours" / "eval") in evaluated and "Read-only file system" in evaluated


class AuthorsConfig:
    """A class the loader cannot import: pickled, it comes back as an inert record."""


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


def test_checkpoints_holding_pickled_objects_are_one_line_naming_the_file(tiny_store, tmp_path: Path, repo: Path,
                                                                          monkeypatch) -> None:
    _, overrides, store = tiny_store
    cfg = load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL_NET, *FORECAST])
    records = {"model": tmp_path / "model_record.pt", "step": tmp_path / "step_record.pt"}
    torch.save({"model": AuthorsConfig(), "step": 5}, records["model"])  # published-style, weights an object
    _flow_checkpoint(cfg, records["step"], step=AuthorsConfig())  # ours, the step an object
    for entry, path in records.items():
        line = _error_line(_run(_forecast_cli(repo, overrides, store, tmp_path / "out", path)))
        assert f"{path}: entry '{entry}' is a pickled " in line and "AuthorsConfig" in line, line

    train_cfg = _cfg(repo, overrides, "train.steps=4", "train.latest_every=2")
    run = tmp_path / "out" / "demo-smoke" / "runs" / "ours"
    _interrupted_run(train_cfg, store, run, step=2)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    torch.save(Payload(), run / "checkpoints" / "latest.pt")  # a payload file as the run's latest checkpoint
    line = _error_line(_run(_train_cli(repo, overrides, store, tmp_path / "out", "train.steps=4", "train.latest_every=2")))
    assert f"{run / 'checkpoints' / 'latest.pt'}: not a flow checkpoint" in line and "system" in line, line
    assert not marker.exists()


def test_a_finished_stage_leaves_its_process_group_on_every_rank(tmp_path: Path) -> None:
    """run_stage ends a stage's success with a barrier and leaving the group, so no rank exits while a peer still
    talks to it (a rank that did could abort its peer: gloo's "terminate called without an active exception")."""
    import torch.distributed as dist

    import pipeline.run.dist  # noqa: F401  (loaded, as by every torch stage; run_stage looks it up)
    from pipeline.run.cli import run_stage

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        run_stage("encode", lambda: None, ())
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
