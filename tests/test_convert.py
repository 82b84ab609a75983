"""Converters: KTH (both split rules), CLEVRER id ranges, generic folders; mp4/avi/PNG inputs made here."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.run.config import load_config
from pipeline.data.convert import ConvertError, assign_splits, natural_key, read_raw_video, resize_frames
from pipeline.data.shards import ShardReader
from pipeline.stages.data import prepare_data


def _frames(count: int, height: int = 30, width: int = 40) -> np.ndarray:
    """Frames whose mean brightness encodes their index (survives lossy codecs)."""
    return np.stack([np.full((height, width, 3), 20 + 15 * t, dtype=np.uint8) for t in range(count)])


def _video(path: Path, count: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = {"codec": "mpeg4"} if path.suffix == ".avi" else {}
    iio.imwrite(path, _frames(count), fps=25, macro_block_size=1, **codec)


def _png_folder(path: Path, count: int = 12) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(_frames(count)):
        iio.imwrite(path / f"image-{t + 1}.png", frame)  # unpadded names: image-10 sorts after image-9 only naturally


def _kth_raw(root: Path) -> None:
    for person, scenario in [(1, 1), (2, 3), (17, 4), (18, 2)]:
        _video(root / "walking" / f"person{person:02d}_walking_d{scenario}_uncomp.avi")
    _video(root / "boxing" / "person01_boxing_d1_uncomp.avi")  # class not kept by default
    _png_folder(root / "running" / "person03_running_d1")


def test_natural_sort_and_png_order(tmp_path: Path) -> None:
    assert sorted(["image-10.png", "image-9.png", "image-100.png"], key=natural_key) == ["image-9.png", "image-10.png", "image-100.png"]
    _png_folder(tmp_path / "clip")
    frames = read_raw_video(tmp_path / "clip")
    assert frames.shape == (12, 30, 40, 3)
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 20 + 15 * np.arange(12))


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_files_decode(tmp_path: Path, suffix: str) -> None:
    _video(tmp_path / f"v{suffix}", count=8)
    frames = read_raw_video(tmp_path / f"v{suffix}")
    assert frames.shape == (8, 30, 40, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), 20 + 15 * np.arange(8), atol=4)


def test_aspect_rules() -> None:
    frame = np.zeros((1, 40, 80, 3), dtype=np.uint8)
    frame[:, :, :20] = 255  # left quarter white: cropped away by the centre crop, squashed in by squash
    assert resize_frames(frame, 20, "crop").max() == 0
    squashed = resize_frames(frame, 20, "squash")
    assert squashed.shape == (1, 20, 20, 3) and squashed[0, 10, 0, 0] == 255


def test_kth_person_split(tmp_path: Path, repo: Path) -> None:
    _kth_raw(tmp_path / "raw")
    cfg = load_config(repo / "configs" / "kth.yaml", ["convert.kth_train_persons=[1, 3]", "convert.kth_val_persons=[2]"])
    splits = {s.name: s.split for s in assign_splits(tmp_path / "raw", cfg.convert)}
    assert splits == {
        "person01_walking_d1": "train",
        "person02_walking_d3": "val",
        "person03_running_d1": "train",
        "person17_walking_d4": "test",
        "person18_walking_d2": "test",
    }


def test_kth_scenario_split_and_classes(tmp_path: Path, repo: Path) -> None:
    _kth_raw(tmp_path / "raw")
    cfg = load_config(repo / "configs" / "kth.yaml", ["convert.kth_split=scenario", "convert.kth_classes=[walking, boxing]"])
    splits = {s.name: s.split for s in assign_splits(tmp_path / "raw", cfg.convert)}
    assert splits == {
        "person01_boxing_d1": "train",
        "person01_walking_d1": "train",
        "person18_walking_d2": "train",
        "person02_walking_d3": "val",
        "person17_walking_d4": "test",
    }


def test_kth_conversion_end_to_end(tmp_path: Path, repo: Path) -> None:
    _kth_raw(tmp_path / "raw")
    cfg = load_config(repo / "configs" / "kth.yaml", ["data.image_size=16", "model.state_res=[2, 2]"])
    prepare_data(cfg, tmp_path / "shards", raw=tmp_path / "raw", log=lambda _: None)
    train = ShardReader(tmp_path / "shards" / "train", image_size=16)
    assert [v.source for v in train.videos] == ["person01_walking_d1", "person02_walking_d3", "person03_running_d1"]
    assert list(train.lengths) == [6, 6, 12]
    np.testing.assert_array_equal(train.read_frames(2)[:, 0, 0, 0], 20 + 15 * np.arange(12))  # natural order kept
    assert len(ShardReader(tmp_path / "shards" / "test")) == 2


def test_clevrer_ranges(tmp_path: Path, repo: Path) -> None:
    for video_id in (5, 10_001, 15_002, 25_000):
        _video(tmp_path / "raw" / f"video_{video_id:05d}.mp4")
    cfg = load_config(repo / "configs" / "clevrer.yaml", ["data.image_size=16", "model.state_res=[2, 2]"])
    splits = {s.name: s.split for s in assign_splits(tmp_path / "raw", cfg.convert)}
    assert splits == {"video_00005": "train", "video_10001": "val", "video_15002": "test"}
    prepare_data(cfg, tmp_path / "shards", raw=tmp_path / "raw", log=lambda _: None)
    assert ShardReader(tmp_path / "shards" / "val", image_size=16).frame_shape == (16, 16, 3)


def test_generic_folders(tmp_path: Path, repo: Path) -> None:
    _video(tmp_path / "raw" / "train" / "a.mp4")
    _png_folder(tmp_path / "raw" / "test" / "b")
    cfg = load_config(repo / "configs" / "demo.yaml", ["convert.source=folders", "convert.aspect=crop", "data.image_size=16", "model.state_res=[2, 2]"])
    prepare_data(cfg, tmp_path / "shards", raw=tmp_path / "raw", log=lambda _: None)
    assert [v.source for v in ShardReader(tmp_path / "shards" / "train").videos] == ["a"]
    assert [v.source for v in ShardReader(tmp_path / "shards" / "test").videos] == ["b"]


def test_bad_raw_file_names_it_and_keeps_existing_shards(tmp_path: Path, repo: Path) -> None:
    _video(tmp_path / "raw" / "train" / "a.mp4")
    cfg = load_config(repo / "configs" / "demo.yaml", ["convert.source=folders", "data.image_size=16", "model.state_res=[2, 2]"])
    prepare_data(cfg, tmp_path / "shards", raw=tmp_path / "raw", log=lambda _: None)
    shard = tmp_path / "shards" / "train" / "shard_0001.hdf5"
    before = shard.read_bytes()
    (tmp_path / "raw" / "train" / "broken.mp4").write_bytes(b"\x00not a video")
    with pytest.raises(ConvertError, match="broken.mp4"):
        prepare_data(cfg, tmp_path / "shards", raw=tmp_path / "raw", log=lambda _: None)
    assert shard.read_bytes() == before
    assert (tmp_path / "shards" / "manifest.json").exists()


def test_unparseable_kth_name(tmp_path: Path, repo: Path) -> None:
    _video(tmp_path / "raw" / "walking" / "somebody_walking.avi")
    cfg = load_config(repo / "configs" / "kth.yaml")
    with pytest.raises(ConvertError, match="somebody_walking: not a KTH name"):
        assign_splits(tmp_path / "raw", cfg.convert)


def test_max_frames_keeps_the_first_frames_of_each_video(tmp_path: Path, repo: Path) -> None:
    """Smoke conversions of KTH keep one clip's worth of each (long) video."""
    _kth_raw(tmp_path / "raw")
    cfg = load_config(repo / "configs" / "kth.yaml", ["data.image_size=16", "model.state_res=[2, 2]", "convert.max_frames=5"])
    prepare_data(cfg, tmp_path / "shards", raw=tmp_path / "raw", log=lambda _: None)
    train = ShardReader(tmp_path / "shards" / "train", image_size=16)
    assert list(train.lengths) == [5, 5, 5]
    np.testing.assert_array_equal(train.read_frames(2)[:, 0, 0, 0], 20 + 15 * np.arange(5))
