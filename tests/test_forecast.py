"""Stage 3: forecasts.zarr — layout and frame order, determinism, kill -9 resume, published checkpoints, make."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import imported_modules
from pipeline.run.checkpoints import save_checkpoint
from pipeline.run.config import load_config
from pipeline.data.clips import to_uint8
from pipeline.data.shards import ShardReader
from pipeline.stages.forecast import StaleForecastError, forecast, row_seed, work_groups
from pipeline.core.model import build_model
from pipeline.vqvae import build_vqvae

SMALL_NET = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1"]
SETTINGS = ["sample.n_samples=3", "sample.steps=5", "forecast.media_videos=1", "forecast.media_samples=2"]
ARRAYS = ("real", "recon", "samples", "latents", "done")
QUIET = dict(log=lambda _: None)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # subprocesses: two OpenMP threads on shared cores crawl


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(repo: Path, overrides: list[str], *extra: str):
    return load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL_NET, *SETTINGS, *extra])


def _state(cfg, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(cfg.model).state_dict()


def _our_checkpoint(cfg, path: Path, seed: int = 0) -> Path:
    """Our format, randomly initialised, with EMA weights that differ from the raw ones."""
    model, ema = _state(cfg, seed), _state(cfg, seed + 100)
    save_checkpoint(path, {"model": model, "ema": ema, "step": 7, "config": cfg.to_dict(), "cache_fingerprint": ""})
    return path


class AuthorsConfig:
    """Stands in for the pickled Config object of the authors' code."""

    def __init__(self):
        self.dataset, self.interpolant_type = "demo", "ours"


def _published_checkpoint(cfg, path: Path, seed: int = 0) -> Path:
    state = _state(cfg, seed)
    torch.save({"model": {f"module.vector_field_regressor.{k}": v for k, v in state.items()},
                "ema": {f"module.vector_field_regressor.{k}": v for k, v in state.items()},
                "config": AuthorsConfig(), "step": 1234}, path)
    return path


def _arrays(url: Path | str) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(url), mode="r")
    return {name: root[name][:] for name in ARRAYS}


