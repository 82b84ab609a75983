"""Issue 30, the make variables and the configs: what a user types reaches the stages as data, never as shell or make
code, and every config (a YAML file, a --set item, a checkpoint's or a run's record) is refused at load, one line
naming its source, when it is wrong."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_make
from pipeline.run.checkpoints import FORMAT, load_flow_checkpoint
from pipeline.run.config import Config, ConfigError, load_config
from pipeline.run.safe_load import CheckpointReadError

DEMO = REPO / "configs" / "demo.yaml"


class Opaque:
    """Pickled by reference into a test checkpoint: loads back as an inert record, never as this class."""


def _stage(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "encode_latents.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _one_line_error(result: subprocess.CompletedProcess, *names: str) -> str:
    """The stage's error line, after checking that it failed with exactly one line and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


# --- configs: a file, --set items, recorded configs ----------------------------------------------------------------

def test_binary_config_file_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    _one_line_error(_stage("-c", str(binary), "--dry-run"), str(binary))


@pytest.mark.parametrize("text", [None, "", "# only a comment\n", "{}\n"])
def test_empty_config_is_refused_at_load(tmp_path: Path, text: str | None) -> None:
    path = Path("/dev/null") if text is None else tmp_path / "empty.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match="empty"):
        load_config(path)
    _one_line_error(_stage("-c", str(path), "--dry-run"), str(path), "empty")


def test_a_bad_set_value_names_the_set_item_not_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["train.lr=-1"])
    assert str(info.value).startswith("--set 'train.lr=-1'") and str(DEMO) not in str(info.value)
    with pytest.raises(ConfigError, match=r"^--set 'train.min_lr=1': 'train.min_lr'"):  # a rule between two keys
        load_config(DEMO, ["train.min_lr=1"])
    with pytest.raises(ConfigError, match=r"^--set 'demo.speed=\[3, 1\]'"):  # a rule inside one key
        load_config(DEMO, ["demo.speed=[3, 1]"])
    with pytest.raises(ConfigError, match=r"^--set 'convert.clevrer_ranges=.*': 'convert.clevrer_ranges.val'"):
        load_config(DEMO, ["convert.clevrer_ranges={train: [0, 1], val: [5, 2]}"])


def test_a_bad_file_value_still_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DEMO.read_text().replace("min_lr: 1.0e-5", "min_lr: 1.0"))
    with pytest.raises(ConfigError, match=rf"^{path}: 'train.min_lr' must be <= train.lr"):
        load_config(path)
    assert load_config(path, ["train.min_lr=0"]).train.min_lr == 0  # overridden by --set: fine


def test_min_lr_above_lr_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'train.min_lr' must be <= train.lr"):
        load_config(DEMO, ["train.lr=1e-4", "train.min_lr=2e-4"])
    assert load_config(DEMO, ["train.lr=1e-4", "train.min_lr=1e-4"]).train.min_lr == 1e-4


def _checkpoint(path: Path, config) -> Path:
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(1)}, "step": 1, "config": config}, path)
    return path


def _with(section: str, value) -> dict:
    record = Config().to_dict()
    record[section] = value
    return record


@pytest.mark.parametrize("config, key", [
    (_with("interpolant", ["ours"]), "'interpolant' must be a mapping"),
    (_with("interpolant", {"kind": 3}), "'interpolant.kind' must be str"),
    (_with("interpolant", {"kind": Opaque()}), "'interpolant.kind' must be str"),
    (_with("train", {"lr": "fast"}), "'train.lr' must be float"),
    (_with("interpolant", {"kind": "os:system"}), None),  # a kind defined in code: checked, never imported
    (["not", "a", "mapping"], "'<root>' must be a mapping"),
    (Opaque(), "'<root>' must be a mapping"),
])
def test_a_checkpoints_recorded_config_is_validated_like_a_file(tmp_path: Path, config, key) -> None:
    from pipeline.api import load_run

    path = _checkpoint(tmp_path / "flow.pt", config)
    if key is None:
        assert load_flow_checkpoint(path).config["interpolant"]["kind"] == "os:system"
        return
    with pytest.raises(CheckpointReadError, match="recorded config") as info:
        load_flow_checkpoint(path)
    assert str(path) in str(info.value) and key in str(info.value)
    with pytest.raises(CheckpointReadError, match=key.replace("[", r"\[")):  # forecast's and the API's loading
        load_run(config=DEMO, ckpt=path)


def test_a_checkpoints_valid_config_is_normalised_and_kept(tmp_path: Path) -> None:
    record = Config().to_dict()
    del record["sample"]["seed"]  # a key added after the checkpoint was written: its default
    path = _checkpoint(tmp_path / "flow.pt", record)
    assert load_flow_checkpoint(path).config == Config().to_dict()


@pytest.mark.parametrize("where", ["run.json", "forecasts.zarr"])
def test_a_runs_recorded_config_is_validated_naming_the_record(tmp_path: Path, where: str) -> None:
    from pipeline.api import load_run

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    bad = _with("interpolant", ["ours"])
    if where == "run.json":
        (run / "run.json").write_text(json.dumps({"config": bad}))
    else:
        import zarr

        zarr.open_group(str(run / "forecasts.zarr"), mode="w").attrs.update({"config": bad})
    with pytest.raises(ConfigError, match=rf"{run / where}.*'interpolant' must be a mapping"):
        load_run(run)


