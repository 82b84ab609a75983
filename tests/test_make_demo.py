"""`make demo` itself, at its smoke setting: every stage for both interpolants (training through torchrun with
DEMO_NPROC=2 processes, as on a CPU-only machine), the report, then a second run that recomputes nothing."""

from __future__ import annotations

from pathlib import Path

from conftest import run_make, stage_verdicts


def _make_demo(tmp_path: Path):
    return run_make("demo", "SMOKE=1", "DEMO_NPROC=2", f"OUT={tmp_path / 'out'}", f"DATA_DIR={tmp_path / 'data'}",
                    "ARGS=--set train.wandb_mode=disabled")


def test_make_demo_runs_every_stage_then_finds_everything_up_to_date(tmp_path: Path) -> None:
    first = _make_demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    demo = tmp_path / "out" / "demo-smoke"
    for run in ("ours", "linear"):
        assert (demo / "runs" / run / "checkpoints" / "latest.pt").is_file()
        assert (demo / "runs" / run / "eval" / "metrics.json").is_file()
    report = (demo / "report.md").read_text()
    assert "| ours (N=" in report and "| linear (N=" in report and "| copy-last |" in report
    assert "over 2 process(es)" in first.stdout  # DEMO_NPROC=2: torchrun, DDP over gloo

    second = _make_demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    verdicts = stage_verdicts(second.stdout)
    assert len(verdicts) == 8, "\n".join(verdicts)  # data, encode, then train, forecast, eval per interpolant
    assert all("up to date" in line for line in verdicts), "\n".join(verdicts)
