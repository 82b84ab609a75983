"""What a training run writes besides its checkpoints and ``run.json`` (rank 0): ``metrics.jsonl`` (and wandb), the
validation losses and the sample videos of ``media/``."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.latent_norm import LatentNorm
from pipeline.data.cache import LatentSplit
from pipeline.data.triplets import TripletReader
from pipeline.run.config import Config
from pipeline.run.records import atomic_path, write_error
from pipeline.run.tracking import log_row, log_video, start_training_run


class TrainingError(RuntimeError):
    """Training cannot start or continue (stale cache, NaN, ...); the message says where and why."""


class MetricsLog:
    """Rank 0: metrics.jsonl (one JSON row per line, each with ``step``), wandb and a progress line with ETA.
    Training rows: loss, grad_norm, lr, clip_fraction, ... (``clip_warning`` once); a validation row (``val_loss``,
    ``val_loss_ema``) precedes the training row of its step."""

    CLIP_WARN_FRACTION = 0.9  # warn once when clipping acts on at least this fraction of a logging window's steps

    def __init__(self, cfg: Config, out_dir: Path, key: str, start: int):
        self.cfg, self.out_dir = cfg, out_dir
        self.metrics = self._open_metrics(out_dir / "metrics.jsonl", start)
        self.window: list[tuple[float, float, float]] = []
        self.window_start = time.perf_counter()
        self.wait = 0.0
        self.clip_warned = False
        self.wandb = start_training_run(cfg, out_dir, key)

    def _open_metrics(self, path: Path, start: int):
        """The rows up to step ``start``, the checkpoint training continues from (none for a new run), rewritten
        atomically (bad lines dropped): rows of steps it will redo go, rows of steps it kept stay (also when a kill
        came between the checkpoint and ``run.json``'s step)."""
        keep, dropped = [], 0
        if start and path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    if json.loads(line)["step"] <= start:
                        keep.append(line)
                except (json.JSONDecodeError, TypeError, KeyError):
                    dropped += 1
        if dropped:
            print(f"train: {path}: dropped {dropped} unreadable line(s), left by a write that a crash cut short", flush=True)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))
        return open(path, "a")

    def _write(self, row: dict[str, Any]) -> None:
        try:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        except OSError as exc:
            raise write_error(self.metrics.name, exc) from exc
        if self.wandb:
            log_row(self.wandb, row)

    def step(self, done: int, loss: float, grad_norm: float, lr: float, batch: int, data_wait: float) -> None:
        self.window.append((loss, grad_norm, float(grad_norm > self.cfg.train.grad_clip > 0)))
        self.wait += data_wait
        if done % self.cfg.train.log_every and done != self.cfg.train.steps:
            return
        elapsed = time.perf_counter() - self.window_start
        losses, norms, clipped = map(np.array, zip(*self.window))
        row = {"step": done, "loss": float(losses.mean()), "grad_norm": float(norms.mean()), "lr": lr,
               "clip_fraction": float(clipped.mean()), "samples_per_s": len(self.window) * batch / elapsed,
               "data_wait_fraction": self.wait / elapsed}
        if not self.clip_warned and row["clip_fraction"] >= self.CLIP_WARN_FRACTION:
            row["clip_warning"] = self._clip_warning(row, len(self.window))
            self.clip_warned = True
            print(f"step {done}: warning: {row['clip_warning']}", flush=True)
        self._write(row)
        eta = (self.cfg.train.steps - done) * elapsed / len(self.window)
        print(f"step {done}/{self.cfg.train.steps}  loss {row['loss']:.4f}  |g| {row['grad_norm']:.3f}  lr {lr:.2e}  "
              f"{row['samples_per_s']:.0f} samples/s  wait {row['data_wait_fraction']:.0%}  ETA {eta / 60:.1f} min", flush=True)
        self.window, self.wait, self.window_start = [], 0.0, time.perf_counter()

    def _clip_warning(self, row: dict[str, Any], steps: int) -> str:
        """Under AdamW, clipping on every step keeps the step size but stops weighting steps by |g|: worth knowing."""
        clip, norm = self.cfg.train.grad_clip, row["grad_norm"]
        return (f"gradient clipping was active on {row['clip_fraction']:.0%} of the last {steps} steps (mean pre-clip "
                f"|g| {norm:.3g} vs train.grad_clip {clip:g}): every gradient is rescaled to norm {clip:g}, so AdamW "
                f"sees gradient directions only (its per-parameter normalisation keeps the step size on the lr "
                f"schedule, but steps are no longer weighted by |g|). Raise train.grad_clip towards the typical |g| "
                f"if clipping is meant only to catch outliers.")

    def validation(self, done: int, losses: dict[str, float]) -> None:
        """A validation row (``val_loss``, ``val_loss_ema``) at step ``done``."""
        self._write({"step": done, **losses})
        print(f"step {done}: validation loss {losses['val_loss']:.4f} (EMA {losses['val_loss_ema']:.4f}) on "
              f"{self.cfg.train.val_clips} fixed {self.cfg.train.val_split} triplets", flush=True)

    def media(self, done: int, path: Path) -> None:
        print(f"step {done}: wrote {path}", flush=True)
        if self.wandb:
            log_video(self.wandb, "media/real_vs_generated", path, step=done, caption=SampleVideos.CAPTION)

    def finish(self) -> None:
        self.metrics.close()
        if self.wandb:
            self.wandb.finish()