def _assert_same(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    for name in ARRAYS:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def _cli(repo: Path, overrides: list[str], store: str, out: Path, *extra: str) -> list[str]:
    sets = [arg for item in [*overrides, *SMALL_NET, *SETTINGS] for arg in ("--set", item)]
    return [sys.executable, str(repo / "forecast.py"), "--config", str(repo / "configs" / "demo.yaml"), *sets,
            "--store", store, "--out", str(out), *extra]


def test_layout_frame_order_metadata_and_reruns(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides)
    ckpt = _our_checkpoint(cfg, tmp_path / "flow.pt")
    run = tmp_path / "run"
    assert forecast(cfg, store, run, ckpt=ckpt, **QUIET) == "forecast"
    url = run / "forecasts.zarr"
    root = zarr.open_group(str(url), mode="r")
    n, s, t, n0 = 2, 3, 8, 2  # 2 test videos, 3 samples, 8 frames: 2 conditioning + 6 generated
    assert root["real"].shape == root["recon"].shape == (n, t, 32, 32, 3)
    assert root["samples"].shape == (n, s, t, 32, 32, 3) and root["latents"].shape == (n, s, t, 4, 4, 4)
    assert root["latents"].dtype == np.float32 and root["samples"].dtype == np.uint8 and root["done"].dtype == bool
    assert all(root[name].chunks[0] == 1 for name in ARRAYS)  # ranks never share a chunk
    a = dict(root.attrs)
    assert a["complete"] and a["split"] == "test" and (a["cond_frames"], a["gen_frames"], a["n_samples"]) == (n0, 6, s)
    assert a["image_size"] == 32 and a["nfe_per_frame"] == 8 and a["solver"] == "heun_sde"  # auto_heun, 5 grid points
    assert (a["ckpt_kind"], a["ckpt_step"], a["use_ema"], a["ckpt"]) == ("pipeline", 7, True, str(ckpt))
    assert a["frame_indices"] == list(range(t)) and a["config"]["sample"]["context"] == "per_frame"
    assert [v["index"] for v in a["videos"]] == [0, 1] and a["videos"][1]["source"] == "demo/test/00001"
    assert {"cache", "checkpoint", "sampler", "forecast", "data"} <= set(a["inputs"])
    assert "batch_size" not in a["inputs"]["sampler"] and a["code_version"] and a["fingerprint"]

    arrays = _arrays(url)
    from pipeline.data.cache import LatentSplit

    cache = LatentSplit(store, "test")
    vq = build_vqvae(cfg.vqvae, cfg.data.image_size)
    for row in range(n):
        clip = cache.video(row, view=0)[:t]
        np.testing.assert_array_equal(arrays["real"][row], ShardReader(Path(cfg.data.root) / "test").read_frames(row)[:t])
        np.testing.assert_array_equal(arrays["recon"][row], to_uint8(vq.decode(torch.from_numpy(clip))))
        # every sample starts with the conditioning latents, and its first frames decode them
        np.testing.assert_array_equal(arrays["latents"][row, :, :n0], np.broadcast_to(clip[:n0], (s, n0, 4, 4, 4)))
        np.testing.assert_array_equal(arrays["samples"][row, :, :n0], np.broadcast_to(arrays["recon"][row, :n0], (s, n0, 32, 32, 3)))
        generated = torch.from_numpy(arrays["latents"][row, :, n0:]).reshape(-1, 4, 4, 4)
        np.testing.assert_array_equal(arrays["samples"][row, :, n0:], to_uint8(vq.decode(generated)).reshape(s, 6, 32, 32, 3))
    assert not np.array_equal(arrays["latents"][0, 0, n0:], arrays["latents"][0, 1, n0:])  # samples differ
    assert sorted(p.name for p in (run / "media").iterdir()) == ["forecast_0.gif", "forecast_0.mp4"]

    assert forecast(cfg, store, run, ckpt=ckpt, **QUIET) == "up to date"
    # Another batch size: the same random draws per rollout (round-off of other GEMM shapes at most); up to date.
    other = _cfg(repo, overrides, "sample.batch_size=2")
    assert forecast(other, store, run, ckpt=ckpt, **QUIET) == "up to date"
    assert forecast(other, store, tmp_path / "bs2", ckpt=ckpt, **QUIET) == "forecast"
    rebatched = _arrays(tmp_path / "bs2" / "forecasts.zarr")
    np.testing.assert_allclose(rebatched["latents"], arrays["latents"], rtol=0, atol=1e-5)
    for name in ("real", "recon", "samples"):
        np.testing.assert_array_equal(rebatched[name], arrays[name], err_msg=name)
    # The same settings again: bitwise identical. Another seed: other samples, refused in place without --force.
    assert forecast(cfg, store, tmp_path / "again", ckpt=ckpt, **QUIET) == "forecast"
    _assert_same(url, tmp_path / "again" / "forecasts.zarr")
    reseeded = _cfg(repo, overrides, "sample.seed=1")
    with pytest.raises(StaleForecastError, match=r"sampler\.seed.*--force"):
        forecast(reseeded, store, run, ckpt=ckpt, **QUIET)
    assert forecast(reseeded, store, run, ckpt=ckpt, force=True, **QUIET) == "forecast"
    assert not np.array_equal(_arrays(url)["samples"][:, :, n0:], arrays["samples"][:, :, n0:])


def test_seeds_and_groups_do_not_depend_on_batching() -> None:
    assert row_seed(0, 3, 1) == row_seed(0, 3, 1) and len({row_seed(0, v, j) for v in range(5) for j in range(5)}) == 25
    assert [g.tolist() for g in work_groups(5, 3, 7)] == [[0, 1], [2, 3], [4]]
    assert [g.tolist() for g in work_groups(3, 100, 64)] == [[0], [1], [2]]  # more samples than a batch



def _done(url: Path) -> int:
    try:
        return int(zarr.open_group(str(url), mode="r")["done"][:].sum())
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return 0


def test_kill9_then_rerun_equals_uninterrupted(tiny_store, tmp_path: Path, repo: Path) -> None:
    cfg, overrides, store = tiny_store
    ckpt = _our_checkpoint(_cfg(repo, overrides), tmp_path / "flow.pt")
    # the 6 train videos, one per group (batch_size 2 = n_samples), slow enough to be killed between videos
    settings = ["forecast.split=train", "sample.n_samples=2", "sample.batch_size=2", "sample.steps=50", "forecast.media_videos=0"]
    command = lambda out: _cli(repo, [*overrides, *settings], store, out, "--ckpt", str(ckpt))  # noqa: E731
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True, env=ONE_THREAD)
    killed = tmp_path / "killed" / "demo" / "runs" / "ours" / "forecasts.zarr"
    process = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=ONE_THREAD)
    deadline = time.time() + 120
    while time.time() < deadline and _done(killed) < 2:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= _done(killed) < 6, "the kill should land mid-run"
    assert not zarr.open_group(str(killed)).attrs["complete"]
    result = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    _assert_same(tmp_path / "straight" / "demo" / "runs" / "ours" / "forecasts.zarr", killed)


