"""A Python API for notebooks and scripts: load a run, forecast videos, decode them, score them (README.md,
"Python API": ``load_run``, then ``Run.test_videos``, ``Run.forecast``, ``Run.score``).

Built from the stages' own pieces, so a forecast equals stage 3's for the same checkpoint, settings, seed and clips:
rollouts are grouped, seeded per (seed, video, sample) and decoded per video as there, and scored as stage 4 scores
its uint8 pixels. Everything runs on ``device`` (CPU by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline.core.interpolants import StochasticInterpolant, build_interpolant
from pipeline.core.latent_norm import LatentNorm
from pipeline.core.sampling import rollout
from pipeline.data.checked_store import store_attrs
from pipeline.data.clips import to_model_range, to_uint8
from pipeline.data.shards import ShardReader
from pipeline.eval.metrics import frame_scores
from pipeline.eval.scores import ensemble_frame_scores
from pipeline.run.cli import merge_overrides
from pipeline.run.config import Config, SamplingConfig, apply_override, load_config, recorded_config
from pipeline.run.layout import RUN_RECORD, recorded_overrides, run_record
from pipeline.stages.evaluate_scores import spread_skill_block, summarize_metric
from pipeline.stages.forecast import clip_frames, load_flow, row_generators, work_groups
from pipeline.stages.forecast_state import default_checkpoint, forecast_url
from pipeline.vqvae import FrozenVQVAE, build_vqvae

METRICS = ("psnr", "ssim", "crps", "energy", "diversity")  # stage 4's pixel scores of an ensemble


@dataclass
class Run:
    """A flow checkpoint ready to sample: its config, network (EMA weights), interpolant and frozen VQVAE."""

    cfg: Config
    model: torch.nn.Module
    interpolant: StochasticInterpolant
    vqvae: FrozenVQVAE
    ckpt: Path
    device: torch.device
    norm: LatentNorm = LatentNorm()  # the latent standardisation the network was trained with (its checkpoint's)

    @property
    def cond_frames(self) -> int:
        """Conditioning frames of the config's task (``data.cond_frames``)."""
        return self.cfg.data.cond_frames

    def test_videos(self, n: int, split: str | None = None) -> torch.Tensor:
        """The forecast stage's clips of the first ``n`` videos of ``split`` (default ``forecast.split``) holding
        one, read from the shards: float32 [n, T, 3, H, W] in [-1, 1]."""
        reader = ShardReader(Path(self.cfg.data.root) / (split or self.cfg.forecast.split), self.cfg.data.image_size)
        videos = np.flatnonzero(reader.lengths >= self.cfg.data.clip_span)[:n]
        if len(videos) < n:
            raise ValueError(f"{reader.path}: {len(videos)} videos hold a clip of {self.cfg.data.clip_span} raw "
                             f"frames, {n} asked for")
        frames = np.stack([reader.read_frames(int(v), clip_frames(self.cfg)) for v in videos])
        return to_model_range(frames).to(self.device)

    def sample_config(self, **settings: Any) -> SamplingConfig:
        """``cfg.sample`` with ``settings`` (e.g. ``solver='heun'``, ``steps=11``, ``n_samples=8``, ``seed=0``)
        applied and checked like ``--set sample.<key>=<value>`` (errors name the key)."""
        cfg = self.cfg
        for key, value in settings.items():
            cfg = apply_override(cfg, f"sample.{key}={json.dumps(value)}", source="Run.forecast")
        cfg.sample.validate()
        return cfg.sample

    def forecast_latents(self, cond: torch.Tensor, frames: int | None = None, ids: Sequence[int] | None = None,
                         **settings: Any) -> torch.Tensor:
        """Latent rollouts [B, S, n0 + frames, C, h, w] (conditioning latents first) from latents [B, n0, C, h, w].
        ``frames``: frames to generate (default: the config's T - n0); ``ids``: each video's stream in the seed
        (default 0..B-1; stage 3 uses the video's index in its split); ``settings``: see :meth:`sample_config`."""
        sample = self.sample_config(**settings)
        frames = self.cfg.data.frames_per_sample - cond.shape[1] if frames is None else frames
        ids = np.arange(cond.shape[0]) if ids is None else np.asarray(ids)
        if ids.shape != (cond.shape[0],):
            raise ValueError(f"ids: one per video expected ({cond.shape[0]}), got {ids.shape[0] if ids.ndim else 0}")
        cond, s, batch = cond.to(self.device, torch.float32), sample.n_samples, sample.batch_size
        out = []
        for group in work_groups(cond.shape[0], s, batch):  # as stage 3: the same rollout batches, the same streams
            rows = cond[group].repeat_interleave(s, dim=0)
            gens = row_generators(sample.seed, ids[group], s, self.device)
            parts = [rollout(self.model, self.interpolant, rows[i : i + batch], frames, sample,
                             gens[i : i + batch], self.norm).latents for i in range(0, rows.shape[0], batch)]
            out.append(torch.cat(parts).view(len(group), s, *parts[0].shape[1:]))
        return torch.cat(out)

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """Pixels [B, T, 3, H, W] in [-1, 1] -> the VQVAE's latents [B, T, C, h, w]."""
        return self.vqvae.encode_clip(videos.to(self.device))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, S, F, C, h, w] -> pixels [B, S, F, 3, H, W] in [-1, 1], one video at a time (as stage 3)."""
        return torch.stack([self.vqvae.decode_clip(video) for video in latents])

    def forecast(self, cond: torch.Tensor, frames: int | None = None, ids: Sequence[int] | None = None,
                 **settings: Any) -> torch.Tensor:
        """Forecasts [B, S, frames, 3, H, W] in [-1, 1] (generated frames only, decoded) of conditioning pixels
        [B, n0, 3, H, W] in [-1, 1]; arguments as :meth:`forecast_latents`."""
        latents = self.forecast_latents(self.encode(cond), frames, ids, **settings)
        return self.decode(latents[:, :, cond.shape[1]:])

    def score(self, videos: torch.Tensor, samples: torch.Tensor, detail: bool = False) -> dict[str, Any]:
        """Stage 4's scores of forecasts [B, S, F, 3, H, W] against videos [B, T, 3, H, W] (their last F frames),
        both compared as uint8 pixels: {metric: mean over videos, samples and frames} with PSNR/SSIM's best-of-S;
        ``detail``: each metric's eval block instead (bootstrap interval over videos, per-frame curve)."""
        pred, truth = to_uint8(samples), to_uint8(videos[:, -samples.shape[2]:])
        if pred.ndim != 6 or pred.shape[0] != truth.shape[0] or pred.shape[2:] != truth.shape[1:]:
            raise ValueError(f"expected samples [B, S, F, 3, H, W] and videos [B, T >= F, 3, H, W]; got samples "
                             f"{list(samples.shape)}, videos {list(videos.shape)}")
        rows = [{**frame_scores(p, np.broadcast_to(t, p.shape)), **ensemble_frame_scores(p, t)}
                for p, t in zip(pred, truth)]  # per video, as stage 4
        boot = {"resamples": self.cfg.eval.resamples, "seed": self.cfg.eval.seed, "level": self.cfg.eval.level}
        blocks = {m: summarize_metric(m, [row[m] for row in rows], boot) for m in METRICS}
        spread2, mse = (np.stack([row[k] for row in rows]) for k in ("spread2", "mse"))
        blocks["spread_skill"] = spread_skill_block(spread2, mse, pred.shape[1], boot)
        if detail:
            return blocks
        best = {f"{m}_best_of_n": blocks[m]["best_of_n"] for m in ("psnr", "ssim")}
        return {**{m: block["value"] for m, block in blocks.items()}, **best}


