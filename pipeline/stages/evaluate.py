"""Stage 4: score a complete ``forecasts.zarr`` -> ``<run>/eval/metrics.json``, curves and ``<out>/<data>/report.md``.

Three sets against the truth: the model's ensemble (S samples per video), the VQ reconstruction (the ceiling) and
copy-last (one-member ensembles). Predicted frames: PSNR, SSIM (:mod:`pipeline.eval.metrics`), fair CRPS, energy
score in pixel and latent space, spread-skill, diversity (:mod:`pipeline.eval.scores`); full clips: FVD. Every
headline number has a percentile bootstrap interval over videos, resampled alike for every set and metric so the
report can pair them. ``metrics.json`` follows :mod:`pipeline.run.protocol` (fingerprint: forecasts, the eval
settings that change numbers, I3D sha256, ``EVAL_FORMAT``); the report is rewritten even when up to date.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.checked_store import CRC_INDEX, has_node, open_node, open_store, read_array, verify_rows
from pipeline.run.config import Config
from pipeline.eval.fvd import PROTOCOL as FVD_PROTOCOL
from pipeline.eval.fvd import (RECOMMENDED_FVD_VIDEOS, clips_digest, fvd_with_intervals, load_detector,
                               set_features, torchscript_file)
from pipeline.eval.metrics import DATA_RANGE, frame_scores, resolve_device
from pipeline.run.locks import lock_file
from pipeline.run.protocol import Output, decide, settle
from pipeline.run.records import cached_sha256, code_version, read_derived
from pipeline.eval.report import METRICS_FILE, SCHEMA, plot_run_curves, write_metrics, write_report
from pipeline.eval.scores import energy_score, ensemble_frame_scores
from pipeline.eval.stats import resample_indices
from pipeline.data.sources import law_scores
from pipeline.stages.evaluate_scores import spread_skill_block, summarize_metric
from pipeline.stages.forecast_state import ROW_ARRAYS
from pipeline.run.tracking import log_evaluation

# 4: per-horizon model − oracle_vq, the demo's bar: earlier runs are re-evaluated, not kept "up to date" with a "–" bar
EVAL_FORMAT = 4  # bump when a metric's definition changes: old metrics.json files are then recomputed
NO_I3D = "FVD off (eval.i3d: none): set eval.i3d=builtin (the default) or I3D=/path/to/i3d_torchscript.pt"
RESULT_KEYS = ("videos", "fvd_videos", "fvd_samples", "fvd_resamples", "resamples", "level", "seed",
               "oracle_samples", "oracle_vq")  # the eval settings that change numbers
SETS = ("model", "vq_ceiling", "copy_last")
I3D_MIN_FRAMES = 9  # Kinetics-400 I3D: two time steps must reach its final average pool
FORECAST_ARRAYS = ("real", "recon", "samples", "latents", "truth_latents", CRC_INDEX, "done")
METRIC_DEFINITIONS = {
    "psnr": "per predicted frame (torchmetrics, data_range 2), capped at 106.02 dB (identical frames); mean over "
            "samples, frames and videos; best_of_n: per video the sample with the best mean",
    "ssim": "per predicted frame (torchmetrics, gaussian 11x11 window, sigma 1.5, data_range 2)",
    "crps": "fair ensemble CRPS per pixel value in [-1, 1], averaged over pixels (one member: mean absolute error)",
    "energy": "fair energy score of each predicted frame as one vector, divided by sqrt(dimension) (RMS units, [-1, 1])",
    "energy_latent": "the same on the latent frames [C, h, w] against the cached latents of the real clip",
    "spread_skill": "sqrt((m+1)/m * mean ensemble variance) / sqrt(mean squared error of the ensemble mean), means "
                    "over pixels, frames and videos; 1 = calibrated, < 1 over-confident (one member: 0)",
    "diversity": "mean pairwise RMS distance between the members of a video's ensemble (one member: 0)",
    "known_law": "demo only, sprites read from pixels (pipeline/demo/known_law.py): identity_kept / count_kept = fraction "
                 "of samples with every sprite found in its own colour within reach / with the true object count; "
                 "missing = fraction of sprites not found; energy = fair energy score of the sprite positions vs the "
                 "state that happened (px per sprite); law_distance = energy distance of the ensemble's positions to "
                 "the true law's (oracle draws from the recorded state with fresh kicks, px per sprite); "
                 "coverage50/90 = fraction of samples inside the law's 50 % / 90 % position regions",
}
LOWER_IS_BETTER = ("crps", "energy", "energy_latent", "fvd")


class EvalError(RuntimeError):
    """Stage 4 cannot proceed (missing or incomplete forecasts, missing I3D file, ...); the message says why."""


def open_forecasts(url: str):
    """The forecasts store (read-only), checked for the arrays and attributes this stage needs and every stored byte
    against its ``chunk_crc`` index (so forecasts altered in place are refused, also when the metrics are up to date)."""
    root = open_store(url)
    if root is None:
        raise EvalError(f"no forecasts store at {url}: run the forecast stage first (make forecast)")
    missing = [name for name in FORECAST_ARRAYS if not has_node(root, name)]
    missing += [f"attrs.{k}" for k in ("fingerprint", "cond_frames", "complete") if k not in root.attrs]
    if missing:
        raise EvalError(f"{url} is not a current forecasts store (missing {', '.join(missing)}): rerun the forecast "
                        "stage (make forecast FORCE=1 replaces a store of an older format)")
    done = np.asarray(read_array(open_node(root, "done", url), slice(None), url, missing_ok=True), dtype=bool)
    if not root.attrs.get("complete") or not done.all():
        raise EvalError(
            f"forecasts store {url} is incomplete ({int(done.sum())}/{done.size} videos done): finish it by rerunning "
            "the forecast stage (make forecast, which resumes) before evaluating"
        )
    verify_rows(root, list(ROW_ARRAYS), range(done.size), url)
    return root


def eval_inputs(attrs: dict[str, Any], cfg: Config, i3d_sha256: str | None) -> dict[str, Any]:
    """Everything the numbers depend on (batch sizes and device are left out: they do not change results)."""
    settings = {k: getattr(cfg.eval, k) for k in RESULT_KEYS}
    return {"format": EVAL_FORMAT, "forecasts": attrs["fingerprint"], "eval": settings, "i3d_sha256": i3d_sha256}


def i3d_weights_sha256(spec: str, hashes: dict[str, Any]) -> str | None:
    """sha256 of the I3D weights ``eval.i3d`` names (None when FVD is off); I3DError when they are missing or an
    untrusted TorchScript file."""
    if spec == "none":
        return None
    if spec == "builtin":
        from pipeline.eval.i3d import locate_weights

        return cached_sha256(locate_weights(), hashes)
    return cached_sha256(torchscript_file(spec), hashes)  # refused here, before any work, unless trusted


def evaluate(cfg: Config, url: str, run_dir: Path, force: bool = False, dry_run: bool = False,
             log: Callable[[str], None] = print) -> str:
    """Bring ``<run_dir>/eval/metrics.json`` up to date with the forecasts at ``url`` and rewrite the dataset report
    (``run_dir`` = ``<out>/<dataset>/runs/<run>``); returns 'up to date', 'evaluated' or 'dry run'."""
    run_dir = Path(run_dir)
    dataset_dir, eval_dir = run_dir.parent.parent, run_dir / "eval"
    root = open_forecasts(url)
    path = eval_dir / METRICS_FILE
    record = read_derived(path, lambda line: log(f"eval: {line}")) or {}  # garbage: recomputed, saying so (once)
    hashes = dict(record.get("file_hashes", {}))
    inputs = eval_inputs(dict(root.attrs), cfg, i3d_weights_sha256(cfg.eval.i3d, hashes))
    out = Output("eval", str(path), resumable=False, force_redoes=True, lock=lock_file(eval_dir))
    with ExitStack() as held:  # one evaluation of a run at a time
        decision = lambda: decide(out, read_derived(path, lambda _: None) or {}, inputs, force)  # noqa: E731
        verdict = settle(out, decision, held, log, dry_run, (EvalError, EvalError), clean=[eval_dir, dataset_dir])
        if dry_run or verdict.action == "up to date":
            if not dry_run:
                log(f"eval: report {write_report(dataset_dir)}")
            return "dry run" if dry_run else verdict.action
        start = time.time()
        metrics = compute_metrics(cfg, root, url, dataset_dir, log)
        metrics.update({
            "schema": SCHEMA, "fingerprint": verdict.key, "inputs": inputs, "file_hashes": hashes, "run": run_dir.name,
            "interp": cfg.interpolant.kind, "dataset": dataset_dir.name, "eval_config": asdict(cfg.eval),
            "code_version": code_version(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.time() - start, 1),
        })
        metrics["protocol"]["fvd"]["i3d_sha256"] = inputs["i3d_sha256"]
        eval_dir.mkdir(parents=True, exist_ok=True)
        metrics["plot"] = plot_run_curves(eval_dir / "curves.png", metrics)
        write_metrics(path, metrics)
        _log_summary(metrics, log)
        log(f"eval: wrote {path}; report {write_report(dataset_dir)}")
    log_evaluation(cfg, run_dir, metrics, log)
    return "evaluated"


def compute_metrics(cfg: Config, root, url: str, dataset_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The metrics.json body without bookkeeping. Caches I3D features in ``<dataset_dir>/i3d_features/`` and the
    converted builtin I3D weights in ``<dataset_dir>/../i3d/``."""
    store = _read_store(root, url)
    videos = min(cfg.eval.videos or store.n_videos, store.n_videos)
    device = resolve_device(cfg.eval.device)
    bootstrap = {"resamples": cfg.eval.resamples, "seed": cfg.eval.seed, "level": cfg.eval.level}
    per_video = {name: [] for name in SETS}
    for v in tqdm(range(videos), desc="eval", unit="video"):
        for name, scores in score_video(store, v, cfg.eval.frame_batch, device).items():
            per_video[name].append(scores)
    result: dict[str, Any] = {}
    for name in SETS:
        rows = per_video[name]
        result[name] = {metric: summarize_metric(metric, [row[metric] for row in rows], bootstrap) for metric in rows[0]}
        result[name]["n_samples"] = members = store.n_samples if name == "model" else 1
        spread2, mse = (np.stack([row[k] for row in rows]) for k in ("spread2", "mse"))  # [V, P]
        result[name]["spread_skill"] = spread_skill_block(spread2, mse, members, bootstrap)
    fvd_status, fvd_protocol = _fvd(cfg, store, videos, device, Path(dataset_dir), result, log)
    result["known_law"] = law_scores(cfg, store, videos, bootstrap, log, dataset_dir / "known_law")
    result["fvd_status"] = fvd_status
    result["protocol"] = _protocol(cfg, store, videos, fvd_protocol)
    return result


