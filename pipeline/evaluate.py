"""Stage 4: evaluate a forecasts store -> ``<run>/eval/metrics.json``, a PSNR plot, and ``<out>/<data>/report.md``.

Contract: reads ``<out>/<data.name>/runs/<run>/forecasts.zarr`` (written by the forecast stage, zarr v3):

    attrs    fingerprint, config, ckpt, ckpt_kind, ckpt_step, use_ema, split, cond_frames, gen_frames, n_samples,
             image_size, nfe_per_frame, complete, code_version, videos, ...
    real     uint8 [N, T, H, W, 3]     ground-truth clips
    recon    uint8 [N, T, H, W, 3]     decode(encode(real)): the VQ ceiling
    samples  uint8 [N, S, T, H, W, 3]  decoded forecasts (decoded conditioning + generated frames)
    done     bool  [N]

and the I3D file (optional). Three things are scored against ``real``: the model's ``samples``, the VQ
reconstruction ``recon`` (the ceiling) and a copy-last baseline (the last real conditioning frame repeated). PSNR and
SSIM use the predicted frames only, FVD the full clips; definitions in ``pipeline/metrics.py``.

Up to date: ``metrics.json`` records the fingerprint of (forecasts store fingerprint, the eval settings that change
numbers, the I3D file's sha256, the metric format). An equal fingerprint does no work (only ``report.md`` is
rewritten, cheaply, so a second interpolant's results appear in it); a different one recomputes and overwrites —
metrics.json is one atomically written file, so nothing old and new can mix — and ``force`` recomputes regardless.
An incomplete forecasts store is refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.cache import has_node, open_node, open_store, read_array
from pipeline.config import Config
from pipeline.metrics import (
    DATA_RANGE,
    PSNR_CAP_DB,
    RECOMMENDED_FVD_VIDEOS,
    I3DFeatures,
    bootstrap_fvd,
    frame_scores,
    fvd_from_features,
    load_i3d,
    resolve_device,
    summarize,
)
from pipeline.locks import lock_file, output_lock
from pipeline.records import cached_sha256, changed_keys, clean_temporaries, code_version, fingerprint, read_json
from pipeline.report import METRICS_FILE, SCHEMA, plot_psnr, write_metrics, write_report
from pipeline.tracking import log_evaluation

EVAL_FORMAT = 1  # bump when a metric's definition changes: old metrics.json files are then recomputed
NO_I3D = (
    "no I3D weights: pass I3D=/path/to/i3d_torchscript.pt (make eval) or --i3d PATH / --set eval.i3d=PATH "
    "(the StyleGAN-V TorchScript I3D); FVD is never computed with another network"
)
RESULT_KEYS = ("videos", "fvd_videos", "fvd_samples", "fvd_resamples", "seed")  # eval settings that change numbers
SETS = ("model", "vq_ceiling", "copy_last")


class EvalError(RuntimeError):
    """Stage 4 cannot proceed (missing or incomplete forecasts, missing I3D file, ...); the message says why."""


def open_forecasts(url: str):
    """The forecasts store (read-only), checked for the arrays and attributes this stage needs."""
    root = open_store(url)
    if root is None:
        raise EvalError(f"no forecasts store at {url}: run the forecast stage first (make forecast)")
    missing = [name for name in ("real", "recon", "samples", "done") if not has_node(root, name)]
    missing += [f"attrs.{k}" for k in ("fingerprint", "cond_frames", "complete") if k not in root.attrs]
    if missing:
        raise EvalError(f"{url} is not a forecasts store (missing {', '.join(missing)})")
    done = np.asarray(read_array(open_node(root, "done", url), slice(None), url, missing_ok=True), dtype=bool)
    if not root.attrs.get("complete") or not done.all():
        raise EvalError(
            f"forecasts store {url} is incomplete ({int(done.sum())}/{done.size} videos done): finish it by rerunning "
            "the forecast stage (make forecast, which resumes) before evaluating"
        )
    return root


def eval_inputs(attrs: dict[str, Any], cfg: Config, i3d_sha256: str | None) -> dict[str, Any]:
    """Everything the numbers depend on (batch sizes and device are left out: they do not change results)."""
    settings = {k: getattr(cfg.eval, k) for k in RESULT_KEYS}
    return {"format": EVAL_FORMAT, "forecasts": attrs["fingerprint"], "eval": settings, "i3d_sha256": i3d_sha256}


def evaluate(cfg: Config, url: str, run_dir: Path, force: bool = False, dry_run: bool = False,
             log: Callable[[str], None] = print) -> str:
    """Bring ``<run_dir>/eval/metrics.json`` up to date with the forecasts at ``url``; rewrite the dataset report.

    ``run_dir`` is ``<out>/<dataset>/runs/<run>``; the report is ``<out>/<dataset>/report.md``. Returns 'up to date',
    'evaluated' or 'dry run' (``dry_run`` logs what would be done and changes nothing).
    """
    run_dir = Path(run_dir)
    dataset_dir = run_dir.parent.parent
    eval_dir = run_dir / "eval"
    root = open_forecasts(url)
    attrs = dict(root.attrs)
    i3d = cfg.eval.i3d
    if i3d and not Path(i3d).is_file():
        raise EvalError(f"I3D file not found: '{i3d}' (pass I3D=/path/to/i3d_torchscript.pt, or leave it unset to skip FVD)")
    old = read_json(eval_dir / METRICS_FILE) or {}
    hashes = dict(old.get("file_hashes", {}))
    inputs = eval_inputs(attrs, cfg, cached_sha256(i3d, hashes) if i3d else None)
    key = fingerprint(inputs)
    if old.get("fingerprint") == key and not force:
        log(f"eval: {eval_dir / METRICS_FILE} is up to date (fingerprint {key})")
        if not dry_run:
            log(f"eval: report {write_report(dataset_dir)}")
        return "up to date"
    if dry_run:
        changed = changed_keys(old.get("inputs", {}), inputs) if old.get("fingerprint") else []
        log(f"eval: dry run: would compute {eval_dir / METRICS_FILE}" + (f"; changed: {', '.join(changed)}" if changed else ""))
        return "dry run"
    if old.get("fingerprint") and old.get("fingerprint") != key:
        log(f"eval: recomputing {eval_dir / METRICS_FILE}; changed: {', '.join(changed_keys(old.get('inputs', {}), inputs))}")
    with output_lock(lock_file(eval_dir), eval_dir, "eval", log):  # one evaluation of a run at a time
        clean_temporaries("eval", [eval_dir, dataset_dir], log)
        start = time.time()
        metrics = compute_metrics(cfg, root, url, log)
        metrics.update({
            "schema": SCHEMA, "fingerprint": key, "inputs": inputs, "file_hashes": hashes, "run": run_dir.name,
            "interp": cfg.interpolant.kind, "dataset": dataset_dir.name, "eval_config": asdict(cfg.eval),
            "code_version": code_version(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.time() - start, 1),
        })
        metrics["protocol"]["fvd"]["i3d_sha256"] = inputs["i3d_sha256"]
        eval_dir.mkdir(parents=True, exist_ok=True)
        metrics["plot"] = plot_psnr(eval_dir / "psnr_per_frame.png", metrics)
        write_metrics(eval_dir / METRICS_FILE, metrics)
        _log_summary(metrics, log)
        log(f"eval: wrote {eval_dir / METRICS_FILE}; report {write_report(dataset_dir)}")
    log_evaluation(cfg, run_dir, metrics, log)
    return "evaluated"


def compute_metrics(cfg: Config, root, url: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every evaluated video (progress bar over videos); the metrics.json body without the bookkeeping."""
    attrs = dict(root.attrs)
    real, recon, samples = (open_node(root, name, url) for name in ("real", "recon", "samples"))
    n_total, n_samples, frames = samples.shape[0], samples.shape[1], samples.shape[2]
    cond = int(attrs["cond_frames"])
    if real.shape != recon.shape or real.shape != (n_total, *samples.shape[2:]):
        raise EvalError(f"{url}: real {real.shape}, recon {recon.shape} and samples {samples.shape} do not agree")
    if not 1 <= cond < frames:
        raise EvalError(f"{url}: cond_frames={cond} leaves no predicted frame in clips of {frames}")
    videos = min(cfg.eval.videos or n_total, n_total)
    fvd_videos = min(cfg.eval.fvd_videos or videos, videos)
    device = resolve_device(cfg.eval.device)

    banks: dict[str, I3DFeatures] = {}
    if cfg.eval.i3d:
        detector = load_i3d(cfg.eval.i3d, device)
        banks = {name: I3DFeatures(detector, cfg.eval.batch_size, device, name, cfg.eval.i3d) for name in ("real", *SETS)}
        log(f"eval: I3D {cfg.eval.i3d} on {device}; FVD over {fvd_videos} videos ({cfg.eval.fvd_samples} sample(s) each)")

    scores = {name: {"psnr": [], "ssim": []} for name in SETS}
    for v in tqdm(range(videos), desc="eval", unit="video"):
        real_v, recon_v, samples_v = (read_array(array, v, url, f"video row {v}") for array in (real, recon, samples))
        copy_v = np.concatenate([real_v[:cond], np.repeat(real_v[cond - 1:cond], frames - cond, axis=0)])
        truth = real_v[cond:]
        for name, pred in (("model", samples_v[:, cond:]), ("vq_ceiling", recon_v[None, cond:]), ("copy_last", copy_v[None, cond:])):
            s = frame_scores(pred, np.broadcast_to(truth, pred.shape), cfg.eval.frame_batch, str(device))
            scores[name]["psnr"].append(s["psnr"])
            scores[name]["ssim"].append(s["ssim"])
        if banks and v < fvd_videos:
            banks["real"].add(real_v[None])
            banks["vq_ceiling"].add(recon_v[None])
            banks["copy_last"].add(copy_v[None])
            banks["model"].add(samples_v[:1] if cfg.eval.fvd_samples == "first" else samples_v)

    result: dict[str, Any] = {}
    for name in SETS:
        result[name] = {m: summarize(np.stack(scores[name][m])) for m in ("psnr", "ssim")}
        result[name].update({"fvd": None, "fvd_bootstrap": None, "n_samples": n_samples if name == "model" else 1})
    fvd_status, feature_counts = _fvd(cfg, banks, fvd_videos, result, log)
    result["fvd_status"] = fvd_status
    result["protocol"] = _protocol(cfg, attrs, url, (videos, n_total), n_samples, frames, cond, fvd_videos, feature_counts)
    return result


