"""Stage 4 outputs: ``<run>/eval/metrics.json`` (schema below), its curves, and ``<out>/<data>/report.md``.

metrics.json (``SCHEMA``), one file per run::

    {
      "schema": "latent-interpolants/eval-metrics/v2",
      "model" | "vq_ceiling" | "copy_last": {          # forecasts, decode(encode(x)), last real frame repeated
        "<metric>": {"value", "low", "high",            # headline and its bootstrap interval over videos
                     "per_frame": [per predicted frame], "per_video": [per video]},
            # metrics: psnr, ssim (+ best_of_n, per_frame_best_of_n, best_sample), crps, energy, energy_latent
            # (not for vq_ceiling), spread2, mse, spread_skill (a ratio: value/low/high/per_frame), diversity
        "fvd": {"value", "low", "high", "resamples", "values": [per bootstrap resample]} | null,
        "n_samples": N (1 for vq_ceiling and copy_last)
      },
      "fvd_status": "ok: ..." | why FVD is null,
      "known_law": {"status", "sets": {model | oracle | copy_last | constant_velocity | vq_ceiling | real:
                    {identity_kept, count_kept, missing, energy, law_distance, coverage50, coverage90: metric block}},
                    "horizons": {"law_distance": {"model-constant_velocity" | "model-copy_last" |
                                 "oracle-constant_velocity": [per frame {diff, low, high, verdict}]},
                                 "identity_kept": {model | vq_ceiling | oracle: [per frame {value, low, high}]}}}
                   (demo only: scores of sprite positions read from pixels against the simulator's true law),
      "protocol": {split, videos, video_ids, n_samples, clip_length, cond_frames, pred_frames, image_size,
                   definitions, intervals: {method, level, resamples, fvd_resamples, seed}, fvd: {...},
                   checkpoint, sampler, interpolant, seeds, ...},
      "fingerprint", "inputs", "file_hashes", "dataset", "run", "interp", "eval_config", "code_version", "created",
      "seconds", "plot": "curves.png"
    }

``report.md`` gathers every ``runs/<run>/eval/metrics.json`` of the dataset: the comparison table with intervals,
the paired differences of every run against the first (ours before linear) with one verdict per metric, each
model against copy-last, on the demo the known-law table, curves and verdicts (interpolants at equal network
evaluations per frame, sampler variants of one checkpoint), per-frame curves (PSNR, energy score, spread-skill),
training/validation loss curves from ``runs/<run>/metrics.jsonl``, and each run's protocol and labelled GIF grids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.eval.fvd import shifted_interval
from pipeline.run.layout import RUNS
from pipeline.run.records import atomic_path, write_json_atomic
from pipeline.eval.scores import spread_skill_ratio
from pipeline.eval.stats import paired_difference, significant_decimals, verdict_sentence

SCHEMA = "latent-interpolants/eval-metrics/v2"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
SET_LABELS = {"model": "model", "vq_ceiling": "VQ ceiling", "copy_last": "copy-last"}
INTERP_ORDER = ("ours", "linear")
# (metric, column label, unit, better: "higher" | "lower" | "one" (closer to 1) | None, format)
COLUMNS = (
    ("fvd", "FVD", "", "lower", ".1f"),
    ("psnr", "PSNR (dB)", " dB", "higher", ".2f"),
    ("ssim", "SSIM", "", "higher", ".4f"),
    ("crps", "CRPS", "", "lower", ".4f"),
    ("energy", "energy score", "", "lower", ".4f"),
    ("energy_latent", "latent energy score", "", "lower", ".4f"),
    ("spread_skill", "spread/skill", "", "one", ".2f"),
    ("diversity", "diversity", "", None, ".4f"),
)
# The demo's known-law scores (metrics.json "known_law"; better "nominal" = closer to the level is better).
KNOWN_LAW_COLUMNS = (
    ("identity_kept", "identity kept", "", "higher", ".3f"),
    ("count_kept", "count kept", "", "higher", ".3f"),
    ("energy", "position energy score (px)", "px", "lower", ".2f"),
    ("law_distance", "distance to the true law (px)", "px", "lower", ".3f"),
    ("coverage50", "coverage of the law's 50 % region", "", "nominal 0.5", ".3f"),
    ("coverage90", "coverage of the law's 90 % region", "", "nominal 0.9", ".3f"),
)
KNOWN_LAW_SETS = {"oracle": "oracle (draws from the true law)",
                  "oracle_vq": "oracle through the VQVAE (a perfect latent forecaster)", "constant_velocity": "constant velocity",
                  "copy_last": "copy-last", "vq_ceiling": "VQ reconstruction", "real": "real frames"}
MEAN_METRICS = ("psnr", "ssim", "crps", "energy", "energy_latent", "spread2", "mse", "diversity")
PROTOCOL_KEYS = ("split", "videos", "video_ids", "n_samples", "clip_length", "cond_frames", "pred_frames",
                 "data_range", "definitions", "intervals", "fvd", "checkpoint", "sampler", "seeds")


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
    check_schema(metrics)
    write_json_atomic(path, metrics)


# ----------------------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas directly: no pyplot, no display, no global state)
# ----------------------------------------------------------------------------------------------------------

CURVES = (("psnr", "PSNR (dB) ↑"), ("energy", "energy score ↓ (pixels, RMS units)"), ("spread_skill", "spread / skill (1 = calibrated)"))


def _figure(panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * panels, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, k + 1) for k in range(panels)]


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path).name


def _frames(metrics: dict[str, Any]) -> list[int]:
    cond = metrics["protocol"]["cond_frames"]
    return list(range(cond, cond + len(metrics["model"]["psnr"]["per_frame"])))


def plot_curves(path: Path, runs: dict[str, dict[str, Any]], title: str) -> str:
    """Per predicted frame: PSNR, energy score and spread-skill of every run's model, with copy-last and the ceiling
    (from the first run); returns the file name."""
    fig, axes = _figure(len(CURVES))
    first = next(iter(runs.values()))
    for ax, (metric, label) in zip(axes, CURVES):
        for run, m in runs.items():
            ax.plot(_frames(m), m["model"][metric]["per_frame"], "o-", ms=3, label=run_label(run, m))
        for name, style in (("copy_last", ":"), ("vq_ceiling", "--")):
            if metric != "spread_skill":  # one member: spread 0 by definition
                ax.plot(_frames(first), first[name][metric]["per_frame"], style, color="black" if name == "copy_last"
                        else "gray", label=SET_LABELS[name])
        if metric == "spread_skill":
            ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel(f"frame (predicted from {first['protocol']['cond_frames']})")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_known_law(path: Path, runs: dict[str, dict[str, Any]]) -> str:
    """Per predicted frame: distance to the true law and identity kept, for every run and the references."""
    fig, (law_ax, identity_ax) = _figure(2)
    first = next(iter(runs.values()))
    x = _frames(first)
    for run, m in runs.items():
        sets = m["known_law"]["sets"]
        law_ax.plot(_frames(m), sets["model"]["law_distance"]["per_frame"], "o-", ms=3, label=run_label(run, m))
        identity_ax.plot(_frames(m), sets["model"]["identity_kept"]["per_frame"], "o-", ms=3, label=run_label(run, m))
    refs = first["known_law"]["sets"]
    for name, style in (("oracle", "--"), ("constant_velocity", "-."), ("copy_last", ":")):
        law_ax.plot(x, refs[name]["law_distance"]["per_frame"], style, color="gray", label=KNOWN_LAW_SETS[name])
    for name, style in (("real", "--"), ("vq_ceiling", ":")):
        identity_ax.plot(x, refs[name]["identity_kept"]["per_frame"], style, color="gray", label=KNOWN_LAW_SETS[name])
    for ax, title in ((law_ax, "distance to the true law (px) ↓"), (identity_ax, "identity kept ↑")):
        ax.set_xlabel(f"frame (predicted from {first['protocol']['cond_frames']})")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_run_curves(path: Path, metrics: dict[str, Any]) -> str:
    """The curves of one run (metrics.json's ``plot``)."""
    run = metrics.get("run", "model")
    return plot_curves(path, {run: metrics}, f"{metrics.get('dataset', '')} / {run_label(run, metrics)}")


def read_losses(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of loss, val_loss and val_loss_ema from ``run_dir/metrics.jsonl`` (unreadable lines skipped)."""
    series: dict[str, list[tuple[int, float]]] = {"loss": [], "val_loss": [], "val_loss_ema": []}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return series
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key in series:
            if isinstance(row.get(key), (int, float)) and np.isfinite(row[key]):
                series[key].append((int(row["step"]), float(row[key])))
    return series


def plot_losses(path: Path, losses: dict[str, dict[str, list[tuple[int, float]]]]) -> str | None:
    """Training loss (left) and validation loss, raw and EMA (right), of every run; None when no run logged any."""
    if not any(points for series in losses.values() for points in series.values()):
        return None
    fig, (train_ax, val_ax) = _figure(2)
    for run, series in losses.items():
        if series["loss"]:
            train_ax.plot(*zip(*series["loss"]), label=run)
        for key, style in (("val_loss", "-"), ("val_loss_ema", "--")):
            if series[key]:
                val_ax.plot(*zip(*series[key]), style, marker="o", ms=3, label=f"{run} ({'EMA' if key.endswith('ema') else 'raw'})")
    for ax, title in ((train_ax, "training loss (mean over each logging window)"), (val_ax, "validation loss")):
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------
# Numbers, intervals and paired verdicts
# ----------------------------------------------------------------------------------------------------------


def run_label(run: str, metrics: dict[str, Any]) -> str:
    """The run's name, with its interpolant when the name does not say it (``lr5e-4 (ours)``)."""
    interp = metrics.get("interp")
    return run if not interp or interp == run else f"{run} ({interp})"


def find_runs(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """{run: metrics} for every current ``<dataset_dir>/runs/<run>/eval/metrics.json``: ours, linear first, then the
    other runs by training steps (runs of one checkpoint together), ours before linear, then by name."""
    runs = {}
    for path in sorted(Path(dataset_dir).glob(f"{RUNS}/*/eval/{METRICS_FILE}")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if metrics.get("schema") == SCHEMA:  # an older format is recomputed by its next make eval
            runs[path.parent.parent.name] = metrics
    def rank(run: str) -> tuple:
        interp = runs[run].get("interp")
        return (run not in INTERP_ORDER, _trained_steps(runs[run]) or 0,
                INTERP_ORDER.index(interp) if interp in INTERP_ORDER else len(INTERP_ORDER), run)

    return {run: runs[run] for run in sorted(runs, key=rank)}


def _cell(block: dict[str, Any] | None, fmt: str) -> str:
    if not block or block.get("value") is None:
        return "n/a"
    if block.get("low") is None:
        return _number(block["value"], fmt)
    return f"{_number(block['value'], fmt)} [{_number(block['low'], fmt)}, {_number(block['high'], fmt)}]"


def _number(value: float, fmt: str) -> str:
    """``value`` formatted, without the minus sign of a value that rounds to zero (an FVD of -1e-9 is 0.0)."""
    text = f"{value:{fmt}}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _table(rows: list[tuple[str, dict[str, Any]]], columns=COLUMNS) -> list[str]:
    header = ["", *(f"{label} {_arrow(better)}".strip() for _, label, _, better, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, block in rows:
        lines.append("| " + " | ".join([label, *(_cell(block.get(metric), fmt) for metric, _, _, _, fmt in columns)]) + " |")
    return lines


def _arrow(better: str | None) -> str:
    if better and better.startswith("nominal"):
        return "→" + better.split()[1]
    return {"higher": "↑", "lower": "↓", "one": "→1"}.get(better, "")


def paired_rows(a: dict[str, Any], b: dict[str, Any], protocol: dict[str, Any], columns=COLUMNS) -> list[tuple]:
    """(label, result, unit) per metric: A − B with its interval and verdict, on the same videos and draws."""
    intervals = protocol["intervals"]
    draws = {"resamples": intervals["resamples"], "seed": intervals["seed"], "level": intervals["level"]}
    rows = []
    for metric, label, unit, better, _ in columns:
        if better is None or not (a.get(metric) and b.get(metric)):
            continue
        if better.startswith("nominal"):  # compared by the distance from the nominal level: lower is better
            level = float(better.split()[1])
            fn_a, fn_b = (_distance_from(block[metric]["per_video"], level) for block in (a, b))
            result = paired_difference(fn_a, fn_b, False, n_videos=len(a[metric]["per_video"]), **draws)
            label = f"{label}: distance from {level}"
        elif metric == "fvd":
            result = _paired_fvd(a["fvd"], b["fvd"], intervals["level"])
        elif metric == "spread_skill":  # compared by the distance from calibration, |1 − ratio|: lower is better
            if min(a["n_samples"], b["n_samples"]) == 1:
                continue  # one member has no spread: nothing to compare
            fn_a, fn_b = _calibration_error(a), _calibration_error(b)
            result = paired_difference(fn_a, fn_b, False, n_videos=len(a["mse"]["per_video"]), **draws)
            label = "spread/skill distance from 1"
        else:
            per_video = [np.asarray(block[metric]["per_video"]) for block in (a, b)]
            result = paired_difference(*per_video, better == "higher", **draws)
        if result is not None:
            rows.append((label, result, unit.strip()))
    return rows


def _distance_from(per_video: list[float], level: float):
    """|mean − level| of per-video values as a function of resampled video indices."""
    values = np.asarray(per_video)
    return lambda idx: np.abs(values[idx].mean(-1) - level)


def _calibration_error(block: dict[str, Any]):
    """|1 − spread/skill| of one scored set as a function of resampled video indices."""
    spread2, mse = (np.asarray(block[k]["per_video"]) for k in ("spread2", "mse"))
    members = block["n_samples"]
    return lambda idx: np.abs(1.0 - spread_skill_ratio(spread2[idx].mean(-1), mse[idx].mean(-1), members))


def _paired_fvd(a: dict[str, Any], b: dict[str, Any], level: float) -> dict[str, Any] | None:
    """FVD A − B from the per-resample values (the same resampled videos when seeds and videos agree); bias-shifted interval."""
    pairs = [(x, y) for x, y in zip(a.get("values") or [], b.get("values") or []) if x is not None and y is not None]
    if not pairs:
        return None
    diff = a["value"] - b["value"]
    low, high = shifted_interval(diff, [x - y for x, y in pairs], level)
    verdict = "B" if low > 0 else "A" if high < 0 else "cannot tell"  # lower is better
    return {"diff": diff, "low": float(low), "high": float(high), "level": level,
            "higher_is_better": False, "verdict": verdict}


def _paired_table(title: str, rows, names: tuple[str, str]) -> list[str]:
    lines = [title, "", f"| metric | {names[0]} − {names[1]} | 95 % interval | verdict |", "|---|---|---|---|"]
    sentences = []
    for label, r, unit in rows:
        winner = {"A": names[0], "B": names[1]}.get(r["verdict"])
        verdict = f"{winner} better" if winner else "cannot tell"
        fmt = f".{significant_decimals(r['low'], r['high'])}f"
        lines.append(f"| {label} | {r['diff']:+{fmt}} | [{r['low']:+{fmt}}, {r['high']:+{fmt}}] | {verdict} |")
        sentences.append(verdict_sentence(label, names[0], names[1], r, unit))
    return lines + [""] + [f"* {s}" for s in sentences] + [""]


def _against_copy_last(run: str, m: dict[str, Any]) -> list[str]:
    """Where the model is worse / better than copy-last on the same videos (paired), as sentences."""
    rows = paired_rows(m["model"], m["copy_last"], m["protocol"])
    worse, better, tied = ([label for label, r, _ in rows if r["verdict"] == v] for v in ("B", "A", "cannot tell"))
    text = [f"**{run} is worse than copy-last on {', '.join(worse)}.**" if worse else f"{run} is not worse than copy-last on any metric."]
    if better:
        text.append(f"Better than copy-last on {', '.join(better)}.")
    if tied:
        text.append(f"Cannot tell apart on {', '.join(tied)}.")
    return [" ".join(text) + " (Paired over the same videos, 95 % intervals.)", ""]


def _comparable(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Protocol entries that differ between the runs (pairing needs the same videos and resamples)."""
    keys = ("split", "videos", "video_ids", "real_clips_sha256", "n_samples", "clip_length", "cond_frames", "intervals")
    first = next(iter(runs.values()))["protocol"]
    diffs = [k for k in keys if any(m["protocol"].get(k) != first.get(k) for m in runs.values())]
    fvd_keys = ("videos", "generated", "i3d_sha256")
    diffs += [f"fvd.{k}" for k in fvd_keys if any(m["protocol"]["fvd"].get(k) != first["fvd"].get(k) for m in runs.values())]
    return diffs


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


def _fvd_status(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The FVD status said once (per run only when the runs differ)."""
    statuses = {m["fvd_status"] for m in runs.values()}
    if len(statuses) == 1:
        return [f"FVD: {statuses.pop()}.", ""]
    return [f"* `{run}` FVD: {m['fvd_status']}" for run, m in runs.items()] + [""]


def write_report(dataset_dir: Path) -> Path:
    """(Re)write ``<dataset_dir>/report.md`` from every run's metrics.json; returns its path."""
    dataset_dir = Path(dataset_dir)
    runs = find_runs(dataset_dir)
    lines = [f"# Forecast evaluation: {dataset_dir.name}", "",
             "Written by `evaluate.py` (`make eval`) from `runs/<run>/eval/metrics.json`; regenerated on every run. "
             "Brackets: 95 % percentile bootstrap intervals over videos. Scores on the predicted frames in [-1, 1]: "
             "PSNR/SSIM (mean over samples), CRPS (fair, per pixel), energy score (fair, per frame, RMS units; also "
             "on latents), spread/skill (1 = calibrated, < 1 over-confident), diversity (mean pairwise RMS distance "
             "between samples). FVD on full clips. VQ ceiling: decode(encode(x)); copy-last: the last conditioning "
             "frame repeated (both one-member ensembles). Definitions: metrics.json `protocol.definitions`.", ""]
    if not runs:
        lines.append("No evaluated run yet (run `make eval`).")
    else:
        lines += _summary(dataset_dir, runs)
    for run, m in runs.items():
        lines += [f"## {run_label(run, m)}", "", _protocol_line(m) + ".", ""]
        lines += _against_copy_last(run_label(run, m), m)
        lines += _horizon_table(m)
        if m.get("plot"):
            lines += [f"![curves, {run}]({RUNS}/{run}/eval/{m['plot']})", ""]
        gifs = sorted((dataset_dir / RUNS / run / "media").glob("forecast_*.gif"), key=_media_key)
        if gifs:
            lines += ["Forecast grids (rows: truth, VQ reconstruction, samples; green border: conditioning, red: "
                      "predicted):", ""] + [f"![{g.stem}]({RUNS}/{run}/media/{g.name})" for g in gifs] + [""]
    path = dataset_dir / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _law_sets(metrics: dict[str, Any]) -> dict[str, Any] | None:
    return (metrics.get("known_law") or {}).get("sets")


def _known_law_section(dataset_dir: Path, runs: dict[str, dict[str, Any]]) -> list[str]:
    """The demo's known-law table, curves and verdicts (nothing for datasets whose law is unknown)."""
    with_law = {run: m for run, m in runs.items() if _law_sets(m)}
    if not with_law:
        missing = [m["known_law"]["status"] for m in runs.values() if "sidecar" in (m.get("known_law") or {}).get("status", "")]
        return [f"Known-law scores: {missing[0]}", ""] if missing else []
    first = _law_sets(next(iter(with_law.values())))
    rows = [(f"{run_label(run, m)} (N={m['model']['n_samples']})", _law_sets(m)["model"]) for run, m in with_law.items()]
    rows += [(label, first[name]) for name, label in KNOWN_LAW_SETS.items() if name in first]
    lines = ["## The true law of the future (demo simulator)", "",
             "Sprites read back from the pixels of every sample and compared with the simulator: with the state that "
             "happened, and with the true conditional law of the future (oracle: the recorded state at the last "
             "conditioning frame advanced by the generator's dynamics with fresh kicks). The oracle row is what a "
             "perfect forecaster scores (its distance to the law is the noise floor); the VQ reconstruction and real "
             "frames rows are the read-out's ceilings. Reference rows from the first run's clips.", "",
             *_table(rows, KNOWN_LAW_COLUMNS), "",
             f"![known-law curves]({plot_known_law(dataset_dir / 'known_law.png', with_law)})", ""]
    verdicts = law_verdicts(with_law)
    if verdicts:
        lines += ["### Verdict: which ensemble is closer to the true law", "", *[f"* {v}" for v in verdicts], ""]
    return lines + _horizon_summary(with_law)


IDENTITY_BAR = 0.9  # the demo's bar: every sprite kept in at least this fraction of samples at every horizon


def _horizons(metrics: dict[str, Any]) -> dict[str, Any] | None:
    return (metrics.get("known_law") or {}).get("horizons")


def _listed(frames: list[int], total: int) -> str:
    return f"{len(frames)}/{total}" + (f" ({', '.join(map(str, frames))})" if 0 < len(frames) < total else "")


def _horizon_summary(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Per run, at how many horizons the demo's bar holds: identity kept >= IDENTITY_BAR, and a distance to the
    true law that the paired interval puts below copy-last's and constant velocity's; the oracle row (the true
    law, same ensemble size, the first run's clips) shows what is attainable with these videos and samples."""
    scored = {run_label(run, m): _horizons(m) for run, m in runs.items() if _horizons(m)}
    if not scored:
        return []
    rows = [_bar_row(label, h, "model") for label, h in scored.items()]
    first = next(iter(scored.values()))
    rows += [_bar_row(KNOWN_LAW_SETS[name], first, name) for name in ("oracle", "oracle_vq") if name in first["identity_kept"]]
    return ["### Per horizon: the demo's bar", "",
            f"At each predicted frame: is every sprite kept in at least {100 * IDENTITY_BAR:.0f} % of samples, and is the "
            "ensemble's distance to the true law below copy-last's and constant velocity's (paired over the same "
            "videos, 95 % intervals; neither closer nor farther = cannot tell)? The oracle rows are a perfect "
            "forecaster with the same number of samples, read from exact frames and from its frames passed through "
            "the VQVAE (what a latent model can reach): where they do not pass, no model can be shown to. "
            "Per-frame numbers in each run's section.", "",
            f"| | identity kept ≥ {IDENTITY_BAR} at | closer to the law than copy-last at | closer than constant "
            "velocity at | farther than constant velocity at |", "|---|---|---|---|---|", *rows, ""]


def _bar_row(label: str, h: dict[str, Any], who: str) -> str:
    """One row of the bar summary for ``who`` (model or oracle): the horizons (1-based) where each part holds."""
    ids = h["identity_kept"][who]
    n = len(ids)

    def frames(ref: str, verdict: str) -> str:
        results = h["law_distance"].get(f"{who}-{ref}")
        return _listed([k + 1 for k, r in enumerate(results) if r["verdict"] == verdict], n) if results else "–"

    keep = _listed([k + 1 for k, b in enumerate(ids) if b["value"] >= IDENTITY_BAR], n)
    return (f"| {label} | {keep} | {frames('copy_last', 'A')} | {frames('constant_velocity', 'A')} | "
            f"{frames('constant_velocity', 'B')} |")


def _horizon_table(m: dict[str, Any]) -> list[str]:
    """One run's known-law scores per predicted frame, against the references (nothing without them)."""
    h = _horizons(m)
    if not h:
        return []
    law, ident = h["law_distance"], h["identity_kept"]
    columns = [("identity kept", ident["model"], "id"), ("identity kept, VQ recon", ident["vq_ceiling"], "id"),
               ("identity kept, oracle through the VQVAE", ident.get("oracle_vq"), "id"),
               ("law distance − copy-last", law["model-copy_last"], "diff"),
               ("law distance − constant velocity", law["model-constant_velocity"], "diff"),
               ("oracle − constant velocity", law["oracle-constant_velocity"], "diff"),
               ("oracle through the VQVAE − constant velocity", law.get("oracle_vq-constant_velocity"), "diff")]
    columns = [c for c in columns if c[1]]
    cell = lambda r, kind: _cell(r, ".2f") if kind == "id" else f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"  # noqa: E731
    lines = ["Per predicted frame (known law; distances in px, paired differences over the same videos):", "",
             "| frame | " + " | ".join(label for label, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for k in range(len(ident["model"])):
        lines.append(f"| {k + 1} | " + " | ".join(cell(values[k], kind) for _, values, kind in columns) + " |")
    return lines + [""]


def law_verdicts(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Paired distance-to-the-law sentences: interpolants at equal network evaluations per frame, and sampler
    variants of one checkpoint that differ in one factor (budget, grid, start or diffusion re-tuning). Only runs scored
    on the same clips are paired."""
    sentences = []
    items = list(runs.items())
    for k, (run_a, a) in enumerate(items):
        for run_b, b in items[k + 1:]:
            what = _pairing(a, b)
            if what is None or _comparable({run_a: a, run_b: b}):
                continue
            intervals = a["protocol"]["intervals"]
            values = [np.asarray(_law_sets(m)["model"]["law_distance"]["per_video"]) for m in (a, b)]
            result = paired_difference(*values, False, intervals["resamples"], intervals["seed"], intervals["level"])
            sentences.append(verdict_sentence(f"Distance to the true law, {what}", run_label(run_a, a),
                                              run_label(run_b, b), result, "px"))
    return sentences


def _pairing(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """How two runs relate: different interpolants at equal NFE per frame, or one checkpoint sampled two ways."""
    sa, sb = a["protocol"]["sampler"], b["protocol"]["sampler"]
    if a.get("interp") != b.get("interp") and sa.get("nfe_per_frame") == sb.get("nfe_per_frame") \
            and _trained_steps(a) == _trained_steps(b):
        return f"at {sa.get('nfe_per_frame')} network evaluations per frame, both trained {_trained_steps(a)} steps"
    same_weights = a["protocol"]["checkpoint"] == b["protocol"]["checkpoint"]
    changed = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k) and k not in SAMPLER_NEUTRAL)
    factors = {SAMPLER_FACTORS.get(k, k) for k in changed}
    if a.get("interp") == b.get("interp") and same_weights and len(factors) == 1:
        return "one checkpoint sampled with different " + ", ".join(k.removesuffix("_resolved") for k in changed)
    return None


# Sampler settings that move together as one factor: variants of one checkpoint are paired only when they differ in
# one factor (a change of budget and grid at once says nothing about either).
SAMPLER_FACTORS = {"steps": "budget", "nfe_per_frame": "budget", "solver": "budget", "grid": "grid",
                   "t_min": "grid", "t_max": "grid", "diffusion": "diffusion", "diffusion_scale": "diffusion",
                   "start_resolved": "start"}
SAMPLER_NEUTRAL = {"solver_resolved", "start", "batch_size"}  # derived, compared resolved, or changes no sample


def _trained_steps(metrics: dict[str, Any]) -> int | None:
    """The training step of the checkpoint a run sampled (None when its metrics do not say)."""
    return metrics.get("protocol", {}).get("checkpoint", {}).get("ckpt_step")


def _baseline(run: str, runs: dict[str, dict[str, Any]]) -> str:
    """The run a later run is paired against: the first run trained as long (the short demo runs with each other,
    the shipped checkpoints with each other), else the first run."""
    earlier = list(runs)[:list(runs).index(run)]
    return next((r for r in earlier if _trained_steps(runs[r]) == _trained_steps(runs[run])), earlier[0])


def _summary(dataset_dir: Path, runs: dict[str, dict[str, Any]]) -> list[str]:
    """The comparison table, the paired differences, the curves and the loss curves of all runs."""
    first_run, first = next(iter(runs.items()))
    rows = [(f"{run_label(run, m)} (N={m['model']['n_samples']})", m["model"]) for run, m in runs.items()]
    rows += [("VQ ceiling", first["vq_ceiling"]), ("copy-last", first["copy_last"])]
    lines = ["## Comparison", "", *_table(rows), "", *_fvd_status(runs)]
    if len(runs) > 1:
        lines += ["VQ ceiling and copy-last rows: from the first run's store (the same test clips when the protocols "
                  "agree).", ""]
        for run, m in list(runs.items())[1:]:
            base_run = _baseline(run, runs)
            base = runs[base_run]
            names = (run_label(base_run, base), run_label(run, m))
            diffs = _comparable({base_run: base, run: m})
            if diffs:
                lines += [f"**Not comparable as is**: {names[0]} and {names[1]} differ in {', '.join(diffs)}; no "
                          "paired differences.", ""]
            else:
                rows = paired_rows(base["model"], m["model"], base["protocol"])
                if _law_sets(base) and _law_sets(m):
                    rows += paired_rows(_law_sets(base)["model"], _law_sets(m)["model"], base["protocol"],
                                        KNOWN_LAW_COLUMNS)
                lines += _paired_table(f"### Paired: {names[0]} − {names[1]} (same videos, same resamples)", rows, names)
    lines += _known_law_section(dataset_dir, runs)
    title = f"{dataset_dir.name}: " + ", ".join(run_label(r, m) for r, m in runs.items())
    lines += [f"![per-frame curves]({plot_curves(dataset_dir / 'curves.png', runs, title)})", ""]
    losses = plot_losses(dataset_dir / "loss_curves.png", {run: read_losses(dataset_dir / RUNS / run) for run in runs})
    if losses:
        lines += [f"![training and validation loss]({losses})", ""]
    return lines


