"""Weights & Biases for a whole run. Training (rank 0) starts it, offline by default (under ``<run>/wandb/``), and
records ``wandb_id``, ``wandb_project`` and ``wandb_mode`` in ``run.json``; forecast and evaluation resume it by id,
so one run holds the curves, sample videos, forecast grids and evaluation numbers. Results attach only to the run
that made them (no recorded id, or a checkpoint outside ``<run>/checkpoints/``: one line, nothing attached).
``train.wandb_mode=disabled`` never imports wandb.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pipeline.run.records import read_json, write_json_atomic

if TYPE_CHECKING:
    from pipeline.run.config import Config

RUN_RECORD = "run.json"
HEADLINE_SETS = ("model", "vq_ceiling", "copy_last")  # metrics.json blocks whose numbers go to the summary
FORECAST_CAPTION = "rows: real, VQ reconstruction, samples; green border = conditioning, red = generated"


def start_training_run(cfg: Config, out_dir: Path, key: str):
    """Rank 0: start or resume (the id derives from the fingerprint) the training run, recording its id in run.json;
    None when wandb is disabled."""
    if cfg.train.wandb_mode == "disabled":
        return None
    import wandb

    name = f"{cfg.data.name}-{out_dir.name}"  # dataset and run name
    run = wandb.init(project=cfg.train.wandb_project, dir=str(out_dir), mode=cfg.train.wandb_mode,
                     config=cfg.to_dict(), name=name, resume="allow", id=f"{name}-{key}")
    record = out_dir / RUN_RECORD
    write_json_atomic(record, {**(read_json(record) or {}), "wandb_id": run.id,
                               "wandb_project": cfg.train.wandb_project, "wandb_mode": cfg.train.wandb_mode})
    return run


def log_row(run, row: dict[str, Any]) -> None:
    """One metrics.jsonl row at its step: numbers to the history, text (a warning) to the summary, same key."""
    run.log({k: v for k, v in row.items() if not isinstance(v, str)}, step=row["step"])
    for key, value in row.items():
        if isinstance(value, str):
            run.summary[key] = value


def log_video(run, key: str, path: Path, step: int | None = None, caption: str | None = None) -> None:
    """Log the mp4/gif file at ``path`` as a wandb video (copied as is; a numpy array would need moviepy)."""
    import wandb

    run.log({key: wandb.Video(str(path), caption=caption)}, step=step)


def log_forecast(cfg: Config, run_dir: Path, ckpt: str | Path, media: list[Path], log: Callable[[str], None]) -> bool:
    """Attach the forecast grids (the MP4s among ``media``) to the training run of ``run_dir``; True if attached."""
    videos = sorted(p for p in media if p.suffix == ".mp4")
    if not videos:
        return False
    with _attached(cfg, run_dir, ckpt, "forecast", log) as run:
        if run is None:
            return False
        for path in videos:
            log_video(run, f"forecast/{path.stem}", path, caption=FORECAST_CAPTION)
        return True


def log_evaluation(cfg: Config, run_dir: Path, metrics: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Attach metrics.json's headline numbers (summary) and curves (image) to the training run; True if attached."""
    with _attached(cfg, run_dir, metrics["protocol"]["checkpoint"]["ckpt"], "eval", log) as run:
        if run is None:
            return False
        import wandb

        run.summary.update(headline_numbers(metrics))
        run.log({"eval/curves": wandb.Image(str(Path(run_dir) / "eval" / metrics["plot"]))})
        return True


def headline_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """``eval/<set>/<metric>``: the headline value of every metric of every scored set (FVD when computed)."""
    numbers = {}
    for name in HEADLINE_SETS:
        for metric, block in metrics[name].items():
            if isinstance(block, dict) and isinstance(block.get("value"), float):
                numbers[f"eval/{name}/{metric}"] = block["value"]
        if isinstance(metrics[name].get("psnr"), dict):
            numbers[f"eval/{name}/psnr_best_of_n"] = metrics[name]["psnr"]["best_of_n"]
    return numbers


@contextlib.contextmanager
def _attached(cfg: Config, run_dir: Path, ckpt: str | Path | None, stage: str,
              log: Callable[[str], None]) -> Iterator[Any]:
    """The training run of ``run_dir`` resumed by id (finished on exit), or None (with one printed line why not)."""
    if cfg.train.wandb_mode == "disabled":
        yield None
        return
    record = read_json(Path(run_dir) / RUN_RECORD) or {}
    if not record.get("wandb_id"):
        log(f"{stage}: wandb: no training run recorded in {Path(run_dir) / RUN_RECORD}; results not attached")
        yield None
        return
    if not _own_checkpoint(run_dir, ckpt):
        log(f"{stage}: wandb: {ckpt} is not a checkpoint of {run_dir}; not attached to run {record['wandb_id']}")
        yield None
        return
    import wandb

    run = wandb.init(id=record["wandb_id"], project=record["wandb_project"], mode=record["wandb_mode"],
                     dir=str(run_dir), resume="allow")
    try:
        yield run
    finally:
        run.finish()
    log(f"{stage}: wandb: results attached to run {record['wandb_id']} ({record['wandb_mode']})")


def _own_checkpoint(run_dir: Path, ckpt: str | Path | None) -> bool:
    """Whether ``ckpt`` lies in ``<run_dir>/checkpoints/`` (the forecasts come from this training run)."""
    return bool(ckpt) and Path(ckpt).resolve().is_relative_to((Path(run_dir) / "checkpoints").resolve())
