"""pipeline.api: the README's snippet as written, and the API's forecasts and scores equal to stages 3 and 4's."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import REPO, TINY_SETTINGS, make_tiny_vqvae
from pipeline.api import load_run
from pipeline.core.model import build_model
from pipeline.data.clips import to_uint8
from pipeline.run.checkpoints import save_checkpoint
from pipeline.run.config import ConfigError, load_config
from pipeline.run.records import write_json_atomic
from pipeline.run.safe_load import CheckpointReadError
from pipeline.stages.data import prepare_data
from pipeline.stages.encode import encode_latents
from pipeline.stages.evaluate import compute_metrics
from pipeline.stages.forecast import forecast

# The tiny setting with the README's four test videos, a small network and a short sampler; no media, no FVD.
SETTINGS = [*TINY_SETTINGS, "demo.videos={train: 2, val: 1, test: 4}", "model.inner_dim=32", "model.heads=2",
            "model.depth=1", "model.mid_depth=1", "sample.n_samples=3", "sample.steps=5", "sample.batch_size=4",
            "forecast.media_videos=0", "eval.i3d=none"]
QUIET = dict(log=lambda _: None)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple:
    """(directory, config) holding ``outputs/demo/runs/shipped-ours``: a random-weight flow (EMA differing from the
    raw weights) forecast by stage 3 as ``make demo`` forecasts the shipped flows, on the tiny setting's shards."""
    root = tmp_path_factory.mktemp("api")
    paths = [f"data.root={root / 'data'}", f"vqvae.ckpt={root / 'vq.pt'}"]
    cfg = load_config(REPO / "configs" / "demo.yaml", [*SETTINGS, *paths])
    prepare_data(cfg, Path(cfg.data.root), **QUIET)
    make_tiny_vqvae(cfg, root / "vq.pt")
    store = str(root / "outputs" / "demo" / "latents.zarr")
    encode_latents(cfg, store, **QUIET)
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights.append(build_model(cfg.model).state_dict())
    save_checkpoint(root / "flow.pt", {"model": weights[0], "ema": weights[1], "step": 7, "config": cfg.to_dict(),
                                       "cache_fingerprint": ""})
    forecast(cfg, store, root / "outputs" / "demo" / "runs" / "shipped-ours", ckpt=root / "flow.pt", **QUIET)
    return root, cfg


def readme_snippet() -> str:
    """The code block of the README's "Python API" section."""
    section = (REPO / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_runs_as_written(shipped) -> None:
    root, _ = shipped
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # this checkout's pipeline, from anywhere
    done = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "torch.Size([4, 8, 6, 3, 32, 32])"  # 4 videos x 8 samples x (8 - 2) frames of 32 px
    scores = ast.literal_eval(lines[1])  # the printed dict of rounded floats
    assert {"psnr", "ssim", "psnr_best_of_n", "crps", "energy", "spread_skill"} <= set(scores)
    assert all(np.isfinite(list(scores.values())))


def test_forecast_and_scores_equal_the_stages(shipped) -> None:
    """Same checkpoint (its EMA weights), settings, seed and clips: stage 3's latents and uint8 pixels bit for bit,
    stage 4's scores and intervals exactly."""
    root, cfg = shipped
    run_dir = root / "outputs" / "demo" / "runs" / "shipped-ours"
    run = load_run(run_dir, **QUIET)
    assert run.ckpt == root / "flow.pt" and run.cfg == cfg
    stored = zarr.open_group(str(run_dir / "forecasts.zarr"), mode="r")
    c = run.cond_frames
    truth = torch.from_numpy(stored["truth_latents"][:])
    assert torch.equal(run.forecast_latents(truth[:, :c]), torch.from_numpy(stored["latents"][:]))
    videos = run.test_videos(4)
    assert np.array_equal(to_uint8(videos), stored["real"][:])
    samples = run.forecast(videos[:, :c])
    assert np.array_equal(to_uint8(samples), stored["samples"][:, :, c:])

    metrics = compute_metrics(cfg, stored, str(run_dir / "forecasts.zarr"), run_dir.parent.parent, **QUIET)["model"]
    mine = run.score(videos, samples, detail=True)
    for name, block in mine.items():
        assert [block[k] for k in ("value", "low", "high")] == [metrics[name][k] for k in ("value", "low", "high")]
    assert run.score(videos, samples)["psnr_best_of_n"] == metrics["psnr"]["best_of_n"]

    again = run.forecast(videos[:2, :c], n_samples=2, steps=3, solver="euler_maruyama", seed=5)
    assert again.shape == (2, 2, cfg.data.frames_per_sample - c, 3, 32, 32)
    assert torch.equal(again, run.forecast(videos[:2, :c], n_samples=2, steps=3, solver="euler_maruyama", seed=5))
    assert not torch.equal(again, run.forecast(videos[:2, :c], n_samples=2, steps=3, solver="euler_maruyama", seed=6))


def test_a_trained_run_reapplies_its_recorded_overrides(shipped, tmp_path) -> None:
    """Without forecasts: the training record's config, its --set overrides, its latest.pt; config= resolves a
    YAML with the same overrides, as the stages do."""
    root, cfg = shipped
    run_dir = tmp_path / "outputs" / "demo" / "runs" / "fewer-steps"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "flow.pt", run_dir / "checkpoints" / "latest.pt")
    write_json_atomic(run_dir / "run.json", {"config": cfg.to_dict(), "args": {"set": ["sample.steps=4"]}})
    run = load_run(run_dir, **QUIET)
    assert run.cfg.sample.steps == 4 and run.ckpt == run_dir / "checkpoints" / "latest.pt"
    mine = [item for item in SETTINGS if not item.startswith("sample.steps=")]
    yaml_run = load_run(run_dir, config=REPO / "configs" / "demo.yaml",
                        overrides=[*mine, f"data.root={cfg.data.root}", f"vqvae.ckpt={cfg.vqvae.ckpt}"], **QUIET)
    assert yaml_run.cfg.sample.steps == 4  # the run's overrides first, then the call's (which leave it alone)


def test_errors_name_the_file_or_key(shipped, tmp_path) -> None:
    root, _ = shipped
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty")) + ".*not a run directory"):
        load_run(tmp_path / "empty")
    run_dir = root / "outputs" / "demo" / "runs" / "shipped-ours"
    with pytest.raises(CheckpointReadError, match=re.escape(str(tmp_path / "missing.pt"))):
        load_run(run_dir, ckpt=tmp_path / "missing.pt")
    run = load_run(run_dir, **QUIET)
    with pytest.raises(ConfigError, match="sample.stepz"):
        run.forecast(run.test_videos(1)[:, :2], stepz=3)
    with pytest.raises(ValueError, match="4 videos hold a clip.*5 asked for"):
        run.test_videos(5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forecasts_are_deterministic(shipped) -> None:
    root, _ = shipped
    run = load_run(root / "outputs" / "demo" / "runs" / "shipped-ours", device="cuda", **QUIET)
    videos = run.test_videos(2)
    first, second = (run.forecast(videos[:, :2], seed=3) for _ in range(2))
    assert first.device.type == "cuda" and torch.equal(first, second)
