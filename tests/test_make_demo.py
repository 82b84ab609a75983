"""`make demo` itself, at its smoke setting: every stage for both interpolants (training through torchrun with
DEMO_NPROC=2 processes, as on a CPU-only machine), the shipped flows forecast and evaluated next to them, the report,
then a second run that recomputes nothing; then `make demo-pretrain` at its smoke setting on the same cache."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, run_make, stage_verdicts


def _make_demo(tmp_path: Path):
    return run_make("demo", "SMOKE=1", "DEMO_NPROC=2", f"OUT={tmp_path / 'out'}", f"DATA_DIR={tmp_path / 'data'}",
                    "ARGS=--set train.wandb_mode=disabled")


def _make_pretrain(tmp_path: Path, *variables: str):
    return run_make("demo-pretrain", "SMOKE=1", *variables, f"OUT={tmp_path / 'out'}", f"DATA_DIR={tmp_path / 'data'}",
                    "ARGS=--set train.wandb_mode=disabled")


def test_make_demo_runs_every_stage_then_finds_everything_up_to_date(tmp_path: Path) -> None:
    first = _make_demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    demo = tmp_path / "out" / "demo-smoke"
    for run in ("ours", "linear"):
        assert (demo / "runs" / run / "checkpoints" / "latest.pt").is_file()
        assert (demo / "runs" / run / "eval" / "metrics.json").is_file()
        shipped = demo / "runs" / f"shipped-{run}"
        assert not (shipped / "checkpoints").exists() and (shipped / "eval" / "metrics.json").is_file()
    report = (demo / "report.md").read_text()
    assert "| ours (N=" in report and "| linear (N=" in report and "| copy-last |" in report
    assert "| shipped-ours (ours) (N=" in report and "| shipped-linear (linear) (N=" in report
    assert "### Paired: shipped-ours (ours) − shipped-linear (linear)" in report
    assert "### Per horizon: the demo's bar" in report and "| oracle through the VQVAE (a perfect latent forecaster) |" in report
    assert "over 2 process(es)" in first.stdout  # DEMO_NPROC=2: torchrun, DDP over gloo

    second = _make_demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    verdicts = stage_verdicts(second.stdout)
    # data, encode, then train, forecast, eval per interpolant; data, encode, forecast, eval per shipped flow
    assert len(verdicts) == 8 + 2 * 4, "\n".join(verdicts)
    assert all("up to date" in line for line in verdicts), "\n".join(verdicts)

    # make demo-pretrain at the smoke setting, first for one interpolant (PRETRAIN_INTERPS), then for both at once:
    # the one already trained is found up to date, the other trained; both exported beside the smoke runs. The
    # shipped checkpoints/ are never written by a smoke run.
    shipped_bytes = {p: p.read_bytes() for p in (REPO / "checkpoints").glob("demo_flow_*.pt")}
    pretrained = demo / "pretrained"
    only = _make_pretrain(tmp_path, "PRETRAIN_INTERPS=linear")
    assert only.returncode == 0, only.stdout[-3000:] + only.stderr[-3000:]
    assert (pretrained / "demo_flow_linear.pt").is_file() and not (pretrained / "demo_flow_ours.pt").exists()
    assert not (demo / "runs" / "pretrain-ours").exists()
    both = _make_pretrain(tmp_path)
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-3000:]
    assert f"train: {demo / 'runs' / 'pretrain-linear'} is up to date" in both.stdout, both.stdout[-3000:]
    for interp in ("ours", "linear"):
        record = json.loads((pretrained / f"demo_flow_{interp}.json").read_text())
        assert (record["interpolant"], record["step"], record["exported"]["weights"]) == (interp, 20, "ema")
        assert record["config"]["train"]["steps"] == 20 and (demo / "runs" / f"pretrain-{interp}").is_dir()
        assert record["config"]["interpolant"]["ours_eps"] == 1.0  # the demo's noise strength for ours
    assert shipped_bytes and all(p.read_bytes() == data for p, data in shipped_bytes.items())