@dataclass
class _Store:
    """The arrays of a forecasts store and its sizes (checked to agree)."""

    url: str
    attrs: dict[str, Any]
    real: Any
    recon: Any
    samples: Any
    latents: Any
    truth_latents: Any
    n_videos: int
    n_samples: int
    frames: int
    cond: int

    def row(self, name: str, v: int) -> np.ndarray:
        """One video's rows of array ``name``, checked (present, decodable, finite) by the integrity layer."""
        return read_array(getattr(self, name), v, self.url, f"video row {v}")

    def copy_last(self, real: np.ndarray) -> np.ndarray:
        """The clip with its last conditioning frame repeated over the predicted frames."""
        return np.concatenate([real[: self.cond], np.repeat(real[self.cond - 1 : self.cond], self.frames - self.cond, 0)])


def _read_store(root, url: str) -> _Store:
    attrs = dict(root.attrs)
    arrays = {name: open_node(root, name, url) for name in ("real", "recon", "samples", "latents", "truth_latents")}
    n, s, t = arrays["samples"].shape[:3]
    cond = int(attrs["cond_frames"])
    real, recon, latents, truth = (arrays[k].shape for k in ("real", "recon", "latents", "truth_latents"))
    if real != recon or real != (n, *arrays["samples"].shape[2:]) or latents[:3] != (n, s, t) or truth != (n, *latents[2:]):
        raise EvalError(f"{url}: real {real}, recon {recon}, samples {arrays['samples'].shape}, latents {latents} and "
                        f"truth_latents {truth} do not agree")
    if not 1 <= cond < t:
        raise EvalError(f"{url}: cond_frames={cond} leaves no predicted frame in clips of {t}")
    return _Store(url, attrs, **arrays, n_videos=n, n_samples=s, frames=t, cond=cond)


