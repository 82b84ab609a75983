"""Sweeps (pipeline/run/sweep.py, make sweep): a sweep file's runs and grid expand to named runs with their
overrides, every malformed file is an error naming the file and what is wrong, and make sweep brings every run up
to date and writes one report of exactly the sweep's runs, which a second make sweep finds up to date."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, run_make, stage_verdicts
from pipeline.eval.report import write_report
from pipeline.run.config import ConfigError
from pipeline.run.sweep import load_sweep, set_options
from test_report import _dataset
from test_runs import world  # noqa: F401 (the fixture: a tiny config, VQVAE and OUT of this module's own)

DEMO = REPO / "configs" / "demo.yaml"


def _load(tmp_path: Path, text: str, user_sets: tuple[str, ...] = ()):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path, load_sweep(path, DEMO, list(user_sets), smoke=False)


def test_runs_then_the_grid_expand_to_named_runs_with_their_overrides(tmp_path: Path) -> None:
    _, (dataset, runs, pairs) = _load(tmp_path, "runs:\n  base: {}\n  slow: {train.lr: 1.0e-4, seed: 3}\n"
                                         "grid:\n  train.lr: [5.0e-4, 2.0e-3]\n  interpolant.kind: [ours, linear]\n")
    assert dataset == "demo" and pairs == {}
    assert runs == {"base": [], "slow": ["train.lr=0.0001", "seed=3"],
                    "lr5e-4-kind-ours": ["train.lr=0.0005", "interpolant.kind=ours"],
                    "lr5e-4-kind-linear": ["train.lr=0.0005", "interpolant.kind=linear"],
                    "lr2e-3-kind-ours": ["train.lr=0.002", "interpolant.kind=ours"],
                    "lr2e-3-kind-linear": ["train.lr=0.002", "interpolant.kind=linear"]}
    _, (_, grid, _) = _load(tmp_path, "grid:\n  demo.sprite_size: [[4, 8]]\n  train.bf16: [true]\n  train.steps: [100]\n")
    assert grid == {"sprite_size-4_8-bf16-true-steps100": ["demo.sprite_size=[4, 8]", "train.bf16=true",
                                                           "train.steps=100"]}
    _, (_, shared, _) = _load(tmp_path, "common: {train.lr: 1.0e-4, seed: 2}\nruns:\n  a: {}\n  b: {seed: 3}\n"
                                     "grid:\n  train.steps: [7]\n")
    assert shared == {"a": ["train.lr=0.0001", "seed=2"], "b": ["train.lr=0.0001", "seed=3"],
                      "steps7": ["train.lr=0.0001", "seed=2", "train.steps=7"]}  # its own value wins
    _, (_, _, paired) = _load(tmp_path, "runs: {base: {}, fast: {train.lr: 1.0e-3}}\ngrid: {seed: [1, 2]}\n"
                                        "pairs: {seed1: base, seed2: base, base: fast}\n")
    assert paired == {"seed1": "base", "seed2": "base", "base": "fast"}
    shipped = load_sweep(REPO / "configs" / "sweeps" / "lr.yaml", DEMO, [], smoke=True)
    assert shipped == ("demo-smoke", {"lr5e-4": ["train.lr=0.0005"], "lr1e-3": ["train.lr=0.001"],
                                      "lr2e-3": ["train.lr=0.002"]}, {})
    assert set_options("--set 'a.b=1 2' -s c.d=3 --smoke") == ["a.b=1 2", "c.d=3"]
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):  # every shipped sweep loads, each run validated
        assert load_sweep(path, DEMO, [], smoke=True)[1], path


@pytest.mark.parametrize("text, message", [
    ("runs: {a: {}}\ngrids: {train.lr: [1.0]}\n", "unknown key 'grids'; did you mean 'grid'?"),
    ("runs:\n  a: {train.lr: 1.0e-4}\n  a: {train.lr: 2.0e-4}\n", "duplicate key 'a'"),
    ("runs: {}\n", "no runs"),
    ("# nothing\n", "no runs"),
    ("grid: {train.lr: []}\n", "'grid.train.lr' must be a non-empty list"),
    ("runs: {../up: {}}\n", "run name '../up' must be a plain identifier"),
    ("runs: {a: 1}\n", "run 'a' must map config keys to values"),
    ("common: [1]\nruns: {a: {}}\n", "'common', 'runs', 'grid' and 'pairs' must be mappings"),
    ("runs: {a: {}}\npairs: [a]\n", "'common', 'runs', 'grid' and 'pairs' must be mappings"),
    ("runs: {a: {}, b: {}}\npairs: {b: c}\n", "pairs: 'c' is not a run of this sweep (a, b)"),
    ("runs: {a: {}, b: {}}\npairs: {a: a}\n", "pairs: run 'a' is paired against itself"),
    ("runs: {lr5e-4: {}}\ngrid: {train.lr: [5.0e-4]}\n", "run name 'lr5e-4' given twice"),
    ("runs: {a: {train.lrr: 1.0}}\n", "run 'a': --set: unknown key 'train.lrr'; did you mean 'lr'?"),
    ("grid: {train.lr: [-1.0]}\n", "run 'lr-1': "),
])
def test_a_malformed_sweep_file_is_an_error_naming_the_file_and_what_is_wrong(tmp_path: Path, text, message) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert str(caught.value).startswith(str(tmp_path / "sweep.yaml")) and message in str(caught.value), caught.value


def test_a_sweep_report_holds_exactly_its_runs_with_links_from_its_folder(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    path = write_report(dataset, ["linear"], dataset / "sweeps" / "one" / "report.md", ["Sweep `one.yaml`.", ""])
    text = path.read_text()
    assert "Sweep `one.yaml`." in text and "## linear" in text and "## ours" not in text and "| ours" not in text
    links = re.findall(r"\]\(([^)]+\.(?:png|gif))\)", text)
    assert links and all((path.parent / link).is_file() for link in links), links
    stamp = path.stat().st_mtime_ns
    assert write_report(dataset, ["linear"], path, ["Sweep `one.yaml`.", ""]).stat().st_mtime_ns == stamp  # unchanged
    assert "## ours" in write_report(dataset).read_text()  # the dataset's own report: every run, as before


def test_a_sweep_report_pairs_the_runs_its_file_pairs(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    default = write_report(dataset, ["ours", "linear"], dataset / "sweeps" / "a" / "report.md").read_text()
    paired = write_report(dataset, ["ours", "linear"], dataset / "sweeps" / "b" / "report.md",
                          baselines={"ours": "linear"}).read_text()
    assert "### Paired: ours − linear" in default and "### Paired: linear − ours" not in default
    assert "### Paired: linear − ours" in paired and "### Paired: ours − linear" not in paired
    assert "**linear vs ours**" in paired


def test_make_sweep_needs_a_sweep_file() -> None:
    unset = run_make("sweep")
    assert unset.returncode == 2 and "make sweep needs SWEEP=" in unset.stderr
    missing = run_make("sweep", "SWEEP=configs/sweeps/none.yaml")
    assert missing.returncode == 2 and "sweep file not found: configs/sweeps/none.yaml" in missing.stderr


def test_make_sweep_brings_every_run_up_to_date_into_one_report_then_finds_it_all_up_to_date(world, tmp_path) -> None:
    variables, settings, dataset, _ = world
    sweep = tmp_path / "lr.yaml"
    sweep.write_text("grid:\n  train.lr: [5.0e-4, 2.0e-3]\n")
    args = "ARGS=" + " ".join(f"--set {shlex.quote(s)}" for s in settings)

    def make_sweep() -> str:
        result = run_make("sweep", f"SWEEP={sweep}", *variables, args)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    first = make_sweep()
    report = dataset / "sweeps" / "lr" / "report.md"
    assert f"sweep: wrote {report}" in first
    text = report.read_text()
    assert f"Sweep `{sweep}` (sha256 `" in text.split("## Summary")[0]
    assert "| lr5e-4 (ours) (N=" in text and "| lr2e-3 (ours) (N=" in text and "## lr2e-3 (ours)" in text
    assert all((report.parent / link).is_file() for link in re.findall(r"\]\(([^)]+)\)", text))
    assert (dataset / "runs" / "lr2e-3" / "run.json").read_text().count('"train.lr=0.002"') == 1
    second = make_sweep()
    verdicts = stage_verdicts(second)
    assert len(verdicts) == 2 * 5 and all("up to date" in v for v in verdicts), "\n".join(verdicts)
    assert f"sweep: {report} is up to date" in second and report.read_text() == text
