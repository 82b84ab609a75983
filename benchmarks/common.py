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
    for name in sorted(k for k in results if k.startswith("samplers_")):
        study = results[name]
        for row in study.get("results", []):
            cells = ", ".join(f"{k} {v}" for k, v in row.items())
            lines.append(f"| {name} | {cells} | | |")
        for key in ("vq_ceiling_psnr", "copy_last_psnr"):
            if study.get(key) is not None:
                lines.append(f"| {name} | {key} | {study[key]} | |")
    return "\n".join(lines) + "\n"
