"""The report's section on the demo's known law: sprites read back from every sample's pixels and scored against
the simulator's true conditional law (metrics.json ``known_law``); nothing for datasets whose law is unknown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.eval.compare import KNOWN_LAW_COLUMNS, law_verdicts, run_label
from pipeline.eval.plots import plot_known_law
from pipeline.eval.tables import cell, difference, table

KNOWN_LAW_SETS = {"oracle": "oracle (draws from the true law)",
                  "oracle_vq": "oracle through the VQVAE (a perfect latent forecaster)", "constant_velocity": "constant velocity",
                  "copy_last": "copy-last", "vq_ceiling": "VQ reconstruction", "real": "real frames"}
IDENTITY_BAR = 0.9  # the demo's bar: every sprite kept in at least this fraction of samples at every horizon


def law_sets(metrics: dict[str, Any]) -> dict[str, Any] | None:
    return (metrics.get("known_law") or {}).get("sets")


def horizons(metrics: dict[str, Any]) -> dict[str, Any] | None:
    return (metrics.get("known_law") or {}).get("horizons")


def known_law_section(dataset_dir: Path, runs: dict[str, dict[str, Any]], labels: dict[str, str],
                      colours: dict[str, str]) -> list[str]:
    """The demo's known-law table, curves and verdicts (nothing for datasets whose law is unknown)."""
    with_law = {run: m for run, m in runs.items() if law_sets(m)}
    if not with_law:
        missing = [m["known_law"]["status"] for m in runs.values() if "sidecar" in (m.get("known_law") or {}).get("status", "")]
        return [f"Known-law scores: {missing[0]}", ""] if missing else []
    first = law_sets(next(iter(with_law.values())))
    rows = [(f"{labels[run]} (N={m['model']['n_samples']})", law_sets(m)["model"]) for run, m in with_law.items()]
    rows += [(label, first[name]) for name, label in KNOWN_LAW_SETS.items() if name in first]
    plot = plot_known_law(dataset_dir / "known_law.png", with_law, labels, colours)
    lines = ["## The true law of the future (demo simulator)", "",
             "Sprites read back from the pixels of every sample and compared with the simulator: with the state that "
             "happened, and with the true conditional law of the future (oracle: the recorded state at the last "
             "conditioning frame advanced by the generator's dynamics with fresh kicks). The oracle row is what a "
             "perfect forecaster scores (its distance to the law is the noise floor); the VQ reconstruction and real "
             "frames rows are the read-out's ceilings. Reference rows from the first run's clips.", "",
             *table(rows, KNOWN_LAW_COLUMNS), "", f"![known-law curves]({plot})", ""]
    verdicts = law_verdicts(with_law)
    if verdicts:
        lines += ["### Verdict: which ensemble is closer to the true law", "", *[f"* {v}" for v in verdicts], ""]
    return lines + horizon_summary(with_law)


def _listed(frames: list[int], total: int) -> str:
    return f"{len(frames)}/{total}" + (f" ({', '.join(map(str, frames))})" if 0 < len(frames) < total else "")


def horizon_summary(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Per run, at how many horizons the demo's bar holds: identity kept >= IDENTITY_BAR and a law distance below
    copy-last's and constant velocity's (paired); the oracle row shows what is attainable."""
    scored = {run_label(run, m): horizons(m) for run, m in runs.items() if horizons(m)}
    if not scored:
        return []
    rows = [bar_row(label, h, "model") for label, h in scored.items()]
    first = next(iter(scored.values()))
    rows += [bar_row(KNOWN_LAW_SETS[name], first, name) for name in ("oracle", "oracle_vq") if name in first["identity_kept"]]
    return ["### Per horizon: the demo's bar", "",
            f"At each predicted frame: is every sprite kept in at least {100 * IDENTITY_BAR:.0f} % of samples, and is the "
            "ensemble's distance to the true law below copy-last's and constant velocity's (paired over the same "
            "videos, 95 % intervals; neither closer nor farther = cannot tell)? The oracle rows are a perfect "
            "forecaster with the same number of samples, read from exact frames and from its frames passed through "
            "the VQVAE (what a latent model can reach): where they do not pass, no model can be shown to. "
            "Per-frame numbers in each run's section.", "",
            f"| | identity kept ≥ {IDENTITY_BAR} at | closer to the law than copy-last at | closer than constant "
            "velocity at | farther than constant velocity at |", "|---|---|---|---|---|", *rows, ""]


def bar_row(label: str, h: dict[str, Any], who: str) -> str:
    """One row of the bar summary for ``who`` (model or oracle): the predicted frames where each part holds."""
    ids = h["identity_kept"][who]
    n = len(ids)

    def frames(ref: str, verdict: str) -> str:
        results = h["law_distance"].get(f"{who}-{ref}")
        return _listed([k + 1 for k, r in enumerate(results) if r["verdict"] == verdict], n) if results else "–"

    keep = _listed([k + 1 for k, b in enumerate(ids) if b["value"] >= IDENTITY_BAR], n)
    return (f"| {label} | {keep} | {frames('copy_last', 'A')} | {frames('constant_velocity', 'A')} | "
            f"{frames('constant_velocity', 'B')} |")


def horizon_table(m: dict[str, Any]) -> list[str]:
    """One run's known-law scores per predicted frame, against the references (nothing without them)."""
    h = horizons(m)
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
    show = lambda r, kind: cell(r, ".2f") if kind == "id" else " ".join(difference(r, 2))  # noqa: E731
    lines = ["Per predicted frame (known law; distances in px, paired differences over the same videos):", "",
             "| frame | " + " | ".join(label for label, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for k in range(len(ident["model"])):
        lines.append(f"| {k + 1} | " + " | ".join(show(values[k], kind) for _, values, kind in columns) + " |")
    return lines + [""]
