"""wandb shows the run: training curves, validation loss, sample videos, forecast grids and evaluation results (with
intervals, verdicts, known-law scores and per-frame curves, at steps wandb keeps) in one (offline) wandb run, read
back from its files; a checkpoint without its training run gets a run of its own; wandb prints nothing; the
gradient-clipping warning; validation leaves training unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
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
from pipeline.eval.compare import COLUMNS, paired_rows
from pipeline.run.tracking import VERDICTS, evaluation_numbers, log_evaluation
from pipeline.stages.train import train, training_inputs
from pipeline.stages.train_monitor import ValidationLoss

SMALL = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.steps=6",
         "train.batch_size=4", "train.log_every=2", "train.latest_every=6", "train.save_every=6",
         "train.warmup_steps=2", "train.ema_start=2", "train.sample_every=0", "train.val_every=3", "train.val_clips=8",
         "train.wandb_mode=disabled"]
QUIET = dict(log=lambda _: None)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch) -> None:
    """wandb as a user without settings gets it (offline from the config, silent), its staged table files in tmp."""
    for name in ("WANDB_MODE", "WANDB_SILENT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


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
    Returns the run id, whether the process asked to resume it, its group and tags, the history rows, the merged
    summary, the metric definitions (define_metric) and files/.
    """
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(directory)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in printed.splitlines()]
    run = next(r["run"] for r in records if r["type"] == "run")
    summary = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    return {"id": run["run_id"], "resumed": run.get("resume", False), "group": run.get("run_group"),
            "tags": run.get("tags"), "summary": summary, "files": directory / "files",
            "history": [r["history"]["item"] for r in records if r["type"] == "history"],
            "metrics": [r["metric"] for r in records if r["type"] == "metric"]}


def _media_file(segment: dict, item: dict, key: str, kind: str) -> Path:
    """The file a logged media value points to, checked to be of ``kind`` (video-file, image-file) and present."""
    assert item[f"{key}._type"] == kind, item
    path = segment["files"] / item[f"{key}.path"]
    assert path.is_file() and path.stat().st_size == item[f"{key}.size"] > 0, path
    return path


def _banners(text: str) -> list[str]:
    """wandb's own console lines (its banners start with ``wandb:``); the stages' one line each starts otherwise."""
    return [line for line in text.splitlines() if line.lstrip().startswith("wandb:")]


def _interval(item: dict, key: str, block: dict) -> None:
    """The logged value of ``key`` and its interval are metrics.json's."""
    logged = [item[key], item[f"{key}_low"], item[f"{key}_high"]]
    assert logged == pytest.approx([block[k] for k in ("value", "low", "high")])


@pytest.mark.usefixtures("wandb_env")
def test_offline_run_holds_videos_validation_and_evaluation(tiny_store, tmp_path: Path, repo: Path, capfd) -> None:
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
    printed = capfd.readouterr()
    assert not _banners(printed.out + printed.err)  # wandb silenced: one line per stage, ours
    assert printed.out.count(f"train: wandb: run {record['wandb_id']} (offline)") == 1

    segments = [read_offline_run(d) for d in sorted((run / "wandb").glob("offline-run-*"))]
    assert [s["id"] for s in segments] == [record["wandb_id"]] * 3 and all(s["resumed"] for s in segments)
    assert all((s["group"], s["tags"]) == (cfg.data.name, [cfg.interpolant.kind, "ours"]) for s in segments)
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
    # forecast and eval: one row each at a step above training's last (wandb keeps it), on their own axis = the
    # checkpoint's training step
    (grids,), (item,) = forecasted["history"], evaluated["history"]
    assert (grids["_step"], grids["forecast/step"], item["_step"], item["eval/step"]) == (7, 6, 8, 6)
    assert json.loads((run / "run.json").read_text())["wandb_step"] == 8
    assert {"glob_name": "eval/*", "step_metric": "eval/step"} in [
        {k: m.get(k) for k in ("glob_name", "step_metric")} for m in evaluated["metrics"]]
    grid = _media_file(forecasted, grids, "forecast/forecast_0", "video-file")
    assert grid.read_bytes() == (run / "media" / "forecast_0.mp4").read_bytes()
    # evaluation: every headline number with its interval, the paired verdicts against copy-last, the known law
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for name in ("model", "vq_ceiling", "copy_last"):
        for metric in ("psnr", "ssim", "crps", "energy", "spread_skill"):
            _interval(item, f"eval/{name}/{metric}", metrics[name][metric])
    assert item["eval/model/psnr_best_of_n"] == pytest.approx(metrics["model"]["psnr"]["best_of_n"])
    paired = paired_rows(metrics["model"], metrics["copy_last"], metrics["protocol"], columns=[COLUMNS[1]])[0][1]
    assert [item[f"eval/model_vs_copy_last/psnr{k}"] for k in ("", "_low", "_high")] == \
        pytest.approx([paired[k] for k in ("diff", "low", "high")])
    assert item["eval/model_vs_copy_last/psnr_verdict"] == VERDICTS[paired["verdict"]]
    law = metrics["known_law"]["sets"]
    _interval(item, "eval/law/model/law_distance", law["model"]["law_distance"])
    _interval(item, "eval/law/oracle/identity_kept", law["oracle"]["identity_kept"])
    assert item["eval/law/model_vs_copy_last/law_distance_verdict"] in VERDICTS.values()
    assert {k: evaluated["summary"][k] for k in evaluation_numbers(metrics)} == evaluation_numbers(metrics)
    # per-frame curves: a table per family (a row per set and predicted frame) and line plots
    table = json.loads(_media_file(evaluated, item, "eval/per_frame", "table-file").read_text())
    by_row = {(r[0], r[1]): dict(zip(table["columns"], r)) for r in table["data"]}
    frames = metrics["protocol"]["pred_frames"]
    assert len(table["data"]) == 3 * frames
    assert by_row[("model", frames)]["psnr"] == metrics["model"]["psnr"]["per_frame"][-1]
    law_table = json.loads(_media_file(evaluated, item, "eval/law_per_frame", "table-file").read_text())
    assert law_table["data"][0][:3] == ["model", 1, law["model"]["identity_kept"]["per_frame"][0]]
    assert item["eval/per_frame/psnr_table._type"] == item["eval/law_per_frame/law_distance_table._type"] == "table-file"
    plot = _media_file(evaluated, item, "eval/curves", "image-file")
    assert plot.suffix == ".png"


