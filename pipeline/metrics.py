"""Forecast metrics (docs/METHOD.md §7): PSNR and SSIM on predicted frames, best-of-N, Fréchet video distance.

Pixels: frames are stored as uint8 HWC and compared in the model range ``x / 127.5 - 1`` ([-1, 1]) with data
range 2.0, so the numbers are the reference's (``refinement/eval.py``).

PSNR and SSIM (torchmetrics functional) are computed per frame, on the PREDICTED frames only (clip indices
``cond_frames .. T-1``), giving a score array ``[videos, samples, predicted frames]``. From it:

* ``per_frame``: the mean over videos and samples at each predicted frame index (the curve);
* ``mean``: the mean over videos, samples and predicted frames;
* ``best_of_n``: for each video the sample with the highest mean score over its predicted frames (PSNR picked by
  PSNR, SSIM picked by SSIM, independently), that sample's mean score, averaged over videos. N = the store's
  samples per video; with one sample (the VQ ceiling, copy-last) best-of-N equals the mean.

Identical frames have infinite PSNR. Every per-frame PSNR is capped at ``PSNR_CAP_DB`` = 10 log10(2^2 / 1e-10)
≈ 106.02 dB, the value the reference's ``10 log10(4 / (MSE + 1e-10))`` gives for MSE = 0, so means stay finite.
The cap never touches a real difference of uint8 frames: one pixel channel off by one level in a 64 x 64 frame
already gives ≈ 89 dB.

FVD: 400-d features of the StyleGAN-V TorchScript I3D, called exactly as the reference does
(``detector(x, rescale=False, resize=True, return_features=True)`` on float ``[N, 3, T, H, W]`` in [-1, 1]);
Fréchet distance of the two feature Gaussians in float64 (``np.cov(rowvar=False)``, ``scipy.linalg.sqrtm``, real
part). Features and their statistics must be finite (scipy's sqrtm of a NaN matrix runs for tens of minutes): a
non-finite set is refused by name. An I3D file that does not load as TorchScript, rejects the call or returns
another shape is refused naming the file (:class:`I3DError`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache import require_finite

DATA_RANGE = 2.0  # [-1, 1]
PSNR_EPS = 1e-10  # the reference's MSE offset; only used to define the cap
PSNR_CAP_DB = 10.0 * math.log10(DATA_RANGE**2 / PSNR_EPS)  # ≈ 106.02 dB: the PSNR of identical frames
I3D_FEATURES = 400
RECOMMENDED_FVD_VIDEOS = 256
I3D_CALL = "detector(x, rescale=False, resize=True, return_features=True) on float32 [N, 3, T, H, W] in [-1, 1]"


class I3DError(RuntimeError):
    """The I3D file is not the StyleGAN-V TorchScript detector (does not load, rejects the call, wrong output)."""


# ----------------------------------------------------------------------------------------------------------
# PSNR / SSIM
# ----------------------------------------------------------------------------------------------------------


def uint8_to_model(frames: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [-1, 1] (x / 127.5 - 1)."""
    if isinstance(frames, np.ndarray):
        frames = np.ascontiguousarray(frames)
        frames = torch.from_numpy(frames if frames.flags.writeable else frames.copy())  # broadcast views are read-only
    x = frames.to(device)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {x.dtype}")
    return x.movedim(-1, -3).float() / 127.5 - 1.0


def frame_scores(pred: np.ndarray, target: np.ndarray, frame_batch: int = 512, device: str = "cpu") -> dict[str, np.ndarray]:
    """Per-frame PSNR (capped, dB) and SSIM of uint8 frames ``[..., H, W, 3]``; arrays of the leading shape."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    lead = pred.shape[:-3]
    flat_p = pred.reshape(-1, *pred.shape[-3:])
    flat_t = target.reshape(-1, *target.shape[-3:])
    psnr, ssim = [], []
    with torch.inference_mode():
        for start in range(0, flat_p.shape[0], frame_batch):
            p = uint8_to_model(flat_p[start:start + frame_batch], device)
            t = uint8_to_model(flat_t[start:start + frame_batch], device)
            value = peak_signal_noise_ratio(p, t, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
            psnr.append(torch.nan_to_num(value.double(), posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB).cpu())
            ssim.append(structural_similarity_index_measure(p, t, data_range=DATA_RANGE, reduction="none").double().cpu())
    return {"psnr": torch.cat(psnr).numpy().reshape(lead), "ssim": torch.cat(ssim).numpy().reshape(lead)}


def summarize(scores: np.ndarray) -> dict[str, Any]:
    """Summary of per-frame scores ``[videos, samples, predicted frames]`` (see the module docstring).

    ``best_sample`` lists each video's chosen sample index (the argmax of its mean score; the first on ties).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[0] == 0:
        raise ValueError(f"expected scores [videos, samples, frames] with >= 1 video, got {scores.shape}")
    per_sample = scores.mean(axis=2)  # [V, S]
    best = per_sample.argmax(axis=1)  # [V]
    best_frames = scores[np.arange(scores.shape[0]), best]  # [V, P]
    per_video = per_sample.mean(axis=1)
    return {
        "mean": float(scores.mean()),
        "best_of_n": float(per_sample[np.arange(scores.shape[0]), best].mean()),
        "per_frame": [float(v) for v in scores.mean(axis=(0, 1))],
        "per_frame_best_of_n": [float(v) for v in best_frames.mean(axis=0)],
        "std_over_videos": float(per_video.std(ddof=1)) if scores.shape[0] > 1 else 0.0,
        "best_sample": [int(b) for b in best],
    }