def score_video(store: _Store, v: int, frame_batch: int, device: torch.device) -> dict[str, dict[str, np.ndarray]]:
    """Per-frame scores of video ``v``, {set: {metric: array}}: pixels in [-1, 1] vs the real frames, latents vs the
    clip's cached latents (none for the VQ ceiling, whose latents are the truth's)."""
    real, recon, samples = (store.row(name, v) for name in ("real", "recon", "samples"))
    latents, truth_latents = store.row("latents", v), store.row("truth_latents", v)
    c = store.cond
    pixels = {"model": samples[:, c:], "vq_ceiling": recon[None, c:], "copy_last": store.copy_last(real)[None, c:]}
    latent = {"model": latents[:, c:], "copy_last": np.repeat(truth_latents[None, c - 1 : c], store.frames - c, 1)}
    out = {}
    for name, pred in pixels.items():
        scores = frame_scores(pred, np.broadcast_to(real[c:], pred.shape), frame_batch, str(device))
        ensemble = ensemble_frame_scores(torch.from_numpy(pred).to(device), torch.from_numpy(real[c:]).to(device))
        out[name] = {"psnr": scores["psnr"], "ssim": scores["ssim"], **ensemble}
        if name in latent:
            z, truth_z = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (latent[name], truth_latents[c:]))
            out[name]["energy_latent"] = energy_score(z, truth_z, event_dims=3, rms=True).cpu().numpy()
    return out


