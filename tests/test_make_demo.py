"""`make demo` itself, at its smoke setting: every stage for both interpolants (training through torchrun with
DEMO_NPROC=2 processes, as on a CPU-only machine), the report, then a second run that recomputes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _make_demo(repo: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    command = ["make", "-s", "demo", "SMOKE=1", "DEMO_NPROC=2", f"OUT={tmp_path / 'out'}",
               f"DATA_DIR={tmp_path / 'data'}", f"PY={sys.executable}", "STAMP=",
               "ARGS=--set train.wandb_mode=disabled"]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)


def test_make_demo_runs_every_stage_then_finds_everything_up_to_date(repo: Path, tmp_path: Path) -> None:
    first = _make_demo(repo, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    demo = tmp_path / "out" / "demo"
    for interp in ("ours", "linear"):
        assert (demo / interp / "checkpoints" / "latest.pt").is_file()
        assert (demo / interp / "eval" / "metrics.json").is_file()
    report = (demo / "report.md").read_text()
    assert "| ours (N=" in report and "| linear (N=" in report and "| copy-last |" in report
    assert "over 2 process(es)" in first.stdout  # DEMO_NPROC=2: torchrun, DDP over gloo

    second = _make_demo(repo, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    verdicts = [line for line in second.stdout.splitlines()
                if line.split(":")[0] in ("data", "encode", "train", "forecast", "eval") and " report " not in line]
    assert len(verdicts) == 8, "\n".join(verdicts)  # data, encode, then train, forecast, eval per interpolant
    assert all("up to date" in line for line in verdicts), "\n".join(verdicts)
