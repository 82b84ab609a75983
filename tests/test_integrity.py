"""No silent wrong results (issue 13): damaged stores, non-finite data and broken I3D files stop a stage by name.

Every test injects one fault into a copy of a real store (the tiny latent cache, one tiny forecast run) or into an
input, and checks that the read refuses it with an error naming the store, array, chunk or file and the video or
set, instead of returning fill values, NaN-filled "complete" outputs, hangs or raw tracebacks.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from i3d_stub import StubI3D
from test_forecast import _cfg as forecast_cfg
from test_forecast import _our_checkpoint
from test_train import _cfg as train_cfg

from pipeline.data.cache import LatentSplit, create_split
from pipeline.data.checked_store import NonFiniteError, StoreReadError, open_store, read_array, write_array
from pipeline.stages.evaluate import evaluate
from pipeline.stages.forecast import forecast
from pipeline.eval.fvd import I3DError, frechet_distance, fvd_from_features
from pipeline.stages.train import train

REPO = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda _: None)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------
# Stores to damage
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tiny_store, tmp_path: Path) -> tuple:
    """(config, overrides, url) of a private copy of the tiny latent store."""
    cfg, overrides, url = tiny_store
    copy = tmp_path / "latents.zarr"
    shutil.copytree(url, copy)
    return cfg, overrides, str(copy)


@pytest.fixture(scope="module")
def forecast_run(tiny_store, tmp_path_factory) -> tuple:
    """(config, run dir) of one finished tiny forecast run (2 test videos x 3 samples), shared read-only."""
    _, overrides, url = tiny_store
    directory = tmp_path_factory.mktemp("forecast_run")
    cfg = forecast_cfg(REPO, overrides)
    run = directory / "demo" / "runs" / "ours"
    forecast(cfg, url, run, ckpt=_our_checkpoint(cfg, directory / "flow.pt"), **QUIET)
    return cfg, run


@pytest.fixture
def run_copy(forecast_run, tmp_path: Path) -> tuple:
    """(config, run dir, forecasts url) of private copies of the forecast run and its config."""
    cfg, run = forecast_run
    mine = tmp_path / "demo" / "runs" / "ours"
    shutil.copytree(run, mine)
    return copy.deepcopy(cfg), mine, str(mine / "forecasts.zarr")


def _chunk(url: str, split: str, view: int, chunk: int) -> Path:
    """The file of one latents chunk (zarr v3 default chunk keys: c/<view>/<chunk>/0/0/0)."""
    return Path(url) / split / "latents" / "c" / str(view) / str(chunk) / "0" / "0" / "0"


def _first_chunk(url: str, split: str, video: int) -> tuple[int, int]:
    """(chunk index, first frame) of a video's first chunk."""
    s = LatentSplit(url, split)
    return int(s.offsets[video]) // s.chunk_frames, int(s.offsets[video])


def _set_latents(url: str, split: str, frame: int | slice, value: float) -> None:
    """Write ``value`` into frames of view 0 (all views for every frame) as a writer would: the chunk_crc rows of
    every video recorded anew, so that only the values are wrong."""
    from pipeline.data.cache import video_chunks
    from pipeline.data.checked_store import record_crcs

    group = zarr.open_group(url, mode="r+")[split]
    group["latents"][(slice(None) if frame == slice(None) else 0), frame] = value
    for k, (offset, length) in enumerate(zip(group["offsets"][:], group["lengths"][:])):
        record_crcs(group["chunk_crc"], k, video_chunks(group["latents"], int(offset), int(length)))


