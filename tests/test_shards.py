"""Shards: writer -> reader round trip, the reference reading rule, and clear errors for bad files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.shards import ShardError, ShardReader, ShardWriter


def _videos(count: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(3, 9)), size, size, 3), dtype=np.uint8) for _ in range(count)]


def _write(split_dir: Path, videos: list[np.ndarray], per_shard: int = 100_000) -> list[Path]:
    with ShardWriter(split_dir, videos_per_shard=per_shard, attrs={"split": split_dir.name}) as writer:
        for i, video in enumerate(videos):
            writer.add(video, source=f"video{i}")
    return writer.written


def reference_read(path: Path) -> list[np.ndarray]:
    """A minimal reader written from docs/METHOD.md §1.2–1.3 alone (not the project's reader)."""
    files = sorted(list(path.glob("*.hdf5")) + list(path.glob("*.h5")))
    lengths = []
    for f in files:
        with h5py.File(f, "r") as fh:
            lengths.append(len(fh["len"].keys()))
    cumulative = np.cumsum(lengths)
    videos = []
    for i in range(int(cumulative[-1])):
        s = int(np.digitize(i, cumulative))
        key = str(i - (cumulative[s - 1] if s > 0 else 0))
        with h5py.File(files[s], "r") as fh:
            n = fh["len"][key][()]
            videos.append(np.stack([np.asarray(fh[key][str(t)]) for t in range(n)]))
    return videos


def test_round_trip_and_reference_rule(tmp_path: Path) -> None:
    videos = _videos(7)
    written = _write(tmp_path / "train", videos, per_shard=3)
    assert [p.name for p in written] == ["shard_0001.hdf5", "shard_0002.hdf5", "shard_0003.hdf5"]
    reader = ShardReader(tmp_path / "train", image_size=16)
    assert len(reader) == 7 and reader.frame_shape == (16, 16, 3)
    for i, video in enumerate(videos):
        np.testing.assert_array_equal(reader.read_frames(i), video)
        np.testing.assert_array_equal(reader.read_frames(i, [0, len(video) - 1]), video[[0, -1]])
        assert reader.videos[i].source == f"video{i}"
    for got, want in zip(reference_read(tmp_path / "train"), videos):
        np.testing.assert_array_equal(got, want)


def test_file_layout_matches_reference(tmp_path: Path) -> None:
    _write(tmp_path / "val", _videos(2))
    with h5py.File(tmp_path / "val" / "shard_0001.hdf5", "r") as fh:
        assert set(fh.keys()) == {"len", "videos", "0", "1"}
        assert len(fh["videos"]) == 0
        assert fh["len"]["0"].dtype == np.int64 and fh["len"]["0"].shape == ()
        frame = fh["0"]["0"]
        assert frame.dtype == np.uint8 and frame.shape == (16, 16, 3) and frame.compression == "lzf"
        assert fh.attrs["split"] == "val" and fh["1"].attrs["source"] == "video1"


def test_interrupted_write_leaves_no_complete_looking_shard(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "train") as writer:
            writer.add(_videos(1)[0])
            raise RuntimeError("killed mid-conversion")
    assert list((tmp_path / "train").iterdir()) == []


def test_truncated_shard_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "train", _videos(3))
    shard = tmp_path / "train" / "shard_0001.hdf5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(ShardError, match="shard_0001.hdf5"):
        ShardReader(tmp_path / "train")


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "shard_0001.hdf5").write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(ShardError, match=r"shard_0001\.hdf5: cannot open"):
        ShardReader(tmp_path / "train")


