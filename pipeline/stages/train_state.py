"""What a training run depends on, and the protocol's verdict for its directory (start, resume, nothing, refuse).
Torch-free, so ``train_latent.py`` answers "up to date" without importing torch."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pipeline.data.cache import LatentSplit
from pipeline.data.checked_store import store_attrs
from pipeline.run.config import IDENTIFIER, INTERPOLANT_PRESETS, Config, InterpolantConfig
from pipeline.run.locks import lock_file
from pipeline.run.protocol import REBUILD, Output, Verdict, decide, up_to_date_line
from pipeline.run.records import KnownHashes, cached_sha256, fingerprint, read_json
from pipeline.data.views import training_views
from pipeline.stages.train_plan import recorded_plan

REMEDY = ("Rerun with --force (make train FORCE=1) to train it again from scratch (it stays until the new run has "
          "finished), or train these settings as a new run beside it (make train RUN=<new name>).")
# Training settings left out of the inputs: logging, retention, how a batch is split (micro_batch changes float
# summation order only), and init_from (entered as its source and sha256). train.steps enters as the run began:
# raising it extends the run.
NOT_INPUTS = ("log_every", "latest_every", "save_every", "sample_every", "sample_split", "sample_videos",
              "sample_steps", "val_every", "val_split", "val_clips", "wandb_mode", "wandb_project", "micro_batch",
              "keep", "keep_every", "init_from")


def training_inputs(cfg: Config, cache_fingerprint: str, views: list[str] | None = None, out_dir: Path | None = None,
                    hashes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the trained weights depend on (logging cadence and wandb excluded). When training draws a subset of
    the store's ``views`` (:func:`pipeline.data.views.training_views`), their names go under ``data.views``; a warm
    start's source (``out_dir`` places run names) under ``train.init_from`` with its sha256 (None when ``hashes``
    is a :class:`KnownHashes` without it). ``train.latent_norm`` only when on, so runs recorded before the key existed
    keep their fingerprints."""
    train = {k: v for k, v in asdict(cfg.train).items() if k not in NOT_INPUTS}
    if cfg.train.latent_norm == "none":
        del train["latent_norm"]
    if cfg.train.init_from:
        source = init_source(cfg, out_dir)
        train["init_from"] = {"source": cfg.train.init_from, "sha256": cached_sha256(source, {} if hashes is None else hashes)}
    data = {"frames_per_sample": cfg.data.frames_per_sample, "skip_frames": cfg.data.skip_frames}
    if views is not None and len(drawn := training_views(views, len(views))) < len(views):
        data["views"] = [views[i] for i in drawn]
    return {"cache": cache_fingerprint, "model": asdict(cfg.model), "interpolant": interpolant_inputs(cfg.interpolant),
            "train": train, "data": data, "seed": cfg.seed}


def interpolant_inputs(interpolant: InterpolantConfig) -> dict[str, Any]:
    """The interpolant fields; ``ours_eps`` only where it acts (kind=ours) and differs from its default, so other
    kinds are not made stale by it and runs recorded before the key existed keep their fingerprints; with the
    definition of a kind defined in code (:func:`interpolant_definition`)."""
    fields = asdict(interpolant)
    if interpolant.kind != "ours" or interpolant.ours_eps == InterpolantConfig.ours_eps:
        del fields["ours_eps"]
    return {**fields, **interpolant_definition(interpolant)}


def interpolant_definition(interpolant: InterpolantConfig) -> dict[str, Any]:
    """{} for the config's own kinds (linear, ours, custom: their keys say it all); for a kind defined in code the
    sha256 of its source file, so that editing it makes the runs and forecasts made with it stale."""
    if interpolant.kind in ("custom", *INTERPOLANT_PRESETS):
        return {}
    from pipeline.core.interpolant_kinds import definition  # imports torch and the defining module: only here

    return definition(interpolant.kind)


def init_source(cfg: Config, out_dir: Path | None) -> Path:
    """The checkpoint ``train.init_from`` names: a run of this dataset (beside ``out_dir``: its latest.pt) or a file.
    FileNotFoundError / ValueError name the key."""
    value = cfg.train.init_from
    is_run = IDENTIFIER.fullmatch(value) is not None
    if is_run and out_dir is not None and value == out_dir.name:
        raise ValueError(f"train.init_from={value}: a run cannot warm-start from itself (raise train.steps to extend it)")
    path = out_dir.parent / value / "checkpoints" / "latest.pt" if is_run and out_dir is not None else Path(value)
    if not path.is_file():
        what = f"run {value} has no checkpoint ({path})" if is_run else f"{path} not found"
        raise FileNotFoundError(f"train.init_from={value}: {what}")
    return path


