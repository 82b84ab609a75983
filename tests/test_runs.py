"""Chained make targets, named runs side by side, smoke runs kept apart, and dry runs — through the Makefile.

Every call is a real ``make`` on the tiny setting, with a config file whose data root lies in the test's
directory (so the smoke run's data, ``<root>-smoke``, does too).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_SETTINGS, make_tiny_vqvae, run_make, stage_verdicts

FAST = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
        "train.steps=4", "train.latest_every=2", "train.sample_every=0", "forecast.max_videos=2", "forecast.media_videos=1",
        "sample.n_samples=2", "sample.steps=3"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(make variables, dataset outputs dir, smoke outputs dir): a config in a temp dir, a tiny VQVAE, an OUT."""
    from pipeline.run.config import load_config

    root = tmp_path_factory.mktemp("runs")
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["data"]["root"] = str(root / "data dir")
    (root / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    settings = [*TINY_SETTINGS, *FAST, f"vqvae.ckpt={root / 'vq.pt'}"]
    make_tiny_vqvae(load_config(root / "demo.yaml", settings), root / "vq.pt")
    variables = [f"CONFIG={root / 'demo.yaml'}", f"OUT={root / 'out dir'}"]  # spaces: every path is quoted
    return variables, settings, root / "out dir" / "demo", root / "out dir" / "demo-smoke"


def _make(world, *extra: str, sets: tuple[str, ...] = ()):
    variables, settings, _, _ = world
    args = " ".join(f"--set {shlex.quote(s)}" for s in [*settings, *sets])
    result = run_make(*extra, *variables, f"ARGS={args}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _metrics(dataset: Path, run: str) -> dict:
    return json.loads((dataset / "runs" / run / "eval" / "metrics.json").read_text())


def test_a_dry_run_on_a_fresh_tree_says_what_each_stage_would_do_and_writes_nothing(world) -> None:
    out = _make(world, "eval", "DRY_RUN=1")
    for stage in ("data", "encode", "train", "forecast", "eval"):
        assert f"{stage}: dry run: resolved config:" in out, out
    assert "data: dry run: would build" in out and "encode: dry run: cannot decide until its inputs exist" in out
    assert not world[2].exists() and not Path(world[0][0].split("=", 1)[1]).with_name("data dir").exists()


def test_make_eval_chains_every_stage_then_finds_them_up_to_date(world) -> None:
    first = _make(world, "eval")
    assert "data: wrote" in first and "encode: created" in first and "train: starting" in first
    assert (world[2] / "runs" / "ours" / "eval" / "metrics.json").is_file() and (world[2] / "report.md").is_file()
    start = time.time()
    verdicts = stage_verdicts(_make(world, "eval"))
    assert len(verdicts) == 5 and all("up to date" in v for v in verdicts), "\n".join(verdicts)
    assert time.time() - start < 60


def test_named_runs_sit_side_by_side_keep_their_settings_and_share_one_report(world) -> None:
    dataset = world[2]
    _make(world, "eval", "RUN=lr_a", sets=("train.lr=5e-4",))
    _make(world, "eval", "RUN=lr_b", sets=("train.lr=2e-3",))
    runs = {run: json.loads((dataset / "runs" / run / "run.json").read_text()) for run in ("lr_a", "lr_b")}
    assert runs["lr_a"]["config"]["train"]["lr"] == 5e-4 and runs["lr_b"]["config"]["train"]["lr"] == 2e-3
    assert _metrics(dataset, "lr_a")["interp"] == "ours" and _metrics(dataset, "lr_a")["run"] == "lr_a"
    report = (dataset / "report.md").read_text()
    assert "| lr_a (ours) (N=" in report and "| lr_b (ours) (N=" in report and "## lr_a (ours)" in report
    # no RUN: every trained run (ours, lr_a, lr_b) is brought up to date and evaluated; without repeating their
    # overrides the named runs are up to date: each reapplies what it was trained with
    verdicts = stage_verdicts(_make(world, "eval"))
    assert len(verdicts) == 2 + 3 * 3 and all("up to date" in v for v in verdicts), "\n".join(verdicts)
    # a dry run names what a changed setting would do to an existing run, and does it not
    out = _make(world, "train", "RUN=lr_a", "DRY_RUN=1", sets=("train.lr=1e-2",))
    assert "train: dry run: would refuse" in out and "train.lr" in out
    assert json.loads((dataset / "runs" / "lr_a" / "run.json").read_text())["config"]["train"]["lr"] == 5e-4


def test_raising_train_steps_extends_a_run_and_its_forecasts_and_scores_follow(world) -> None:
    _make(world, "eval", "RUN=longer")
    out = _make(world, "eval", "RUN=longer", sets=("train.steps=6",))
    run = world[2] / "runs" / "longer"
    assert f"train: extending {run} from 4 to 6 steps (it has trained 4)" in out, out
    assert f"forecast: {run / 'checkpoints' / 'latest.pt'} changed (the run trained further): rebuilding" in out, out
    assert _metrics(world[2], "longer")["protocol"]["checkpoint"]["ckpt_step"] == 6
    assert json.loads((run / "run.json").read_text())["steps_plan"][-1] == {"from_step": 4, "steps": 6}
    verdicts = stage_verdicts(_make(world, "eval", "RUN=longer", sets=("train.steps=6",)))
    assert verdicts and all("up to date" in line for line in verdicts), verdicts


def test_a_smoke_run_leaves_the_real_run_untouched(world) -> None:
    _make(world, "eval", "SMOKE=1")
    assert (world[3] / "runs" / "ours" / "eval" / "metrics.json").is_file()
    assert Path(world[0][0].split("=", 1)[1]).with_name("data dir-smoke").is_dir()
    verdicts = stage_verdicts(_make(world, "eval", "RUN=ours"))
    assert len(verdicts) == 5 and all("up to date" in v for v in verdicts), "\n".join(verdicts)


def test_a_run_records_its_overrides_with_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    from pipeline.run.cli import merge_overrides, setup_stage

    assert merge_overrides(["train.lr=1", "seed=2"], ["train.lr=3"]) == ["seed=2", "train.lr=3"]
    monkeypatch.chdir(tmp_path)
    stage = setup_stage(REPO / "configs" / "demo.yaml", ["vqvae.ckpt=vq.pt"], False, str(tmp_path / "out"),
                        interp="linear", run="lin", with_run=True)
    assert stage.overrides == [f"vqvae.ckpt={tmp_path / 'vq.pt'}", "interpolant.kind=linear"]
    assert stage.run_dir == tmp_path / "out" / "demo" / "runs" / "lin" and stage.cfg.interpolant.kind == "linear"
    named = setup_stage(REPO / "configs" / "demo.yaml", [], False, "out", run="linear", with_run=True)
    assert named.cfg.interpolant.kind == "linear"  # a run named after an interpolant is of that interpolant


def test_a_run_named_after_an_interpolant_refuses_another_kind(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, str(REPO / "train_latent.py"), "--config", str(REPO / "configs" / "demo.yaml"), "--smoke",
               "--out", str(tmp_path), "--run-name", "ours", "--set", "interpolant.kind=linear"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "demo-smoke").exists()
    assert "run 'ours' is the ours interpolant's run, but --set interpolant.kind=linear asks for another" in result.stderr
