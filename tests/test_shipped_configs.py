"""The shipped KTH and CLEVRER configs, every stage, at their smoke settings, through the Makefile.

Inputs are in the real formats and sizes (tests/real_formats.py): shards in the reference layout (KTH 64 px,
40-frame videos; CLEVRER 128 px, 80-frame videos: a clip spans 76) and VQVAE checkpoints in the published wrappers at the real
architectures (KTH: Lightning .ckpt of taming's f8 VQModel, 64M parameters; CLEVRER: RIVER's .pth), with random
weights. ``make eval`` brings data (existing shards, used as they are), encode, train and forecast up to date, then
evaluates; a second identical ``make eval`` must find everything up to date.

The frozen VQVAEs dominate the time (KTH: ~14 GFLOP per encoded and ~29 per decoded frame), so the two datasets
run concurrently, one single-thread process each (two OpenMP threads per process on 2 shared cores crawl).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from real_formats import SPECS, write_shards, write_vqvae

REPO = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 900  # seconds per make call
STAGES = ("encode", "train", "forecast", "eval")


@dataclass(frozen=True)
class Protocol:
    """What the real evaluation protocol fixes for a dataset: clip length, conditioning frames, frame side."""

    clip: int
    cond: int
    image_size: int
    stride: int


PROTOCOLS = {
    "kth": Protocol(clip=40, cond=10, image_size=64, stride=1),  # 10 -> 30 frames
    "clevrer": Protocol(clip=16, cond=2, image_size=128, stride=5),  # 2 -> 14 frames, every 5th raw frame
}


@dataclass
class Outcome:
    root: Path  # tmp directory holding data/, out/ and the VQVAE checkpoint
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess | None
    seconds: tuple[float, float]


def _make_eval(dataset: str, root: Path, ckpt: Path) -> subprocess.CompletedProcess:
    command = ["make", "-s", "eval", f"DATASET={dataset}", "SMOKE=1", f"DATA_DIR={root / 'data'}", f"OUT={root / 'out'}",
               f"VQVAE_CKPT={ckpt}", f"PY={sys.executable}", "STAMP=", "ARGS=--set train.wandb_mode=disabled"]
    # Own process group: on a timeout the stage processes make started are stopped too, not only make.
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            stderr += f"\n[test] make eval killed after {TIMEOUT} s"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _run_dataset(dataset: str, root: Path) -> Outcome:
    """Write the inputs, run `make eval` twice (the second only if the first succeeded)."""
    from pipeline.run.config import load_config

    cfg = load_config(REPO / "configs" / f"{dataset}.yaml", smoke=True)
    write_shards(root / "data", SPECS[dataset])
    ckpt = write_vqvae(root, cfg.vqvae, cfg.data.image_size)
    start = time.monotonic()
    first = _make_eval(dataset, root, ckpt)
    middle = time.monotonic()
    second = _make_eval(dataset, root, ckpt) if first.returncode == 0 else None
    return Outcome(root, first, second, (middle - start, time.monotonic() - middle))


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Future]:
    """Both datasets' runs, started together in the background for every dataset this session selected."""
    selected = []
    for item in request.session.items:
        dataset = getattr(getattr(item, "callspec", None), "params", {}).get("dataset")
        if "outcomes" in getattr(item, "fixturenames", ()) and dataset and dataset not in selected:
            selected.append(dataset)
    pool = ThreadPoolExecutor(max_workers=max(1, len(selected)))
    futures = {d: pool.submit(_run_dataset, d, tmp_path_factory.mktemp(f"shipped_{d}")) for d in selected}
    yield futures
    pool.shutdown(wait=True)


def _tail(result: subprocess.CompletedProcess) -> str:
    return f"\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("dataset", ["kth", "clevrer"])
