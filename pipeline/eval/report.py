"""Stage 4 outputs: ``<run>/eval/metrics.json`` (schema below), its curves, and ``<out>/<data>/report.md``.

metrics.json (``SCHEMA``), one per run::

    {"schema": "latent-interpolants/eval-metrics/v2",
     "model" | "vq_ceiling" | "copy_last": {         # forecasts, decode(encode(x)), last real frame repeated
        "<metric>": {"value", "low", "high", "per_frame", "per_video"},   # interval: bootstrap over videos
            # psnr, ssim (+ best_of_n, per_frame_best_of_n, best_sample), crps, energy, energy_latent (not for
            # vq_ceiling), spread2, mse, spread_skill (a ratio: value/low/high/per_frame), diversity
        "fvd": {"value", "low", "high", "resamples", "values": [per resample]} | null,
        "n_samples": N (1 for vq_ceiling and copy_last)},
     "fvd_status": "ok: ..." | why FVD is null,
     "known_law": (demo only) {"status", "sets": {set: {identity_kept, count_kept, missing, energy, law_distance,
                   coverage50, coverage90: metric block}}, "horizons": ...}   (pipeline.demo.scoring),
     "protocol": {split, videos, video_ids, n_samples, clip_length, cond_frames, pred_frames, image_size, fvd,
                  definitions, intervals: {method, level, resamples, fvd_resamples, seed}, checkpoint, sampler, ...},
     "fingerprint", "inputs", "file_hashes", "dataset", "run", "interp", "eval_config", "code_version", "created",
     "seconds", "plot": "curves.png"}

``report.md`` gathers every run's metrics.json (a sweep's report, ``sweeps/<sweep>/report.md``, the sweep's runs'): a summary (who is better on what, with intervals and caveats), the
comparison table, paired tables per later run against its baseline, the demo's known-law section, curves, and per
run its protocol, verdicts against copy-last and GIF grids. Frames are the predicted frames 1..N everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.eval.compare import (KNOWN_LAW_COLUMNS, baseline, comparable, law_verdicts, paired_rows, run_label,
                                   trained_steps)
from pipeline.eval.fvd import RECOMMENDED_FVD_VIDEOS
from pipeline.eval.plots import plot_curves, plot_losses, plot_run_curves, read_losses, run_colours
from pipeline.eval.report_law import horizon_table, known_law_section, law_sets
from pipeline.eval.tables import advantage_text, difference, table
from pipeline.run.layout import RUNS
from pipeline.run.records import atomic_path, write_json_atomic

__all__ = ["METRICS_FILE", "SCHEMA", "check_schema", "law_verdicts", "plot_run_curves", "write_metrics", "write_report"]

SCHEMA = "latent-interpolants/eval-metrics/v2"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
SET_LABELS = {"model": "model", "vq_ceiling": "VQ ceiling", "copy_last": "copy-last"}
INTERP_ORDER = ("ours", "linear")
PROTOCOL_KEYS = ("split", "videos", "video_ids", "n_samples", "clip_length", "cond_frames", "pred_frames",
                 "data_range", "definitions", "intervals", "fvd", "checkpoint", "sampler", "seeds")
SUMMARY_PAIRS = 3  # paired comparisons named in the summary; the others are in their tables


def check_schema(metrics: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or mistyped entry of a metrics.json body."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"metrics.json: {what}")

    need(metrics.get("schema") == SCHEMA, f"schema must be {SCHEMA!r}")
    for name in SET_LABELS:
        block = metrics.get(name)
        need(isinstance(block, dict), f"'{name}' missing")
        for metric in ("psnr", "ssim", "crps", "energy", "spread_skill", "diversity"):
            m = block.get(metric)
            need(isinstance(m, dict), f"'{name}.{metric}' missing")
            for key in ("value", "low", "high"):
                need(isinstance(m.get(key), float), f"'{name}.{metric}.{key}' must be a number")
            need(isinstance(m.get("per_frame"), list) and all(isinstance(v, float) for v in m["per_frame"]),
                 f"'{name}.{metric}.per_frame' must be a list of numbers")
        need("fvd" in block and (block["fvd"] is None or isinstance(block["fvd"].get("value"), float)),
             f"'{name}.fvd' must be null or hold a number 'value'")
    need(isinstance(metrics.get("fvd_status"), str), "'fvd_status' must be a string")
    protocol = metrics.get("protocol")
    need(isinstance(protocol, dict), "'protocol' missing")
    for key in PROTOCOL_KEYS:
        need(key in protocol, f"'protocol.{key}' missing")
    need("i3d_sha256" in protocol["fvd"], "'protocol.fvd.i3d_sha256' missing")


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write a metrics.json body after checking it against the schema (a malformed body never lands)."""
    check_schema(metrics)
    write_json_atomic(path, metrics)


