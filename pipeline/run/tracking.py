"""Weights & Biases for every run: training curves, sample videos, forecast grids and evaluation results.

Which wandb run a stage's results go to:

* the run's **training run** when the forecasts came from the run's own checkpoint (``<run>/checkpoints/``):
  training (rank 0) starts it, id ``<data>-<run>-<training fingerprint>``, and records ``wandb_id``,
  ``wandb_project`` and ``wandb_mode`` in ``run.json``; forecast and evaluation resume it by id;
* otherwise (a shipped or ``CKPT=`` checkpoint, or training ran without wandb) a **checkpoint run** of its own, id
  ``<data>-<run>-<sha256 of the checkpoint>[:16]``, started by the first stage that logs to it and recorded in
  ``<run>/wandb/checkpoint_run.json`` (so evaluation resumes it; another checkpoint gives another run).

Every run is grouped by dataset (``group``) and tagged with its interpolant and run name (``tags``). Steps: training
logs its rows at their training step; forecast and evaluation log one row each at a step above every step the run
holds (the recorded training ``step`` and ``wandb_step``), since wandb drops rows whose step goes backwards and an
offline segment restarts at 0; their charts use their own x-axis, ``forecast/step`` and ``eval/step`` = the
checkpoint's training step (``define_metric``).

Mode: ``WANDB_MODE`` when set, else ``train.wandb_mode`` (default offline: ``<run>/wandb/offline-run-*``, upload
with ``wandb sync``), fixed when a run starts; ``train.wandb_mode=disabled`` never imports wandb. wandb's own console
output is silenced (``WANDB_SILENT=false`` brings it back); each stage prints one line.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pipeline.run.layout import run_name
from pipeline.run.records import read_json, write_json_atomic

if TYPE_CHECKING:
    from pipeline.run.config import Config

RUN_RECORD = "run.json"
CHECKPOINT_RECORD = Path("wandb") / "checkpoint_run.json"  # under the run directory
SETS = ("model", "vq_ceiling", "copy_last")  # the scored sets of metrics.json
FORECAST_CAPTION = "rows: real, VQ reconstruction, samples; green border = conditioning, red = generated"
PLOTTED = ("psnr", "crps", "law_distance")  # per-frame line plots (each stores a copy of its table): the rest, tables
VERDICTS = {"A": "model better", "B": "copy-last better", "cannot tell": "cannot tell"}


def start_training_run(cfg: Config, out_dir: Path, key: str, log: Callable[[str], None] = print):
    """Rank 0: start or resume (the id derives from the fingerprint) the training run, recording its id in run.json;
    None when wandb is disabled."""
    if tracking_mode(cfg) == "disabled":
        return None
    ident = {"wandb_id": f"{cfg.data.name}-{run_name(out_dir)}-{key}", "wandb_project": cfg.train.wandb_project,
             "wandb_mode": tracking_mode(cfg)}
    run = _init(cfg, out_dir, ident, job_type="train", config=cfg.to_dict())
    record = out_dir / RUN_RECORD
    write_json_atomic(record, {**(read_json(record) or {}), **ident})
    log(f"train: wandb: run {run.id} ({ident['wandb_mode']}) in {out_dir / 'wandb'}")
    return run


def tracking_mode(cfg: Config) -> str:
    """The mode a new run starts in: ``WANDB_MODE`` when set, else ``train.wandb_mode``; ``disabled`` (either way)
    also keeps every later stage from attaching to a run that was started in another mode."""
    return os.environ.get("WANDB_MODE") or cfg.train.wandb_mode


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


def log_forecast(cfg: Config, run_dir: Path, url: str, media: list[Path], log: Callable[[str], None]) -> bool:
    """Log the forecast grids (the MP4s among ``media``) of the forecasts at ``url``, ``forecast/<grid>`` against
    ``forecast/step``; True if logged."""
    videos = sorted(p for p in media if p.suffix == ".mp4")
    if not videos:
        return False
    with _attached(cfg, run_dir, url, "forecast", log) as target:
        if target is None:
            return False
        import wandb

        run, step, ckpt_step = target
        run.define_metric("forecast/step")
        run.define_metric("forecast/*", step_metric="forecast/step")
        grids = {f"forecast/{p.stem}": wandb.Video(str(p), caption=FORECAST_CAPTION) for p in videos}
        run.log({"forecast/step": ckpt_step, **grids}, step=step)
        return True


def log_evaluation(cfg: Config, run_dir: Path, metrics: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Log metrics.json against ``eval/step``: :func:`evaluation_numbers`, the per-frame curves (the tables of
    :func:`per_frame_tables`, line plots of the ``PLOTTED`` metrics) and the curves image; True if logged."""
    with _attached(cfg, run_dir, metrics["protocol"]["forecasts"], "eval", log) as target:
        if target is None:
            return False
        import wandb

        run, step, ckpt_step = target
        run.define_metric("eval/step")
        run.define_metric("eval/*", step_metric="eval/step")
        row = {"eval/step": ckpt_step, **evaluation_numbers(metrics),
               "eval/curves": wandb.Image(str(Path(run_dir) / "eval" / metrics["plot"]))}
        for name, (columns, rows) in per_frame_tables(metrics).items():
            table = row[f"eval/{name}"] = wandb.Table(columns=columns, data=rows)
            for metric in [m for m in columns[2:] if m in PLOTTED]:
                row[f"eval/{name}/{metric}"] = wandb.plot.line(table, "frame", metric, stroke="set",
                                                               title=f"{metric} per predicted frame")
        run.log(row, step=step)
        return True


