"""What a training run depends on, and what to do with its directory: start, resume, nothing, or refuse.

Torch-free on purpose: ``train_latent.py`` asks :func:`up_to_date_message` before anything loads torch, so a launch
whose run is already trained returns in about a second (``make forecast`` and ``make eval`` check training first).
:func:`pipeline.stages.train.train` makes the same decision with :func:`decide_run`, under the run's lock when there is work.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.data.cache import LatentSplit, store_attrs
from pipeline.run.config import Config, InterpolantConfig
from pipeline.run.records import changed_keys, fingerprint, read_json
from pipeline.data.views import training_views

LOGGING_ONLY = ("log_every", "latest_every", "save_every", "sample_every", "sample_split", "sample_videos",
                "sample_steps", "val_every", "val_split", "val_clips", "wandb_mode", "wandb_project")


def training_inputs(cfg: Config, cache_fingerprint: str, views: list[str] | None = None) -> dict[str, Any]:
    """Everything the trained weights depend on (logging cadence and wandb settings excluded).

    ``views``: the names of the store's views. When training draws from a subset of them (every view but the identity,
    for stores with colour-jitter views: ``pipeline.data.views.training_views``) the drawn names are recorded under
    ``data.views``; when it draws from all of them nothing is added (the cache fingerprint covers the view set).
    """
    train = {k: v for k, v in asdict(cfg.train).items() if k not in LOGGING_ONLY}
    data = {"frames_per_sample": cfg.data.frames_per_sample, "skip_frames": cfg.data.skip_frames}
    if views is not None and len(drawn := training_views(views, len(views))) < len(views):
        data["views"] = [views[i] for i in drawn]
    return {"cache": cache_fingerprint, "model": asdict(cfg.model), "interpolant": interpolant_inputs(cfg.interpolant),
            "train": train, "data": data, "seed": cfg.seed}


def interpolant_inputs(interpolant: InterpolantConfig) -> dict[str, Any]:
    """The interpolant settings the weights depend on: its fields, with ``ours_eps`` only where it acts (kind=ours)
    and differs from its default, the 0.1 that every run recorded before the key existed was trained with; so a
    linear run is not made stale by ours' setting, and older runs keep their fingerprints (and resume)."""
    fields = asdict(interpolant)
    if interpolant.kind != "ours" or interpolant.ours_eps == InterpolantConfig.ours_eps:
        del fields["ours_eps"]
    return fields


def decide_run(out_dir: Path, inputs: dict[str, Any], key: str, cfg: Config, force: bool) -> tuple[str, str]:
    """(action, message) for the run in ``out_dir``, changing nothing: 'fresh', 'resume', 'up to date' (the message
    is the line to log), 'stale' (the message is the refusal) or 'discard' (``force``: what changed)."""
    record = read_json(out_dir / "run.json")
    latest = out_dir / "checkpoints" / "latest.pt"
    if record is None or not latest.exists():
        foreign = foreign_forecasts(out_dir)
        if foreign:
            return "stale", (f"{out_dir} holds forecasts of {foreign}, a flow checkpoint from outside this run (made "
                             "by make forecast CKPT=...): training here would put a second model in the run. Train "
                             "under another name (make train RUN=<new name>), or delete the run directory first.")
        return "fresh", ""
    if record.get("fingerprint") == key:
        step = int(record.get("step", 0))
        if step >= cfg.train.steps:
            return "up to date", f"train: {out_dir} is up to date ({step} steps, fingerprint {key})"
        return "resume", ""
    changed = changed_keys(record.get("inputs", {}), inputs)
    what = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
    if not force:
        cache_note = " (the latent cache changed: its fingerprint differs from the checkpoint's)" if "cache" in changed else ""
        return "stale", (f"{out_dir} was trained from different inputs; changed: {what}{cache_note}. "
                         "Rerun with --force (make train FORCE=1) to discard it and train from scratch, or train "
                         "these settings as a new run beside it (make train RUN=<new name>).")
    return "discard", f"changed: {what}"


def foreign_forecasts(out_dir: Path) -> str | None:
    """The checkpoint recorded by the run's forecasts when it lies outside the run's own checkpoints/ (a run made by
    ``make forecast CKPT=...`` holds no training); None when there are no such forecasts."""
    ckpt = store_attrs(str(out_dir / "forecasts.zarr")).get("ckpt")
    own = ckpt and Path(ckpt).parent.name == "checkpoints" and Path(ckpt).parent.parent.name == out_dir.name
    return None if not ckpt or own else str(ckpt)  # recorded as given (relative to that launch's directory)


def up_to_date_message(cfg: Config, store: str, out_dir: Path) -> str | None:
    """The stage's "up to date" line when the run in ``out_dir`` finished training on exactly these inputs, else None
    (work, a refusal or an error: :func:`pipeline.stages.train.train` decides and reports those)."""
    try:
        if not (out_dir / "run.json").is_file():  # nothing trained here yet
            return None
        split = LatentSplit(store, cfg.train.split)
        if not split.attrs.get("complete"):
            return None
        inputs = training_inputs(cfg, split.attrs["fingerprint"], split.attrs.get("views"))
        action, message = decide_run(out_dir, inputs, fingerprint(inputs), cfg, force=False)
    except Exception:  # whatever it is, train() meets it again and says it properly
        return None
    return message if action == "up to date" else None
