"""Test inputs in exactly the formats the shipped configs meet in real use, at their real sizes.

* :func:`write_shards`: a shard tree ``<root>/<split>/shard_0001.hdf5`` in the reference layout (written by the
  project's own :class:`~pipeline.data.shards.ShardWriter`), uint8 H x W x 3 frames of cheap synthetic content
  (coloured squares moving on a dark background), at a dataset's real frame size and video length.
* :func:`write_lightning_ckpt`: a PyTorch Lightning ``.ckpt`` of taming's f8 ``VQModel`` (the KTH release's
  wrapper: ``state_dict`` with the model's weights plus ``loss.*`` training weights, ``optimizer_states``,
  ``epoch``, a pickled hyper-parameter object).
* :func:`write_river_pth`: RIVER's ``.pth`` (the CLEVRER release's wrapper: ``{'model': {'module.' + name: w}}``
  saved from DDP, plus optimizer state and step).
* :func:`river_flow_checkpoint`: a flow checkpoint in RIVER's trainer format (``model`` with ``module.`` DDP names
  and an embedded autoencoder, ``optimizer``, ``lr_scheduler``, ``global_step``).
* :func:`random_weights`: a model's state dict with seeded noise in every float tensor (so a load is visible).

Weights are random but the architectures are the real ones, taken from the dataset's config (``vqvae`` section),
so the pipeline's strict loader accepts them exactly as it would accept the published files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.run.config import VQVAEConfig
from pipeline.data.shards import ShardWriter


@dataclass(frozen=True)
class ShardSpec:
    """A dataset's real shard format: frame side, raw frames per video, videos per split (a few, for tests)."""

    image_size: int
    frames: int
    videos: dict[str, int]


# KTH: 64 px, the reference's 40-frame clips are cut from videos of >= 40 frames (skip 0); exactly 40 is the edge
# case the reference crashed on. One video per split: the f8 VQVAE costs ~14 GFLOP per encoded 64 px frame.
KTH_SHARDS = ShardSpec(image_size=64, frames=40, videos={"train": 1, "val": 1, "test": 1})
# CLEVRER: 128 px; a clip is 16 frames every 5th raw frame = 76 raw frames. The real videos have 128 raw frames; 80
# here (clips start at 5 places) cost the encoder, which dominates this dataset's time, 5/8 of that.
CLEVRER_SHARDS = ShardSpec(image_size=128, frames=80, videos={"train": 2, "val": 1, "test": 1})
SPECS = {"kth": KTH_SHARDS, "clevrer": CLEVRER_SHARDS}

BACKGROUND = np.array([20, 20, 28], dtype=np.uint8)
COLOURS = np.array([[230, 60, 60], [60, 200, 80], [70, 110, 240], [240, 200, 50]], dtype=np.uint8)


