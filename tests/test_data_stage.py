"""The data stage through its real entry points: `make data`, determinism, up-to-date reruns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.run.config import load_config
from pipeline.data.shards import ShardReader
from pipeline.stages.data import prepare_data


def _make_data(repo: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = ["make", "-s", "data", f"DATA_DIR={data_dir}", "SMOKE=1", f"PY={sys.executable}", "STAMP=", *extra]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)


def test_make_data_writes_demo_shards_then_is_up_to_date(repo: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    first = _make_data(repo, data_dir)
    assert first.returncode == 0, first.stderr
    for split in ("train", "val", "test"):
        assert (data_dir / split / "shard_0001.hdf5").is_file()
    reader = ShardReader(data_dir / "train", image_size=64)
    assert len(reader) == 16 and reader.lengths.min() >= 48
    second = _make_data(repo, data_dir)
    assert "up to date" in second.stdout
    third = _make_data(repo, data_dir, "ARGS=--set demo.kick_prob=0.2")
    assert "changed: demo.kick_prob" in third.stdout


def test_config_typo_fails_cleanly(repo: Path, tmp_path: Path) -> None:
    result = _make_data(repo, tmp_path / "d", "ARGS=--set demo.kick_porb=0.2")
    assert result.returncode != 0
    assert "unknown key 'demo.kick_porb'" in result.stderr


def test_demo_generation_is_deterministic(demo_config_path: Path, tmp_path: Path) -> None:
    cfg = load_config(demo_config_path, smoke=True)
    for name in ("a", "b"):
        prepare_data(cfg, tmp_path / name, log=lambda _: None)
    a, b = ShardReader(tmp_path / "a" / "test"), ShardReader(tmp_path / "b" / "test")
    for i in range(len(a)):
        np.testing.assert_array_equal(a.read_frames(i), b.read_frames(i))
    moving = np.abs(np.diff(a.read_frames(0).astype(int), axis=0)).sum(axis=(1, 2, 3))
    assert (moving > 0).mean() > 0.9  # sprites move in (almost) every frame


def test_sprites_get_random_kicks(demo_config_path: Path) -> None:
    """Two videos with the same start but different kick draws diverge: the future is uncertain."""
    from pipeline.demo.generator import render_video

    cfg = load_config(demo_config_path).demo
    calm = render_video(cfg, 64, np.random.default_rng(3))
    again = render_video(cfg, 64, np.random.default_rng(3))
    np.testing.assert_array_equal(calm, again)
    cfg.kick_prob = 1.0
    kicked = render_video(cfg, 64, np.random.default_rng(3))
    assert not np.array_equal(calm[-1], kicked[-1])


def test_entry_point_help_lists_options(repo: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.data", "--help"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--config", "--set", "--smoke", "--raw", "--force"):
        assert option in result.stdout