def find_runs(dataset_dir: Path, names: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """{run: metrics} of every current ``runs/<run>/eval/metrics.json`` (of the runs in ``names`` only, if given):
    ours, linear first, then by training steps, interpolant and name."""
    runs = {}
    for path in sorted(Path(dataset_dir).glob(f"{RUNS}/*/eval/{METRICS_FILE}")):
        if names is not None and path.parent.parent.name not in names:
            continue
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if metrics.get("schema") == SCHEMA:  # an older format is recomputed by its next make eval
            runs[path.parent.parent.name] = metrics

    def rank(run: str) -> tuple:
        interp = runs[run].get("interp")
        return (run not in INTERP_ORDER, trained_steps(runs[run]) or 0,
                INTERP_ORDER.index(interp) if interp in INTERP_ORDER else len(INTERP_ORDER), run)

    return {run: runs[run] for run in sorted(runs, key=rank)}


def fvd_caveat(metrics: dict[str, Any]) -> str | None:
    """Why FVD gives no verdict: too few videos for its bias to be small (None at the recommended size or above)."""
    videos = (metrics["protocol"].get("fvd") or {}).get("videos") or 0
    if metrics["model"].get("fvd") is None or videos >= RECOMMENDED_FVD_VIDEOS:
        return None
    return f"from {videos} videos ({RECOMMENDED_FVD_VIDEOS} recommended): biased upward, no verdict"


def _verdict(r: dict[str, Any], names: tuple[str, str]) -> str:
    winner = {"A": names[0], "B": names[1]}.get(r["verdict"])
    return f"{winner} better" if winner else "cannot tell"


def _paired_table(title: str, rows: list[tuple], names: tuple[str, str], caveat: str | None) -> list[str]:
    """A − B per metric with its interval and verdict; FVD's row gives its caveat instead of a verdict."""
    lines = [title, "", f"| metric | {names[0]} − {names[1]} | 95 % interval | verdict |", "|---|---|---|---|"]
    for label, r, _ in rows:
        verdict = caveat if label == "FVD" and caveat else _verdict(r, names)
        lines.append(f"| {label} | {' | '.join(difference(r))} | {verdict} |")
    return lines + [""]


def _by_verdict(rows: list[tuple], caveat: str | None) -> tuple[dict[str, list[tuple]], str]:
    """Rows by verdict; the FVD row set apart, as text with its caveat, when the caveat withholds its verdict."""
    fvd = next((row for row in rows if row[0] == "FVD"), None) if caveat else None
    by = {v: [row for row in rows if row is not fvd and row[1]["verdict"] == v] for v in ("A", "B", "cannot tell")}
    return by, f"FVD {' '.join(difference(fvd[1]))} {caveat}" if fvd else ""


def _names(rows: list[tuple]) -> str:
    return ", ".join(label for label, _, _ in rows)


def _against_copy_last(m: dict[str, Any], rows: list[tuple]) -> str:
    """Where a run's model is better or worse than copy-last on the same videos, in words."""
    by, fvd = _by_verdict(rows, fvd_caveat(m))
    parts = [f"{what} {_names(by[v])}" for v, what in (("A", "better on"), ("B", "worse on"),
                                                        ("cannot tell", "cannot tell on")) if by[v]]
    parts += [fvd] * bool(fvd)
    return "Against copy-last on the same videos (paired, 95 % intervals): " + "; ".join(parts) + "."


def _pair_summary(pair: dict[str, Any]) -> str:
    """One summary line: who is better on what (margin and interval), and what the data cannot tell."""
    names = pair["names"]
    by, fvd = _by_verdict(pair["rows"], "(no verdict: too few videos)" if fvd_caveat(pair["base"]) else None)
    parts = [f"{name} better on " + ", ".join(f"{label.split(' (')[0]} by {advantage_text(r, unit)}"  # unit said once
                                             for label, r, unit in by[v])
             for v, name in (("A", names[0]), ("B", names[1])) if by[v]]
    parts += [f"cannot tell on {_names(by['cannot tell'])}"] * bool(by["cannot tell"]) + [fvd] * bool(fvd)
    videos = pair["base"]["protocol"]["videos"]
    return f"* **{names[0]} vs {names[1]}** ({videos} videos, paired): " + "; ".join(parts) + "."


def _pairs(runs: dict[str, dict[str, Any]], baselines: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """Each run of ``baselines`` with the run it names, else every later run with its default baseline:
    {names, base, rows (paired), differs (protocol entries: not paired)}."""
    pairs = []
    for run, base_run in (baselines or {run: baseline(run, runs) for run in list(runs)[1:]}).items():
        m, base = runs[run], runs[base_run]
        pair = {"names": (run_label(base_run, base), run_label(run, m)), "base": base, "rows": [],
                "differs": comparable({base_run: base, run: m})}
        if not pair["differs"]:
            pair["rows"] = paired_rows(base["model"], m["model"], base["protocol"])
            if law_sets(base) and law_sets(m):
                pair["rows"] += paired_rows(law_sets(base)["model"], law_sets(m)["model"], base["protocol"],
                                            KNOWN_LAW_COLUMNS)
        pairs.append(pair)
    return pairs


def _summary(runs: dict[str, dict[str, Any]], pairs: list[dict[str, Any]],
             against: dict[str, list[tuple]]) -> list[str]:
    """3-5 lines: the paired verdicts, each run against copy-last, and the caveats that bound them."""
    paired = [pair for pair in pairs if not pair["differs"]]
    lines = [_pair_summary(pair) for pair in paired[:SUMMARY_PAIRS]]
    if len(paired) > SUMMARY_PAIRS:
        lines.append(f"* {len(paired) - SUMMARY_PAIRS} more paired comparison(s) in the tables below.")
    worse = {run_label(run, m): _by_verdict(against[run], fvd_caveat(m))[0]["B"] for run, m in runs.items()}
    named = [f"{label} on {_names(rows)}" for label, rows in worse.items() if rows]
    lines.append("* Worse than copy-last (paired): " + "; ".join(named) + "." if named
                 else "* No run is worse than copy-last on any metric (paired).")
    caveats = [f"95 % bootstrap intervals over {next(iter(runs.values()))['protocol']['videos']} videos cover the "
               "choice of videos, not of training seeds (one training run per row)"]
    caveats += sorted({f"FVD {c}" for c in map(fvd_caveat, runs.values()) if c})
    caveats += [f"{a} and {b} differ in {', '.join(pair['differs'])}: not paired"
                for pair in pairs if pair["differs"] for a, b in [pair["names"]]]
    return ["## Summary", "", *lines, "* Caveats: " + "; ".join(caveats) + ".", ""]


def _intro(runs: dict[str, dict[str, Any]]) -> list[str]:
    """How to read the report: intervals, metrics, references and the frame numbering, said once."""
    p = next(iter(runs.values()))["protocol"] if runs else {"cond_frames": "C", "pred_frames": "N"}
    return ["Written by `evaluate.py` (`make eval`) from `runs/<run>/eval/metrics.json`; regenerated on every run. "
            "Brackets: 95 % percentile bootstrap intervals over videos; paired differences are A − B on the same "
            "videos and draws. Scores on the predicted frames in [-1, 1]: PSNR/SSIM (mean over samples), CRPS (fair, "
            "per pixel), energy score (fair, per frame, RMS units; also on latents), spread/skill (1 = calibrated, "
            "< 1 over-confident), diversity (mean pairwise RMS distance between samples). FVD on full clips. "
            "VQ ceiling: decode(encode(x)); copy-last: the last conditioning frame repeated (both one-member "
            f"ensembles). Frames are numbered 1..{p['pred_frames']} among the predicted frames (frame 1 follows the "
            f"{p['cond_frames']} conditioning frames), in tables and plots alike. Definitions: metrics.json "
            "`protocol.definitions`.", ""]


def _fvd_status(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The FVD status said once (per run only when the runs differ)."""
    statuses = {m["fvd_status"] for m in runs.values()}
    if len(statuses) == 1:
        return [f"FVD: {statuses.pop()}.", ""]
    return [f"* `{run}` FVD: {m['fvd_status']}" for run, m in runs.items()] + [""]


def _comparison(dataset_dir: Path, folder: Path, runs: dict[str, dict[str, Any]], pairs: list[dict[str, Any]],
                colours: dict[str, str]) -> list[str]:
    """The comparison table, the paired tables, the known-law section, the curves and the loss curves of all runs
    (figures written into the report's ``folder``)."""
    first = next(iter(runs.values()))
    labels = {run: run_label(run, m) for run, m in runs.items()}
    rows = [(f"{labels[run]} (N={m['model']['n_samples']})", m["model"]) for run, m in runs.items()]
    rows += [("VQ ceiling", first["vq_ceiling"]), ("copy-last", first["copy_last"])]
    lines = ["## Comparison", "", *table(rows), "", *_fvd_status(runs)]
    if len(runs) > 1:
        lines += ["VQ ceiling and copy-last rows: from the first run's store (the same test clips when the protocols "
                  "agree).", ""]
    for pair in pairs:
        a, b = pair["names"]
        heading = f"### Paired: {a} − {b} (same videos, same resamples)"
        lines += (_paired_table(heading, pair["rows"], (a, b), fvd_caveat(pair["base"])) if not pair["differs"] else
                  [f"**Not comparable as is**: {a} and {b} differ in {', '.join(pair['differs'])}; no paired "
                   "differences.", ""])
    lines += known_law_section(folder, runs, labels, colours)
    title = f"{dataset_dir.name}: " + ", ".join(labels.values())
    lines += [f"![per-frame curves]({plot_curves(folder / 'curves.png', runs, labels, title, colours)})", ""]
    losses = {run: read_losses(dataset_dir / RUNS / run) for run in runs}
    loss_plot = plot_losses(folder / "loss_curves.png", losses, colours)
    return lines + ([f"![training and validation loss]({loss_plot})", ""] if loss_plot else [])


def _protocol_line(m: dict[str, Any]) -> str:
    p = m["protocol"]
    ck = p.get("checkpoint") or {}
    sampler = p.get("sampler") or {}
    ckpt = f"{ck.get('ckpt')} ({ck.get('ckpt_kind')} checkpoint, step {ck.get('ckpt_step')}, EMA {ck.get('use_ema')})"
    return (f"split `{p.get('split')}`, {p['videos']} videos, N = {p['n_samples']} samples each, clips of "
            f"{p['clip_length']} frames ({p['cond_frames']} conditioning → {p['pred_frames']} predicted), "
            f"{p.get('image_size')} px; checkpoint {ckpt}; sampler {sampler.get('solver_resolved') or sampler.get('solver')} with "
            f"{sampler.get('nfe_per_frame')} NFE/frame; evaluated in {m.get('seconds')} s")


def _media_key(path: Path) -> tuple:
    """forecast_2 before forecast_10."""
    tail = path.stem.rsplit("_", 1)[-1]
    return (0, int(tail), "") if tail.isdigit() else (1, 0, path.stem)


def _run_section(dataset_dir: Path, folder: Path, run: str, m: dict[str, Any], against: list[tuple],
                 colours: dict[str, str]) -> list[str]:
    """One run: protocol, verdicts against copy-last (``against``: its paired rows), known-law table, curves, GIFs.
    Links are relative to the report's ``folder``; the run's curves are drawn there in the report's colours (in the
    dataset's own report: the run's ``eval/`` curves)."""
    run_dir = dataset_dir / RUNS / run

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, folder)).as_posix()

    lines = [f"## {run_label(run, m)}", "", _protocol_line(m) + ".", "", _against_copy_last(m, against), "",
             *horizon_table(m)]
    if m.get("plot"):
        curves = run_dir / "eval" / m["plot"] if folder == dataset_dir else folder / f"{run}_{m['plot']}"
        plot_run_curves(curves, m, colours)
        lines += [f"![curves, {run}]({link(curves)})", ""]
    gifs = sorted((run_dir / "media").glob("forecast_*.gif"), key=_media_key)
    if gifs:
        lines += ["Forecast grids (rows: truth, VQ reconstruction, samples; green border: conditioning, red: "
                  "predicted):", ""] + [f"![{g.stem}]({link(g)})" for g in gifs] + [""]
    return lines


def write_report(dataset_dir: Path, names: Collection[str] | None = None, path: Path | None = None,
                 preface: Sequence[str] = (), baselines: Mapping[str, str] | None = None) -> Path:
    """Write ``path`` (default ``<dataset_dir>/report.md``; its figures beside it) from the metrics.json of the runs
    in ``names`` (default: every evaluated run), ``preface`` lines under its title, the paired comparisons those of
    ``baselines`` ({run: the run it is paired against}, e.g. a study's arms against its reference) where given, else
    every later run against its default baseline; returns its path. The file is
    rewritten only when its text changes, so an unchanged report keeps its bytes and time stamp."""
    dataset_dir = Path(dataset_dir)
    path = Path(path or dataset_dir / REPORT_FILE)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    runs = find_runs(dataset_dir, names)
    colours = run_colours(runs)
    against = {run: paired_rows(m["model"], m["copy_last"], m["protocol"]) for run, m in runs.items()}
    lines = [f"# Forecast evaluation: {dataset_dir.name}", "", *preface]
    if runs:
        pairs = _pairs(runs, baselines)
        lines += [*_summary(runs, pairs, against), *_intro(runs),
                  *_comparison(dataset_dir, folder, runs, pairs, colours)]
    else:
        lines += [*_intro(runs), "No evaluated run yet (run `make eval`)."]
    for run, m in runs.items():
        lines += _run_section(dataset_dir, folder, run, m, against[run], colours)
    text = "\n".join(lines).rstrip() + "\n"
    if not path.is_file() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path


