"""The demo generator's state sidecar: same pixels as before, the recorded state renders them, the stage keeps it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.run.config import DemoConfig, load_config
from pipeline.demo.generator import BACKGROUND, PALETTE, _sprite_mask, generate_demo, render_video, simulate_video
from pipeline.demo.state import STATE_FILE, load_state
from pipeline.data.shards import ShardReader, find_shards
from pipeline.stages.data import prepare_data
from pipeline.run.records import MANIFEST, read_json, write_json_atomic

# sha256[:16] of render_video's bytes (golden): recording the state must not change a single draw.
GOLDEN_VIDEOS = {
    "default64/0/0": "ef158e9988840716", "default64/1/3": "303cdc4270b4369a", "default64/2/7": "45423562a4e23ec3",
    "small32/0/0": "53d99b994679a399", "small32/1/3": "9258dbcdd95f3508", "small32/2/7": "a0ce2cee6032b0b0",
}
SETTINGS = {"default64": (DemoConfig(frames=12), 64),
            "small32": (DemoConfig(frames=10, sprite_size=[4, 8], kick_prob=0.5), 32)}
SMALL = DemoConfig(videos={"train": 2, "test": 5}, frames=12)


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
def test_videos_are_unchanged_by_recording_the_state(name: str) -> None:
    setting, code, index = name.split("/")
    cfg, size = SETTINGS[setting]
    rng = lambda: np.random.default_rng([cfg.seed, int(code), int(index)])  # noqa: E731
    video = render_video(cfg, size, rng())
    assert hashlib.sha256(video.tobytes()).hexdigest()[:16] == GOLDEN_VIDEOS[name]
    np.testing.assert_array_equal(simulate_video(cfg, size, rng())[0], video)


def _render(track, t: int, size: int) -> np.ndarray:
    """Frame t drawn from the recorded state alone (the generator's own mask)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = BACKGROUND
    for k in range(len(track.sizes)):
        frame[_sprite_mask(track.positions[t, k], track.sizes[k], track.discs[k], yy, xx)] = PALETTE[track.colours[k]]
    return frame


def test_sidecar_state_renders_the_shard_frames(tmp_path: Path) -> None:
    generate_demo(SMALL, 64, tmp_path)
    state = load_state(tmp_path / "test")
    reader = ShardReader(tmp_path / "test")
    assert len(state) == len(reader) == 5
    assert state.positions.shape == (5, 12, SMALL.max_sprites, 2) and state.present.shape == (5, SMALL.max_sprites)
    for v in range(len(reader)):
        assert state.sources[v] == reader.videos[v].source == f"demo/test/{v:05d}"
        assert state.index(state.sources[v]) == v
        track, frames = state.track(v), reader.read_frames(v)
        assert np.all((track.positions >= 0) & (track.positions <= 64 - track.sizes[:, None]))
        for t in range(len(frames)):
            np.testing.assert_array_equal(_render(track, t, 64), frames[t])
    process = state.process
    assert (process["kick_prob"], process["kick_scale"], process["max_speed"], process["image_size"]) == (0.1, 1.5, 4.0, 64)
    assert process["split"] == "test" and process["split_code"] == 2 and process["palette"] == PALETTE.tolist()
    assert [p.name for p in find_shards(tmp_path / "test")] == ["shard_0001.hdf5"]  # the sidecar is not a shard


def test_recorded_velocity_is_the_one_the_next_step_starts_from(tmp_path: Path) -> None:
    """Without kicks, position[t + 1] = position[t] + velocity[t] wherever no wall is hit."""
    cfg = DemoConfig(videos={"test": 3}, frames=20, kick_prob=0.0)
    generate_demo(cfg, 64, tmp_path)
    state = load_state(tmp_path / "test")
    for v in range(len(state)):
        track = state.track(v)
        moved = track.positions[:-1] + track.velocities[:-1]
        inside = np.all((moved >= 0) & (moved <= 64 - track.sizes[:, None]), axis=-1)
        assert inside.mean() > 0.5
        np.testing.assert_array_equal(moved[inside], track.positions[1:][inside])


def test_regenerating_gives_the_same_state_and_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate_demo(SMALL, 32, tmp_path / name)
    for split in SMALL.videos:
        a, b = (tmp_path / name / split / STATE_FILE for name in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
    a, b = load_state(tmp_path / "a" / "train"), load_state(tmp_path / "b" / "train")
    for field in ("positions", "velocities", "sizes", "discs", "colours", "present"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.sources == b.sources and json.dumps(a.process) == json.dumps(b.process)


def test_data_stage_writes_sidecars_and_rebuilds_without_them(demo_config_path: Path, tmp_path: Path) -> None:
    cfg = load_config(demo_config_path, smoke=True)
    cfg.demo.videos = {"train": 2, "val": 1, "test": 2}
    cfg.demo.frames = 8
    root, logs = tmp_path / "demo", []
    prepare_data(cfg, root, log=logs.append)
    manifest = read_json(root / MANIFEST)
    assert set(manifest["sidecars"]) == {f"{s}/{STATE_FILE}" for s in ("train", "val", "test")}
    assert not list(tmp_path.glob(".*staging*"))
    assert len(load_state(root / "val")) == 1
    prepare_data(cfg, root, log=logs.append)
    assert "up to date" in logs[-1]

    shard_bytes = (root / "test" / "shard_0001.hdf5").read_bytes()
    (root / "test" / STATE_FILE).unlink()
    prepare_data(cfg, root, log=logs.append)
    assert "changed: state sidecars" in logs[-2] and (root / "test" / STATE_FILE).is_file()
    assert (root / "test" / "shard_0001.hdf5").read_bytes() == shard_bytes  # regenerated, byte-identical

    old = read_json(root / MANIFEST)  # a tree written before sidecars existed: its manifest lists none
    del old["sidecars"]
    write_json_atomic(root / MANIFEST, old)
    prepare_data(cfg, root, log=logs.append)
    assert "changed: state sidecars" in logs[-2] and "sidecars" in read_json(root / MANIFEST)