# ----------------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------------


def feature_stats(features: np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, ``np.cov(rowvar=False)``) of features ``[N, D]``, N >= 2, both finite.

    ``name`` says which set they are (real, model, ...), for the error when the features or statistics are NaN/Inf.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got {f.shape}")
    require_finite(f, f"FVD: the I3D features of the {name} set")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, by set
        mu, sigma = f.mean(axis=0), np.cov(f, rowvar=False)
    require_finite(sigma, f"FVD: the feature covariance of the {name} set (overflow)")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     names: tuple[str, str] = ("first", "second")) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64, the real part of sqrtm taken.

    The moments must be finite (``names`` say whose they are, for the error): sqrtm would hang on NaN.

    ``scipy.linalg.sqrtm(A)``: SciPy >= 1.16 deprecates ``disp=False``, which only changed what is returned (an
    extra error estimate), not the square root; like ``disp=False`` its singular-matrix warning is silenced
    (expected with fewer clips than feature dimensions). If sqrtm returns non-finite values, both covariances get
    1e-6 on the diagonal and it is retried (the usual FID fallback).
    """
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched moments: {mu1.shape}, {mu2.shape}, {s1.shape}, {s2.shape}")
    for name, mu, sigma in ((names[0], mu1, s1), (names[1], mu2, s2)):
        require_finite(np.concatenate([mu, sigma.ravel()]), f"FVD: the feature mean/covariance of the {name} set")
    with warnings.catch_warnings():  # singular covariances are expected with fewer clips than feature dimensions
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fvd_from_features(real: np.ndarray, generated: np.ndarray, names: tuple[str, str] = ("real", "generated")) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``[N, D]``, ``[M, D]`` (named for errors)."""
    return frechet_distance(*feature_stats(real, names[0]), *feature_stats(generated, names[1]), names=names)


def bootstrap_fvd(
    real: np.ndarray, generated: dict[str, np.ndarray], resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    """FVD mean and std over bootstrap resamples of the videos, paired across the generated sets.

    ``real`` is ``[V, D]``; each ``generated[name]`` is ``[V, K, D]`` (K clips per video: 1, or all samples).
    Each resample draws V video indices with replacement (``np.random.default_rng(seed)``) and uses those videos'
    real clips and all their generated clips, the same indices for every set.
    """
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in generated}
    videos = real.shape[0]
    for _ in range(resamples):
        idx = rng.integers(0, videos, size=videos)
        if np.unique(idx).size < 2:
            continue
        for name, gen in generated.items():
            values[name].append(fvd_from_features(real[idx], gen[idx].reshape(-1, gen.shape[-1]), names=("real", name)))
    return {
        name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "resamples": len(v)}
        for name, v in values.items()
    }


# ----------------------------------------------------------------------------------------------------------
# I3D features
# ----------------------------------------------------------------------------------------------------------


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("eval.device=cuda but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def load_i3d(path: str | Path, device: torch.device) -> torch.jit.ScriptModule:
    """The StyleGAN-V TorchScript I3D (``i3d_torchscript.pt``), in eval mode on ``device``; I3DError if not TorchScript."""
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the detector only exists in that format
            warnings.simplefilter("ignore", DeprecationWarning)
            detector = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError, ValueError, ... for files that are not TorchScript archives
        raise I3DError(f"I3D file {path} does not load as TorchScript ({_gist(exc)}): eval.i3d must be the StyleGAN-V "
                       "i3d_torchscript.pt") from None
    detector.eval()
    return detector


class I3DFeatures:
    """Accumulates uint8 clips ``[k, T, H, W, 3]`` and runs the detector on batches of ``batch_size`` clips.

    The call is the reference's, unchanged: ``detector(x, rescale=False, resize=True, return_features=True)`` with
    ``x`` float32 ``[B, 3, T, H, W]`` in [-1, 1]; the output must be finite ``[B, 400]``. ``name`` (the clip set:
    real, model, ...) and ``source`` (the I3D file) name the errors.
    """

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
        x = uint8_to_model(np.stack(clips), self.device).movedim(2, 1).contiguous()  # [B, T, 3, H, W] -> [B, 3, T, H, W]
        try:
            with torch.inference_mode():
                out = self.detector(x, rescale=False, resize=True, return_features=True)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # TorchScript reports a wrong signature or a rejected input as RuntimeError
            raise I3DError(f"I3D file {self.source} failed on the {self.name} clips {list(x.shape)} ({_gist(exc)}); "
                           f"expected the StyleGAN-V TorchScript I3D, called as {I3D_CALL}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (len(clips), I3D_FEATURES):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise I3DError(f"I3D file {self.source} returned {shape} for the {self.name} clips, expected "
                           f"[{len(clips)}, {I3D_FEATURES}] features: is it the StyleGAN-V i3d_torchscript.pt?")
        require_finite(out, f"FVD: the I3D features of the {self.name} clips (from {self.source})",
                       "the I3D file produced NaN/Inf from finite clips")
        self._features.append(out.detach().double().cpu().numpy())


def _gist(exc: Exception) -> str:
    """Type and gist of a torch error: the first sentence of its last line (TorchScript puts its traceback first)."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
    return f"{type(exc).__name__}: {lines[-1].strip().split('. ')[0][:300]}"
