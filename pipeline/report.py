"""Stage 4 outputs: ``<run>/eval/metrics.json`` (schema below), the PSNR-per-frame plot, ``<out>/<data>/report.md``.

metrics.json (``SCHEMA``), one file per run::

    {
      "schema": "latent-interpolants/eval-metrics/v1",
      "model" | "vq_ceiling" | "copy_last": {           # forecasts, decode(encode(x)), last real frame repeated
        "psnr": {"mean": dB, "best_of_n": dB, "per_frame": [dB per predicted frame],
                 "per_frame_best_of_n": [...], "std_over_videos": dB, "best_sample": [index per video]},
        "ssim": {same keys},
        "fvd": float | null, "fvd_bootstrap": {"mean", "std", "resamples"} | null,
        "n_samples": N (1 for vq_ceiling and copy_last)
      },
      "fvd_status": "ok: ..." | why FVD is null and how to enable it,
      "protocol": {split, videos, videos_in_store, n_samples, clip_length, cond_frames, pred_frames, image_size,
                   data_range, pixels, psnr, ssim, best_of_n, copy_last, vq_ceiling,
                   fvd: {clips, videos, generated, clip_counts, call, statistics, i3d, i3d_sha256, resamples},
                   checkpoint: {ckpt, ckpt_kind, ckpt_step, use_ema}, sampler: {...sample config, nfe_per_frame},
                   interpolant, seeds: {seed, sample_seed, bootstrap_seed}, forecasts, forecasts_fingerprint, ...},
      "fingerprint", "inputs", "file_hashes", "dataset", "run", "interp", "eval_config", "code_version", "created",
      "seconds", "plot": "psnr_per_frame.png"
    }

``report.md`` gathers every ``runs/<run>/eval/metrics.json`` of the dataset: one table per run (model, VQ
ceiling, copy-last), its plot and its ``media/forecast_*.gif`` grids; with two or more runs (the paper's
``ours`` vs ``linear``, or a sweep of named runs) a side-by-side table first, with each model's PSNR gain over
copy-last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.layout import RUNS
from pipeline.records import atomic_path, write_json_atomic

SCHEMA = "latent-interpolants/eval-metrics/v1"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
SET_LABELS = {"model": "model", "vq_ceiling": "VQ ceiling", "copy_last": "copy-last"}
PROTOCOL_KEYS = ("split", "videos", "n_samples", "clip_length", "cond_frames", "pred_frames", "data_range", "fvd",
                 "checkpoint", "sampler", "seeds")
INTERP_ORDER = ("ours", "linear")


def check_schema(metrics: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or mistyped entry of a metrics.json body."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"metrics.json: {what}")

    need(metrics.get("schema") == SCHEMA, f"schema must be {SCHEMA!r}")
    for name in SET_LABELS:
        block = metrics.get(name)
        need(isinstance(block, dict), f"'{name}' missing")
        for metric in ("psnr", "ssim"):
            m = block.get(metric)
            need(isinstance(m, dict), f"'{name}.{metric}' missing")
            for key in ("mean", "best_of_n"):
                need(isinstance(m.get(key), float), f"'{name}.{metric}.{key}' must be a number")
            need(isinstance(m.get("per_frame"), list) and all(isinstance(v, float) for v in m["per_frame"]),
                 f"'{name}.{metric}.per_frame' must be a list of numbers")
        need("fvd" in block and (block["fvd"] is None or isinstance(block["fvd"], float)), f"'{name}.fvd' must be a number or null")
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


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _frames(metrics: dict[str, Any]) -> list[int]:
    cond = metrics["protocol"]["cond_frames"]
    return list(range(cond, cond + len(metrics["model"]["psnr"]["per_frame"])))


def plot_psnr(path: Path, metrics: dict[str, Any]) -> str:
    """PSNR per predicted frame: model (mean and best-of-N), VQ ceiling, copy-last. Returns the file name."""
    fig, ax = _figure()
    x = _frames(metrics)
    n = metrics["model"]["n_samples"]
    ax.plot(x, metrics["model"]["psnr"]["per_frame"], "o-", ms=3, label="model (mean)")
    if n > 1:
        ax.plot(x, metrics["model"]["psnr"]["per_frame_best_of_n"], "o--", ms=3, label=f"model (best of {n})")
    ax.plot(x, metrics["vq_ceiling"]["psnr"]["per_frame"], "-", color="gray", label="VQ ceiling")
    ax.plot(x, metrics["copy_last"]["psnr"]["per_frame"], ":", color="black", label="copy-last")
    _decorate(ax, metrics, f"{metrics.get('dataset', '')} / {run_label(metrics.get('run', ''), metrics)}")
    _save(fig, Path(path))
    return Path(path).name


def plot_comparison(path: Path, runs: dict[str, dict[str, Any]]) -> str:
    """Mean PSNR per predicted frame of several runs, with the first run's ceiling and copy-last."""
    fig, ax = _figure()
    first = next(iter(runs.values()))
    for run, metrics in runs.items():
        ax.plot(_frames(metrics), metrics["model"]["psnr"]["per_frame"], "o-", ms=3, label=f"{run_label(run, metrics)} (mean)")
    ax.plot(_frames(first), first["vq_ceiling"]["psnr"]["per_frame"], "-", color="gray", label="VQ ceiling")
    ax.plot(_frames(first), first["copy_last"]["psnr"]["per_frame"], ":", color="black", label="copy-last")
    _decorate(ax, first, f"{first.get('dataset', '')}: runs compared")
    _save(fig, Path(path))
    return Path(path).name