def test_shipped_config_runs_every_stage_through_make(dataset: str, outcomes) -> None:
    import numpy as np
    import zarr

    outcome = outcomes[dataset].result(timeout=2 * TIMEOUT)
    first = outcome.first
    assert first.returncode == 0, f"make eval DATASET={dataset} SMOKE=1 failed" + _tail(first)
    print(f"{dataset}: first make eval {outcome.seconds[0]:.1f} s, second {outcome.seconds[1]:.1f} s")

    assert "data: using the existing shards" in first.stdout, _tail(first)  # data.source shards, no RAW=: as they are

    smoke = outcome.root / "out" / f"{dataset}-smoke"
    run = smoke / "runs" / "ours"
    for path in (smoke / "latents.zarr", run / "checkpoints" / "latest.pt", run / "forecasts.zarr",
                 run / "eval" / "metrics.json", smoke / "report.md"):
        assert path.exists(), f"{path} missing" + _tail(first)

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    psnr = metrics["model"]["psnr"]["value"]
    assert isinstance(psnr, float) and math.isfinite(psnr), metrics["model"]

    # The forecasts follow the real protocol: clip length, conditioning frames, frame size.
    proto = PROTOCOLS[dataset]
    store = zarr.open_group(str(run / "forecasts.zarr"), mode="r")
    attrs = dict(store.attrs)
    assert attrs["complete"] is True
    assert attrs["cond_frames"] == proto.cond and attrs["gen_frames"] == proto.clip - proto.cond
    assert attrs["image_size"] == proto.image_size
    assert attrs["frame_indices"] == list(range(0, proto.stride * proto.clip, proto.stride))
    n, s = store["samples"].shape[:2]
    assert n == 1 and s == attrs["n_samples"] == 2  # smoke: forecast.max_videos 1, sample.n_samples 2
    frames = (proto.clip, proto.image_size, proto.image_size, 3)
    assert store["real"].shape == store["recon"].shape == (n, *frames)
    assert store["samples"].shape == (n, s, *frames)
    assert store["latents"].shape[:3] == (n, s, proto.clip)
    assert bool(np.all(store["done"][:]))

    second = outcome.second
    assert second is not None and second.returncode == 0, "second make eval failed" + _tail(second)
    verdicts = {stage: [line for line in second.stdout.splitlines() if line.startswith(f"{stage}:")] for stage in STAGES}
    verdicts["eval"] = [line for line in verdicts["eval"] if not line.startswith("eval: report ")]
    for stage, lines in verdicts.items():
        assert lines and all("up to date" in line for line in lines), f"{stage} not up to date:" + _tail(second)


@pytest.mark.parametrize("dataset", ["kth", "clevrer"])
def test_smoke_block_keeps_the_real_formats_and_shrinks_the_rest(dataset: str) -> None:
    """--smoke may shrink steps, videos and the flow network, never what must match real data and checkpoints."""
    import dataclasses

    from pipeline.run.config import load_config
    from pipeline.core.model import build_model, count_parameters

    path = REPO / "configs" / f"{dataset}.yaml"
    real, smoke = load_config(path), load_config(path, smoke=True)
    assert dataclasses.asdict(smoke.vqvae) == dataclasses.asdict(real.vqvae)  # the published checkpoint must load
    assert smoke.model.state_res == real.model.state_res  # = the VQVAE latent
    for key in ("image_size", "frames_per_sample", "skip_frames", "cond_frames", "splits", "source"):
        assert getattr(smoke.data, key) == getattr(real.data, key), key
    proto, spec = PROTOCOLS[dataset], SPECS[dataset]
    assert (real.data.frames_per_sample, real.data.cond_frames, real.data.image_size, real.data.skip_frames + 1) == (
        proto.clip, proto.cond, proto.image_size, proto.stride)
    assert spec.image_size == proto.image_size and spec.frames >= real.data.clip_span  # the fixture videos hold a clip
    assert not any(key.startswith(("data.name", "data.root")) for key in real.smoke)  # the loader adds -smoke itself
    assert smoke.data.name == f"{dataset}-smoke"
    assert count_parameters(build_model(smoke.model)) < 1_000_000  # the shipped network has 98M
    assert smoke.train.steps <= 50 and smoke.sample.n_samples == 2 and smoke.forecast.max_videos == 1


def test_clevrer_caches_jitter_views_like_the_reference_jitters_every_clip() -> None:
    """docs/METHOD.md §9.19: the reference colour-jitters every CLEVRER clip; KTH's transform is the identity."""
    from pipeline.run.config import load_config

    clevrer, kth = (load_config(REPO / "configs" / f"{name}.yaml") for name in ("clevrer", "kth"))
    assert clevrer.encode.jitter_views == 4 and kth.encode.jitter_views == 0
    assert load_config(REPO / "configs" / "clevrer.yaml", smoke=True).encode.jitter_views == 1  # the path, cheaply
    assert (clevrer.encode.jitter_brightness, clevrer.encode.jitter_contrast, clevrer.encode.jitter_saturation,
            clevrer.encode.jitter_hue) == (0.1, 0.1, 0.1, 0.25)  # the reference's ranges (§1.4)