@pytest.mark.usefixtures("wandb_env")
def test_a_checkpoint_without_its_training_run_is_tracked_as_a_run_of_its_own(tiny_store, tmp_path: Path, repo: Path,
                                                                              capfd) -> None:
    _, overrides, store = tiny_store
    train(_cfg(repo, overrides, "train.val_every=0"), store, tmp_path / "elsewhere", **QUIET)  # wandb disabled
    published = tmp_path / "published.pt"
    shutil.copy(tmp_path / "elsewhere" / "checkpoints" / "latest.pt", published)
    cfg = _cfg(repo, overrides, "train.wandb_mode=offline", "sample.n_samples=2", "sample.steps=3",
               "forecast.max_videos=2", "forecast.media_videos=1", "forecast.media_samples=2")
    run = tmp_path / "demo" / "runs" / "shipped"
    lines: list[str] = []
    forecast(cfg, store, run, ckpt=published, log=lines.append)
    evaluate(cfg, str(run / "forecasts.zarr"), run, log=lines.append)

    sha = hashlib.sha256(published.read_bytes()).hexdigest()
    wandb_id = f"{cfg.data.name}-shipped-{sha[:16]}"
    record = json.loads((run / "wandb" / "checkpoint_run.json").read_text())
    assert record == {"wandb_id": wandb_id, "wandb_project": cfg.train.wandb_project, "wandb_mode": "offline",
                      "ckpt": str(published), "ckpt_sha256": sha, "wandb_step": 1}
    assert not (run / "run.json").exists()  # no training record: make does not take it for a trained run
    for stage in ("forecast", "eval"):
        assert f"{stage}: wandb: results attached to run {wandb_id} of checkpoint {published} (offline)" in lines
    printed = capfd.readouterr()
    assert not _banners(printed.out + printed.err)
    segments = [read_offline_run(d) for d in sorted((run / "wandb").glob("offline-run-*"))]
    expected = (wandb_id, cfg.data.name, [cfg.interpolant.kind, "shipped"])  # grouped by dataset, tagged
    assert [(s["id"], s["group"], s["tags"]) for s in segments] == [expected] * 2
    (grids,), (item,) = (s["history"] for s in segments)
    assert (grids["_step"], item["_step"], item["eval/step"]) == (0, 1, 6)  # the checkpoint's training step
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    _interval(item, "eval/model/psnr", metrics["model"]["psnr"])

    disabled = load_config(repo / "configs" / "demo.yaml", ["train.wandb_mode=disabled"])
    assert not log_evaluation(disabled, run, metrics, lines.append)  # disabled: silent, nothing started
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2
    older = {"protocol": {"forecasts": str(tmp_path / "none.zarr")}}  # forecasts that record no checkpoint hash
    assert not log_evaluation(cfg, run, older, lines.append)
    assert lines[-1] == f"eval: wandb: {tmp_path / 'none.zarr'} records no checkpoint hash (made by an older version); " \
                        "results not attached"


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
    first, again = (ValidationLoss(cfg, store, interpolant, cpu) for _ in range(2))
    other = ValidationLoss(_cfg(repo, overrides, "model.dropout=0.2", "seed=1"), store, interpolant, cpu)
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


def test_wandb_mode_disabled_in_the_environment_wins(tmp_path: Path, repo: Path, monkeypatch) -> None:
    """WANDB_MODE=disabled turns tracking off for a new run and for the stages of a run started offline."""
    from pipeline.run.tracking import _attached, start_training_run

    cfg = load_config(repo / "configs" / "demo.yaml", ["train.wandb_mode=offline"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert start_training_run(cfg, tmp_path / "run", "key", **QUIET) is None
    with _attached(cfg, tmp_path / "run", str(tmp_path / "run" / "forecasts.zarr"), "eval", lambda _: None) as run:
        assert run is None
    assert not (tmp_path / "run").exists()