def _decorate(ax, metrics: dict[str, Any], title: str) -> None:
    p = metrics["protocol"]
    ax.set_xlabel(f"frame index in clip (frames {p['cond_frames']}..{p['clip_length'] - 1} are predicted)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{title} ({p['videos']} videos, {p['n_samples']} samples)")
    ax.grid(alpha=0.3)
    ax.legend()


# ----------------------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------------------


def run_label(run: str, metrics: dict[str, Any]) -> str:
    """The run's name, with its interpolant when the name does not say it (``lr5e-4 (ours)``)."""
    interp = metrics.get("interp")
    return run if not interp or interp == run else f"{run} ({interp})"


def find_runs(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """{run: metrics} for every ``<dataset_dir>/runs/<run>/eval/metrics.json``; ours, linear first."""
    runs = {}
    for path in sorted(Path(dataset_dir).glob(f"{RUNS}/*/eval/{METRICS_FILE}")):
        try:
            runs[path.parent.parent.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    order = [i for i in INTERP_ORDER if i in runs] + sorted(i for i in runs if i not in INTERP_ORDER)
    return {i: runs[i] for i in order}


def _fvd_text(block: dict[str, Any]) -> str:
    if block.get("fvd") is None:
        return "n/a"
    text = f"{block['fvd']:.1f}"
    boot = block.get("fvd_bootstrap")
    if boot:
        text += f" ({boot['mean']:.1f} ± {boot['std']:.1f}, {boot['resamples']} resamples)"
    return text


def _row(label: str, block: dict[str, Any], extra: list[str] | None = None) -> str:
    cells = [label, _fvd_text(block), f"{block['psnr']['mean']:.2f}", f"{block['psnr']['best_of_n']:.2f}",
             f"{block['ssim']['mean']:.4f}", f"{block['ssim']['best_of_n']:.4f}", *(extra or [])]
    return "| " + " | ".join(cells) + " |"


HEADER = ["FVD ↓", "PSNR mean ↑", "PSNR best-of-N ↑", "SSIM mean ↑", "SSIM best-of-N ↑"]


def _table(first: str, rows: list[str], extra: list[str] | None = None) -> list[str]:
    cols = [first, *HEADER, *(extra or [])]
    return ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|", *rows]


def _protocol_line(m: dict[str, Any]) -> str:
    p = m["protocol"]
    ck = p.get("checkpoint") or {}
    sampler = p.get("sampler") or {}
    ckpt = f"{ck.get('ckpt')} ({ck.get('ckpt_kind')} checkpoint, step {ck.get('ckpt_step')}, EMA {ck.get('use_ema')})"
    return (f"split `{p.get('split')}`, {p['videos']} videos, N = {p['n_samples']} samples each, clips of "
            f"{p['clip_length']} frames ({p['cond_frames']} conditioning → {p['pred_frames']} predicted), "
            f"{p.get('image_size')} px; checkpoint {ckpt}; sampler {sampler.get('solver_resolved') or sampler.get('solver')} with "
            f"{sampler.get('nfe_per_frame')} NFE/frame")


def _comparable(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Protocol entries that differ between the runs (the comparison is only fair when this is empty)."""
    keys = ("split", "videos", "n_samples", "clip_length", "cond_frames")
    first = next(iter(runs.values()))["protocol"]
    diffs = [k for k in keys if any(m["protocol"].get(k) != first.get(k) for m in runs.values())]
    fvd_keys = ("videos", "generated", "i3d_sha256")
    diffs += [f"fvd.{k}" for k in fvd_keys if any(m["protocol"]["fvd"].get(k) != first["fvd"].get(k) for m in runs.values())]
    return diffs


def _media_key(path: Path) -> tuple:
    """forecast_2 before forecast_10."""
    tail = path.stem.rsplit("_", 1)[-1]
    return (0, int(tail), "") if tail.isdigit() else (1, 0, path.stem)


def write_report(dataset_dir: Path) -> Path:
    """(Re)write ``<dataset_dir>/report.md`` from every interpolant's metrics.json; returns its path."""
    dataset_dir = Path(dataset_dir)
    runs = find_runs(dataset_dir)
    lines = [f"# Forecast evaluation: {dataset_dir.name}", "",
             "Written by `evaluate.py` (`make eval`) from `runs/<run>/eval/metrics.json`; regenerated on every run.",
             "PSNR/SSIM: predicted frames only, data range 2 on [-1, 1]; best-of-N picks, per video, the sample with "
             "the best mean score. FVD: full clips (conditioning + predicted) vs real clips, StyleGAN-V TorchScript "
             "I3D. VQ ceiling: decode(encode(x)) vs x. Copy-last: the last real conditioning frame repeated.", ""]
    if not runs:
        lines.append("No evaluated run yet (run `make eval`).")
    if len(runs) >= 2:
        title = "ours vs linear (the paper's comparison)" if set(INTERP_ORDER) <= set(runs) else "runs compared"
        rows = []
        for run, m in runs.items():
            gain = m["model"]["psnr"]["mean"] - m["copy_last"]["psnr"]["mean"]
            rows.append(_row(f"{run_label(run, m)} (N={m['model']['n_samples']})", m["model"], [f"{gain:+.2f}"]))
        first = next(iter(runs.values()))
        rows.append(_row("VQ ceiling", first["vq_ceiling"], ["—"]))
        rows.append(_row("copy-last", first["copy_last"], ["0.00"]))
        lines += [f"## Comparison: {title}", "",
                  *_table("run", rows, ["PSNR mean gain over copy-last (dB)"]), ""]
        diffs = _comparable(runs)
        if diffs:
            lines += [f"**Not comparable as is**: the runs differ in {', '.join(diffs)}.", ""]
        lines += ["VQ ceiling and copy-last rows: from the first run's store (the same test clips when the protocols "
                  "agree).", ""]
        for run, m in runs.items():
            lines.append(f"* `{run}` FVD: {m['fvd_status']}")
        lines.append("")
        name = plot_comparison(dataset_dir / "psnr_per_frame.png", runs)
        lines += [f"![PSNR per frame, all runs]({name})", ""]
    for run, m in runs.items():
        rows = [_row(f"{SET_LABELS[s]}" + (f" (N={m[s]['n_samples']})" if s == "model" else ""), m[s]) for s in SET_LABELS]
        gain = m["model"]["psnr"]["mean"] - m["copy_last"]["psnr"]["mean"]
        lines += [f"## {run_label(run, m)}", "", _protocol_line(m) + ".", "", *_table("scored", rows), "",
                  f"Model mean PSNR gain over copy-last: {gain:+.2f} dB. FVD: {m['fvd_status']}.", ""]
        if m.get("plot"):
            lines += [f"![PSNR per frame, {run}]({RUNS}/{run}/eval/{m['plot']})", ""]
        gifs = sorted((dataset_dir / RUNS / run / "media").glob("forecast_*.gif"), key=_media_key)
        if gifs:
            lines += ["Forecast grids:", ""] + [f"![{g.stem}]({RUNS}/{run}/media/{g.name})" for g in gifs] + [""]
    path = dataset_dir / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    return path