def _cli(script: str):
    """A stage script's typer app, loaded in-process."""
    spec = importlib.util.spec_from_file_location(f"{Path(script).stem}_cli", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def _one_error_line(result, *needles: str) -> str:
    """A stage that failed cleanly: exit 1, one ``error:`` line holding every needle, no traceback."""
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# 1. Missing chunks
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_latent_chunk_is_refused_by_every_read(store, split: str) -> None:
    _, _, url = store
    chunk, first = _first_chunk(url, split, 1)
    _chunk(url, split, 0, chunk).unlink()
    needles = (url, f"'{split}/latents'", f"c/0/{chunk}/0/0/0", "is missing", f"video 1 (demo/{split}/00001)")
    reads = {
        "read_frames": lambda s: s.read_frames(np.array([0]), np.array([first + 1])),
        "video": lambda s: s.video(1),
        "load_into_memory": lambda s: s.load_into_memory(),
    }
    for name, read in reads.items():
        with pytest.raises(StoreReadError) as caught:
            read(LatentSplit(url, split))
        assert all(n in str(caught.value) for n in needles), (name, str(caught.value))
    np.testing.assert_array_equal(LatentSplit(url, split).video(0), LatentSplit(url, split).video(0))  # others read


def test_missing_latent_chunk_stops_training_with_one_line(store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    _, overrides, url = store
    chunk, _ = _first_chunk(url, "train", 2)
    _chunk(url, "train", 1, chunk).unlink()
    sets = [a for item in [*overrides, "train.steps=2", "loader.in_memory='yes'"] for a in ("--set", item)]
    result = CliRunner().invoke(_cli("train_latent.py"), ["--config", str(REPO / "configs" / "demo.yaml"), "--smoke",
                                                          *sets, "--store", url, "--out", str(tmp_path / "out")])
    _one_error_line(result, f"c/1/{chunk}/0/0/0", "is missing", "video 2")


def test_missing_forecasts_chunk_is_refused_by_eval(run_copy) -> None:
    cfg, run, url = run_copy
    (Path(url) / "samples" / "c" / "1" / "2" / "0" / "0" / "0" / "0").unlink()  # video row 1, sample 2
    with pytest.raises(StoreReadError, match=r"chunk c/1/2/0/0/0/0 of array 'samples'.*is missing.*video row 1"):
        evaluate(cfg, url, run, **QUIET)
    assert not (run / "eval" / "metrics.json").exists()


def test_new_stores_fill_floats_with_nan_and_store_every_chunk(forecast_run, tmp_path: Path) -> None:
    """Second line of defence (a read past the checks gets NaN, not zeros) and no false alarm on all-zero chunks."""
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    create_split(root, "train", [{"length": 5}], 1, (2, 2, 2), "float16", 4, 3)
    assert np.isnan(root["train"]["latents"].fill_value)
    _, run = forecast_run
    assert np.isnan(zarr.open_group(str(run / "forecasts.zarr"), mode="r")["latents"].fill_value)
    black = root.create_array("frames", shape=(2, 4, 4, 3), chunks=(1, 4, 4, 3), dtype="uint8", fill_value=0)
    write_array(black, 1, np.zeros((4, 4, 3), np.uint8))  # equal to the fill value, stored all the same
    np.testing.assert_array_equal(read_array(black, 1, str(tmp_path / "s.zarr")), 0)
    with pytest.raises(StoreReadError, match="chunk c/0/0/0/0 of array 'frames'.*is missing"):
        read_array(black, 0, str(tmp_path / "s.zarr"))


# ----------------------------------------------------------------------------------------------------------
# 2. Non-finite data
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split,value", [("train", np.inf), ("test", np.nan)])
def test_nonfinite_latents_are_refused_by_every_read(store, split: str, value: float) -> None:
    _, _, url = store
    _, first = _first_chunk(url, split, 1)
    _set_latents(url, split, first + 3, value)
    needles = (url, f"'{split}'", "non-finite", f"video 1 (demo/{split}/00001)", "view 0, frame 3")
    for read in (lambda s: s.read_frames(np.zeros(2, int), np.array([first, first + 3])), lambda s: s.video(1),
                 lambda s: s.load_into_memory()):
        with pytest.raises(NonFiniteError) as caught:
            read(LatentSplit(url, split))
        assert all(n in str(caught.value) for n in needles), str(caught.value)


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_nonfinite_training_latents_stop_training_by_name(store, tmp_path: Path, in_memory: str) -> None:
    _, overrides, url = store
    _set_latents(url, "train", slice(None), np.inf)  # whatever the batch draws
    cfg = train_cfg(REPO, overrides, "train.steps=2", f"loader.in_memory='{in_memory}'")
    with pytest.raises(NonFiniteError, match=r"split 'train' holds non-finite latents .* in video \d+ \(demo/train/"):
        train(cfg, url, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nonfinite_conditioning_latents_stop_forecast_by_name(store, tmp_path: Path) -> None:
    _, overrides, url = store
    cfg = forecast_cfg(REPO, overrides)
    _set_latents(url, "test", _first_chunk(url, "test", 1)[1] + 1, np.nan)  # a conditioning frame of video 1
    with pytest.raises(NonFiniteError, match=r"non-finite latents .* video 1 \(demo/test/00001\), view 0, frame 1"):
        forecast(cfg, url, tmp_path / "run", ckpt=_our_checkpoint(cfg, tmp_path / "flow.pt"), **QUIET)
    assert not open_store(str(tmp_path / "run" / "forecasts.zarr")).attrs["complete"]


def test_nonfinite_generated_latents_are_not_written(tiny_store, tmp_path: Path, monkeypatch) -> None:
    import pipeline.core.sampling

    _, overrides, url = tiny_store
    cfg = forecast_cfg(REPO, overrides)
    rollout = pipeline.core.sampling.rollout

    def diverging(*args, **kwargs):
        out = rollout(*args, **kwargs)
        out.latents[..., -1, 0, 0, 0] = float("nan")  # the last generated frame of every row
        return out

    monkeypatch.setattr(pipeline.core.sampling, "rollout", diverging)
    with pytest.raises(NonFiniteError, match=r"forecasts\.zarr: the generated latents of video 0 \(demo/test/00000\)"):
        forecast(cfg, url, tmp_path / "run", ckpt=_our_checkpoint(cfg, tmp_path / "flow.pt"), **QUIET)
    root = open_store(str(tmp_path / "run" / "forecasts.zarr"))
    assert not root["done"][:].any() and not root.attrs["complete"]


def test_nonfinite_vqvae_output_is_not_flagged_done(tiny, tmp_path: Path, monkeypatch) -> None:
    import pipeline.vqvae
    from pipeline.stages.encode import encode_latents

    cfg, _ = tiny
    build = pipeline.vqvae.build_vqvae

    def broken(*args, **kwargs):
        vq = build(*args, **kwargs)
        encode = vq.encode
        vq.encode = lambda frames: encode(frames) * float("inf")
        return vq

    monkeypatch.setattr(pipeline.vqvae, "build_vqvae", broken)
    url = str(tmp_path / "latents.zarr")
    with pytest.raises(NonFiniteError, match=r"the VQVAE's latents of \w+ video 0 \(demo/\w+/00000\).*vqvae\.ckpt="):
        encode_latents(cfg, url, **QUIET)
    root = open_store(url)
    assert not any(root[split]["done"][:].any() for split in root.group_keys()) and not root.attrs["complete"]


# ----------------------------------------------------------------------------------------------------------
# 3. Index arrays
# ----------------------------------------------------------------------------------------------------------


def _edit(name: str, change):
    def apply(group: zarr.Group) -> None:
        values = change(group[name][:].copy())
        group.create_array(name, data=values, chunks=(max(len(values), 1),), overwrite=True)
    return apply


INDEX_EDITS = {
    "offset off the chunk grid": (_edit("offsets", lambda o: o + np.r_[0, 1]), "video 1 starts at frame 33, not on a chunk boundary"),
    "overlapping videos": (_edit("offsets", lambda o: o // 2), "video 1 starts at frame 16, inside video 0"),
    "swapped offsets": (_edit("offsets", lambda o: o[::-1].copy()), "video 1 starts at frame 0, inside video 0"),
    "negative length": (_edit("lengths", lambda n: n * np.r_[-1, 1]), "video 0 has a negative length -20"),
    "length not as recorded": (_edit("lengths", lambda n: n + np.r_[0, 1]), "video 1 has length 21 but was recorded with 20"),
    "past the array": (_edit("offsets", lambda o: o + np.r_[0, 32]), "video 1 ends at frame 84, past the latents array's 64"),
    "missing entry": (_edit("lengths", lambda n: n[:1]), "offsets, lengths, done and the videos attribute differ in length"),
}


@pytest.mark.parametrize("edit", INDEX_EDITS, ids=list(INDEX_EDITS))
def test_edited_index_arrays_are_refused_when_the_split_opens(store, edit: str) -> None:
    _, _, url = store
    change, message = INDEX_EDITS[edit]
    change(zarr.open_group(url, mode="r+")["test"])
    with pytest.raises(StoreReadError, match="index arrays of split 'test' are inconsistent") as caught:
        LatentSplit(url, "test")
    assert url in str(caught.value) and message in str(caught.value), str(caught.value)


@pytest.mark.parametrize("array,message", [("offsets", "video 1 starts at frame 0, inside video 0"),
                                           ("lengths", "chunk c/0 of array 'test/lengths'")])
def test_deleted_index_chunk_is_refused(store, array: str, message: str) -> None:
    """Absent offsets read as zeros (old stores left a one-video split's [0] unstored) and fail the index check."""
    _, _, url = store
    (Path(url) / "test" / array / "c" / "0").unlink()
    with pytest.raises(StoreReadError, match=message):
        LatentSplit(url, "test")


# ----------------------------------------------------------------------------------------------------------
# 4. Corrupt chunks and metadata
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_latent_chunk_names_chunk_and_video(store, damage: str) -> None:
    _, _, url = store
    chunk, first = _first_chunk(url, "test", 1)
    path = _chunk(url, "test", 0, chunk)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(len(data)))
    with pytest.raises(StoreReadError) as caught:
        LatentSplit(url, "test").read_frames(np.array([0]), np.array([first]))
    for needle in (f"c/0/{chunk}/0/0/0", "'test/latents'", str(path), "cannot be decoded", "video 1 (demo/test/00001)"):
        assert needle in str(caught.value), str(caught.value)


def test_incompressible_chunk_cut_short_is_caught_on_both_read_paths(store, tmp_path: Path) -> None:
    """Blosc keeps a chunk it cannot compress as a plain copy, and decodes a copy that lost its tail without an error
    (the missing bytes come from past the buffer): on both read paths the cut chunk fails its CRC32C checksum."""
    from pipeline.data.checked_store import checked_compressors, read_array

    _, _, url = store
    chunk, first = _first_chunk(url, "test", 1)
    latents = zarr.open_group(url, mode="r+")["test"]["latents"]
    cf = latents.chunks[1]
    latents[0, chunk * cf:(chunk + 1) * cf] = np.random.default_rng(0).standard_normal((cf, *latents.shape[2:]))
    path = _chunk(url, "test", 0, chunk)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(StoreReadError, match="cannot be decoded .*checksum") as caught:
        LatentSplit(url, "test").read_frames(np.array([0]), np.array([first]))
    assert str(path) in str(caught.value) and "video 1" in str(caught.value), str(caught.value)

    noise = zarr.create_array(str(tmp_path / "noise.zarr"), shape=(2, 4096), chunks=(1, 4096), dtype="uint8",
                              compressors=checked_compressors(3))
    noise[:] = np.random.default_rng(1).integers(0, 256, (2, 4096), dtype=np.uint8)
    cut = tmp_path / "noise.zarr" / "c" / "1" / "0"
    cut.write_bytes(cut.read_bytes()[:-7])
    assert read_array(noise, 0, "noise").shape == (4096,)  # the intact chunk reads
    with pytest.raises(StoreReadError, match="cannot be decoded .*checksum"):
        read_array(noise, 1, "noise", what="row 1")


@pytest.mark.parametrize("node", ["", "test", "test/latents", "test/offsets"])
def test_garbage_latent_metadata_names_the_file(store, node: str) -> None:
    _, _, url = store
    meta = Path(url) / node / "zarr.json"
    meta.write_text('{"zarr_format": 3, "node_type": "arr')
    with pytest.raises(StoreReadError, match="unreadable metadata file") as caught:
        LatentSplit(url, "test")
    assert f"{url}/{node}/zarr.json".replace("//", "/") in str(caught.value), str(caught.value)


@pytest.mark.parametrize("target", ["samples/c/0/1/0/0/0/0", "recon/zarr.json", "zarr.json"])
def test_corrupt_forecasts_store_stops_eval_with_one_line(run_copy, target: str) -> None:
    from typer.testing import CliRunner

    cfg, run, url = run_copy
    path = Path(url) / target
    path.write_bytes(path.read_bytes()[:-7])
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--forecasts", url, "--out", str(run.parent.parent.parent)]
    result = CliRunner().invoke(_cli("evaluate.py"), args)
    line = _one_error_line(result, url, "the store is damaged")
    assert str(path) in line and ("cannot be decoded" in line or "unreadable metadata" in line), line


# ----------------------------------------------------------------------------------------------------------
# 5. FVD inputs and the I3D file
# ----------------------------------------------------------------------------------------------------------


def test_fvd_refuses_nonfinite_features_and_statistics_by_set() -> None:
    rng = np.random.default_rng(0)
    real, model = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    model[2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="I3D features of the model set"):
        fvd_from_features(real, model, names=("real", "model"))
    with pytest.raises(NonFiniteError, match="feature covariance of the real set"):
        fvd_from_features(real * 1e200, real, names=("real", "copy_last"))
    sigma = np.eye(8)
    sigma[1, 1] = np.inf
    with pytest.raises(NonFiniteError, match="mean/covariance of the second set"):
        frechet_distance(np.zeros(8), np.eye(8), np.zeros(8), sigma)


class NaNI3D(torch.nn.Module):
    """The stub, returning NaN features."""

    def __init__(self):
        super().__init__()
        self.inner = StubI3D()

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        return self.inner(x, rescale, resize, return_features) * float("nan")


class FlatI3D(NaNI3D):
    """The stub, returning [N, 10] instead of [N, 400]."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        return self.inner(x, rescale, resize, return_features)[:, :10]


class RefusingI3D(NaNI3D):
    """The stub, raising inside forward (TorchScript reports it under a traceback of its own)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        raise RuntimeError("refusing these clips")


class PlainI3D(torch.nn.Module):
    """A TorchScript module without the I3D's keyword arguments."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :400]


def _script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_nonfinite_i3d_features_stop_eval_quickly_by_set(run_copy, tmp_path: Path) -> None:
    """In a subprocess with a timeout: without the check, scipy's sqrtm of NaN covariances runs for > 10 minutes."""
    _, run, url = run_copy
    i3d = _script(NaNI3D(), tmp_path / "nan_i3d.pt")
    command = [sys.executable, str(REPO / "evaluate.py"), "--config", str(REPO / "configs" / "demo.yaml"),
               "--forecasts", url, "--out", str(run.parent.parent.parent), "--i3d", str(i3d)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "I3D_TRUST_CODE": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "I3D features of the real clips" in errors[0] and str(i3d) in errors[0] and "NaN/Inf" in errors[0]


def _bytes(path: Path) -> None:
    path.write_bytes(b"not an archive")


I3D_FILES = {
    "not a torch file": (_bytes, "does not load as TorchScript"),
    "a state dict": (lambda path: torch.save(StubI3D().state_dict(), path), "does not load as TorchScript"),
    "wrong output shape": (lambda path: _script(FlatI3D(), path), ", 10] for the real clips, expected"),
    "wrong call signature": (lambda path: _script(PlainI3D(), path), "failed on the real clips"),
    "raising inside": (lambda path: _script(RefusingI3D(), path), "RuntimeError: refusing these clips); expected"),
}


@pytest.mark.parametrize("kind", I3D_FILES, ids=list(I3D_FILES))
def test_broken_i3d_file_is_named(run_copy, tmp_path: Path, kind: str, monkeypatch) -> None:
    monkeypatch.setenv("I3D_TRUST_CODE", "1")  # TorchScript files of our own: trusted
    cfg, run, url = run_copy
    make, message = I3D_FILES[kind]
    cfg.eval.i3d = str(tmp_path / "i3d.pt")
    make(Path(cfg.eval.i3d))
    with pytest.raises(I3DError) as caught:
        evaluate(cfg, url, run, **QUIET)
    assert cfg.eval.i3d in str(caught.value) and message in str(caught.value), str(caught.value)