def _fvd(cfg: Config, store: _Store, videos: int, device: torch.device, dataset_dir: Path, result: dict[str, Any],
         log) -> tuple[str, dict[str, Any]]:
    """Fill ``result[set]['fvd']`` (with interval) from I3D features of the full clips of the first ``fvd_videos``
    videos; returns (status, what FVD was computed on)."""
    fvd_videos = min(cfg.eval.fvd_videos or videos, videos)
    for name in SETS:
        result[name]["fvd"] = None
    if cfg.eval.i3d == "none":
        return NO_I3D, {"videos": 0}
    if fvd_videos < 2:
        return f"FVD needs >= 2 videos, got {fvd_videos}: FVD is null", {"videos": 0}
    if cfg.eval.i3d == "builtin" and store.frames < I3D_MIN_FRAMES:
        return (f"FVD needs clips of >= {I3D_MIN_FRAMES} frames (the I3D's 2x7x7 average pool), these have "
                f"{store.frames}: FVD is null"), {"videos": 0}
    detector = load_detector(cfg.eval.i3d, device, dataset_dir.parent / "i3d")
    log(f"eval: FVD with the {detector.name} on {device}: {fvd_videos} videos, {cfg.eval.fvd_samples} sample(s) each")
    model_clips = (lambda v: store.row("samples", v)[:1]) if cfg.eval.fvd_samples == "first" else (lambda v: store.row("samples", v))
    sources = {"real": lambda v: store.row("real", v)[None], "vq_ceiling": lambda v: store.row("recon", v)[None],
               "copy_last": lambda v: store.copy_last(store.row("real", v))[None], "model": model_clips}
    features, cached = {}, []
    for name, clips in sources.items():
        feats, hit = set_features(name, lambda clips=clips: (clips(v) for v in range(fvd_videos)), detector,
                                  cfg.eval.batch_size, device, dataset_dir / "i3d_features", log)
        features[name] = feats.reshape(fvd_videos, -1, feats.shape[-1])
        cached += [name] if hit else []
    indices = resample_indices(fvd_videos, cfg.eval.fvd_resamples, cfg.eval.seed) if cfg.eval.fvd_resamples else None
    scored = fvd_with_intervals(features["real"][:, 0], {name: features[name] for name in SETS}, indices, cfg.eval.level)
    for name in SETS:
        result[name]["fvd"] = scored[name]
    status = f"ok: {fvd_videos} real vs {features['model'].shape[0] * features['model'].shape[1]} generated full clips, {detector.name}"
    if fvd_videos < RECOMMENDED_FVD_VIDEOS:
        status += (f"; warning: only {fvd_videos} videos (>= {RECOMMENDED_FVD_VIDEOS} recommended): FVD is biased "
                   "upward at small counts, compare only numbers computed from equal counts")
        log(f"eval: warning: FVD from only {fvd_videos} videos (>= {RECOMMENDED_FVD_VIDEOS} recommended)")
    return status, {"videos": fvd_videos, "detector": detector.name, "i3d_sha256": detector.sha256,
                    "clip_counts": {name: int(f.shape[0] * f.shape[1]) for name, f in features.items()},
                    "features_from_cache": cached}


