"""The report's section on the demo's known law: sprites read back from every sample's pixels and scored against
the simulator's true conditional law (metrics.json ``known_law``); nothing for datasets whose law is unknown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.eval.compare import KNOWN_LAW_COLUMNS, law_verdicts, run_label
from pipeline.eval.plots import plot_known_law
from pipeline.eval.tables import cell, difference, table

KNOWN_LAW_SETS = {"oracle": "oracle (draws from the true law)",
                  "oracle_vq": "oracle through the VQVAE (a perfect latent forecaster)", "constant_velocity": "constant velocity",
                  "copy_last": "copy-last", "vq_ceiling": "VQ reconstruction", "real": "real frames"}
IDENTITY_BAR = 0.9  # the demo's bar: every sprite kept in at least this fraction of samples at every horizon
BAR_REFERENCE = "oracle_vq"  # the bar's law-distance reference: the perfect latent forecaster


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
    """Per run, at how many horizons the demo's bar holds: identity kept >= IDENTITY_BAR, a law distance below
    copy-last's, and not shown farther from the law than :data:`BAR_REFERENCE`, the oracle through the VQVAE (paired).
    Constant velocity is no part of the bar: at the first frames the VQVAE's reconstruction error alone exceeds its
    distance to the law, so no VQVAE-decoded model can beat it there. The last row is the reference itself: its
    identity cell says where keeping every sprite is attainable through this VQVAE; its law-distance cells are "–"
    (no pair with copy-last is computed for it, and against itself it holds by definition, which is no result).
    The exact oracle has no row: no VQVAE-decoded forecast can match it. A run without the model − reference pair
    (evaluated without the oracle through the VQVAE, or before the pair existed) shows "–" there."""
    scored = {run_label(run, m): horizons(m) for run, m in runs.items() if horizons(m)}
    if not scored:
        return []
    rows = [bar_row(label, h, "model") for label, h in scored.items()]
    reference = next((h for h in scored.values() if BAR_REFERENCE in h["identity_kept"]), None)
    rows += [bar_row(KNOWN_LAW_SETS[BAR_REFERENCE], reference, BAR_REFERENCE)] if reference else []
    missing = [label for label, h in scored.items() if f"model-{BAR_REFERENCE}" not in h["law_distance"]]
    needs = (f" The bar needs the oracle through the VQVAE, which is missing for {', '.join(missing)} ('–': "
             "eval.oracle_vq off, a VQVAE other than the forecasts', or evaluated before the bar used it; make eval "
             "recomputes)." if missing else "")
    return ["### Per horizon: the demo's bar", "",
            f"At each predicted frame: is every sprite kept in at least {100 * IDENTITY_BAR:.0f} % of samples, is the "
            "ensemble's distance to the true law below copy-last's, and is it as close as that of the oracle through "
            "the VQVAE (not shown to be farther)? That oracle is the true law's draws encoded and decoded by the "
            "run's VQVAE, as many samples: a perfect latent forecaster, what a VQVAE-decoded model can attain. It "
            "replaces constant velocity, which no such model can beat at the first frames: there the law is nearly a "
            "point mass and the VQVAE's reconstruction error alone exceeds constant velocity's distance to it "
            "(constant velocity stays in the per-frame tables and the plots). Paired over the same videos, 95 % "
            f"intervals; the last row says where keeping identity is attainable.{needs} Per-frame numbers in each "
            "run's section.", "",
            f"| | identity kept ≥ {IDENTITY_BAR} at | closer to the law than copy-last at | as close as the oracle "
            "through the VQVAE at | farther than the oracle through the VQVAE at |", "|---|---|---|---|---|", *rows, ""]


def bar_row(label: str, h: dict[str, Any], who: str) -> str:
    """One row of the bar summary for ``who`` (model, or the reference): the predicted frames where each part holds
    ("–" where its pair was not computed). As close as the reference = verdict A or cannot tell."""
    ids = h["identity_kept"][who]
    n = len(ids)

    def frames(ref: str, holds: Callable[[str], bool]) -> str:
        results = h["law_distance"].get(f"{who}-{ref}")
        return _listed([k + 1 for k, r in enumerate(results) if holds(r["verdict"])], n) if results else "–"

    keep = _listed([k + 1 for k, b in enumerate(ids) if b["value"] >= IDENTITY_BAR], n)
    return (f"| {label} | {keep} | {frames('copy_last', 'A'.__eq__)} | {frames(BAR_REFERENCE, 'B'.__ne__)} | "
            f"{frames(BAR_REFERENCE, 'B'.__eq__)} |")


def horizon_table(m: dict[str, Any]) -> list[str]:
    """One run's known-law scores per predicted frame, against the references (nothing without them)."""
    h = horizons(m)
    if not h:
        return []
    law, ident = h["law_distance"], h["identity_kept"]
    columns = [("identity kept", ident["model"], "id"), ("identity kept, VQ recon", ident["vq_ceiling"], "id"),
               ("identity kept, oracle through the VQVAE", ident.get("oracle_vq"), "id"),
               ("law distance − copy-last", law["model-copy_last"], "diff"),
               ("law distance − oracle through the VQVAE", law.get(f"model-{BAR_REFERENCE}"), "diff"),
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
