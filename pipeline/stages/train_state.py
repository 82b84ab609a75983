"""What a training run depends on, and the protocol's verdict for its directory (start, resume, nothing, refuse).
Torch-free, so ``train_latent.py`` answers "up to date" without importing torch."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.data.cache import LatentSplit, store_attrs
from pipeline.run.config import Config, InterpolantConfig
from pipeline.run.protocol import Output, Verdict, decide, up_to_date_line
from pipeline.run.records import read_json
from pipeline.data.views import training_views

LOCK = ".train.lock"  # in the run directory: one training process (rank 0 of one launch) writes a run at a time
REMEDY = ("Rerun with --force (make train FORCE=1) to discard it and train from scratch, or train these settings as a "
          "new run beside it (make train RUN=<new name>).")
LOGGING_ONLY = ("log_every", "latest_every", "save_every", "sample_every", "sample_split", "sample_videos",
                "sample_steps", "val_every", "val_split", "val_clips", "wandb_mode", "wandb_project")


def training_inputs(cfg: Config, cache_fingerprint: str, views: list[str] | None = None) -> dict[str, Any]:
    """Everything the trained weights depend on (logging cadence and wandb excluded). When training draws a subset of
    the store's ``views`` (:func:`pipeline.data.views.training_views`), their names go under ``data.views``."""
    train = {k: v for k, v in asdict(cfg.train).items() if k not in LOGGING_ONLY}
    data = {"frames_per_sample": cfg.data.frames_per_sample, "skip_frames": cfg.data.skip_frames}
    if views is not None and len(drawn := training_views(views, len(views))) < len(views):
        data["views"] = [views[i] for i in drawn]
    return {"cache": cache_fingerprint, "model": asdict(cfg.model), "interpolant": interpolant_inputs(cfg.interpolant),
            "train": train, "data": data, "seed": cfg.seed}


def interpolant_inputs(interpolant: InterpolantConfig) -> dict[str, Any]:
    """The interpolant fields; ``ours_eps`` only where it acts (kind=ours) and differs from its default, so other
    kinds are not made stale by it and runs recorded before the key existed keep their fingerprints."""
    fields = asdict(interpolant)
    if interpolant.kind != "ours" or interpolant.ours_eps == InterpolantConfig.ours_eps:
        del fields["ours_eps"]
    return fields


def run_output(out_dir: Path) -> Output:
    """A training run as an output of the protocol: refused when trained from other inputs, discarded under --force."""
    return Output("train", str(out_dir), "trained", REMEDY, lock=out_dir / LOCK,
                  notes={"cache": " (the latent cache changed: its fingerprint differs from the checkpoint's)"})


def decide_run(out_dir: Path, inputs: dict[str, Any], cfg: Config, force: bool) -> Verdict:
    """The run's verdict, changing nothing; refused if ``out_dir`` holds forecasts of a foreign checkpoint."""
    latest = out_dir / "checkpoints" / "latest.pt"
    record = (read_json(out_dir / "run.json") if latest.exists() else None) or {}
    foreign = None if record else foreign_forecasts(out_dir)
    if foreign:
        return Verdict("stale", str(out_dir), f"{out_dir} holds forecasts of {foreign}, a flow checkpoint from outside "
                       "this run (made by make forecast CKPT=...): training here would put a second model in the run. "
                       "Train under another name (make train RUN=<new name>), or delete the run directory first.")
    step = int(record.get("step", 0))
    return decide(run_output(out_dir), record, inputs, force, complete=step >= cfg.train.steps,
                  detail=f"{step} steps, ")


def foreign_forecasts(out_dir: Path) -> str | None:
    """The checkpoint the run's forecasts record when it lies outside the run's checkpoints/, else None."""
    ckpt = store_attrs(str(out_dir / "forecasts.zarr")).get("ckpt")
    own = ckpt and Path(ckpt).parent.name == "checkpoints" and Path(ckpt).parent.parent.name == out_dir.name
    return None if not ckpt or own else str(ckpt)  # recorded as given (relative to that launch's directory)


def up_to_date_message(cfg: Config, store: str, out_dir: Path) -> str | None:
    """The stage's "up to date" line when the run in ``out_dir`` finished training on exactly these inputs, else None."""
    if not (out_dir / "run.json").is_file():  # nothing trained here yet
        return None

    def decision() -> Verdict:
        split = LatentSplit(store, cfg.train.split)
        if not split.attrs.get("complete"):
            raise ValueError(f"{store} is not complete")  # train() says so
        return decide_run(out_dir, training_inputs(cfg, split.attrs["fingerprint"], split.attrs.get("views")), cfg, False)

    return up_to_date_line(decision)
