"""Shared benchmark plumbing: timing and the results file (benchmarks/results.json, merged per benchmark)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results.json"
TABLE = RESULTS.with_suffix(".md")

# The headline ratio of each benchmark: (benchmark, key, what it compares, goal).
HEADLINES = [
    ("encode_throughput", "ratio_excluding_fixed", "stage 1 throughput / bare VQVAE forward (KTH-size model)", ">= 0.9"),
    ("encode_throughput", "ratio_end_to_end", "same, including model load and checkpoint hashing", ""),
    ("triplet_loader", "ram_triplets_per_s", "triplets/s, split in RAM (batch 256, one process)", ">= 20,000"),
    ("triplet_loader", "zarr_triplets_per_s", "triplets/s, read from Zarr chunks", ">= 5,000"),
    ("train_step", "b_over_a", "training step with the cached loader / bare step (KTH sizes)", "<= 1.10"),
    ("train_step", "c_over_b", "step encoding frames inside (reference design) / cached step", "about 2"),
    ("i3d_throughput", "clips_per_s_batch8", "FVD's I3D: clips/s (16 frames, 64 px resized to 224, batch 8, CPU)", ""),
    ("known_law", "readout_s", "demo known law: read-out of one video's S = 4 x 12 decoded frames, s (CPU)", ""),
    ("known_law", "oracle_measure_s", "demo known law: oracle of M = 256 futures x 12 frames, simulated and measured, s", ""),
    ("known_law", "video_scores_s", "demo known law: every set's scores of one video (video_scores), s", ""),
]


def best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def record(name: str, result: dict[str, Any]) -> None:
    """Store ``result`` under ``name`` in results.json (other benchmarks' entries are kept) and print it."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = {**result, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    TABLE.write_text(markdown_table(results))
    print(json.dumps({name: results[name]}, indent=2))


def markdown_table(results: dict[str, Any]) -> str:
    """The headline ratios (and the sampler study, when present) as a markdown table."""
    lines = ["| benchmark | measure | value | goal |", "|---|---|---|---|"]
    for bench, key, what, goal in HEADLINES:
        if bench in results and key in results[bench]:
            lines.append(f"| {bench} | {what} | {results[bench][key]} | {goal} |")
    need = loader_over_step_need(results)
    if need is not None:
        lines.append(f"| triplet_loader + train_step | triplets/s read from Zarr / triplets/s a cached training step "
                     f"consumes (KTH sizes, this machine) | {need} | >= 1 |")
    for name in sorted(k for k in results if k.startswith("samplers_")):
        lines += ["", *sampler_table(name, results[name])]
    return "\n".join(lines) + "\n"


SAMPLER_COLUMNS = ["solver", "steps", "nfe_per_frame", "ms_per_generated_frame", "psnr_mean", "psnr_best_of_n"]


def sampler_table(name: str, study: dict[str, Any]) -> list[str]:
    """One sampler study (bench_samplers) as markdown: a row per solver and step count, then its references."""
    lines = [f"**{name}** ({study.get('videos')} videos x {study.get('samples')} samples; {study.get('setting', '')})", "",
             "| " + " | ".join(SAMPLER_COLUMNS) + " |", "|" + "---|" * len(SAMPLER_COLUMNS)]
    for row in study.get("results", []):
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in SAMPLER_COLUMNS) + " |")
    refs = [f"{key} {study[key]}" for key in ("copy_last_psnr", "vq_ceiling_psnr") if study.get(key) is not None]
    return lines + ([f"\nReferences (PSNR): {', '.join(refs)}."] if refs else [])


def loader_over_step_need(results: dict[str, Any]) -> float | None:
    """How many times faster the chunk reader supplies triplets than a training step consumes them (batch / step
    time of bench_train's cached-loader step), or None until both benchmarks have run."""
    loader, step = results.get("triplet_loader", {}), results.get("train_step", {})
    if "zarr_triplets_per_s" not in loader or not step.get("b_cached_loader_step_s"):
        return None
    return round(loader["zarr_triplets_per_s"] / (step["batch"] / step["b_cached_loader_step_s"]), 1)
