"""Training step time at KTH sizes on this machine: cached latents vs encoding inside every step.

(a) bare: the paper's network (98M parameters) forward + backward + AdamW on a batch already in memory;
(b) ours: the real training step fed by the real triplet loader from a latent store (KTH shapes, RAM mode);
(c) reference design: the frozen KTH VQVAE (taming f8, 64M parameters) encodes the target, reference and
    context frames of the batch inside every step, then the same flow step.
Goals (issue 5): (b) within 10 % of (a); (c)/(b) about 2x here.

    python -m benchmarks.bench_train [--batch 8] [--steps 4]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import typer

from benchmarks.bench_loader import build_store
from benchmarks.common import record
from pipeline.cache import LatentSplit
from pipeline.config import load_config
from pipeline.dist import init_distributed
from pipeline.interpolants import build_interpolant
from pipeline.model import build_model
from pipeline.train import train_step
from pipeline.triplets import TripletReader, TripletStream
from pipeline.vqvae import build_vqvae

REPO = Path(__file__).resolve().parent.parent


def _time_steps(step_fn, steps: int) -> float:
    step_fn(0)  # warm-up (allocations, first AdamW state)
    start = time.perf_counter()
    for s in range(1, steps + 1):
        step_fn(s)
    return (time.perf_counter() - start) / steps


def main(batch: int = 8, steps: int = 4) -> None:
    cfg = load_config(REPO / "configs" / "kth.yaml", ["train.wandb_mode=disabled", f"train.batch_size={batch}"])
    info = init_distributed()
    interpolant = build_interpolant(cfg.interpolant)
    directory = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        reader = TripletReader(LatentSplit(build_store(directory, 64, 300, 16), "train"), 40, 0)
        reader.split.load_into_memory()
        fixed = reader.batch(np.random.default_rng(0), batch)

        def fresh():
            torch.manual_seed(0)
            model = build_model(cfg.model)
            return model, torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

        model, opt = fresh()
        bare = _time_steps(lambda s: train_step(model, model, opt, interpolant, fixed, info, cfg, s), steps)

        model, opt = fresh()
        stream = iter(TripletStream(reader, batch, seed=0, rank=0))
        ours = _time_steps(lambda s: train_step(model, model, opt, interpolant, next(stream), info, cfg, s), steps)

        model, opt = fresh()
        vq = build_vqvae(cfg.vqvae, 64, load_weights=False)
        pixels = torch.rand(batch, 3, 3, 64, 64) * 2 - 1  # (target, reference, context) frames per example

        def reference_step(s: int) -> None:
            latents = vq.encode_clip(pixels)  # the frozen encoder inside the step, as the reference trainer
            step_batch = {"target": latents[:, 0], "reference": latents[:, 1], "context": latents[:, 2], "gap": fixed["gap"]}
            train_step(model, model, opt, interpolant, step_batch, info, cfg, s)

        reference = _time_steps(reference_step, steps)
        record("train_step", {
            "network_params": sum(p.numel() for p in model.parameters()), "batch": batch, "threads": torch.get_num_threads(),
            "a_bare_step_s": round(bare, 3), "b_cached_loader_step_s": round(ours, 3), "c_encode_every_step_s": round(reference, 3),
            "b_over_a": round(ours / bare, 3), "c_over_b": round(reference / ours, 3),
            "goal": {"b_over_a_max": 1.10, "c_over_b_about": 2.0},
        })
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
