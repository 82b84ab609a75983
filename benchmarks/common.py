"""Shared benchmark plumbing: timing and the results file (benchmarks/results.json, merged per benchmark).

``BENCH_RESULTS=path.json`` in the environment sends the results to another file (its table beside it, ``.md``):
``benchmarks/gpu_check.sh`` writes ``benchmarks/results_gpu.json`` so, keeping the CPU record apart.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

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
    ("known_law", "oracle_vq_s", "demo known law: the oracle's S = 4 x 12 draws through the demo VQVAE (oracle_vq), s per video", ""),
]


# Peak dense bf16 tensor-core FLOP/s by GPU name (vendor data sheets, SXM parts), for model FLOP utilisation (MFU).
# The first key found in the device name applies; order matters (H100 PCIe before H100).
PEAK_BF16_DENSE = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
]


def peak_bf16_flops(device_name: str | None) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, what was assumed) for a GPU name; (None, reason) when unknown."""
    for key, peak in PEAK_BF16_DENSE:
        if device_name and key.lower() in device_name.lower():
            return peak, f"{key} dense bf16 peak {peak / 1e12:.0f} TFLOP/s (from the device name {device_name!r})"
    return None, f"no known bf16 peak for {device_name!r}: MFU not computed (pass --peak-tflops)"


def results_path() -> Path:
    """The results file: ``BENCH_RESULTS`` when set, else benchmarks/results.json."""
    return Path(os.environ["BENCH_RESULTS"]) if os.environ.get("BENCH_RESULTS") else RESULTS


def best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict[str, Any]:
    import torch  # here, not at the top: bench_contention's parent process never loads torch

    cuda = torch.cuda.is_available()
    return {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        **({"cuda_version": torch.version.cuda} if cuda else {}),
    }


def record(name: str, result: dict[str, Any]) -> None:
    """Store ``result`` under ``name`` in the results file (other benchmarks' entries are kept) and print it."""
    path = results_path()
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = {**result, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(markdown_table(results))
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
    if "thread_contention" in results:
        lines += ["", *contention_table(results["thread_contention"])]
    return "\n".join(lines) + "\n"


CONTENTION_COLUMNS = [("threads", "threads"), ("omp_wait_policy", "OpenMP wait"), ("torch_threads", "torch threads quiet"),
                      ("torch_threads_busy", "torch threads beside it"),
                      ("encode_quiet_s", "encode quiet s"), ("encode_busy_s", "encode beside a busy process s"),
                      ("encode_ratio", "encode ratio"), ("encode_ratio_range", "encode ratio range"),
                      ("step_quiet_s", "train step quiet s"), ("step_busy_s", "train step beside a busy process s"),
                      ("step_ratio", "train step ratio"), ("step_ratio_range", "train step ratio range"),
                      ("repeats", "repeats")]


def contention_table(study: dict[str, Any]) -> list[str]:
    """bench_contention as markdown: one row per thread setting, quiet vs beside one busy process."""
    lines = [f"**thread_contention** ({study.get('setting', '')})", "",
             "| " + " | ".join(title for _, title in CONTENTION_COLUMNS) + " |", "|" + "---|" * len(CONTENTION_COLUMNS)]
    for row in study.get("results", []):
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in CONTENTION_COLUMNS) + " |")
    return lines


SAMPLER_COLUMNS = ["solver", "steps", "nfe_per_frame", "ms_per_generated_frame", "psnr_mean", "psnr_best_of_n",
                   "generated_frames_per_s"]


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