def _fvd(cfg: Config, banks: dict[str, I3DFeatures], fvd_videos: int, result: dict[str, Any], log) -> tuple[str, dict]:
    """Fill ``result[set]['fvd']`` (and the bootstrap) from the feature banks; returns (status, clip counts)."""
    if not banks:
        log(f"eval: FVD skipped: {NO_I3D}")
        return NO_I3D, {}
    feats = {name: bank.result() for name, bank in banks.items()}
    counts = {name: int(f.shape[0]) for name, f in feats.items()}
    if fvd_videos < 2:
        return f"FVD needs >= 2 videos, got {fvd_videos}: FVD is null", counts
    for name in SETS:
        result[name]["fvd"] = fvd_from_features(feats["real"], feats[name], names=("real", name))
    if cfg.eval.fvd_resamples:
        per_video = {name: feats[name].reshape(fvd_videos, -1, feats[name].shape[-1]) for name in SETS}
        for name, boot in bootstrap_fvd(feats["real"], per_video, cfg.eval.fvd_resamples, cfg.eval.seed).items():
            result[name]["fvd_bootstrap"] = boot
    status = f"ok: {counts['real']} real vs {counts['model']} generated clips (full clips, StyleGAN-V TorchScript I3D)"
    if fvd_videos < RECOMMENDED_FVD_VIDEOS:
        status += (f"; warning: only {fvd_videos} videos (>= {RECOMMENDED_FVD_VIDEOS} recommended): FVD is biased "
                   "upward at small counts, compare only numbers computed from equal counts")
        log(f"eval: warning: FVD from only {fvd_videos} videos (>= {RECOMMENDED_FVD_VIDEOS} recommended)")
    return status, counts