def evaluation_numbers(metrics: dict[str, Any]) -> dict[str, float | str]:
    """metrics.json's headline numbers with their intervals, ``eval/<set>/<metric>`` and ``..._low``/``..._high``
    (``eval/model/psnr_best_of_n`` too), and the paired comparison with copy-last on the same videos,
    ``eval/model_vs_copy_last/<metric>`` (the difference the report's table shows) with its interval and
    ``..._verdict``; the demo's known-law scores the same way under ``eval/law/``."""
    from pipeline.eval.compare import COLUMNS, KNOWN_LAW_COLUMNS, paired_rows
    from pipeline.eval.report import fvd_caveat

    numbers: dict[str, float | str] = {"eval/model/psnr_best_of_n": metrics["model"]["psnr"]["best_of_n"]}
    families = [("eval", {name: metrics[name] for name in SETS}, COLUMNS)]
    if (metrics.get("known_law") or {}).get("sets"):
        families.append(("eval/law", metrics["known_law"]["sets"], KNOWN_LAW_COLUMNS))
    for prefix, sets, columns in families:
        for name, blocks in sets.items():
            for metric, *_ in columns:
                if isinstance(blocks.get(metric), dict):
                    numbers.update(_with_interval(f"{prefix}/{name}/{metric}", blocks[metric]["value"], blocks[metric]))
        for column in columns:
            for _, result, _ in paired_rows(sets["model"], sets["copy_last"], metrics["protocol"], columns=[column]):
                key = f"{prefix}/model_vs_copy_last/{column[0]}"
                numbers.update(_with_interval(key, result["diff"], result))
                caveat = fvd_caveat(metrics) if column[0] == "fvd" else None
                numbers[f"{key}_verdict"] = f"no verdict: {caveat}" if caveat else VERDICTS[result["verdict"]]
    return numbers


def _with_interval(key: str, value: float, block: dict[str, Any]) -> dict[str, float]:
    return {key: value, f"{key}_low": block["low"], f"{key}_high": block["high"]}


def per_frame_tables(metrics: dict[str, Any]) -> dict[str, tuple[list[str], list[list]]]:
    """Per predicted frame (1..N), one row per set and frame, a column per metric: ``per_frame`` for the scored sets,
    ``law_per_frame`` for the demo's known-law sets; (columns, rows) each."""
    from pipeline.eval.compare import COLUMNS, KNOWN_LAW_COLUMNS

    families = {"per_frame": ({name: metrics[name] for name in SETS}, COLUMNS)}
    if (metrics.get("known_law") or {}).get("sets"):
        families["law_per_frame"] = (metrics["known_law"]["sets"], KNOWN_LAW_COLUMNS)
    tables = {}
    for name, (sets, columns) in families.items():
        curves = {s: {m: b["per_frame"] for m, b in blocks.items() if isinstance(b, dict) and b.get("per_frame")}
                  for s, blocks in sets.items()}
        names = [m for m, *_ in columns if any(m in c for c in curves.values())]
        frames = max(len(curve) for c in curves.values() for curve in c.values())
        rows = [[s, p + 1, *[c[m][p] if m in c else None for m in names]]
                for s, c in curves.items() for p in range(frames)]
        tables[name] = (["set", "frame", *names], rows)
    return tables


