"""Triplet reader throughput at KTH latent shapes, batches of 256, one process.

Goal (issue 4): >= 20,000 triplets/s with the split held in RAM, >= 5,000 triplets/s reading the Zarr chunks.
Also measures chunk sizes for the scattered reads of training (the choice behind encode.chunk_frames).

    python benchmarks/bench_loader.py [--videos 200] [--frames 300]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
import zarr

from benchmarks.common import record
from pipeline.data.cache import LatentSplit, create_split, video_chunks
from pipeline.data.checked_store import record_crcs
from pipeline.data.triplets import TripletReader


def build_store(directory: Path, videos: int, frames: int, chunk_frames: int,
                latent_shape: tuple[int, int, int] = (4, 8, 8)) -> str:
    url = str(directory / f"bench_{chunk_frames}.zarr")
    root = zarr.open_group(url, mode="w")
    meta = [{"shard": "synthetic", "key": str(k), "source": "", "length": frames} for k in range(videos)]
    create_split(root, "train", meta, 1, tuple(latent_shape), "float32", chunk_frames, 3)
    latents = root["train"]["latents"]
    rng = np.random.default_rng(0)
    for k in range(videos):
        start = int(root["train"]["offsets"][k])
        latents[:, start : start + frames] = rng.standard_normal((1, frames, *latent_shape), dtype=np.float32)
        record_crcs(root["train"]["chunk_crc"], k, video_chunks(latents, start, frames))
    return url


def triplets_per_second(reader: TripletReader, batch: int, seconds: float) -> float:
    rng = np.random.default_rng(1)
    reader.batch(rng, batch)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        reader.batch(rng, batch)
        count += batch
    return count / (time.perf_counter() - start)


def main(videos: int = 200, frames: int = 300, batch: int = 256, seconds: float = 3.0) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        by_chunk = {}
        for chunk_frames in (4, 16, 64):
            url = build_store(directory, videos, frames, chunk_frames)
            disk = TripletReader(LatentSplit(url, "train"), frames_per_sample=40, skip_frames=0)
            start = time.perf_counter()
            disk.split.load_into_memory()
            load_s = time.perf_counter() - start
            ram_rate = triplets_per_second(disk, batch, seconds)
            chunked = TripletReader(LatentSplit(url, "train"), frames_per_sample=40, skip_frames=0)
            by_chunk[chunk_frames] = {
                "ram_triplets_per_s": round(ram_rate), "zarr_chunks_triplets_per_s": round(triplets_per_second(chunked, batch, seconds)),
                "full_load_s": round(load_s, 3),
            }
        chosen = by_chunk[16]
        record("triplet_loader", {
            "videos": videos, "frames_per_video": frames, "latent_shape": [4, 8, 8], "batch": batch,
            "by_chunk_frames": by_chunk, "chosen_chunk_frames": 16,
            "ram_triplets_per_s": chosen["ram_triplets_per_s"], "zarr_triplets_per_s": chosen["zarr_chunks_triplets_per_s"],
            "goal": {"ram": 20000, "zarr": 5000},
        })
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
