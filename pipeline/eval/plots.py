"""The report's figures: per-frame curves, the demo's known-law curves and the training/validation loss curves.

A run has one colour in every figure (:func:`run_colours`); references are gray or black, told apart by line
style; x counts predicted frames 1..N. Drawn on matplotlib's Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.eval.compare import run_label
from pipeline.run.records import atomic_path

CURVES = (("psnr", "PSNR (dB) ↑"), ("energy", "energy score ↓ (pixels, RMS units)"),
          ("spread_skill", "spread / skill (1 = calibrated)"))
REFERENCE_LABELS = {"copy_last": "copy-last", "vq_ceiling": "VQ ceiling"}
LAW_REFERENCES = {"oracle": ("oracle (the true law)", "--"), "constant_velocity": ("constant velocity", "-."),
                  "copy_last": ("copy-last", ":")}
IDENTITY_REFERENCES = {"real": ("real frames", "--"), "vq_ceiling": ("VQ reconstruction", ":")}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def run_colours(runs: Iterable[str]) -> dict[str, str]:
    """{run: colour}: the palette in the order of the sorted run names (cycling past nine runs)."""
    return {run: PALETTE[k % len(PALETTE)] for k, run in enumerate(sorted(set(runs)))}


def predicted_frames(metrics: dict[str, Any]) -> list[int]:
    """The x values of a run's per-frame curves: predicted frames 1..N."""
    return list(range(1, len(metrics["model"]["psnr"]["per_frame"]) + 1))


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


def _frame_axis(ax, title: str) -> None:
    ax.set_xlabel("predicted frame")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def plot_curves(path: Path, runs: dict[str, dict[str, Any]], labels: dict[str, str], title: str,
                colours: dict[str, str] | None = None) -> str:
    """Per predicted frame: PSNR, energy score and spread-skill of every run, with the first run's copy-last and VQ
    ceiling; returns the file name."""
    colours = colours or run_colours(runs)
    fig, axes = _figure(len(CURVES))
    first = next(iter(runs.values()))
    for ax, (metric, label) in zip(axes, CURVES):
        for run, m in runs.items():
            ax.plot(predicted_frames(m), m["model"][metric]["per_frame"], "o-", ms=3, color=colours[run],
                    label=labels[run])
        if metric == "spread_skill":  # a one-member reference has no spread: 1 = calibrated instead
            ax.axhline(1.0, color="gray", lw=0.8)
        else:
            for name, style in (("copy_last", ":"), ("vq_ceiling", "--")):
                ax.plot(predicted_frames(first), first[name][metric]["per_frame"], style,
                        color="black" if name == "copy_last" else "gray", label=REFERENCE_LABELS[name])
        _frame_axis(ax, label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_known_law(path: Path, runs: dict[str, dict[str, Any]], labels: dict[str, str],
                   colours: dict[str, str] | None = None) -> str:
    """Per predicted frame: distance to the true law and identity kept, for every run and (from the first run's
    clips) the references; returns the file name."""
    colours = colours or run_colours(runs)
    fig, (law_ax, identity_ax) = _figure(2)
    for run, m in runs.items():
        model = m["known_law"]["sets"]["model"]
        for ax, key in ((law_ax, "law_distance"), (identity_ax, "identity_kept")):
            ax.plot(predicted_frames(m), model[key]["per_frame"], "o-", ms=3, color=colours[run], label=labels[run])
    first = next(iter(runs.values()))
    refs = first["known_law"]["sets"]
    for ax, key, references in ((law_ax, "law_distance", LAW_REFERENCES),
                                (identity_ax, "identity_kept", IDENTITY_REFERENCES)):
        for name, (label, style) in references.items():
            ax.plot(predicted_frames(first), refs[name][key]["per_frame"], style, color="gray", label=label)
        ax.legend(fontsize=8)
    _frame_axis(law_ax, "distance to the true law (px) ↓")
    _frame_axis(identity_ax, "identity kept ↑")
    return _save(fig, Path(path))


def plot_run_curves(path: Path, metrics: dict[str, Any], colours: dict[str, str] | None = None) -> str:
    """The curves of one run (metrics.json's ``plot``), in its colour of ``colours`` (its own name's without)."""
    run = metrics.get("run", "model")
    label = run_label(run, metrics)
    return plot_curves(path, {run: metrics}, {run: label}, f"{metrics.get('dataset', '')} / {label}", colours)


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


def plot_losses(path: Path, losses: dict[str, dict[str, list[tuple[int, float]]]],
                colours: dict[str, str] | None = None) -> str | None:
    """Training loss (left) and validation loss (right: raw solid, EMA weights dashed, in the run's colour) of
    every run; None when no run logged any."""
    if not any(points for series in losses.values() for points in series.values()):
        return None
    colours = colours or run_colours(losses)
    fig, (train_ax, val_ax) = _figure(2)
    for run, series in losses.items():
        if series["loss"]:
            train_ax.plot(*zip(*series["loss"]), color=colours[run], label=run)
        for key, style, weights in (("val_loss", "-", "raw"), ("val_loss_ema", "--", "EMA")):
            if series[key]:
                val_ax.plot(*zip(*series[key]), style, marker="o", ms=3, color=colours[run], label=f"{run} ({weights})")
    for ax, title in ((train_ax, "training loss (mean over each logging window)"), (val_ax, "validation loss")):
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, Path(path))
