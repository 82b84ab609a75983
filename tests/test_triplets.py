"""The training-side reader: the reference triplet distribution, correct frames, RAM/chunk agreement, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.cache import LatentSplit
from pipeline.data.triplets import TripletReader, TripletStream, draw_triplets


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square critical values at p = 0.001 for the degrees of freedom used below
CHI2_CRIT = {5: 20.5, 9: 27.9, 37: 69.3}


def test_triplet_indices_follow_the_reference_rule() -> None:
    rng = np.random.default_rng(0)
    T, skip = 40, 0
    lengths = np.array([50, 45, 41, 39])  # the last video is too short for a 40-frame clip
    eligible = np.array([0, 1, 2])
    idx = draw_triplets(rng, lengths, eligible, T, skip, n_views=6, batch_size=200_000)
    assert set(np.unique(idx.video)) == {0, 1, 2}
    assert _chi2(np.bincount(idx.video)) < 13.8  # uniform over eligible videos (2 dof)
    assert np.array_equal(idx.reference, idx.target - 1)
    assert idx.target.min() == 2 and idx.target.max() == T - 1  # d ~ UniformInt{2, ..., T-1}
    assert _chi2(np.bincount(idx.target)[2:]) < CHI2_CRIT[37]
    assert np.all((idx.context >= 0) & (idx.context < idx.reference)) and idx.gap.min() == 1
    d = 12  # given d, context uniform on {0, ..., d-2}
    assert _chi2(np.bincount(idx.context[idx.target == d], minlength=d - 1)) < CHI2_CRIT[9]
    starts = idx.start[idx.video == 0]  # n = 50, span 40: start uniform on {0, ..., 10} (the last one too)
    assert starts.max() == 10 and _chi2(np.bincount(starts)) < 29.6
    assert _chi2(np.bincount(idx.view)) < CHI2_CRIT[5]


def test_strided_clips_map_to_raw_frames() -> None:
    idx = draw_triplets(np.random.default_rng(1), np.array([128]), np.array([0]), 16, 4, 1, 50_000)
    assert idx.start.max() == 128 - 76  # CLEVRER: span 76, last start 52
    assert idx.target.max() == 15


@pytest.fixture
def store(tiny_store) -> str:
    return tiny_store[2]


def test_reader_returns_the_frames_it_drew(store: str) -> None:
    reader = TripletReader(LatentSplit(store, "train"), frames_per_sample=8, skip_frames=1)
    idx = reader.indices(np.random.default_rng(0), 64)
    batch = reader.read(idx)
    for i in range(64):
        video = reader.split.video(int(idx.video[i]), view=int(idx.view[i]))
        frame = lambda clip_index: torch.from_numpy(video[idx.start[i] + 2 * clip_index])  # noqa: E731
        assert torch.equal(batch["target"][i], frame(idx.target[i]))
        assert torch.equal(batch["reference"][i], frame(idx.reference[i]))
        assert torch.equal(batch["context"][i], frame(idx.context[i]))
    assert torch.equal(batch["gap"], torch.from_numpy((idx.reference - idx.context).astype(np.float32)))


def test_memory_and_chunk_reads_agree(store: str) -> None:
    on_disk = TripletReader(LatentSplit(store, "train"), 8, 0)
    in_ram = TripletReader(LatentSplit(store, "train"), 8, 0)
    in_ram.split.load_into_memory()
    a = on_disk.batch(np.random.default_rng(5), 128)
    b = in_ram.batch(np.random.default_rng(5), 128)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_stream_is_the_same_with_workers(store: str, context: str) -> None:
    reader = TripletReader(LatentSplit(store, "train"), 8, 0)
    plain = list(TripletStream(reader, 32, seed=3, rank=1, world_size=2, start_step=5, num_steps=4))
    loader = DataLoader(TripletStream(reader, 32, seed=3, rank=1, world_size=2, start_step=5, num_steps=4),
                        batch_size=None, num_workers=2, multiprocessing_context=context)
    workers = list(loader)
    assert [int(b["step"]) for b in workers] == [5, 6, 7, 8]
    for x, y in zip(plain, workers):
        assert torch.equal(x["target"], y["target"]) and torch.equal(x["gap"], y["gap"])
    resumed = list(TripletStream(reader, 32, seed=3, rank=1, world_size=2, start_step=7, num_steps=2))
    assert torch.equal(resumed[0]["context"], plain[2]["context"])  # resuming at step 7 continues the stream
    other_rank = next(iter(TripletStream(reader, 32, seed=3, rank=0, world_size=2, start_step=5, num_steps=1)))
    assert not torch.equal(other_rank["target"], plain[0]["target"])


def test_the_global_batch_of_a_step_does_not_depend_on_the_process_count(store: str) -> None:
    reader = TripletReader(LatentSplit(store, "train"), 8, 0)
    whole = next(iter(TripletStream(reader, 12, seed=3, start_step=9, num_steps=1)))
    for world in (2, 3, 4):
        shares = [next(iter(TripletStream(reader, 12, seed=3, rank=r, world_size=world, start_step=9, num_steps=1)))
                  for r in range(world)]
        for key in ("target", "reference", "context", "gap", "view"):
            assert torch.equal(torch.cat([share[key] for share in shares]), whole[key]), (world, key)
    # one process draws the global batch as a single process of earlier versions did: rng([seed, 0, step])
    assert torch.equal(whole["target"], reader.batch(np.random.default_rng([3, 0, 9]), 12)["target"])
    with pytest.raises(ValueError, match="does not split over 5"):
        TripletStream(reader, 12, seed=3, world_size=5)


def test_training_views_leave_out_the_identity_only_when_jitter_views_exist() -> None:
    from pipeline.data.views import training_views

    assert training_views(["identity"], 1) == [0]
    assert training_views(["identity", "hflip"], 2) == [0, 1]  # no jitter: every view, as before
    assert training_views(["identity", "jitter1", "jitter2"], 3) == [1, 2]  # the reference jitters every clip
    assert training_views(["identity", "hflip", "jitter1"], 3) == [1, 2]
    assert training_views(None, 3) == [0, 1, 2]  # names not recorded: every view
    # all views given as an array draws the same stream as the count (stores without jitter train as before)
    lengths, eligible = np.array([30, 30]), np.array([0, 1])
    by_count = draw_triplets(np.random.default_rng(4), lengths, eligible, 8, 0, 3, 500)
    by_array = draw_triplets(np.random.default_rng(4), lengths, eligible, 8, 0, np.arange(3), 500)
    assert all(np.array_equal(getattr(by_count, f), getattr(by_array, f))
               for f in ("video", "start", "target", "reference", "context", "view"))


def test_a_store_with_jitter_views_trains_on_them_only(tiny, tmp_path) -> None:
    from pipeline.stages.encode import encode_latents
    from pipeline.stages.train_state import training_inputs

    cfg, _ = tiny
    cfg.encode.jitter_views = 2
    url = str(tmp_path / "latents.zarr")
    encode_latents(cfg, url, log=lambda _: None)
    split = LatentSplit(url, "train")
    assert split.attrs["views"] == ["identity", "jitter1", "jitter2"]
    reader = TripletReader(split, 8, 0)
    views = np.concatenate([reader.indices(np.random.default_rng(seed), 256).view for seed in range(4)])
    counts = np.bincount(views, minlength=3)
    assert counts[0] == 0 and _chi2(counts[1:]) < 10.8  # never the identity; uniform over the jittered (p = 0.001)
    batch = reader.read(idx := reader.indices(np.random.default_rng(0), 8))
    for i in range(8):  # the latents read are those of the drawn jittered view
        video = split.video(int(idx.video[i]), view=int(idx.view[i]))
        assert torch.equal(batch["target"][i], torch.from_numpy(video[idx.start[i] + idx.target[i]]))
    # the drawn views enter the run's fingerprint, only when they are a subset of the store's
    assert training_inputs(cfg, "cache", split.attrs["views"])["data"]["views"] == ["jitter1", "jitter2"]
    assert "views" not in training_inputs(cfg, "cache", ["identity", "hflip"])["data"]
    assert training_inputs(cfg, "cache", ["identity"]) == training_inputs(cfg, "cache")


def test_a_flipped_byte_mid_chunk_fails_the_checksum_on_every_read_path(store: str, tmp_path) -> None:
    """Same length, one bit changed: Blosc alone may decode it to other numbers; the CRC32C codec refuses it."""
    import shutil
    from pathlib import Path

    import zarr

    from pipeline.data.checked_store import StoreReadError, read_array

    url = str(tmp_path / "latents.zarr")
    shutil.copytree(store, url)
    split = LatentSplit(url, "train")
    chunk = int(split.offsets[1]) // split.chunk_frames
    path = Path(url) / "train" / "latents" / "c" / "0" / str(chunk) / "0" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    needles = (url, f"c/0/{chunk}/0/0/0", "'train/latents'", "cannot be decoded", "checksum", "video 1")
    reads = {"read_frames": lambda s: s.read_frames(np.array([0]), np.array([int(s.offsets[1])])),
             "load_into_memory": lambda s: s.load_into_memory(),
             "read_array": lambda s: read_array(zarr.open_group(url)["train"]["latents"], (0, int(s.offsets[1])), url,
                                                "video 1")}
    for name, read in reads.items():
        with pytest.raises(StoreReadError) as caught:
            read(LatentSplit(url, "train"))
        assert all(n in str(caught.value) and "\n" not in str(caught.value) for n in needles), (name, str(caught.value))