def _protocol(cfg: Config, store: _Store, videos: int, fvd: dict[str, Any]) -> dict[str, Any]:
    attrs, store_cfg = store.attrs, store.attrs.get("config") or {}
    return {
        "forecasts": store.url,
        "forecasts_fingerprint": attrs.get("fingerprint"),
        "split": attrs.get("split"),
        "videos": videos,
        "real_clips_sha256": clips_digest(store.row("real", v) for v in range(videos)),  # pairing needs equal clips
        "video_ids": [v.get("index", k) for k, v in enumerate((attrs.get("videos") or [{}] * videos)[:videos])],
        "videos_in_store": store.n_videos,
        "n_samples": store.n_samples,
        "clip_length": store.frames,
        "cond_frames": store.cond,
        "pred_frames": store.frames - store.cond,
        "image_size": attrs.get("image_size"),
        "data_range": DATA_RANGE,
        "pixels": "uint8 / 127.5 - 1 (range [-1, 1])",
        "definitions": METRIC_DEFINITIONS,
        "intervals": {"method": "percentile bootstrap over videos (the same resampled videos for every set and metric); "
                                "FVD: the resampled spread shifted by its bias (pipeline.eval.fvd.shifted_interval)",
                      "level": cfg.eval.level, "resamples": cfg.eval.resamples, "fvd_resamples": cfg.eval.fvd_resamples,
                      "seed": cfg.eval.seed},
        "copy_last": "the last real conditioning frame repeated over the predicted frames (one member)",
        "vq_ceiling": "decode(encode(real)) vs real (one member; no latent score)",
        "fvd": {"clips": "full clips (conditioning + predicted), generated vs real", "generated": cfg.eval.fvd_samples,
                "i3d": cfg.eval.i3d or None, "i3d_sha256": None, **FVD_PROTOCOL, **fvd},
        "checkpoint": {k: attrs.get(k) for k in ("ckpt", "ckpt_kind", "ckpt_step", "use_ema")},
        "sampler": {**(store_cfg.get("sample") or {}), "solver_resolved": attrs.get("solver"),
                    "start_resolved": attrs.get("start"),
                    "nfe_per_frame": attrs.get("nfe_per_frame")},
        "interpolant": store_cfg.get("interpolant"),
        "seeds": {"seed": store_cfg.get("seed"), "sample_seed": (store_cfg.get("sample") or {}).get("seed"),
                  "bootstrap_seed": cfg.eval.seed},
        "forecast_code_version": attrs.get("code_version"),
    }


def _log_summary(metrics: dict[str, Any], log) -> None:
    for name in SETS:
        m = metrics[name]
        fvd = "null" if m["fvd"] is None else f"{m['fvd']['value']:.1f}"
        log(f"eval: {name:>10}: PSNR {m['psnr']['value']:.2f} SSIM {m['ssim']['value']:.4f} CRPS {m['crps']['value']:.4f} "
            f"ES {m['energy']['value']:.4f} spread/skill {m['spread_skill']['value']:.2f} FVD {fvd}")
