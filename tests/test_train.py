"""Stage 2: training on cached latents — overfitting, exact resume after kill -9, DDP, published checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import imported_modules
from pipeline.run.checkpoints import load_flow_checkpoint
from pipeline.run.config import ModelConfig, load_config
from pipeline.core.model import build_model
from pipeline.run.safe_load import PickledRecord
from pipeline.stages.train import TrainingError, train

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensor work: one thread is faster on 2 shared cores

SMALL_NET = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
             "train.sample_every=0"]


def _cfg(repo: Path, overrides: list[str], *extra: str):
    return load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL_NET, *extra], smoke=True)


def _cli(repo: Path, overrides: list[str], store: str, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    sets = [arg for item in [*overrides, *SMALL_NET, *extra] for arg in ("--set", item)]
    return [*(launcher or [sys.executable]), str(repo / "train_latent.py"), "--config", str(repo / "configs" / "demo.yaml"),
            "--smoke", *sets, "--store", store, "--out", str(out)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)  # our checkpoints load with weights_only=True
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def test_overfitting_one_clip_drives_the_loss_down(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    # the paper's ε: at the demo's ε = 1 the injected noise is part of the target, a floor no overfitting removes
    cfg = _cfg(repo, overrides, "train.overfit=one", "train.steps=300", "train.log_every=20", "train.latest_every=300",
               "train.save_every=300", "train.lr=2e-3", "train.warmup_steps=20", "train.schedule=constant",
               "interpolant.ours_eps=0.1")
    train(cfg, store, tmp_path / "run", log=lambda _: None)
    rows = [row for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss" in (row := json.loads(line))]
    assert rows[0]["loss"] / rows[-1]["loss"] >= 10, [round(r["loss"], 3) for r in rows]
    assert {"loss", "grad_norm", "lr", "clip_fraction", "samples_per_s", "data_wait_fraction"} <= set(rows[0])


def test_kill9_then_resume_matches_uninterrupted(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    settings = ["train.steps=40", "train.latest_every=5", "train.save_every=40", "train.log_every=5", "train.ema_start=8",
                "interpolant.kind=linear"]
    subprocess.run(_cli(repo, overrides, store, tmp_path / "straight", *settings), check=True, capture_output=True)
    process = subprocess.Popen(_cli(repo, overrides, store, tmp_path / "killed", *settings),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_json = tmp_path / "killed" / "demo-smoke" / "runs" / "linear" / "run.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if run_json.exists() and json.loads(run_json.read_text()).get("step", 0) >= 15:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 15 <= json.loads(run_json.read_text())["step"] < 40, "the kill should land mid-run"
    result = subprocess.run(_cli(repo, overrides, store, tmp_path / "killed", *settings), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout and "note: this run began with" not in result.stdout  # same thread count
    assert json.loads(run_json.read_text())["torch_threads"] == int(os.environ["OMP_NUM_THREADS"])
    final = lambda root: _weights(root / "demo-smoke" / "runs" / "linear" / "checkpoints" / "latest.pt")  # noqa: E731
    straight, resumed = final(tmp_path / "straight"), final(tmp_path / "killed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # Finished: a further launch says so without loading torch.
    again = subprocess.run(_cli(repo, overrides, store, tmp_path / "killed", *settings), capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.stdout.startswith(f"train: {run_json.parent} is up to date (40 steps, fingerprint ")
    assert "pipeline.stages.train_state" in imported_modules(again.stderr) and "torch" not in imported_modules(again.stderr)


def test_two_process_ddp(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(_cli(repo, overrides, store, tmp_path, "train.steps=6", "train.latest_every=3", launcher=torchrun),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "demo-smoke" / "runs" / "ours" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["sampler"]["world_size"] == 2


def test_stale_cache_is_refused(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.steps=2", "train.latest_every=1")
    train(cfg, store, tmp_path / "run", log=lambda _: None)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    record["inputs"]["cache"] = "0" * 16  # as if the checkpoint had been trained on another cache
    record["fingerprint"] = "something else"
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    with pytest.raises(TrainingError, match="latent cache changed"):
        train(cfg, store, tmp_path / "run", log=lambda _: None)
    assert train(cfg, store, tmp_path / "run", force=True, log=lambda _: None) == "trained"


class AuthorsConfig:
    """Stands in for the pickled Config object of the authors' code (its class is not importable at load time)."""

    def __init__(self):
        self.dataset, self.interpolant_type, self.base_lr = "kth", "ours", 2e-4


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


def test_published_flow_checkpoint_loads_and_reproduces_outputs(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    reference_net = build_model(ModelConfig()).eval()  # the paper's size: names/shapes of the JSON listing
    state = reference_net.state_dict()
    published = {
        "model": {**{f"module.vector_field_regressor.{k}": v for k, v in state.items()},
                  "module.ae.encoder.conv_in.weight": torch.zeros(3)},
        "ema": {f"vector_field_regressor.{k}": v for k, v in state.items()},
        "opt": {"state": {}, "param_groups": []}, "config": AuthorsConfig(), "step": 250_000, "hook": Payload(),
    }
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    path = tmp_path / "kth_model_ours.pt"
    with open(path, "wb") as fh:
        torch.save(published, fh, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    ckpt = load_flow_checkpoint(path)
    assert not marker.exists(), "loading must never run code from the file"
    assert ckpt.kind == "published" and ckpt.step == 250_000
    assert isinstance(ckpt.config, PickledRecord) and "AuthorsConfig" in repr(ckpt.config)
    loaded = build_model(ModelConfig()).eval()
    loaded.load_state_dict(ckpt.weights(use_ema=True))  # strict
    z, ref, ctx = (torch.randn(2, 4, 8, 8) for _ in range(3))
    t, gap = torch.tensor([0.3, 0.7]), torch.tensor([1.0, 4.0])
    with torch.no_grad():
        assert torch.equal(loaded(z, t, ref, ctx, gap), reference_net(z, t, ref, ctx, gap))


def test_training_is_refused_in_a_run_that_holds_forecasts_of_an_outside_checkpoint(tiny_store, tmp_path: Path,
                                                                                     repo: Path) -> None:
    """A run made by `make forecast CKPT=...` (the demo's shipped-<interp>) holds no training: training into it by
    mistake (make train RUN=shipped-linear) is refused; forecasts of the run's own checkpoints are not in the way."""
    import zarr

    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.steps=2", "train.latest_every=1")
    run = tmp_path / "shipped-linear"
    zarr.open_group(str(run / "forecasts.zarr"), mode="w").attrs["ckpt"] = "checkpoints/demo_flow_linear.pt"
    with pytest.raises(TrainingError, match="holds forecasts of checkpoints/demo_flow_linear.pt"):
        train(cfg, store, run, log=lambda _: None)
    assert not (run / "checkpoints").exists() and not (run / "run.json").exists()
    own = tmp_path / "mine"
    zarr.open_group(str(own / "forecasts.zarr"), mode="w").attrs["ckpt"] = "outputs/demo/runs/mine/checkpoints/latest.pt"
    assert train(cfg, store, own, log=lambda _: None) == "trained"
