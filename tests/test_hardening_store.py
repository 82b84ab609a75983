"""Issue 30, the stores: a chunk altered in place or swapped with another valid chunk, NaN in forecasts, a latent
store of another dataset, too-short forecast videos and a full disk are refused or reported by name.

Each test injects its fault into a private copy of a real tiny store (or a tiny dataset of its own) and checks
the error names store, array, chunk and video (or the config that made the store).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import REPO
from test_forecast import _cfg as forecast_cfg
from test_forecast import _our_checkpoint
from test_integrity import QUIET, _chunk, _cli, _first_chunk, _one_error_line, forecast_run, run_copy, store  # noqa: F401
from test_train import _cfg as train_cfg

from pipeline.data.cache import LatentSplit
from pipeline.data.checked_store import DataIntegrityError, NonFiniteError, StoreReadError, has_node, open_store
from pipeline.stages.evaluate import evaluate
from pipeline.stages.forecast import forecast, select_videos
from pipeline.stages.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _swap(a: Path, b: Path) -> None:
    first, second = a.read_bytes(), b.read_bytes()
    assert first != second
    a.write_bytes(second)
    b.write_bytes(first)


def _reads(split: str, view: int, frame: int, video: int) -> dict:
    """Every read path of the latent store: triplets and forecasts (read_frames), per video, whole split in memory."""
    return {"read_frames": lambda s: s.read_frames(np.array([view]), np.array([frame])),
            "video": lambda s: s.video(video, view),
            "load_into_memory": lambda s: s.load_into_memory()}


# ----------------------------------------------------------------------------------------------------------
# Item 2: latents.zarr
# ----------------------------------------------------------------------------------------------------------


def test_a_byte_flipped_in_the_middle_of_a_latent_chunk_is_refused_by_every_read(store) -> None:
    _, _, url = store
    chunk, first = _first_chunk(url, "test", 1)
    path = _chunk(url, "test", 0, chunk)
    _flip_middle_byte(path)
    for name, read in _reads("test", 0, first, 1).items():
        with pytest.raises(StoreReadError) as caught:
            read(LatentSplit(url, "test"))
        for needle in (url, "'test/latents'", str(path), "checksum", "video 1 (demo/test/00001)"):
            assert needle in str(caught.value), (name, str(caught.value))


@pytest.mark.parametrize("where", ["within a video", "across videos", "across views"])
def test_swapped_latent_chunks_are_refused_by_every_read(store, where: str) -> None:
    _, _, url = store
    split = LatentSplit(url, "test")
    assert split.lengths[0] > split.chunk_frames  # video 0 spans two chunks
    partner = {"within a video": (0, 1), "across videos": (0, _first_chunk(url, "test", 1)[0]), "across views": (1, 0)}
    _swap(_chunk(url, "test", 0, 0), _chunk(url, "test", *partner[where]))
    for name, read in _reads("test", 0, 0, 0).items():
        with pytest.raises(StoreReadError) as caught:
            read(LatentSplit(url, "test"))
        for needle in (url, "'test/latents'", "c/0/0/0/0/0", "is not the chunk written there", "video 0 (demo/test/00000)"):
            assert needle in str(caught.value), (name, str(caught.value))


def test_swapped_latent_chunks_stop_training_with_one_line(store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    _, overrides, url = store
    _swap(_chunk(url, "train", 0, 0), _chunk(url, "train", 0, 1))
    sets = [a for item in [*overrides, "train.steps=2", "loader.in_memory='yes'"] for a in ("--set", item)]
    result = CliRunner().invoke(_cli("train_latent.py"), ["--config", str(REPO / "configs" / "demo.yaml"), "--smoke",
                                                          *sets, "--store", url, "--out", str(tmp_path / "out")])
    _one_error_line(result, url, "c/0/0/0/0/0", "is not the chunk written there", "video 0")


def test_swapped_latent_chunks_stop_forecast(store, tmp_path: Path) -> None:
    _, overrides, url = store
    _swap(_chunk(url, "test", 0, 0), _chunk(url, "test", 0, _first_chunk(url, "test", 1)[0]))
    cfg = forecast_cfg(REPO, overrides)
    with pytest.raises(StoreReadError, match=r"'test/latents'.*is not the chunk written there.*video 0"):
        forecast(cfg, url, tmp_path / "run", ckpt=_our_checkpoint(cfg, tmp_path / "flow.pt"), **QUIET)


def test_a_store_without_the_checksum_index_is_refused_as_an_older_format(store) -> None:
    import shutil

    _, _, url = store
    shutil.rmtree(Path(url) / "test" / "chunk_crc")
    with pytest.raises(StoreReadError, match=r"no 'chunk_crc' index.*older format.*make encode FORCE=1"):
        LatentSplit(url, "test")


# ----------------------------------------------------------------------------------------------------------
# Items 2 and 6: forecasts.zarr, read by eval
# ----------------------------------------------------------------------------------------------------------


def _samples_chunk(url: str, row: int, sample: int) -> Path:
    return Path(url) / "samples" / "c" / str(row) / str(sample) / "0" / "0" / "0" / "0"


@pytest.mark.parametrize("fault", ["flipped latents byte", "swapped samples of a video", "swapped videos"])
def test_altered_forecasts_are_refused_by_eval_also_when_up_to_date(run_copy, fault: str) -> None:
    cfg, run, url = run_copy
    cfg.eval.i3d = "none"
    assert evaluate(cfg, url, run, **QUIET) == "evaluated"
    assert evaluate(cfg, url, run, **QUIET) == "up to date"
    if fault == "flipped latents byte":
        _flip_middle_byte(Path(url) / "latents" / "c" / "1" / "0" / "0" / "0" / "0" / "0")
        needles = ("chunk c/1/0/0/0/0/0 of array 'latents'", "checksum", "video row 1")
    elif fault == "swapped samples of a video":
        _swap(_samples_chunk(url, 1, 0), _samples_chunk(url, 1, 2))
        needles = ("chunk c/1/0/0/0/0/0 of array 'samples'", "is not the chunk written there", "video row 1")
    else:
        _swap(_samples_chunk(url, 0, 0), _samples_chunk(url, 1, 0))
        needles = ("chunk c/0/0/0/0/0/0 of array 'samples'", "is not the chunk written there", "video row 0")
    with pytest.raises(StoreReadError) as caught:
        evaluate(cfg, url, run, **QUIET)
    for needle in (url, *needles):
        assert needle in str(caught.value), str(caught.value)


def test_nan_forecast_latents_stop_eval_by_name(run_copy) -> None:
    """NaN written as a writer would (the chunk's CRC32C recorded for its place): eval refuses the latents read."""
    cfg, run, url = run_copy
    cfg.eval.i3d = "none"
    root = zarr.open_group(url, mode="r+")
    latents = root["latents"][1]
    latents[0, -1, 0, 0, 0] = np.nan
    root["latents"][1] = latents
    if has_node(root, "chunk_crc"):  # the index of this stores: the NaN stands recorded, so only finiteness stops it
        from pipeline.data.checked_store import record_crcs, row_chunks
        from pipeline.stages.forecast_state import ROW_ARRAYS

        record_crcs(root["chunk_crc"], 1, row_chunks([root[name] for name in ROW_ARRAYS], 1))
    with pytest.raises(NonFiniteError, match=r"array 'latents', video row 1: 1 of \d+ values are NaN/Inf") as caught:
        evaluate(cfg, url, run, **QUIET)
    assert url in str(caught.value)
    assert not (run / "eval" / "metrics.json").exists()


# ----------------------------------------------------------------------------------------------------------
# Item 10: a latent store of another dataset
# ----------------------------------------------------------------------------------------------------------


def test_train_and_forecast_refuse_a_store_of_other_data_naming_its_config(tiny_store, tmp_path: Path) -> None:
    from pipeline.run.config import load_config
    from pipeline.stages.data import prepare_data

    producer, overrides, url = tiny_store
    other = [*overrides, f"data.root={tmp_path / 'other'}", "demo.seed=5"]  # same layout, other videos
    prepare_data(load_config(REPO / "configs" / "demo.yaml", other), tmp_path / "other", log=lambda _: None)
    needles = (url, "holds latents of other data than this config gives", "shards.", f"data.root={producer.data.root}")
    with pytest.raises(DataIntegrityError) as caught:
        train(train_cfg(REPO, other, "train.steps=2"), url, tmp_path / "run", **QUIET)
    assert all(n in str(caught.value) for n in needles), str(caught.value)
    assert not (tmp_path / "run").exists()
    cfg = forecast_cfg(REPO, other)
    with pytest.raises(DataIntegrityError) as caught:
        forecast(cfg, url, tmp_path / "run", ckpt=_our_checkpoint(cfg, tmp_path / "flow.pt"), **QUIET)
    assert all(n in str(caught.value) for n in needles), str(caught.value)
    with pytest.raises(DataIntegrityError, match="differ: views"):  # other views of the same data
        train(train_cfg(REPO, [*overrides, "encode.hflip_view=false"], "train.steps=2"), url, tmp_path / "run", **QUIET)


def test_a_cache_only_machine_identifies_the_data_by_the_recorded_name(tiny_store, tmp_path: Path) -> None:
    """Without the shards at data.root (training on the latent cache alone) the store's recorded data.name and
    data.source identify its data: the same name passes, another is refused naming it."""
    from pipeline.data.cache import LatentSplit
    from pipeline.run.config import load_config
    from pipeline.stages.encode import check_store_data

    producer, overrides, url = tiny_store
    split = LatentSplit(url, "train")
    check_store_data(load_config(REPO / "configs" / "demo.yaml", [*overrides, f"data.root={tmp_path / 'none'}"]), split)
    with pytest.raises(DataIntegrityError, match=r"differ: data\.name.*data\.name=" + producer.data.name):
        check_store_data(load_config(REPO / "configs" / "demo.yaml", [*overrides, f"data.root={tmp_path / 'none'}",
                                                                      "data.name=other"]), split)


# ----------------------------------------------------------------------------------------------------------
# Item 11: forecast counts the videos too short for a clip
# ----------------------------------------------------------------------------------------------------------


def test_forecast_says_how_many_videos_are_too_short_for_a_clip(tiny_store) -> None:
    _, overrides, _ = tiny_store
    cfg = forecast_cfg(REPO, overrides)
    span, lines = cfg.data.clip_span, []
    chosen = select_videos(np.array([span, span - 1, span + 5, 1]), cfg, lines.append)
    np.testing.assert_array_equal(chosen, [0, 2])
    assert lines == [f"forecast: skipping 2 of 4 videos of split 'test' shorter than a clip ({span} raw frames)"]
    select_videos(np.array([span, span]), cfg, lines.append)
    assert len(lines) == 1  # nothing skipped, nothing said


# ----------------------------------------------------------------------------------------------------------
# Item 14: a full disk during encode
# ----------------------------------------------------------------------------------------------------------


def test_a_full_disk_during_encode_names_store_and_chunk_file(tiny, tmp_path: Path, monkeypatch) -> None:
    from zarr.storage import LocalStore

    from pipeline.stages.encode import encode_latents

    cfg, _ = tiny
    url = str(tmp_path / "latents.zarr")
    real_set = LocalStore.set

    async def full_for_latents(self, key, value):
        if "/latents/c/" in key:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full_for_latents)
    with pytest.raises(OSError) as caught:
        encode_latents(cfg, url, **QUIET)
    message = str(caught.value)
    assert url in message and f"{url}/train/latents/c/0/0/0/0/0" in message and "No space left" in message, message
    assert not open_store(url).attrs.get("complete")
