"""Forecast metrics (docs/METHOD.md §7): PSNR and SSIM of the predicted frames, best-of-N.

uint8 frames are compared in [-1, 1] with data range 2.0, as the reference (``refinement/eval.py``). Scores are
``[videos, samples, predicted frames]``; ``per_frame`` is the curve, ``value`` the mean, ``best_of_n`` the mean
over videos of each video's best sample (by its mean over frames, PSNR and SSIM independently). PSNR is capped at
``PSNR_CAP_DB``, the reference's 10 log10(4 / (MSE + 1e-10)) at MSE = 0, so identical frames keep means finite;
one uint8 level off in one pixel of a 64 x 64 frame is still ≈ 89 dB.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


DATA_RANGE = 2.0  # [-1, 1]
PSNR_EPS = 1e-10  # the reference's MSE offset; only used to define the cap
PSNR_CAP_DB = 10.0 * math.log10(DATA_RANGE**2 / PSNR_EPS)  # ≈ 106.02 dB: the PSNR of identical frames


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
    """Summary of scores ``[videos, samples, predicted frames]`` (module docstring); ``best_sample``: each video's
    chosen sample (the first on ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[0] == 0:
        raise ValueError(f"expected scores [videos, samples, frames] with >= 1 video, got {scores.shape}")
    per_sample = scores.mean(axis=2)  # [V, S]
    best = per_sample.argmax(axis=1)  # [V]
    best_frames = scores[np.arange(scores.shape[0]), best]  # [V, P]
    return {
        "value": float(scores.mean()),
        "best_of_n": float(per_sample[np.arange(scores.shape[0]), best].mean()),
        "per_frame": [float(v) for v in scores.mean(axis=(0, 1))],
        "per_frame_best_of_n": [float(v) for v in best_frames.mean(axis=0)],
        "best_sample": [int(b) for b in best],
    }


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("eval.device=cuda but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)