def run_output(out_dir: Path) -> Output:
    """A training run as an output of the protocol: refused when trained from other inputs, rebuilt beside under
    --force. Its lock (``runs/.<run>.lock``) lies outside the run and its rebuild, so it covers both and survives the
    swap; one training process (rank 0 of one launch) writes either at a time."""
    return Output("train", str(out_dir), "trained", REMEDY, beside=True, read=run_record, lock=lock_file(out_dir),
                  notes={"cache": " (the latent cache changed: its fingerprint differs from the checkpoint's)"})


def rebuild_dir(out_dir: Path) -> Path:
    """Where ``--force`` trains a run's replacement: ``runs/<run>.rebuild`` (not a run name, so never listed as one)."""
    return Path(f"{out_dir}{REBUILD}")


def run_record(out_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``run.json`` once it has a checkpoint ({} before), with ``complete``: trained to its target."""
    out_dir = Path(out_dir)
    record = (read_json(out_dir / "run.json") if (out_dir / "checkpoints" / "latest.pt").exists() else None) or {}
    if record:
        begun = (record.get("inputs") or {}).get("train", {}).get("steps", 0)
        record["complete"] = int(record.get("step", 0)) >= recorded_plan(record, begun)[-1]["steps"]
    return record


def decide_run(out_dir: Path, inputs: dict[str, Any], cfg: Config, force: bool) -> Verdict:
    """The run's verdict, changing nothing; refused if ``out_dir`` holds forecasts of a foreign checkpoint.

    ``--force`` on a run of other inputs (or of more steps than ``train.steps``) trains the new run beside it
    (:func:`rebuild_dir`), resumes that rebuild on the next ``--force`` and swaps it in when it has trained all its
    steps (``train.py``), not at an earlier checkpoint: until then the old run stays whole and usable (its forecasts
    and scores belong to it), and a run directory never holds a run half-trained on settings that replaced a
    finished one."""
    record = run_record(out_dir)
    foreign = None if record else foreign_forecasts(out_dir)
    if foreign:
        return Verdict("stale", str(out_dir), f"{out_dir} holds forecasts of {foreign}, a flow checkpoint from outside "
                       "this run (made by make forecast CKPT=...): training here would put a second model in the run. "
                       "Train under another name (make train RUN=<new name>), or delete the run directory first.")
    verdict = _decide_in(out_dir, record, inputs, cfg)
    if not force or verdict.action != "stale":
        return verdict
    beside = rebuild_dir(out_dir)
    again = _decide_in(beside, run_record(beside), inputs, cfg)
    if again.action in ("up to date", "resume"):
        return replace(again, action="resume", message=f"train: --force: resuming the rebuild of {out_dir} in {beside}")
    changed = f"; changed: {verdict.changed}" if verdict.changed else f" (it has trained {record.get('step')} steps)"
    return Verdict("rebuild", str(beside), f"train: --force: rebuilding {out_dir} in {beside}, which replaces it when "
                   f"it has trained {cfg.train.steps} steps{changed}", inputs, fingerprint(inputs), verdict.changed)


def _decide_in(out_dir: Path, record: dict[str, Any], inputs: dict[str, Any], cfg: Config) -> Verdict:
    """The verdict for the run directory ``out_dir`` (of ``record``) without --force: create, resume (extending or
    shortening its target), up to date, or stale (other inputs, or more steps trained than ``train.steps``)."""
    step = int(record.get("step", 0))
    begun = (record.get("inputs") or {}).get("train", {}).get("steps", cfg.train.steps)
    inputs = {**inputs, "train": {**inputs["train"], "steps": begun}}  # the fingerprint keeps the steps it began with
    verdict = decide(run_output(out_dir), record, inputs, complete=step >= cfg.train.steps, detail=f"{step} steps, ")
    if verdict.action in ("up to date", "resume") and step > cfg.train.steps:
        return Verdict("stale", verdict.target, f"{out_dir} has trained {step} steps, more than train.steps="
                       f"{cfg.train.steps}: a run is extended, never cut back. Forecast one of its numbered checkpoints "
                       f"(make forecast RUN=<new name> CKPT={out_dir}/checkpoints/<step>.pt), set train.steps >= "
                       f"{step}, or {REMEDY[0].lower()}{REMEDY[1:]}", verdict.inputs, verdict.key)
    target = recorded_plan(record, begun)[-1]["steps"]
    if verdict.action == "resume" and target != cfg.train.steps:
        what = "extending" if cfg.train.steps > target else "shortening"
        return Verdict("resume", verdict.target, f"train: {what} {out_dir} from {target} to {cfg.train.steps} steps "
                       f"(it has trained {step})", verdict.inputs, verdict.key)
    return verdict


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
        hashes = KnownHashes((read_json(out_dir / "run.json") or {}).get("file_hashes", {}))
        inputs = training_inputs(cfg, split.attrs["fingerprint"], split.attrs.get("views"), out_dir, hashes)
        return decide_run(out_dir, inputs, cfg, False)

    return up_to_date_line(decision)