@contextlib.contextmanager
def _attached(cfg: Config, run_dir: Path, url: str, stage: str,
              log: Callable[[str], None]) -> Iterator[tuple[Any, int, int] | None]:
    """(run, step to log at, checkpoint's training step) of the run that the forecasts at ``url`` belong to, resumed
    by id and finished on exit (recording the step); None when disabled (or, with one line why, untraceable)."""
    if tracking_mode(cfg) == "disabled":
        yield None
        return
    from pipeline.data.checked_store import store_attrs

    attrs, run_dir = store_attrs(url), Path(run_dir)
    target = _target(cfg, run_dir, attrs.get("ckpt"), (attrs.get("inputs") or {}).get("checkpoint", {}).get("sha256"))
    if target is None:
        log(f"{stage}: wandb: {url} records no checkpoint hash (made by an older version); results not attached")
        yield None
        return
    path, record, extra = target
    ident = {k: record[k] for k in ("wandb_id", "wandb_project", "wandb_mode", "ckpt", "ckpt_sha256") if k in record}
    run = _init(cfg, run_dir, ident, **extra)
    step = max(record.get("step", -1) + 1, record.get("wandb_step", -1) + 1, run.starting_step)
    try:
        yield run, step, int(attrs.get("ckpt_step") or 0)
    finally:
        run.finish()
    write_json_atomic(path, {**(read_json(path) or {}), **ident, "wandb_step": step})
    of = "" if path.name == RUN_RECORD else f" of checkpoint {attrs.get('ckpt')}"
    log(f"{stage}: wandb: results attached to run {run.id}{of} ({ident['wandb_mode']})")


def _target(cfg: Config, run_dir: Path, ckpt: str | None, sha: str | None) -> tuple[Path, dict, dict] | None:
    """(record file, record, wandb.init extras) of the run that results of checkpoint ``ckpt`` go to: the training
    run for the run's own checkpoint when it has one, else the checkpoint run (None without the checkpoint's hash)."""
    training = read_json(run_dir / RUN_RECORD) or {}
    if training.get("wandb_id") and _own_checkpoint(run_dir, ckpt):
        return run_dir / RUN_RECORD, training, {}
    if not sha:
        return None
    path, wandb_id = run_dir / CHECKPOINT_RECORD, f"{cfg.data.name}-{run_dir.name}-{sha[:16]}"
    record = read_json(path) or {}
    if record.get("wandb_id") != wandb_id:  # a first run, or another checkpoint: another run
        record = {"wandb_id": wandb_id, "wandb_project": cfg.train.wandb_project, "wandb_mode": tracking_mode(cfg),
                  "ckpt": str(ckpt), "ckpt_sha256": sha}
    return path, record, {"job_type": "checkpoint", "config": {**cfg.to_dict(), "ckpt": str(ckpt), "ckpt_sha256": sha}}


def _init(cfg: Config, run_dir: Path, ident: dict[str, str], **extra: Any):
    """``wandb.init`` of the run ``ident`` names (started or resumed) under ``<run_dir>/wandb/``, grouped by dataset,
    tagged with the interpolant and run name, silent unless ``WANDB_SILENT`` says otherwise."""
    import wandb

    settings = wandb.Settings() if "WANDB_SILENT" in os.environ else wandb.Settings(silent=True)
    return wandb.init(id=ident["wandb_id"], project=ident["wandb_project"], mode=ident["wandb_mode"],
                      dir=str(run_dir), name=f"{cfg.data.name}-{run_name(run_dir)}", group=cfg.data.name,
                      tags=[cfg.interpolant.kind, run_name(run_dir)], resume="allow", settings=settings, **extra)


def _own_checkpoint(run_dir: Path, ckpt: str | Path | None) -> bool:
    """Whether ``ckpt`` lies in ``<run_dir>/checkpoints/`` (the forecasts come from this training run)."""
    return bool(ckpt) and Path(ckpt).resolve().is_relative_to((Path(run_dir) / "checkpoints").resolve())