def moving_squares(frames: int, image_size: int, rng: np.random.Generator, squares: int = 2) -> np.ndarray:
    """``uint8 [frames, S, S, 3]``: ``squares`` coloured squares moving in straight lines, bouncing off the walls."""
    side = max(2, image_size // 8)
    upper = image_size - side
    position = rng.uniform(0, upper, size=(squares, 2))
    velocity = rng.uniform(-1.0, 1.0, size=(squares, 2)) * image_size / 32
    video = np.empty((frames, image_size, image_size, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    for t in range(frames):
        for k in range(squares):
            y, x = position[k].astype(int)
            video[t, y : y + side, x : x + side] = COLOURS[k % len(COLOURS)]
        position = position + velocity
        below, above = position < 0, position > upper
        position = np.where(below, -position, np.where(above, 2 * upper - position, position))
        velocity = np.where(below | above, -velocity, velocity)
    return video


def write_shards(root: str | Path, spec: ShardSpec, seed: int = 0) -> dict[str, int]:
    """Write ``<root>/<split>/shard_0001.hdf5`` for every split of ``spec``; returns videos per split."""
    root = Path(root)
    counts = {}
    for code, (split, n_videos) in enumerate(spec.videos.items()):
        attrs = {"split": split, "split_rule": "test fixture", "generator": "moving squares"}
        with ShardWriter(root / split, attrs=attrs) as writer:
            for index in range(n_videos):
                rng = np.random.default_rng([seed, code, index])
                writer.add(moving_squares(spec.frames, spec.image_size, rng), source=f"test/{split}/{index:05d}")
        counts[split] = n_videos
    return counts


# ---------------------------------------------------------------------------------------------- VQVAE checkpoints

_TORCH_RNG = threading.Lock()  # model init draws from torch's global generator: one seeded init at a time


class HyperParams:
    """Stands for the non-tensor objects Lightning pickles into a .ckpt (hyper-parameters, callback states)."""

    def __init__(self, embed_dim: int = 4, n_embed: int = 16384) -> None:
        self.embed_dim = embed_dim
        self.n_embed = n_embed
        self.lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}


def random_weights(model: torch.nn.Module, seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """The model's state dict with every float tensor replaced by seeded noise (``running_var`` kept positive);
    integer buffers (BatchNorm ``num_batches_tracked``) become 7."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=gen) * scale
            out[k] = (noise.abs() + 0.5) if k.endswith("running_var") else noise
        else:
            out[k] = torch.full_like(v, 7)
    return out


def initialised_weights(cfg: VQVAEConfig, image_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The state dict of a freshly initialised model of ``cfg``'s architecture (torch's default init, seeded):
    activations of a realistic scale through the whole network, cheaper than drawing noise for every weight."""
    from pipeline.vqvae import build_model

    with _TORCH_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, image_size).state_dict()


def write_lightning_ckpt(path: str | Path, cfg: VQVAEConfig, image_size: int, seed: int = 0) -> Path:
    """A Lightning ``.ckpt`` of taming's VQModel at ``cfg``'s architecture (the KTH release's layout)."""
    if cfg.arch != "taming":
        raise ValueError(f"a Lightning .ckpt holds a taming VQModel, not arch={cfg.arch!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(lightning_checkpoint(initialised_weights(cfg, image_size, seed), HyperParams(cfg.embed_dim, cfg.n_embed)), path)
    return path


def lightning_checkpoint(weights: dict[str, torch.Tensor], hyper_parameters: HyperParams) -> dict:
    """The dict a Lightning ``.ckpt`` of taming's VQModel holds: the model's weights plus ``loss.*`` training
    weights under ``state_dict``, optimizer states, counters and the pickled hyper-parameter object."""
    return {
        "epoch": 12,
        "global_step": 34000,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": {
            **weights,
            "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4),
            "loss.perceptual_loss.net.slice1.0.weight": torch.randn(64, 3, 3, 3),
            "loss.logvar": torch.zeros(()),
        },
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
        "lr_schedulers": [],
        "hyper_parameters": hyper_parameters,
    }


def write_river_pth(path: str | Path, seed: int = 0) -> Path:
    """RIVER's ``.pth`` of its CLEVRER VQVAE (DDP-saved ``module.`` names under ``model``, plus extras)."""
    path = Path(path)
    weights = initialised_weights(VQVAEConfig(arch="river"), 128, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"module." + k: v for k, v in weights.items()}, "optimizer": {"state": {}}, "step": 5}, path)
    return path


def river_flow_checkpoint(flow: dict[str, torch.Tensor], global_step: int) -> dict:
    """A flow checkpoint as RIVER's trainer saves it (the format of the authors' older checkpoints): the DDP state
    dict of the whole model — ``module.vector_field_regressor.*`` and the embedded autoencoder ``module.ae.*`` —
    plus ``optimizer``, ``lr_scheduler`` and ``global_step``; no EMA, no config."""
    return {
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": list(range(len(flow)))}]},
        "lr_scheduler": {"last_epoch": global_step, "_step_count": global_step + 1, "base_lrs": [1e-4]},
        "model": {**{f"module.vector_field_regressor.{k}": v for k, v in flow.items()},
                  "module.ae.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
                  "module.ae.quantize.embedding.weight": torch.zeros(16, 4)},
        "global_step": global_step,
    }


def write_vqvae(path_dir: str | Path, cfg: VQVAEConfig, image_size: int, seed: int = 0) -> Path:
    """The published format for ``cfg.arch`` in ``path_dir``: ``vqvae.ckpt`` (taming) or ``vqvae.pth`` (river)."""
    path_dir = Path(path_dir)
    if cfg.arch == "taming":
        return write_lightning_ckpt(path_dir / "vqvae.ckpt", cfg, image_size, seed)
    return write_river_pth(path_dir / "vqvae.pth", seed)