@pytest.mark.parametrize("record", [json.dumps({"args": {"set": [{"train.lr": 1}]}}), json.dumps([1, 2]), "{garbage"])
def test_a_runs_record_must_be_an_object_with_words_as_overrides(tmp_path: Path, record: str) -> None:
    """A run.json with non-word overrides, a JSON list or garbage: one line naming it, from a stage and from the API."""
    from pipeline.api import load_run
    from pipeline.run.layout import RunNameError

    out = tmp_path / "out"
    run = out / "demo" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text(record)
    result = subprocess.run([sys.executable, str(REPO / "train_latent.py"), "-c", "demo", "--out", str(out),
                             "--run-name", "r", "--dry-run"], capture_output=True, text=True, timeout=120)
    _one_line_error(result, str(run / "run.json"))
    with pytest.raises(RunNameError, match=re.escape(str(run / "run.json"))):
        load_run(run)


# --- the Makefile: ARGS, OUT and the other variables ---------------------------------------------------------------

def _make_data_dry(tmp_path: Path, *variables: str) -> subprocess.CompletedProcess:
    return run_make("data", "DRY_RUN=1", "SMOKE=1", f"DATA_DIR={tmp_path / 'data'}", *variables, timeout=120)


@pytest.mark.parametrize("shell", [";", "&", "&&", "|", "$(", "`", "\n"])
def test_args_reach_the_stage_as_words_never_as_shell(tmp_path: Path, shell: str) -> None:
    marker = tmp_path / "ran"
    command = f"touch {marker}" + (")" if shell == "$(" else "`" if shell == "`" else "")
    result = _make_data_dry(tmp_path, f"ARGS=--set seed=0{shell}{command}")
    assert not marker.exists(), f"ARGS ran a shell command: {shell!r}"
    assert result.returncode != 0  # the stray words are refused by the stage


def test_args_keep_braces_quotes_spaces_and_dollars(tmp_path: Path) -> None:
    sets = ("--set 'demo.videos={train:16,val:4,test:4}' --set \"convert.kth_classes=[a b, c$HOME]\" "
            "--set 'demo.seed=&anchor 7'")
    result = _make_data_dry(tmp_path, f"ARGS={sets}")
    assert result.returncode == 0, result.stderr
    assert "train: 16" in result.stdout and "- a b\n" in result.stdout and "- c$HOME\n" in result.stdout
    assert "  seed: 7\n" in result.stdout  # the YAML anchor is YAML, not a shell '&'


def test_unbalanced_quote_in_args_is_one_line(tmp_path: Path) -> None:
    result = _make_data_dry(tmp_path, "ARGS=--set 'seed=0")
    assert result.returncode != 0 and "ARGS" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_dollar_in_out_and_other_paths_survives_make(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    out = str(tmp_path / f"a$b$(shell touch {marker})")
    result = run_make("-n", "train", f"OUT={out}", "INTERP=ours", "RUN=r$x$(HOME) ;b", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"--out '{out}'" in result.stdout and "--run-name \"$run\"" in result.stdout
    assert "for run in 'r$x$(HOME)' ';b'; do" in result.stdout  # each name one word, checked by the stage
    assert not marker.exists()


@pytest.mark.parametrize("variable", ["NPROC", "TRAIN_NPROC", "NNODES", "THREADS", "TEST_WORKERS", "DEMO_NPROC"])
@pytest.mark.parametrize("value", ["abc", "-1", "1 2", "0"])
def test_numeric_make_variables_are_checked(variable: str, value: str) -> None:
    target = {"TEST_WORKERS": "test", "DEMO_NPROC": "demo"}.get(variable, "train")
    result = run_make("-n", target, f"{variable}={value}", "RUN=r", timeout=60)
    if value == "0" and variable == "TEST_WORKERS":  # 0 = one process
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{variable}={value} must be a whole number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("variable", ["SMOKE", "FORCE", "DRY_RUN"])
@pytest.mark.parametrize("value", ["2", "yes", "true", ""])
def test_boolean_make_variables_take_0_or_1(variable: str, value: str) -> None:
    result = run_make("-n", "encode", f"{variable}={value}", timeout=60)
    assert result.returncode != 0
    assert f"{variable}={value} must be 0 or 1" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run_make("-n", "encode", f"{variable}=1", timeout=60).returncode == 0


def test_help_says_booleans_are_0_or_1_and_runs_no_value(tmp_path: Path) -> None:
    touch = f"touch {tmp_path / 'ran'}"
    result = run_make("help", f"ARGS=$({touch})`{touch}`", f"OUT=o'$({touch})", timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "ran").exists()
    assert f"ARGS=$({touch})`{touch}`" in result.stdout and f"OUT=o'$({touch})" in result.stdout
    for variable in ("SMOKE", "FORCE", "DRY_RUN"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"{variable}="))
        assert "0 | 1" in line, line