def load_run(run: str | Path | None = None, *, config: str | Path | None = None, ckpt: str | Path | None = None,
             overrides: Sequence[str] = (), device: str = "cpu", log: Callable[[str], None] = print) -> Run:
    """A run ready to sample on ``device``. ``run``: a run directory (``<out>/<dataset>/runs/<name>``); its config
    is the one its forecasts were made with, else its training record with its ``--set`` overrides, and its
    checkpoint the one its forecasts were made from, else ``checkpoints/latest.pt``. ``config``: a YAML file
    instead (with the run's recorded overrides, as the stages resolve it); ``ckpt``: any flow checkpoint (ours,
    exported or published); ``overrides``: ``--set`` items applied last."""
    cfg, recorded_ckpt = run_config(Path(run) if run is not None else None, config, list(overrides))
    ckpt = ckpt or recorded_ckpt
    if ckpt is None:
        raise ValueError("load_run: name a run directory or a checkpoint (ckpt=...)")
    dev = torch.device(device)
    model, info = load_flow(cfg, ckpt, dev, log)  # EMA weights unless forecast.use_ema=false; checked against cfg
    vqvae = build_vqvae(cfg.vqvae, cfg.data.image_size).to(dev)
    return Run(cfg, model, build_interpolant(cfg.interpolant), vqvae, Path(ckpt), dev, info["latent_norm"])


def run_config(run: Path | None, config: str | Path | None, overrides: list[str]) -> tuple[Config, str | None]:
    """(config, checkpoint the run's forecasts were made from, else its latest.pt; None without a run)."""
    if run is None:
        if config is None:
            raise ValueError("load_run: name a run directory or a config file (config=...)")
        return load_config(config, overrides), None
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    made = store_attrs(forecast_url(run))
    recorded = recorded_overrides(run)
    if config is not None:
        cfg = load_config(config, merge_overrides(recorded, overrides))
    else:
        source, record = forecast_url(run), made.get("config")
        if not record:
            source, record = str(run / RUN_RECORD), run_record(run).get("config")
        if not record:
            raise FileNotFoundError(f"{run}: neither forecasts.zarr nor {RUN_RECORD} records a config: not a run "
                                    "directory (or load_run(config=..., ckpt=...))")
        cfg = recorded_config(record, source=source)
        for item in ([] if made.get("config") else recorded) + overrides:
            cfg = apply_override(cfg, item, source="load_run")
    return cfg, made.get("ckpt") or str(default_checkpoint(run))