class SampleVideos:
    """Rank 0: real vs generated (raw model and EMA) videos on fixed validation clips, written as mp4."""

    CAPTION = "rows: real (VQ reconstruction), raw model, EMA; one column per clip"

    def __init__(self, cfg: Config, store: str, out_dir: Path, norm: LatentNorm = LatentNorm()):
        from pipeline.vqvae import build_vqvae

        self.cfg, self.out_dir, self.norm = cfg, out_dir, norm
        split = LatentSplit(store, cfg.train.sample_split)
        clip = cfg.data.frames_per_sample
        stride = cfg.data.skip_frames + 1
        videos = [k for k in range(len(split)) if split.lengths[k] >= (clip - 1) * stride + 1][: cfg.train.sample_videos]
        self.real = torch.stack([torch.from_numpy(split.video(k)[: (clip - 1) * stride + 1 : stride].astype(np.float32)) for k in videos])
        self.vq = build_vqvae(cfg.vqvae, cfg.data.image_size).drop_encoder()  # training never encodes

    def write(self, done: int, model, ema, interpolant) -> Path:
        import imageio.v3 as iio
        from einops import rearrange

        from pipeline.data.clips import to_uint8
        from pipeline.core.sampling import rollout

        sample_cfg = copy.deepcopy(self.cfg.sample)
        sample_cfg.steps = self.cfg.train.sample_steps
        n0 = self.cfg.data.cond_frames
        device = next(model.parameters()).device
        rows = [self.real]
        for net in (model, ema):
            was_training = net.training
            net.eval()
            gen = torch.Generator(device=device).manual_seed(self.cfg.seed)
            out = rollout(net, interpolant, self.real[:, :n0].to(device), self.real.shape[1] - n0, sample_cfg, gen, self.norm)
            rows.append(out.latents.cpu())
            net.train(was_training)
        pixels = torch.stack([self.vq.decode_clip(r) for r in rows])  # [rows, B, T, 3, H, W]
        grid = to_uint8(rearrange(pixels, "r b t c h w -> t c (r h) (b w)"))
        path = self.out_dir / "media" / f"real_raw_ema_{done:07d}.mp4"
        with atomic_path(path, keep_suffix=True) as tmp:  # ffmpeg picks the format by the suffix
            iio.imwrite(tmp, grid, fps=4, macro_block_size=1)
        return path


class ValidationLoss:
    """Rank 0: loss of the raw model and the EMA on fixed ``val_split`` triplets, t and noise, drawn once from the seed
    (every evaluation and resume scores the same set). Eval mode, no grad, no global-RNG draws: training is the same
    with validation on or off."""

    TAG = 11  # separates the validation draws from the training stream's (seed, rank, step)

    def __init__(self, cfg: Config, store: str, interpolant, device: torch.device, norm: LatentNorm = LatentNorm()):
        try:
            split = LatentSplit(store, cfg.train.val_split)
            reader = TripletReader(split, cfg.data.frames_per_sample, cfg.data.skip_frames, norm)
        except (FileNotFoundError, ValueError) as exc:  # no such split, or no video long enough for a clip
            raise TrainingError(f"train.val_split={cfg.train.val_split}: {exc}; choose a split with clips or set "
                                "train.val_every=0") from None
        triplets, noise = np.random.SeedSequence([cfg.seed, self.TAG]).spawn(2)
        batch = reader.batch(np.random.default_rng(triplets), cfg.train.val_clips)
        gen = torch.Generator().manual_seed(int(noise.generate_state(1)[0]))
        t = interpolant.sample_t(cfg.train.val_clips, generator=gen)
        pair = interpolant.training_pair(batch["target"], batch["reference"], t, generator=gen)
        self.inputs = [x.to(device) for x in (pair.xt, t, batch["reference"], batch["context"], batch["gap"])]
        self.target = pair.target.to(device)
        self.interpolant, self.bf16 = interpolant, cfg.train.bf16
        self.chunk = cfg.train.micro_batch or cfg.train.batch_size

    def losses(self, model: torch.nn.Module, ema: torch.nn.Module) -> dict[str, float]:
        """``val_loss`` (raw model) and ``val_loss_ema`` on the fixed set."""
        return {"val_loss": self._loss(model), "val_loss_ema": self._loss(ema)}

    @torch.no_grad()
    def _loss(self, net: torch.nn.Module) -> float:
        """The training loss (per-example sum, mean over the set) of ``net`` in eval mode; its mode is restored."""
        was_training = net.training
        net.eval()
        device = self.target.device
        per_example = []
        for i in range(0, len(self.target), self.chunk):
            with torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext():
                pred = net(*(x[i : i + self.chunk] for x in self.inputs))
            per_example.append(self.interpolant.per_example_loss(pred.float(), self.target[i : i + self.chunk]))
        net.train(was_training)
        return float(torch.cat(per_example).mean())
