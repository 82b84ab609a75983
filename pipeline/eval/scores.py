"""Proper scores of a forecast ensemble: fair CRPS, fair energy score, spread-skill, diversity.

``samples`` is ``[m, ...]`` (m members), ``truth`` ``[...]``. uint8 pixels are scored in [-1, 1] (x / 127.5 - 1),
floats as they are. Differences in the inputs' precision (>= float32), norms and means accumulated in float64.

Fair (unbiased) estimators, for members X_1..X_m and observation y:

    CRPS = 1/m Σ_i |X_i − y|   − 1/(2 m (m−1)) Σ_{i≠j} |X_i − X_j|          (elementwise)
    ES   = 1/m Σ_i ||X_i − y|| − 1/(2 m (m−1)) Σ_{i≠j} ||X_i − X_j||        (over one event, e.g. a frame)

Their expectation equals the score of the members' law for every m >= 2, so ensembles of different sizes compare.
One member (copy-last, the VQ reconstruction) gives the deterministic scores |X − y| and ||X − y||. For large m the
CRPS uses the sorted form Σ_{i≠j}|X_i − X_j| = 2 Σ_k (2k − m + 1) X_(k). Reported ES is divided by sqrt(D), D =
values per event (``rms=True``): still proper, and the frame RMSE for one member; ``diversity`` uses that unit.

Spread-skill is a ratio of means formed AFTER aggregation over videos and frames: spread² (ensemble variance,
ddof = 1) and mse (of the ensemble mean). With truth and members iid of variance σ², E[spread²] = σ² but
E[mse] = σ²(1 + 1/m) (Fortin et al. 2014, J. Hydrometeorology), so sqrt((m+1)/m · spread²) / sqrt(mse) is 1 for a
calibrated ensemble; < 1 is under-dispersion. tests/test_scores.py cross-checks against scoringrules when installed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SORTED_CRPS_FROM = 65  # members: the pairwise CRPS form below this, the sorted form from here on


def as_scored(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]; other non-float32/64 dtypes -> float32; numpy -> CPU tensor."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x))  # a copy: broadcast views are read-only
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _pair(samples, truth) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float tensors of one dtype on the samples' device; checks ``samples [m >= 1, *truth.shape]``."""
    x, y = as_scored(samples), as_scored(truth)
    if x.ndim < 1 or x.shape[0] < 1 or tuple(x.shape[1:]) != tuple(y.shape):
        raise ValueError(f"expected samples [m >= 1, *truth.shape]; got samples {tuple(x.shape)}, truth {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def _events(x: torch.Tensor, event_dims: int, lead: int) -> torch.Tensor:
    """Flatten the trailing ``event_dims`` dims of ``x`` (``lead`` leading dims before the event dims) into one."""
    if not 0 <= event_dims <= x.ndim - lead:
        raise ValueError(f"event_dims={event_dims} does not fit a tensor of {x.ndim - lead} dims")
    return x.reshape(*x.shape[: x.ndim - event_dims], -1)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim, accumulated in float64."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64)


def _mean_pair_norm(x: torch.Tensor) -> torch.Tensor:
    """Mean over unordered member pairs i < j of ||X_i − X_j|| (last dim = the event); zeros for one member."""
    m = x.shape[0]
    total = torch.zeros(x.shape[1:-1], dtype=torch.float64, device=x.device)
    for i in range(m - 1):
        total += _norm(x[i + 1:] - x[i]).sum(0)
    return total / max(m * (m - 1) // 2, 1)


def crps_ensemble(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Fair ensemble CRPS, elementwise: ``[m, ...]`` and ``[...]`` -> ``[...]`` in the inputs' precision."""
    x, y = _pair(samples, truth)
    m = x.shape[0]
    skill = (x - y).abs().mean(0)
    if m == 1:
        return skill
    if m < SORTED_CRPS_FROM:
        spread = torch.zeros_like(y)
        for i in range(m - 1):
            spread += (x[i + 1:] - x[i]).abs_().sum(0)
        return skill - spread / (m * (m - 1))
    ordered = x.reshape(m, -1).T.contiguous().sort(dim=-1).values  # [elements, m]: sorting a contiguous axis is faster
    weights = (2 * torch.arange(m, device=x.device, dtype=x.dtype) - (m - 1)) / (m * (m - 1))
    return skill - (ordered @ weights).reshape(y.shape)


def energy_score(samples: torch.Tensor, truth: torch.Tensor, event_dims: int, rms: bool = False) -> torch.Tensor:
    """Fair energy score over events of the trailing ``event_dims`` dims: ``[m, *lead, *event]`` -> ``[*lead]`` float64.
    ``rms=True`` divides by sqrt(D), D = values per event."""
    x, y = _pair(samples, truth)
    x, y = _events(x, event_dims, 1), _events(y, event_dims, 0)
    score = _norm(x - y).mean(0) - 0.5 * _mean_pair_norm(x)
    return score / math.sqrt(x.shape[-1]) if rms else score


def spread_skill(samples: torch.Tensor, truth: torch.Tensor, event_dims: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(spread², mse), float64, averaged over the trailing ``event_dims`` dims (None: all): the unbiased ensemble
    variance (0 for one member) and the squared error of the ensemble mean."""
    x, y = _pair(samples, truth)
    event_dims = y.ndim if event_dims is None else event_dims
    x, y = _events(x, event_dims, 1), _events(y, event_dims, 0)
    m, mean = x.shape[0], x.mean(0)
    # two passes by hand: torch's var over the leading (member) axis is much slower on CPU
    spread2 = (x - mean).square_().sum(0) / (m - 1) if m > 1 else torch.zeros_like(y)
    mse = (mean - y).square_()
    return spread2.mean(-1, dtype=torch.float64), mse.mean(-1, dtype=torch.float64)


def spread_skill_ratio(spread2_mean, mse_mean, m: int):
    """sqrt((m+1)/m · spread²) / sqrt(mse) on floats or numpy arrays (e.g. bootstrap means); mse = 0 gives inf/nan."""
    if m < 1:
        raise ValueError(f"an ensemble has m >= 1 members, got {m}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((m + 1) / m * np.asarray(spread2_mean, dtype=np.float64)) / np.sqrt(np.asarray(mse_mean, dtype=np.float64))


def diversity(samples: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
    """Mean over member pairs of ||X_i − X_j|| / sqrt(D) over the trailing ``event_dims`` dims (None: all)."""
    x = as_scored(samples)
    event_dims = x.ndim - 1 if event_dims is None else event_dims
    x = _events(x, event_dims, 1)
    return _mean_pair_norm(x) / math.sqrt(x.shape[-1])


def ensemble_frame_scores(samples: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per predicted frame scores of one video: ``samples [m, F, ...]``, ``truth [F, ...]`` -> float64 arrays ``[F]``:
    ``crps`` and ``spread2``/``mse`` (frame means), ``energy`` (ES / sqrt(D)), ``diversity`` (mean pairwise RMS)."""
    x, y = _pair(samples, truth)
    if y.ndim < 1:
        raise ValueError(f"expected samples [m, F, ...] and truth [F, ...], got truth {tuple(y.shape)}")
    event = y.ndim - 1
    crps = crps_ensemble(x, y).reshape(y.shape[0], -1).mean(-1, dtype=torch.float64)
    spread2, mse = spread_skill(x, y, event)
    xf, yf = _events(x, event, 1), _events(y, event, 0)
    pair, root_d = _mean_pair_norm(xf), math.sqrt(xf.shape[-1])  # shared by the energy score and the diversity
    out = {
        "crps": crps,
        "energy": (_norm(xf - yf).mean(0) - 0.5 * pair) / root_d,
        "spread2": spread2,
        "mse": mse,
        "diversity": pair / root_d,
    }
    return {name: value.cpu().numpy() for name, value in out.items()}
