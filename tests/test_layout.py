"""The package's shape: roles kept apart, modules a reader can hold, public APIs only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.data.sources import NO_LAW, simulator

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("role", ["core", "stages", "eval", "data", "run", "vqvae"])
def test_only_the_documented_hook_reaches_the_demo(role: str) -> None:
    for path in sorted((PACKAGE / role).rglob("*.py")):
        demo = sorted(name for name in imported_modules(path) if name == "pipeline.demo" or name.startswith("pipeline.demo."))
        assert not demo, f"{path} imports {demo}: go through pipeline.data.sources"


def test_the_hook_finds_the_demo_and_nothing_for_recorded_data() -> None:
    sim = simulator("demo")
    assert sim is not None and sim.sidecar == "demo_state.npz"
    assert simulator("shards") is None
    assert NO_LAW["status"].startswith("not a simulator dataset")


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_private_internals_of_torch_zarr_or_pickle() -> None:
    private = re.compile(r"torch\._|zarr\.core|pickle\._")
    hits = [f"{p}:{i}" for p in MODULES for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not hits, hits
