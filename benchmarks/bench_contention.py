"""Thread settings on a shared CPU: stage-1 encode and a training step, quiet and beside one busy process.

For each thread setting — torch's own default (no choice made), 1 thread (``OMP_NUM_THREADS=1``), and the stages'
default (``pipeline.run.threads.configure_threads``: the usable CPUs / processes per node) — and each
way idle OpenMP threads wait (OpenMP's own default: spin, then sleep; ``OMP_WAIT_POLICY=PASSIVE``, the stages'
default set by ``pipeline.run.threads``; ``spin:N`` = ``GOMP_SPINCOUNT=N``), a fresh process (OpenMP reads its variables
when it starts) measures

* stage 1: ``encode_latents`` of a small demo dataset with the shipped demo VQVAE (seconds for the whole stage call);
* a training step: the demo's flow network, ``pipeline.stages.train.train_step`` on a fixed batch of the demo's size
  (seconds per step, mean over as many steps as fit in ``--train-seconds`` after one warm-up step);

once quiet and once while another process spins (``python -c 'while True: pass'``, started just before and killed
just after). The ratio busy / quiet says how much a setting suffers from one competing process. Quiet and busy runs of
a setting follow each other, so slow drifts of the machine hit both alike; ``--repeats N`` measures each setting's
pair N times, round-robin over the settings, and reports medians, the ratio of the medians and the range of the
N paired ratios (a shared host's speed drifts by tens of percent within minutes).

    python -m benchmarks.bench_contention                 # every setting, 3 repeats: 36 processes, ~10-30 s quiet each
    python -m benchmarks.bench_contention --settings auto --waits ,PASSIVE,spin:10000   # one thread setting
    python -m benchmarks.bench_contention --quick         # tiny sizes, one setting: checks the wiring in seconds

Records ``thread_contention`` in benchmarks/results.json (``--quick`` only prints its table).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

REPO = Path(__file__).resolve().parent.parent
THREAD_SETTINGS = ("default", "1", "auto")  # torch's default, one thread, configure_threads' default
WAIT_POLICIES = ("", "PASSIVE")  # unset, PASSIVE
BUSY = "while True: pass"


def _sizes(quick: bool, videos: int, frames: int) -> tuple[list[str], list[str]]:
    """(config overrides of stage 1, of the training step) for configs/demo.yaml: the demo as shipped (its VQVAE,
    checkpoints/demo_vqvae.pt, its network and batch), or with ``quick`` a tiny network and batch."""
    train = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.batch_size=8"] if quick else []
    only_train = ["data.splits=[train]", "forecast.split=train", "train.val_split=train", "train.sample_split=train",
                  "autoencoder.eval_split=train"]  # stage 1 encodes the train split alone
    return [f"demo.videos={{train: {videos}}}", f"demo.frames={frames}", *only_train], train


def _child(spec_path: Path, threads: str) -> None:
    """One measurement process: print one JSON line {threads, encode_s, frames, step_s, steps}.

    torch (and with it OpenMP) loads before ``pipeline``, so the wait setting is the environment's as
    :func:`_environment` made it: with none there, OpenMP's own default, not the pipeline's.
    """
    import numpy as np
    import torch

    from pipeline.run.config import load_config
    from pipeline.run.dist import DistInfo
    from pipeline.stages.encode import encode_latents
    from pipeline.core.interpolants import build_interpolant
    from pipeline.core.model import build_model
    from pipeline.run.threads import configure_threads
    from pipeline.stages.train import train_step

    spec = json.loads(spec_path.read_text())
    if threads == "auto":
        configure_threads(None, 1, log=None)
    cfg = load_config(REPO / "configs" / "demo.yaml", spec["encode"])
    store = tempfile.mkdtemp(prefix="contention_store_", dir=spec["work"])
    start = time.perf_counter()
    encode_latents(cfg, str(Path(store) / "latents.zarr"), log=lambda _: None)
    encode_s = time.perf_counter() - start
    shutil.rmtree(store, ignore_errors=True)

    tcfg = load_config(REPO / "configs" / "demo.yaml", [*spec["encode"], *spec["train"], "train.wandb_mode=disabled"])
    torch.manual_seed(0)
    model = build_model(tcfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.train.lr)
    interpolant = build_interpolant(tcfg.interpolant)
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    rng = np.random.default_rng(0)
    shape = (tcfg.train.batch_size, tcfg.model.state_size, *tcfg.model.state_res)
    batch = {k: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) for k in ("target", "reference", "context")}
    batch["gap"] = torch.from_numpy(rng.integers(1, 8, shape[0]).astype(np.float32))
    train_step(model, model, opt, interpolant, batch, info, tcfg, 0)  # warm-up
    steps, start = 0, time.perf_counter()
    while steps < spec["min_steps"] or time.perf_counter() - start < spec["train_seconds"]:
        steps += 1
        train_step(model, model, opt, interpolant, batch, info, tcfg, steps)
    step_s = (time.perf_counter() - start) / steps
    print(json.dumps({"threads": torch.get_num_threads(), "encode_s": encode_s, "frames": spec["frames"],
                      "step_s": step_s, "steps": steps}), flush=True)


def _environment(threads: str, wait: str) -> dict[str, str]:
    """The child's environment: ``wait`` is '' (OpenMP's default), an ``OMP_WAIT_POLICY`` value, or ``spin:N``
    (``GOMP_SPINCOUNT=N``: how long GNU OpenMP's idle threads spin before they sleep)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if threads == "1":
        env["OMP_NUM_THREADS"] = "1"
    if wait.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = wait.removeprefix("spin:")
    elif wait:
        env["OMP_WAIT_POLICY"] = wait
    return env


def _wait_label(wait: str) -> str:
    """How the table names a wait setting."""
    if not wait:
        return "OpenMP default (spin, then sleep)"
    if wait.startswith("spin:"):
        return f"GOMP_SPINCOUNT={wait.removeprefix('spin:')}"
    return f"{wait} (stages' default)" if wait.upper() == "PASSIVE" else wait


def _measure(spec_path: Path, threads: str, wait: str, busy: bool, timeout: float) -> dict[str, Any]:
    """Run one measurement process (beside a spinning one when ``busy``); its JSON result."""
    competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        result = subprocess.run([sys.executable, "-m", "benchmarks.bench_contention", "--child", str(spec_path),
                                 "--child-threads", threads], cwd=REPO, env=_environment(threads, wait),
                                capture_output=True, text=True, timeout=timeout)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if result.returncode != 0:
        raise RuntimeError(f"measurement (threads={threads}, wait={_wait_label(wait)}, busy={busy}) failed:\n"
                           + result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _row(threads: str, wait: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """One setting's table row from its (quiet, busy) measurements: medians, the ratio of the medians and the range
    of the paired ratios."""
    row: dict[str, Any] = {"threads": {"default": "torch default", "1": "1", "auto": "configure_threads"}[threads],
                           "omp_wait_policy": _wait_label(wait), "repeats": len(pairs),
                           "torch_threads": "/".join(sorted({str(q["threads"]) for q, _ in pairs})),
                           "torch_threads_busy": "/".join(sorted({str(b["threads"]) for _, b in pairs}))}
    for name, key, digits in (("encode", "encode_s", 2), ("step", "step_s", 4)):
        quiet, busy = statistics.median(q[key] for q, _ in pairs), statistics.median(b[key] for _, b in pairs)
        ratios = [b[key] / q[key] for q, b in pairs]
        row.update({f"{name}_quiet_s": round(quiet, digits), f"{name}_busy_s": round(busy, digits),
                    f"{name}_ratio": round(busy / quiet, 2),
                    f"{name}_ratio_range": f"{min(ratios):.2f}-{max(ratios):.2f}"})
    row["encode_frames_per_s_quiet"] = round(pairs[0][0]["frames"] / row["encode_quiet_s"], 1)
    return row


def _prepare(work: Path, quick: bool, videos: int, frames: int) -> list[str]:
    """Write the demo shards under ``work``; the stage's config overrides."""
    from pipeline.run.config import load_config
    from pipeline.demo.generator import generate_demo

    encode = [*_sizes(quick, videos, frames)[0], f"data.root={work / 'data'}"]
    cfg = load_config(REPO / "configs" / "demo.yaml", encode)
    generate_demo(cfg.demo, cfg.data.image_size, Path(cfg.data.root))
    return encode


def main(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes, one setting (the stages' default with OMP_WAIT_POLICY=PASSIVE): seconds, to check the wiring (not recorded).")] = False,
    videos: Annotated[int, typer.Option(help="Demo videos stage 1 encodes (48 frames each by default).")] = 64,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 48,
    train_seconds: Annotated[float, typer.Option(help="Seconds of timed training steps per measurement (at least 3 steps).")] = 12.0,
    settings: Annotated[str, typer.Option(help="Comma-separated thread settings: default, 1, auto.")] = ",".join(THREAD_SETTINGS),
    waits: Annotated[str, typer.Option(help="Comma-separated OpenMP wait settings: '' = unset, an OMP_WAIT_POLICY value (PASSIVE, ACTIVE), spin:N = GOMP_SPINCOUNT=N.")] = ",".join(WAIT_POLICIES),
    repeats: Annotated[int, typer.Option(min=1, help="Quiet/busy pairs per setting (round-robin over the settings); the table gives medians and the range of the paired ratios.")] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds before one measurement process is given up.")] = 600.0,
    child: Annotated[Optional[Path], typer.Option(hidden=True)] = None,
    child_threads: Annotated[str, typer.Option(hidden=True)] = "default",
) -> None:
    if child is not None:
        _child(child, child_threads)
        return
    from pipeline.run.threads import available_cpus, cgroup_cpu_limit

    if quick:
        videos, frames, train_seconds, repeats = 2, 16, 0.2, 1
        grid = [("auto", "PASSIVE")]
    else:
        chosen = [s.strip() for s in settings.split(",") if s.strip()]
        bad = set(chosen) - set(THREAD_SETTINGS)
        if bad:
            raise typer.BadParameter(f"--settings: unknown {sorted(bad)}; choose among {', '.join(THREAD_SETTINGS)}")
        grid = [(t, w.strip()) for t in chosen for w in waits.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_contention_"))
    try:
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps({"encode": _prepare(work, quick, videos, frames), "train": _sizes(quick, videos, frames)[1],
                                         "work": str(work), "frames": videos * frames, "train_seconds": train_seconds,
                                         "min_steps": 1 if quick else 3}))
        pairs: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {setting: [] for setting in grid}
        for _ in range(repeats):
            for threads, wait in grid:
                pairs[threads, wait].append((_measure(spec_path, threads, wait, busy=False, timeout=timeout),
                                             _measure(spec_path, threads, wait, busy=True, timeout=timeout)))
                print(json.dumps({"threads": threads, "wait": wait, "quiet": pairs[threads, wait][-1][0],
                                  "busy": pairs[threads, wait][-1][1]}), flush=True)
        rows = [_row(threads, wait, pairs[threads, wait]) for threads, wait in grid]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    study = {
        "setting": (f"{videos} demo videos x {frames} frames through stage 1 (the shipped demo VQVAE, 64 px); a training "
                    f"step of the demo network ({'tiny, batch 8' if quick else 'as configured'}); busy = one other process spinning"),
        "available_cpus": available_cpus(), "cgroup_cpu_limit": cgroup_cpu_limit(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "results": rows,
    }
    if quick:
        from benchmarks.common import contention_table

        print("\n".join(contention_table(study)))
        print("bench_contention: --quick is a wiring check; nothing recorded")
        return
    from benchmarks.common import record

    record("thread_contention", study)


if __name__ == "__main__":
    typer.run(main)
