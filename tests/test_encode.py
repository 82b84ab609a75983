"""Stage 1: the latent store — content, idempotence, refusal of stale inputs, kill -9 resume, torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import imported_modules, make_tiny_vqvae
from pipeline.data.cache import LatentSplit
from pipeline.data.checked_store import open_store
from pipeline.data.clips import to_model_range
from pipeline.data.shards import ShardReader
from pipeline.stages.encode import encode_latents
from pipeline.vqvae import build_vqvae

QUIET = dict(log=lambda _: None)


def _cli(repo: Path, overrides: list[str], store: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [*(launcher or [sys.executable]), str(repo / "encode_latents.py"), "--config", str(repo / "configs" / "demo.yaml"),
            *sets, "--store", str(store), *extra]


def _arrays(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {f"{s}/{name}": root[s][name][:] for s in root.group_keys() for name in ("latents", "offsets", "lengths", "done")}


def _assert_same_store(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)
    assert zarr.open_group(str(a)).attrs["fingerprint"] == zarr.open_group(str(b)).attrs["fingerprint"]


def _videos_done(store: Path) -> int:
    """Videos flagged done in the train split so far (0 while the store is still being created)."""
    try:
        return int(zarr.open_group(str(store), mode="r")["train"]["done"][:].sum())
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return 0


def test_store_content_and_up_to_date(tiny, tmp_path: Path) -> None:
    cfg, _ = tiny
    cfg.encode.hflip_view = True
    store = str(tmp_path / "latents.zarr")
    assert encode_latents(cfg, store, **QUIET) == "encoded"
    root = open_store(store)
    assert root.attrs["complete"] and root.attrs["views"] == ["identity", "hflip"]
    assert set(root.attrs["stats"]) == {"train", "val", "test"} and len(root.attrs["stats"]["train"]["mean"]) == 4
    split = LatentSplit(store, "train")
    assert split.latents.shape[0] == 2 and split.latent_shape == (4, 4, 4)
    assert np.all(split.offsets % cfg.encode.chunk_frames == 0) and split.done.all()
    assert [v["source"] for v in split.videos][:2] == ["demo/train/00000", "demo/train/00001"]
    reader, vq = ShardReader(Path(cfg.data.root) / "train"), build_vqvae(cfg.vqvae, cfg.data.image_size)
    frames = reader.read_frames(3)
    np.testing.assert_array_equal(split.video(3, view=0), vq.encode(to_model_range(frames)).numpy())
    np.testing.assert_array_equal(split.video(3, view=1), vq.encode(to_model_range(frames[:, :, ::-1])).numpy())
    assert encode_latents(cfg, store, **QUIET) == "up to date"


def test_replaced_checkpoint_is_refused_by_name(tiny, tmp_path: Path, repo: Path) -> None:
    cfg, overrides = tiny
    store = tmp_path / "latents.zarr"
    subprocess.run(_cli(repo, overrides, store), check=True, capture_output=True)
    before = _arrays(store)
    make_tiny_vqvae(cfg, Path(cfg.vqvae.ckpt), seed=1)  # a different checkpoint at the same path
    result = subprocess.run(_cli(repo, overrides, store), capture_output=True, text=True)
    assert result.returncode == 1
    assert "vqvae.ckpt_sha256" in result.stderr and cfg.vqvae.ckpt in result.stderr and "--force" in result.stderr
    for key, value in _arrays(store).items():
        np.testing.assert_array_equal(value, before[key])
    subprocess.run(_cli(repo, overrides, store, "--force"), check=True, capture_output=True)
    assert not np.array_equal(_arrays(store)["train/latents"], before["train/latents"], equal_nan=True)  # NaN padding


def test_corrupt_shard_names_file_and_keeps_store(tiny, tmp_path: Path) -> None:
    cfg, _ = tiny
    store = str(tmp_path / "latents.zarr")
    encode_latents(cfg, store, **QUIET)
    before = _arrays(Path(store))
    shard = Path(cfg.data.root) / "val" / "shard_0001.hdf5"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(Exception, match=r"val/shard_0001\.hdf5"):
        encode_latents(cfg, store, **QUIET)
    for key, value in _arrays(Path(store)).items():
        np.testing.assert_array_equal(value, before[key])


def test_kill9_then_resume_equals_uninterrupted(tiny, tmp_path: Path, repo: Path) -> None:
    cfg, overrides = tiny
    overrides = [*overrides, "demo.videos={train: 16, val: 2, test: 2}", "encode.jitter_views=1"]
    from pipeline.run.config import load_config
    from pipeline.stages.data import prepare_data

    prepare_data(load_config(repo / "configs" / "demo.yaml", overrides), Path(cfg.data.root), **QUIET)
    reference, killed = tmp_path / "reference.zarr", tmp_path / "killed.zarr"
    subprocess.run(_cli(repo, overrides, reference), check=True, capture_output=True)

    process = subprocess.Popen(_cli(repo, overrides, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and _videos_done(killed) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = zarr.open_group(str(killed))["train"]["done"][:]
    assert 3 <= done.sum() < len(done), "the kill should land mid-run"
    assert not zarr.open_group(str(killed)).attrs["complete"]
    result = subprocess.run(_cli(repo, overrides, killed), capture_output=True, text=True, check=True)
    assert "resuming" in result.stdout
    _assert_same_store(reference, killed)
    # Nothing left to do: the launch says so without loading torch; a dry run still decides the usual way.
    again = subprocess.run(_cli(repo, overrides, killed), capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.stdout.strip() == f"encode: {killed} is up to date (fingerprint {zarr.open_group(str(killed)).attrs['fingerprint']})"
    assert "pipeline.stages.encode" in imported_modules(again.stderr) and "torch" not in imported_modules(again.stderr)
    dry = subprocess.run(_cli(repo, overrides, killed, "--dry-run"), capture_output=True, text=True, check=True)
    assert "threads:" in dry.stdout and "is up to date" in dry.stdout
    # A shard touched (same bytes, new mtime): the check never hashes, so it leaves the decision to the stage,
    # which hashes the shard once and finds the store up to date.
    shard = sorted((Path(cfg.data.root) / "train").glob("*.hdf5"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000_000))
    touched = subprocess.run(_cli(repo, overrides, killed), capture_output=True, text=True, check=True)
    assert "threads:" in touched.stdout and "is up to date" in touched.stdout


def test_the_up_to_date_check_never_hashes(tmp_path: Path) -> None:
    from pipeline.run.records import KnownHashes, cached_sha256

    path = tmp_path / "file.bin"
    path.write_bytes(b"content")
    hashes: dict = {}
    digest = cached_sha256(path, hashes)
    known = KnownHashes(hashes)
    assert cached_sha256(path, known) == digest  # held and current: answered
    path.write_bytes(b"other content")
    assert cached_sha256(path, known) is None and cached_sha256(tmp_path / "file.bin", {}) != digest


def test_torchrun_two_processes_equal_one(tiny, tmp_path: Path, repo: Path) -> None:
    _, overrides = tiny
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    # torchrun runs each rank with one OpenMP thread; the thread count changes float summation order in the
    # convolutions, so the one-process reference runs with one thread too (bitwise equality, same arithmetic).
    single_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(repo, overrides, one), check=True, capture_output=True, env=single_thread)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(_cli(repo, overrides, two, launcher=torchrun), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_store(one, two)
