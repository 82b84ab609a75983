"""Stage 3's inputs and the protocol's decision for a run's forecasts (layout: :mod:`pipeline.stages.forecast`).
Torch-free, so ``forecast.py`` answers "up to date" without importing torch."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pipeline.data.cache import LatentSplit
from pipeline.data.checked_store import CRC_INDEX, create_crc_index, record_crcs, row_chunks, store_attrs
from pipeline.run.config import Config
from pipeline.stages.encode import vqvae_identity
from pipeline.stages.train_state import interpolant_definition
from pipeline.run.protocol import Output, Verdict, decide, local_lock, up_to_date_line
from pipeline.run.records import KnownHashes, cached_sha256, changed_keys

FORMAT_VERSION = 5  # bump when the layout or the meaning of stored values changes (5: the chunk_crc index)
STORE_NAME = "forecasts.zarr"
ROW_ARRAYS = ("real", "recon", "samples", "latents", "truth_latents")  # a video row's arrays, in chunk_crc's order
RESULT_NEUTRAL_SAMPLE_KEYS = ("batch_size",)  # sampler settings that do not change the forecasts
MEDIA_KEYS = ("media_videos", "media_samples", "fps")  # forecast settings that only change the media
REMEDY = "Refusing to mix old and new forecasts: rerun with --force (make forecast FORCE=1) to redo them."


class ForecastError(RuntimeError):
    """Stage 3 cannot proceed; the message says why."""


class StaleForecastError(ForecastError):
    """The existing forecasts were made from different inputs; the message names them."""


def create_row_index(root, level: int) -> None:
    """The store's ``chunk_crc`` index, one slot per chunk of a video row of :data:`ROW_ARRAYS` (created first)."""
    create_crc_index(root, root["real"].shape[0], len(row_chunks([root[name] for name in ROW_ARRAYS], 0)), level)


def record_row(root, row: int) -> None:
    """Record the CRC32C of every chunk of video row ``row`` as just written (before its done flag)."""
    record_crcs(root[CRC_INDEX], row, row_chunks([root[name] for name in ROW_ARRAYS], row))


def forecast_url(run: str | Path) -> str:
    """``<run>/forecasts.zarr`` for a run directory ``<out>/<data.name>/<interp>``."""
    return f"{str(run).rstrip('/')}/{STORE_NAME}"


def default_checkpoint(run: str | Path) -> Path:
    """The trainer's latest checkpoint of a run directory."""
    return Path(run) / "checkpoints" / "latest.pt"


def forecast_inputs(cfg: Config, cache_fingerprint: str, ckpt_sha256: str) -> dict[str, Any]:
    """Everything the stored forecasts depend on (batch size and media settings excluded: they change nothing)."""
    sample = {k: v for k, v in asdict(cfg.sample).items() if k not in RESULT_NEUTRAL_SAMPLE_KEYS}
    if cfg.sample.past_horizon:  # the window's rule (gaps up to H - 1, docs/METHOD.md §9.15) is part of the forecasts
        sample["past_horizon_window"] = "reference included"
    forecast = {k: v for k, v in asdict(cfg.forecast).items() if k not in MEDIA_KEYS}
    data = {"frames_per_sample": cfg.data.frames_per_sample, "skip_frames": cfg.data.skip_frames,
            "cond_frames": cfg.data.cond_frames, "image_size": cfg.data.image_size}
    interpolant = {"kind": cfg.interpolant.kind, **cfg.interpolant.resolved(), **interpolant_definition(cfg.interpolant)}
    return {"format": FORMAT_VERSION, "cache": cache_fingerprint, "checkpoint": {"sha256": ckpt_sha256},
            "sampler": sample, "forecast": forecast, "data": data, "interpolant": interpolant, "model": asdict(cfg.model)}


