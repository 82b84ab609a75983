"""Shared fixtures: repository paths and a small demo config."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable



def _forget_the_outer_make(environ: MutableMapping[str, str] = os.environ) -> None:
    """``make test ARGS=...`` exports its command-line variables (as environment variables and in MAKEFLAGS) to every
    make below it: the makes the tests run must see only their own (an outer ``ARGS=--durations=40`` reached
    ``python -m pipeline.data`` as an option)."""
    flags = environ.get("MAKEFLAGS", "")
    if " -- " in f" {flags} ":
        definitions = re.split(r"(?<!\\)\s+", f" {flags} ".split(" -- ", 1)[1].strip())
        for definition in definitions:
            name = definition.split("=", 1)[0].rstrip(":+?!")
            if "=" in definition and name:
                environ.pop(name, None)
    for variable in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL"):
        environ.pop(variable, None)


_forget_the_outer_make()
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: one worker per usable CPU, each (and what it starts) one thread
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """In one process (TEST_WORKERS=0, plain pytest), the stages the tests start get every usable CPU, fixed here:
    left to choose, they take the usable CPUs shared by the node's processes (pipeline/run/threads.py), and tests that compare two runs bit
    for bit need one count in both. (Not in xdist's controller: its workers would inherit the count.)"""
    if os.environ.get("PYTEST_XDIST_WORKER") or getattr(config.option, "numprocesses", None):
        return
    from pipeline.run.threads import available_cpus

    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))


# The make-driven end-to-end modules, slowest first (measured, serial: 220, 170, 105, 90, 70, 50, 35 s). They are
# collected first so that make test's workers (pytest-xdist, one module at a time, in this order) start them at once
# and the many short modules fill in around them.
SLOWEST_MODULES = ("test_make_demo.py", "test_runs.py", "test_robustness.py", "test_shipped_configs.py",
                   "test_incremental.py", "test_sweep.py", "test_multinode.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to ``count`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small tensor work: faster, and far faster when other jobs share the cores."""
    with torch_threads(1):
        yield


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def demo_config_path() -> Path:
    return REPO / "configs" / "demo.yaml"


# A tiny end-to-end setting: a few 32 px demo videos and a random-weight taming VQVAE with 4x4 latents.
TINY_SETTINGS = [
    "data.image_size=32",
    "data.frames_per_sample=8",
    "data.cond_frames=2",
    "demo.videos={train: 6, val: 2, test: 2}",
    "demo.frames=20",
    "demo.sprite_size=[4, 8]",
    "vqvae.ch=32",
    "vqvae.ch_mult=[1, 1, 2, 2]",
    "vqvae.num_res_blocks=1",
    "vqvae.attn_resolutions=[]",
    "vqvae.n_embed=64",
    "vqvae.batch_size=16",
    "model.state_res=[4, 4]",
]


def make_tiny_vqvae(cfg, path: Path, seed: int = 0) -> Path:
    """Save a random-weight VQVAE of ``cfg.vqvae``'s architecture as a flat state dict."""
    import torch

    from pipeline.vqvae import build_model

    torch.manual_seed(seed)
    torch.save(build_model(cfg.vqvae, cfg.data.image_size).state_dict(), path)
    return path


def build_tiny(directory: Path):
    """(config, overrides) of the tiny setting, with its shards and VQVAE written under ``directory``."""
    from pipeline.run.config import load_config
    from pipeline.stages.data import prepare_data

    overrides = [*TINY_SETTINGS, f"data.root={directory / 'data'}", f"vqvae.ckpt={directory / 'vq.pt'}"]
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    prepare_data(cfg, Path(cfg.data.root), log=lambda _: None)
    make_tiny_vqvae(cfg, directory / "vq.pt")
    return cfg, overrides


@pytest.fixture
def tiny(tmp_path: Path):
    return build_tiny(tmp_path)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> tuple:
    """A finished latent store of the tiny setting with two views (identity, hflip), shared read-only."""
    from pipeline.stages.encode import encode_latents

    directory = tmp_path_factory.mktemp("tiny_store")
    cfg, overrides = build_tiny(directory)
    cfg.encode.hflip_view = True
    url = str(directory / "latents.zarr")
    encode_latents(cfg, url, log=lambda _: None)
    return cfg, [*overrides, "encode.hflip_view=true"], url


def run_make(*args: str, timeout: int = 600):
    """``make -s ARGS`` in the repository with this interpreter, no venv set-up; the CompletedProcess."""
    import subprocess

    return subprocess.run(["make", "-s", *args, f"PY={PYTHON}", "STAMP="], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def imported_modules(stderr: str) -> set[str]:
    """The modules a process started with PYTHONPROFILEIMPORTTIME=1 imported, read from its stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def stage_verdicts(stdout: str) -> list[str]:
    """The lines in which the stages say what they did ('data: ...', 'encode: ...', ...), report lines left out."""
    stages = ("data", "encode", "train", "forecast", "eval")
    return [line for line in stdout.splitlines() if line.split(":")[0] in stages and " report " not in line]


def row_cells(table: str, start: str) -> list[str]:
    """The cells of the first markdown table row in ``table`` that starts with ``start``."""
    row = next(line for line in table.splitlines() if line.startswith(start))
    return [c.strip() for c in row.strip("|").split("|")]
