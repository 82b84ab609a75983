"""Stage 1 throughput vs the bare VQVAE forward on the same batches (KTH-size taming f8 model, 64 px).

Goal (issue 4): stage throughput / bare forward throughput >= 0.9. The stage's extra work is reading shards,
the pixel transform, compressing and writing chunks and the per-video done flags; fixed costs (building the
model, loading and hashing the checkpoint) are reported separately. Both run on the device the stage picks (a GPU
when there is one: ``pipeline.run.dist.init_distributed``), so the ratio compares like with like.

    python -m benchmarks.bench_encode [--videos 8]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
import typer

from benchmarks.bench_train import sync
from benchmarks.common import record
from pipeline.run.config import load_config
from pipeline.data.clips import to_model_range
from pipeline.data.shards import ShardReader
from pipeline.demo.generator import generate_demo
from pipeline.run.dist import init_distributed
from pipeline.stages.encode import encode_latents
from pipeline.vqvae import build_model, build_vqvae

REPO = Path(__file__).resolve().parent.parent


def main(videos: int = 8, frames: int = 48) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench_encode_"))
    try:
        cfg = load_config(REPO / "configs" / "kth.yaml", [
            f"data.root={directory / 'data'}", f"vqvae.ckpt={directory / 'kth_vq.pt'}", "data.splits=[train]",
            f"demo.videos={{train: {videos}}}", f"demo.frames={frames}",
        ])
        generate_demo(cfg.demo, 64, Path(cfg.data.root))  # sprite videos stand in for KTH (same size, same model cost)
        torch.manual_seed(0)
        torch.save(build_model(cfg.vqvae, 64).state_dict(), cfg.vqvae.ckpt)

        device = init_distributed().device  # the stage's device
        start = time.perf_counter()
        vq = build_vqvae(cfg.vqvae, 64).to(device)
        fixed_s = time.perf_counter() - start
        reader = ShardReader(Path(cfg.data.root) / "train")
        clips = [to_model_range(reader.read_frames(k)) for k in range(len(reader))]
        vq.encode(clips[0][:2].to(device))  # warm-up
        sync(device)
        start = time.perf_counter()
        for clip in clips:  # host frames in, latents back on the host, as the stage
            vq.encode(clip.to(device)).cpu()
        sync(device)
        bare_s = time.perf_counter() - start
        n_frames = sum(len(c) for c in clips)

        start = time.perf_counter()
        encode_latents(cfg, str(directory / "latents.zarr"), log=lambda _: None)
        stage_s = time.perf_counter() - start
        record("encode_throughput", {
            "model": "taming f8_small (KTH size, 64M params)", "device": str(device), "frames": n_frames, "vqvae_batch": cfg.vqvae.batch_size,
            "bare_forward_frames_per_s": round(n_frames / bare_s, 2),
            "stage_frames_per_s": round(n_frames / stage_s, 2),
            "stage_frames_per_s_excluding_fixed": round(n_frames / max(stage_s - fixed_s, 1e-9), 2),
            "fixed_costs_s": round(fixed_s, 2),
            "ratio_end_to_end": round(bare_s / stage_s, 3),
            "ratio_excluding_fixed": round(bare_s / max(stage_s - fixed_s, 1e-9), 3),
            "goal_ratio": 0.9,
        })
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