def _protocol(cfg: Config, attrs, url, video_counts, n_samples, frames, cond, fvd_videos, counts) -> dict[str, Any]:
    videos, n_total = video_counts
    store_cfg = attrs.get("config") or {}
    return {
        "forecasts": url,
        "forecasts_fingerprint": attrs.get("fingerprint"),
        "split": attrs.get("split"),
        "videos": videos,
        "videos_in_store": n_total,
        "n_samples": n_samples,
        "clip_length": frames,
        "cond_frames": cond,
        "pred_frames": frames - cond,
        "image_size": attrs.get("image_size"),
        "data_range": DATA_RANGE,
        "pixels": "uint8 / 127.5 - 1 (range [-1, 1])",
        "psnr": f"per predicted frame (torchmetrics, data_range 2), capped at {PSNR_CAP_DB:.2f} dB (identical frames)",
        "ssim": "per predicted frame (torchmetrics, gaussian 11x11 window, sigma 1.5, data_range 2)",
        "best_of_n": "per video, the sample with the highest mean score over its predicted frames (PSNR by PSNR, "
                     "SSIM by SSIM), averaged over videos; N = n_samples",
        "copy_last": "the last real conditioning frame repeated over the predicted frames",
        "vq_ceiling": "decode(encode(real)) vs real",
        "fvd": {
            "clips": "full clips (conditioning + predicted), generated vs real",
            "videos": fvd_videos if counts else 0,
            "generated": cfg.eval.fvd_samples,
            "clip_counts": counts,
            "call": "detector(x, rescale=False, resize=True, return_features=True), x float [N,3,T,H,W] in [-1,1]",
            "statistics": "float64 mean, np.cov(rowvar=False), scipy.linalg.sqrtm real part",
            "i3d": cfg.eval.i3d or None,
            "i3d_sha256": None,  # filled by evaluate()
            "resamples": cfg.eval.fvd_resamples,
        },
        "checkpoint": {k: attrs.get(k) for k in ("ckpt", "ckpt_kind", "ckpt_step", "use_ema")},
        "sampler": {**(store_cfg.get("sample") or {}), "solver_resolved": attrs.get("solver"),
                    "nfe_per_frame": attrs.get("nfe_per_frame")},
        "interpolant": store_cfg.get("interpolant"),
        "seeds": {"seed": store_cfg.get("seed"), "sample_seed": (store_cfg.get("sample") or {}).get("seed"),
                  "bootstrap_seed": cfg.eval.seed},
        "forecast_code_version": attrs.get("code_version"),
    }


def _log_summary(metrics: dict[str, Any], log) -> None:
    for name in SETS:
        m = metrics[name]
        fvd = "null" if m["fvd"] is None else f"{m['fvd']:.2f}"
        log(f"eval: {name:>10}: PSNR {m['psnr']['mean']:.2f} (best-of-{m['n_samples']} {m['psnr']['best_of_n']:.2f}) "
            f"SSIM {m['ssim']['mean']:.4f} (best {m['ssim']['best_of_n']:.4f}) FVD {fvd}")
