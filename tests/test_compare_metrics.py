"""benchmarks.compare_metrics: identical trees pass, a moved number fails, time and paths are not differences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.compare_metrics import compare

REPO = Path(__file__).resolve().parent.parent


def tree(root: Path, value: float, created: str) -> Path:
    metrics = {"created": created, "code_version": created, "fingerprint": created,
               "model": {"psnr": {"value": value, "per_frame": [value, 1.0]}},
               "known_law": {"status": f"ok: state {root}/data/demo/test/demo_state.npz"}}
    path = root / "outputs" / "demo" / "runs" / "ours" / "eval" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return root


def test_identical_numbers_pass_whatever_the_time_commit_and_clone(tmp_path: Path) -> None:
    before, after = tree(tmp_path / "a", 17.5, "monday"), tree(tmp_path / "b", 17.5, "tuesday")
    lines, numbers_differ = compare(before, after)
    assert not numbers_differ and "2 time/commit, 1 input fingerprints, 0 other" in lines[0], lines


def test_a_moved_number_fails_and_is_named(tmp_path: Path) -> None:
    before, after = tree(tmp_path / "a", 17.5, "x"), tree(tmp_path / "b", 17.500001, "x")
    lines, numbers_differ = compare(before, after)
    assert numbers_differ and any("model.psnr.per_frame[0]" in line for line in lines), lines
    run = subprocess.run([sys.executable, "-m", "benchmarks.compare_metrics", str(before), str(after)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and "model.psnr.value" in run.stdout, run.stdout + run.stderr


def test_an_empty_tree_is_an_error(tmp_path: Path) -> None:
    lines, numbers_differ = compare(tmp_path, tmp_path)
    assert numbers_differ and "no outputs/demo/runs" in lines[0]