def test_published_checkpoint_through_make_then_up_to_date_then_changed_refused(tiny_store, tmp_path: Path,
                                                                                repo: Path) -> None:
    cfg, overrides, store = tiny_store
    ckpt = _published_checkpoint(_cfg(repo, overrides), tmp_path / "kth_model_ours.pt")
    sets = " ".join(f"--set {shlex.quote(item)}" for item in [*overrides, *SMALL_NET, *SETTINGS])
    make = ["make", "-s", "forecast", f"PY={sys.executable}", "STAMP=", f"OUT={tmp_path}", f"CKPT={ckpt}",
            f"DATA_DIR={cfg.data.root}", f"VQVAE_CKPT={cfg.vqvae.ckpt}", f"ARGS={sets}"]  # make encodes its own cache
    result = subprocess.run(make, cwd=repo, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    root = zarr.open_group(str(tmp_path / "demo" / "runs" / "ours" / "forecasts.zarr"), mode="r")
    assert (root.attrs["ckpt_kind"], root.attrs["ckpt_step"], root.attrs["use_ema"]) == ("published", 1234, True)
    assert root.attrs["complete"] and root["done"][:].all() and (tmp_path / "demo" / "runs" / "ours" / "media" / "forecast_0.gif").exists()

    cli = _cli(repo, overrides, store, tmp_path, "--ckpt", str(ckpt))
    again = subprocess.run(cli, capture_output=True, text=True, env={**ONE_THREAD, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-2000:]
    assert "torch" not in imported_modules(again.stderr)  # nothing to do: said without loading torch
    media = tmp_path / "demo" / "runs" / "ours" / "media"
    (media / "forecast_0.mp4").unlink()  # a missing grid is work: the stage decides the usual way and writes it
    rewritten = subprocess.run(cli, capture_output=True, text=True, env=ONE_THREAD)
    assert "up to date" in rewritten.stdout and "wrote 2 media files" in rewritten.stdout, rewritten.stderr[-2000:]  # its pair
    assert (media / "forecast_0.mp4").is_file()
    before = _arrays(tmp_path / "demo" / "runs" / "ours" / "forecasts.zarr")
    _published_checkpoint(_cfg(repo, overrides), ckpt, seed=1)  # other weights at the same path
    refused = subprocess.run(cli, capture_output=True, text=True, env=ONE_THREAD)
    assert refused.returncode == 1
    assert "checkpoint.sha256" in refused.stderr and str(ckpt) in refused.stderr and "--force" in refused.stderr
    after = _arrays(tmp_path / "demo" / "runs" / "ours" / "forecasts.zarr")
    for name in ARRAYS:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_torchrun_two_processes_equal_one(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    ckpt = _our_checkpoint(_cfg(repo, overrides), tmp_path / "flow.pt")
    settings = ["forecast.split=train", "sample.n_samples=2", "sample.batch_size=2", "forecast.media_videos=0"]
    command = lambda out: _cli(repo, [*overrides, *settings], store, out, "--ckpt", str(ckpt))  # noqa: E731
    subprocess.run(command(tmp_path / "one"), check=True, capture_output=True, env=ONE_THREAD)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run([*torchrun, *command(tmp_path / "two")[1:]], capture_output=True, text=True, timeout=300,
                            env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same(tmp_path / "one" / "demo" / "runs" / "ours" / "forecasts.zarr", tmp_path / "two" / "demo" / "runs" / "ours" / "forecasts.zarr")


def test_a_past_horizon_forecast_records_the_window_rule(repo: Path) -> None:
    """past_horizon H once allowed gaps up to H, now H - 1 (docs/METHOD.md §9.15): a store forecast with H > 0 under
    the old rule must not pass as up to date; the default (H = 0, unchanged) keeps its fingerprint."""
    from pipeline.stages.forecast_state import forecast_inputs

    whole = forecast_inputs(load_config(repo / "configs" / "demo.yaml"), "cache", "ckpt")
    assert "past_horizon_window" not in whole["sampler"]
    window = forecast_inputs(load_config(repo / "configs" / "demo.yaml", ["sample.past_horizon=3"]), "cache", "ckpt")
    assert window["sampler"]["past_horizon"] == 3 and window["sampler"]["past_horizon_window"] == "reference included"


@pytest.mark.parametrize("recorded", [250_000, torch.tensor(250_000)])
def test_a_river_format_checkpoint_reports_its_global_step(tiny, tmp_path: Path, repo: Path, recorded) -> None:
    """RIVER's trainer (and the authors' older checkpoints) record the step as ``global_step``: it is the
    checkpoint's step (forecasts.zarr ``ckpt_step``, the report), not 0; weights load with ``module.`` /
    ``vector_field_regressor.`` stripped and the embedded ``ae.*`` dropped."""
    from pipeline.run.checkpoints import load_flow_checkpoint
    from pipeline.stages.forecast import load_flow
    from real_formats import river_flow_checkpoint

    cfg = _cfg(repo, tiny[1])
    state = _state(cfg, 0)
    path = tmp_path / "river_flow.pth"
    torch.save(river_flow_checkpoint(state, 0), path)
    payload = torch.load(path, weights_only=True)
    payload["global_step"] = recorded
    torch.save(payload, path)
    ckpt = load_flow_checkpoint(path)
    assert (ckpt.kind, ckpt.step, ckpt.ema) == ("published", 250_000, None)
    lines: list[str] = []
    model, info = load_flow(cfg, path, torch.device("cpu"), log=lines.append)
    assert info["step"] == 250_000 and info["kind"] == "published" and not info["use_ema"]
    assert any("no EMA weights" in line for line in lines)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # "step" (the authors' newer files) takes precedence; a file recording none is step 0, as before
    payload["step"] = 7
    torch.save(payload, path)
    assert load_flow_checkpoint(path).step == 7
    del payload["step"], payload["global_step"]
    torch.save(payload, path)
    assert load_flow_checkpoint(path).step == 0


def test_an_exported_checkpoint_samples_with_the_ema_weights_in_float16(tmp_path: Path, repo: Path) -> None:
    """``python -m pipeline.run.checkpoints`` keeps the EMA weights (float16), the step and the config, drops the
    optimizer state; forecast loads it as the EMA without a warning, and refuses the other interpolant."""
    import json

    from pipeline.run.checkpoints import load_flow_checkpoint
    from pipeline.stages.forecast import ForecastError, load_flow

    cfg = _cfg(repo, [])
    src = _our_checkpoint(cfg, tmp_path / "latest.pt")
    dst = tmp_path / "shipped" / "flow.pt"
    subprocess.run([sys.executable, "-m", "pipeline.run.checkpoints", str(src), str(dst)], check=True, cwd=repo,
                   env=ONE_THREAD, capture_output=True)
    exported = load_flow_checkpoint(dst)
    assert (exported.kind, exported.step, exported.ema) == ("pipeline", 7, None) and exported.holds_ema_weights
    assert "opt" not in exported.raw and all(t.dtype == torch.float16 for t in exported.model.values())
    record = json.loads(dst.with_suffix(".json").read_text())
    assert record["exported"]["weights"] == "ema" and record["interpolant"] == cfg.interpolant.kind

    lines: list[str] = []
    model, info = load_flow(cfg, dst, torch.device("cpu"), log=lines.append)
    assert info["use_ema"] and not lines
    for name, value in _state(cfg, 100).items():  # the EMA of _our_checkpoint, to float16 rounding
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-3, atol=1e-4)
    other = "linear" if cfg.interpolant.kind == "ours" else "ours"
    with pytest.raises(ForecastError, match="trained with other settings"):
        load_flow(_cfg(repo, [f"interpolant.kind={other}"]), dst, torch.device("cpu"), log=lines.append)
    if cfg.interpolant.kind == "ours":  # ours' noise strength is part of what was trained
        with pytest.raises(ForecastError, match=rf"interpolant.eps.*--set interpolant.ours_eps={cfg.interpolant.ours_eps}\)"):
            load_flow(_cfg(repo, [f"interpolant.ours_eps={cfg.interpolant.ours_eps * 2}"]), dst, torch.device("cpu"), log=lines.append)