def test_missing_frame_wrong_dtype_wrong_shape(tmp_path: Path) -> None:
    for case in ("missing", "dtype", "shape"):
        split = tmp_path / case
        _write(split, _videos(2))
        with h5py.File(split / "shard_0001.hdf5", "a") as fh:
            if case == "missing":
                del fh["1"]["2"]
            elif case == "dtype":
                del fh["1"]["0"]
                fh["1"].create_dataset("0", data=np.zeros((16, 16, 3), dtype=np.float32))
            else:
                del fh["1"]["0"]
                fh["1"].create_dataset("0", data=np.zeros((8, 16, 3), dtype=np.uint8))
        expected = {"missing": "missing frame '2'", "dtype": "dtype float32", "shape": r"shape \(8, 16, 3\)"}[case]
        with pytest.raises(ShardError, match=rf"shard_0001\.hdf5: video '1'.*{expected}"):
            ShardReader(split)


def test_wrong_image_size_and_empty_split(tmp_path: Path) -> None:
    _write(tmp_path / "train", _videos(1))
    with pytest.raises(ShardError, match=r"expected \(64, 64, 3\)"):
        ShardReader(tmp_path / "train", image_size=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="empty split"):
        ShardReader(tmp_path / "empty")
    with pytest.raises(ShardError, match="no such split"):
        ShardReader(tmp_path / "absent")


def test_corrupt_frame_data_names_file_when_read(tmp_path: Path) -> None:
    _write(tmp_path / "train", [np.zeros((3, 16, 16, 3), dtype=np.uint8)])  # compressible: stored lzf-encoded
    reader = ShardReader(tmp_path / "train")
    shard = tmp_path / "train" / "shard_0001.hdf5"
    with h5py.File(shard, "r") as fh:
        chunk = fh["0"]["1"].id.get_chunk_info(0)
    data = bytearray(shard.read_bytes())
    data[chunk.byte_offset : chunk.byte_offset + chunk.size] = np.random.default_rng(0).bytes(chunk.size)
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard_0001\.hdf5: cannot read video '0' frame 1"):
        reader.read_frames(0)


class _FirstFrames(Dataset):
    def __init__(self, reader: ShardReader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.reader.read_frames(i, [0]))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_reader_in_dataloader_workers(tmp_path: Path, context: str) -> None:
    videos = _videos(6)
    _write(tmp_path / "train", videos)
    reader = ShardReader(tmp_path / "train")
    reader.read_frames(0)  # the parent holds an open handle before the workers start
    loader = DataLoader(_FirstFrames(reader), batch_size=2, num_workers=2, multiprocessing_context=context)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, np.stack([v[:1] for v in videos]))
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_frames(3), videos[3])


def test_single_file_path(tmp_path: Path) -> None:
    _write(tmp_path / "train", _videos(2))
    single = tmp_path / "one.h5"
    shutil.copy(tmp_path / "train" / "shard_0001.hdf5", single)
    assert len(ShardReader(single)) == 2


@pytest.mark.parametrize("case", ["len_string", "len_array", "frame_group", "video_dataset"])
def test_malformed_entries_name_the_file(tmp_path: Path, case: str) -> None:
    split = tmp_path / case
    _write(split, _videos(2))
    with h5py.File(split / "shard_0001.hdf5", "a") as fh:
        if case.startswith("len"):
            del fh["len"]["1"]
            fh["len"].create_dataset("1", data="five" if case == "len_string" else np.arange(3))
        elif case == "frame_group":
            del fh["1"]["0"]
            fh["1"].create_group("0")
        else:
            del fh["1"]
            fh.create_dataset("1", data=np.zeros(3))
    expected = {"len_string": "'len/1' must be a scalar integer", "len_array": "'len/1' must be a scalar integer",
                "frame_group": "frame '0' is a Group, not an array", "video_dataset": "video '1' is listed in 'len' but has no group"}
    with pytest.raises(ShardError, match=rf"shard_0001\.hdf5: .*{expected[case]}"):
        ShardReader(split)


def test_a_missing_split_directory_is_named_not_skipped(tmp_path: Path) -> None:
    from pipeline.data.shards import split_dirs

    _write(tmp_path / "train", _videos(1))
    with pytest.raises(ShardError, match="no split directory val, test"):
        split_dirs(tmp_path, ["train", "val", "test"])
