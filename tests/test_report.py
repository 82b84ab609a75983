"""report.md at a glance: the summary on top, paired tables without repeated bullets, three significant digits, one
colour per run in every figure, predicted frames 1..N in tables and plots, FVD's small-sample caveat instead of a
verdict; and metrics.json untouched by the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import row_cells
from pipeline.eval import plots
from pipeline.eval.report import SCHEMA, write_report
from pipeline.eval.tables import cell, difference

VIDEOS, FRAMES, COND = 32, 12, 4
METRICS = ("psnr", "ssim", "crps", "energy", "energy_latent", "spread_skill", "diversity", "spread2", "mse")
LAW = ("identity_kept", "count_kept", "energy", "law_distance", "coverage50", "coverage90")


def _block(rng: np.random.Generator, centre: float, scale: float) -> dict:
    per_video = centre + scale * rng.standard_normal(VIDEOS)
    mean = float(per_video.mean())
    return {"value": mean, "low": mean - 2 * scale / VIDEOS ** 0.5, "high": mean + 2 * scale / VIDEOS ** 0.5,
            "per_frame": [float(centre + 0.01 * k * scale) for k in range(FRAMES)], "per_video": per_video.tolist()}


def _set(rng: np.random.Generator, shift: float, members: int, fvd: float) -> dict:
    block = {m: _block(rng, 1.0 + shift + k, 0.3) for k, m in enumerate(METRICS)}
    block["fvd"] = {"value": fvd, "low": fvd - 20, "high": fvd + 20, "resamples": 50,
                    "values": (fvd + 10 * rng.standard_normal(50)).tolist()}
    return {**block, "n_samples": members}


def _horizon(rng: np.random.Generator) -> list[dict]:
    diffs = rng.standard_normal(FRAMES)
    return [{"diff": float(d), "low": float(d - 0.5), "high": float(d + 0.5),
             "verdict": "A" if d > 0.5 else "B" if d < -0.5 else "cannot tell"} for d in diffs]


def _metrics(run: str, interp: str, shift: float, fvd_videos: int = VIDEOS, seed: int = 0) -> dict:
    """A metrics.json body with what the report reads: three scored sets, the protocol and the known law."""
    rng = np.random.default_rng(seed)
    law_sets = {name: {k: _block(rng, 2.0 + shift * (name == "model"), 0.5) for k in LAW}
                for name in ("model", "oracle", "oracle_vq", "constant_velocity", "copy_last", "vq_ceiling", "real")}
    identity = {who: [{"value": 0.95, "low": 0.9, "high": 0.99}] * FRAMES for who in ("model", "vq_ceiling", "oracle", "oracle_vq")}
    pairs = ("model-constant_velocity", "model-copy_last", "oracle-constant_velocity", "oracle_vq-constant_velocity",
             "model-oracle_vq")
    protocol = {"split": "test", "videos": VIDEOS, "video_ids": list(range(VIDEOS)), "real_clips_sha256": "x",
                "n_samples": 4, "clip_length": COND + FRAMES, "cond_frames": COND, "pred_frames": FRAMES,
                "image_size": 64, "intervals": {"method": "percentile", "level": 0.95, "resamples": 200, "seed": 0},
                "fvd": {"videos": fvd_videos, "generated": "first", "i3d_sha256": "i3d"},
                "checkpoint": {"ckpt": f"{run}.pt", "ckpt_step": 2000, "use_ema": True},
                "sampler": {"solver": "heun", "nfe_per_frame": 20}}
    return {"schema": SCHEMA, "run": run, "interp": interp, "dataset": "demo", "plot": "curves.png",
            "model": _set(rng, shift, 4, 300 + 100 * shift), "vq_ceiling": _set(rng, 5, 1, 1e-9),
            "copy_last": _set(rng, -1, 1, 250), "fvd_status": f"ok: {fvd_videos} videos", "protocol": protocol,
            "known_law": {"status": "ok", "sets": law_sets,
                          "horizons": {"law_distance": {p: _horizon(rng) for p in pairs}, "identity_kept": identity}}}


def _dataset(tmp_path: Path, **kwargs) -> Path:
    for run, interp, shift, seed in (("ours", "ours", 0.2, 1), ("linear", "linear", 0.0, 2)):
        eval_dir = tmp_path / "demo" / "runs" / run / "eval"
        eval_dir.mkdir(parents=True)
        (eval_dir / "metrics.json").write_text(json.dumps(_metrics(run, interp, shift, seed=seed, **kwargs)))
        (tmp_path / "demo" / "runs" / run / "metrics.jsonl").write_text(
            "\n".join(json.dumps({"step": s, "loss": 1 / s, "val_loss": 2 / s, "val_loss_ema": 1.5 / s}) for s in (1, 2, 3)))
    return tmp_path / "demo"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    dataset = _dataset(tmp_path_factory.mktemp("report"))
    return dataset, write_report(dataset).read_text()


def _section(text: str, start: str, end: str = "\n## ") -> str:
    begin = text.index(start)
    return text[begin:text.find(end, begin + len(start))]


def test_summary_on_top_in_three_to_five_lines(report) -> None:
    _, text = report
    summary = _section(text, "## Summary")
    assert text.index("## Summary") < text.index("## Comparison")
    bullets = [line for line in summary.splitlines() if line.startswith("* ")]
    assert 3 <= len(bullets) <= 5, summary
    assert "**ours vs linear**" in summary and " better on " in summary and re.search(r"by [\d.]+ \S* ?\[[\d.]+, [\d.]+\]", summary)
    assert "Caveats:" in summary and "FVD from 32 videos (256 recommended)" in summary


def test_paired_tables_without_repeated_bullets(report) -> None:
    _, text = report
    paired = _section(text, "### Paired: ours − linear", "\n#")
    assert "| PSNR (dB) |" in paired and "| FVD |" in paired
    assert not [line for line in paired.splitlines() if line.startswith("* ")]


def _significant(number: str) -> int:
    digits = number.lstrip("+-−").replace(".", "").lstrip("0")
    return len(digits)


def test_numbers_keep_three_significant_digits(report) -> None:
    _, text = report
    table = _section(text, "|  | FVD", "\n\n")
    numbers = re.findall(r"[-+]?\d+\.\d+|\b\d+\b", "\n".join(table.splitlines()[2:]))
    assert numbers and all(_significant(n) <= 3 for n in numbers if n.strip("+-0.")), numbers
    assert cell({"value": 49.4321, "low": 49.41, "high": 49.45}, ".2f") == "49.4 [49.4, 49.5]"
    assert cell({"value": 1e-9, "low": -1e-9, "high": 2e-9}, ".1f") == "0.0 [0.0, 0.0]"  # the column's finest
    assert difference({"diff": 41.64, "low": 41.44, "high": 41.84}) == ("+41.6", "[+41.4, +41.8]")
    assert difference({"diff": 0.31, "low": 0.12, "high": 0.5}) == ("+0.31", "[+0.12, +0.50]")


def test_frames_are_the_predicted_frames_in_tables_and_plots(report) -> None:
    dataset, text = report
    assert "Frames are numbered 1..12 among the predicted frames" in text
    rows = [line for line in _section(text, "## ours").splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, FRAMES + 1))
    assert plots.predicted_frames(json.loads((dataset / "runs/ours/eval/metrics.json").read_text())) == list(range(1, 13))


def test_one_colour_per_run_in_every_plot(tmp_path: Path, monkeypatch) -> None:
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(Path(path).name, fig) and Path(path).name)
    write_report(_dataset(tmp_path))
    colours = plots.run_colours(["linear", "ours"])
    assert colours["linear"] != colours["ours"]
    assert {"curves.png", "known_law.png", "loss_curves.png"} <= set(figures)
    seen = {}
    for name, fig in figures.items():
        for ax in fig.axes:
            for line in ax.lines:
                run = line.get_label().split(" ")[0]
                if run in colours:
                    seen.setdefault(run, set()).add(line.get_color())
                    assert list(line.get_xdata())[:1] in ([1], [1.0]) or name == "loss_curves.png"
    assert seen == {run: {colour} for run, colour in colours.items()}


def test_fvd_below_the_recommended_size_gives_its_caveat_not_a_verdict(tmp_path: Path) -> None:
    small = write_report(_dataset(tmp_path / "small", fvd_videos=32)).read_text()
    against = next(line for line in _section(small, "## ours").splitlines() if line.startswith("Against copy-last"))
    assert "**" not in small.split("## Comparison")[1] and "FVD" in against and "32 videos (256 recommended)" in against
    assert "on FVD" not in against
    fvd_row = next(line for line in _section(small, "### Paired", "\n#").splitlines() if line.startswith("| FVD |"))
    assert "no verdict" in fvd_row and "better" not in fvd_row
    large = write_report(_dataset(tmp_path / "large", fvd_videos=256)).read_text()
    assert "recommended" not in large.split("FVD: ok")[0]
    fvd_row = next(line for line in _section(large, "### Paired", "\n#").splitlines() if line.startswith("| FVD |"))
    assert fvd_row.endswith("better |") or fvd_row.endswith("cannot tell |")


def test_the_report_leaves_metrics_json_as_it_was(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    before = {p: p.read_bytes() for p in dataset.glob("runs/*/eval/metrics.json")}
    write_report(dataset)
    assert {p: p.read_bytes() for p in dataset.glob("runs/*/eval/metrics.json")} == before


def test_the_bar_compares_with_the_oracle_through_the_vqvae(tmp_path: Path) -> None:
    """The bar's law-distance cells: closer than copy-last, as close as / farther than the oracle through the VQVAE
    (constant velocity only in the per-frame tables); a metrics.json written before that pair renders with '–'."""
    dataset = _dataset(tmp_path)
    ours, linear = (dataset / f"runs/{run}/eval/metrics.json" for run in ("ours", "linear"))
    m = json.loads(ours.read_text())
    verdicts = ["A"] * 3 + ["cannot tell"] * 5 + ["B"] * 4
    m["known_law"]["horizons"]["law_distance"]["model-oracle_vq"] = [
        {"diff": 0.0, "low": 0.0, "high": 0.0, "verdict": v} for v in verdicts]
    ours.write_text(json.dumps(m))
    m = json.loads(linear.read_text())
    del m["known_law"]["horizons"]["law_distance"]["model-oracle_vq"]
    linear.write_text(json.dumps(m))
    text = write_report(dataset).read_text()
    bar = _section(text, "### Per horizon: the demo's bar", "\n#")
    assert row_cells(bar, "| |")[1:] == ["identity kept ≥ 0.9 at", "closer to the law than copy-last at",
                                          "as close as the oracle through the VQVAE at",
                                          "farther than the oracle through the VQVAE at"]
    assert row_cells(bar, "| ours")[3:] == ["8/12 (1, 2, 3, 4, 5, 6, 7, 8)", "4/12 (9, 10, 11, 12)"]
    assert row_cells(bar, "| linear")[3:] == ["–", "–"] and "needs the oracle through the VQVAE" in bar
    assert row_cells(bar, "| oracle through the VQVAE")[1:] == ["12/12", "–", "–", "–"]
    assert "| oracle (draws from the true law)" not in bar
    assert "law distance − oracle through the VQVAE" in _section(text, "## ours")
    assert "law distance − oracle through the VQVAE" not in _section(text, "## linear")
    assert "law distance − constant velocity" in _section(text, "## linear")
