"""wandb shows the run: training curves, validation loss, sample videos, forecast grids and evaluation numbers in one
(offline) wandb run, read back from its files; the gradient-clipping warning; validation leaves training unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.run.config import ConfigError, load_config
from pipeline.stages.evaluate import evaluate
from pipeline.stages.forecast import forecast
from pipeline.core.interpolants import build_interpolant
from pipeline.core.model import build_model
from pipeline.run.tracking import headline_numbers, log_evaluation
from pipeline.stages.train import _Validation, train, training_inputs

SMALL = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.steps=6",
         "train.batch_size=4", "train.log_every=2", "train.latest_every=6", "train.save_every=6",
         "train.warmup_steps=2", "train.ema_start=2", "train.sample_every=0", "train.val_every=3", "train.val_clips=8",
         "train.wandb_mode=disabled"]
QUIET = dict(log=lambda _: None)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(repo: Path, overrides: list[str], *extra: str):
    return load_config(repo / "configs" / "demo.yaml", [*overrides, *SMALL, *extra])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def read_offline_run(directory: Path) -> dict:
    """One ``offline-run-*`` directory read back with wandb's own reader of its ``.wandb`` transaction log.

    wandb 0.31 has no Python reader of that log (``wandb.sdk.internal.datastore`` is gone and ``wandb.Api()`` needs
    a server); its CLI ``wandb leet inspect --json PATH`` (wandb-core) prints the log's records, one JSON per line.
    Returns the run id, whether the process asked to resume it, the history rows, the merged summary and files/.
    """
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(directory)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in printed.splitlines()]
    run = next(r["run"] for r in records if r["type"] == "run")
    summary = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    return {"id": run["run_id"], "resumed": run.get("resume", False), "summary": summary, "files": directory / "files",
            "history": [r["history"]["item"] for r in records if r["type"] == "history"]}


def _media_file(segment: dict, item: dict, key: str, kind: str) -> Path:
    """The file a logged media value points to, checked to be of ``kind`` (video-file, image-file) and present."""
    assert item[f"{key}._type"] == kind, item
    path = segment["files"] / item[f"{key}.path"]
    assert path.is_file() and path.stat().st_size == item[f"{key}.size"] > 0, path
    return path


def test_offline_run_holds_videos_validation_and_evaluation(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "train.wandb_mode=offline", "train.sample_every=6", "train.sample_videos=1",
               "train.sample_steps=3", "sample.n_samples=2", "sample.steps=3", "forecast.max_videos=2",
               "forecast.media_videos=1", "forecast.media_samples=2")
    run = tmp_path / "demo" / "runs" / "ours"
    lines: list[str] = []
    train(cfg, store, run, **QUIET)
    forecast(cfg, store, run, log=lines.append)
    evaluate(cfg, str(run / "forecasts.zarr"), run, log=lines.append)
    record = json.loads((run / "run.json").read_text())
    assert (record["wandb_mode"], record["wandb_project"]) == ("offline", cfg.train.wandb_project)
    assert f"forecast: wandb: results attached to run {record['wandb_id']} (offline)" in lines
    assert f"eval: wandb: results attached to run {record['wandb_id']} (offline)" in lines

    segments = [read_offline_run(d) for d in sorted((run / "wandb").glob("offline-run-*"))]
    assert [s["id"] for s in segments] == [record["wandb_id"]] * 3 and all(s["resumed"] for s in segments)
    trained, forecasted, evaluated = segments
    # training: loss and validation curves (the rows of metrics.jsonl), the sample video as a real video file
    rows = _rows(run)
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [3, 6]
    history = {item["_step"]: item for item in trained["history"]}
    for row in rows:  # numbers in the history at the row's step; text (the clip warning) in the summary
        numbers = {k: v for k, v in row.items() if not isinstance(v, str)}
        assert {k: history[row["step"]][k] for k in numbers} == pytest.approx(numbers)
        assert all(trained["summary"][k] == v for k, v in row.items() if isinstance(v, str))
    video = _media_file(trained, history[6], "media/real_vs_generated", "video-file")
    assert video.suffix == ".mp4" and video.read_bytes() == (run / "media" / "real_raw_ema_0000006.mp4").read_bytes()
    # forecast: the grid of the first video; evaluation: headline numbers in the summary and the PSNR plot
    grid = _media_file(forecasted, forecasted["history"][0], "forecast/forecast_0", "video-file")
    assert grid.read_bytes() == (run / "media" / "forecast_0.mp4").read_bytes()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    numbers = headline_numbers(metrics)
    assert numbers["eval/model/psnr"] == metrics["model"]["psnr"]["value"]
    assert {k: evaluated["summary"][k] for k in numbers} == pytest.approx(numbers)
    plot = _media_file(evaluated, evaluated["history"][0], "eval/curves", "image-file")
    assert plot.suffix == ".png"


def test_clip_warning_fires_once_when_clipping_acts_on_nearly_every_step(tiny_store, tmp_path: Path, repo: Path,
                                                                         capsys) -> None:
    _, overrides, store = tiny_store
    train(_cfg(repo, overrides, "train.grad_clip=1e-6", "train.val_every=0"), store, tmp_path / "tiny", **QUIET)
    warned = [r for r in _rows(tmp_path / "tiny") if "clip_warning" in r]
    assert len(warned) == 1 and warned[0]["step"] == 2 and warned[0]["clip_fraction"] == 1.0
    text = warned[0]["clip_warning"]
    assert "100% of the last 2 steps" in text and "train.grad_clip 1e-06" in text and "gradient directions only" in text
    assert capsys.readouterr().out.count("warning: gradient clipping") == 1
    assert "wandb_id" not in json.loads((tmp_path / "tiny" / "run.json").read_text())  # wandb disabled

    train(_cfg(repo, overrides, "train.grad_clip=0", "train.val_every=0"), store, tmp_path / "off", **QUIET)
    assert all("clip_warning" not in r and r["clip_fraction"] == 0.0 for r in _rows(tmp_path / "off"))
    assert "warning" not in capsys.readouterr().out


def test_validation_leaves_the_trained_weights_bit_identical(tiny_store, tmp_path: Path, repo: Path) -> None:
    _, overrides, store = tiny_store
    with_dropout = [*overrides, "model.dropout=0.2"]  # training draws dropout masks; validation must not disturb them
    on, off = _cfg(repo, with_dropout, "train.val_every=1"), _cfg(repo, with_dropout, "train.val_every=0")
    assert not any(k.startswith("val_") for k in training_inputs(on, "cache")["train"])  # same fingerprint
    train(on, store, tmp_path / "on", **QUIET)
    train(off, store, tmp_path / "off", **QUIET)
    assert [r["step"] for r in _rows(tmp_path / "on") if "val_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert not any("val_loss" in r for r in _rows(tmp_path / "off"))
    with_val, without = _weights(tmp_path / "on"), _weights(tmp_path / "off")
    assert all(torch.equal(with_val[k], without[k]) for k in without)


def test_validation_set_is_fixed_by_the_seed(tiny_store, repo: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(repo, overrides, "model.dropout=0.2")
    interpolant, cpu = build_interpolant(cfg.interpolant), torch.device("cpu")
    first, again = (_Validation(cfg, store, interpolant, cpu) for _ in range(2))
    other = _Validation(_cfg(repo, overrides, "model.dropout=0.2", "seed=1"), store, interpolant, cpu)
    assert all(torch.equal(a, b) for a, b in zip([*first.inputs, first.target], [*again.inputs, again.target]))
    assert not torch.equal(first.target, other.target)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    losses = first.losses(model, model)
    # eval mode: no dropout, so the same weights score the same, every time
    assert losses["val_loss"] == losses["val_loss_ema"] == again.losses(model, model)["val_loss"]
    assert model.training  # the mode is restored
    with pytest.raises(ConfigError, match=r"'train.val_split' reads split 'nope'"):  # refused when the config loads
        _cfg(repo, overrides, "train.val_split=nope")


def test_results_are_not_attached_without_the_training_run(tmp_path: Path, repo: Path) -> None:
    cfg = load_config(repo / "configs" / "demo.yaml")
    run = tmp_path / "demo" / "runs" / "ours"
    run.mkdir(parents=True)
    published = {"protocol": {"checkpoint": {"ckpt": str(tmp_path / "kth_model_ours.pt")}}}
    lines: list[str] = []
    assert not log_evaluation(cfg, run, published, lines.append)  # no run.json: one line, nothing started
    assert lines == [f"eval: wandb: no training run recorded in {run / 'run.json'}; results not attached"]
    record = {"wandb_id": "demo-ours-0", "wandb_project": "p", "wandb_mode": "offline"}
    (run / "run.json").write_text(json.dumps(record))
    assert not log_evaluation(cfg, run, published, lines.append)  # a checkpoint that is not this run's
    assert "is not a checkpoint of" in lines[-1] and len(lines) == 2
    disabled = load_config(repo / "configs" / "demo.yaml", ["train.wandb_mode=disabled"])
    own = {"protocol": {"checkpoint": {"ckpt": str(run / "checkpoints" / "latest.pt")}}}
    assert not log_evaluation(disabled, run, own, lines.append)  # disabled: silent, nothing written
    assert len(lines) == 2 and not (run / "wandb").exists()