def forecast_output(url: str, ckpt_path: Path) -> Output:
    """A run's forecasts as an output of the protocol: refused when made from other inputs, rebuilt beside."""
    return Output("forecast", url, "made", REMEDY, beside=True, read=store_attrs, lock=local_lock(url),
                  notes={"checkpoint": f" (checkpoint {ckpt_path})", "cache": " (the latent cache changed)"})


def decide_forecasts(cfg: Config, url: str, split: LatentSplit, ckpt_path: Path, force: bool,
                     hashes: dict[str, Any]) -> Verdict:
    """The verdict for the forecasts at ``url``, changing nothing; fills ``hashes``."""
    if not ckpt_path.is_file():
        raise ForecastError(f"flow checkpoint not found: {ckpt_path} (train first, or pass --ckpt / CKPT=...)")
    old = store_attrs(url)
    hashes.update(old.get("file_hashes", {}))
    check_vqvae(cfg, split, hashes)
    inputs = forecast_inputs(cfg, split.attrs["fingerprint"], cached_sha256(ckpt_path, hashes))
    out = forecast_output(url, ckpt_path)
    advanced = Path(ckpt_path) == default_checkpoint(Path(url).parent) and old.get("fingerprint") \
        and changed_keys(old.get("inputs", {}), inputs) == ["checkpoint.sha256"]
    if advanced and not force:  # the run was trained further (extended): its forecasts follow, rebuilt beside
        verdict = decide(out, old, inputs, True, complete=bool(old.get("complete")))
        return replace(verdict, message=f"forecast: {ckpt_path} changed (the run trained further): rebuilding its "
                                        f"forecasts in {verdict.target}, which replaces {url} when complete")
    return decide(out, old, inputs, force, complete=bool(old.get("complete")))


def check_vqvae(cfg: Config, split: LatentSplit, hashes: dict[str, Any]) -> None:
    """The decoder must be the VQVAE the cache was encoded with (same architecture, sizes and checkpoint bytes)."""
    if not cfg.vqvae.ckpt or not Path(cfg.vqvae.ckpt).is_file():
        raise ForecastError(f"VQVAE checkpoint not found: '{cfg.vqvae.ckpt}' (set vqvae.ckpt or VQVAE_CKPT=...)")
    mine = vqvae_identity(cfg.vqvae, cached_sha256(cfg.vqvae.ckpt, hashes))
    cached = split.attrs.get("inputs", {}).get("vqvae", {})
    changed = changed_keys(cached, mine)
    if changed:
        raise ForecastError(f"{split.url} was encoded with another VQVAE than vqvae.ckpt={cfg.vqvae.ckpt} (differs in: "
                            f"{', '.join(changed)}); decode with the cache's VQVAE or re-encode (make encode FORCE=1)")
    want = (cfg.model.state_size, *cfg.model.state_res)
    if tuple(split.latent_shape) != want:
        raise ForecastError(f"{split.url}: latents are {list(split.latent_shape)} but the model expects {list(want)}")


def media_files(media_dir: Path, video: int) -> list[Path]:
    """The media grids of a forecast video: ``forecast_<k>.gif`` and ``.mp4``."""
    return [media_dir / f"forecast_{video}.gif", media_dir / f"forecast_{video}.mp4"]


def up_to_date_message(cfg: Config, store: str, run: Path, ckpt: str | Path | None = None) -> str | None:
    """The "up to date" line when the forecasts are complete, of these inputs, with all media, else None; no hashing."""
    url = forecast_url(run)

    def decision() -> Verdict:
        split = LatentSplit(store, cfg.forecast.split)
        verdict = decide_forecasts(cfg, url, split, Path(ckpt) if ckpt else default_checkpoint(run), False, KnownHashes())
        videos = min(cfg.forecast.media_videos, len(store_attrs(url).get("videos", [])))
        media = [path for k in range(videos) for path in media_files(Path(run) / "media", k)]
        return verdict if split.attrs.get("complete") and all(path.exists() for path in media) else Verdict("", url)

    return up_to_date_line(decision)
