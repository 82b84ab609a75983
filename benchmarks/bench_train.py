"""Training step time at KTH sizes: cached latents vs encoding inside every step, on CPU or a GPU.

(a) bare: the paper's network (98M parameters) forward + backward + AdamW on a batch already in memory;
(b) ours: the real training step fed by the real triplet loader from a latent store (KTH shapes, RAM mode);
(c) reference design: the frozen KTH VQVAE (taming f8, 64M parameters) encodes the target, reference and
    context frames of the batch inside every step, then the same flow step.
Goals (issue 5): (b) within 10 % of (a); (c)/(b) about 2x here.

Also recorded: samples/s per configuration, the model FLOPs of one step (counted with
``torch.utils.flop_counter.FlopCounterMode`` on one eager step of (a): forward and backward of the network; the
AdamW update is not counted), and on a GPU the peak memory of each configuration and the model FLOP utilisation
(MFU = FLOPs per step / step time / the GPU's peak dense bf16 FLOP/s, from its name or ``--peak-tflops``). On a GPU
that runs out of memory the batch is halved until a step fits (the record says which batch ran).

    python -m benchmarks.bench_train [--batch 8] [--steps 4]                        # CPU: results.json train_step
    python -m benchmarks.bench_train --device cuda --bf16 --batch 256 --steps 20   # -> train_step_cuda_bf16
    python -m benchmarks.bench_train --device cuda --bf16 --compile --configs a    # torch.compile'd network

The VQVAE of (c) encodes in float32 (as stage 1 does), also with ``--bf16`` (which is ``train.bf16``: the flow
network under bfloat16 autocast). TF32 is left as torch's defaults (the project does not enable it); the record
says what they were.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import torch
import typer

from benchmarks.bench_loader import build_store
from benchmarks.common import peak_bf16_flops, record
from pipeline.data.cache import LatentSplit
from pipeline.run.config import load_config
from pipeline.run.dist import DistInfo
from pipeline.core.interpolants import build_interpolant
from pipeline.core.model import build_model
from pipeline.stages.train import train_step
from pipeline.data.triplets import TripletReader, TripletStream
from pipeline.vqvae import build_vqvae

REPO = Path(__file__).resolve().parent.parent


def resolve_device(device: str) -> torch.device:
    """cpu | cuda | auto (CUDA when available); a CUDA request without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter(f"--device {device}: no CUDA device is available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step_fn: Callable[[int], Any], steps: int, device: torch.device, warmup: int = 1) -> tuple[float, float]:
    """(seconds per step over ``steps`` timed steps, seconds of the ``warmup`` untimed ones: allocations, the first
    AdamW state, compilation)."""
    start = time.perf_counter()
    for s in range(warmup):
        step_fn(s)
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step_fn(s)
    sync(device)
    return (time.perf_counter() - start) / steps, warm


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matrix products and convolutions, forward and backward), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def measure(cfg, dev: torch.device, batch: int, steps: int, configs: list[str], compile_net: bool) -> dict[str, Any]:
    """The chosen configurations at one batch size (see the module docstring); raises CUDA out-of-memory errors."""
    cfg.train.batch_size = batch
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=dev)
    interpolant = build_interpolant(cfg.interpolant)
    out: dict[str, Any] = {"batch": batch}
    directory = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        latent = (cfg.model.state_size, *cfg.model.state_res)
        reader = TripletReader(LatentSplit(build_store(directory, 64, 300, 16, latent), "train"), 40, 0)
        reader.split.load_into_memory()
        fixed = reader.batch(np.random.default_rng(0), batch)

        def fresh():
            torch.manual_seed(0)
            model = build_model(cfg.model).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
            return model, (torch.compile(model) if compile_net else model), opt

        warmup = 3 if compile_net else 1
        model, _, opt = fresh()
        out["network_params"] = sum(p.numel() for p in model.parameters())
        out["flops_per_step"] = count_flops(lambda: train_step(model, model, opt, interpolant, fixed, info, cfg, 0))
        del model, opt
        _free(dev)

        if "a" in configs:
            model, net, opt = fresh()
            out["a_bare_step_s"], out["a_warmup_s"] = _time_steps(
                lambda s: train_step(net, model, opt, interpolant, fixed, info, cfg, s), steps, dev, warmup)
            out["a_peak_memory_gb"] = _peak_gb(dev)
            del model, net, opt
            _free(dev)
        if "b" in configs:
            model, net, opt = fresh()
            stream = iter(TripletStream(reader, batch, seed=0, rank=0))
            out["b_cached_loader_step_s"], out["b_warmup_s"] = _time_steps(
                lambda s: train_step(net, model, opt, interpolant, next(stream), info, cfg, s), steps, dev, warmup)
            out["b_peak_memory_gb"] = _peak_gb(dev)
            del model, net, opt, stream
            _free(dev)
        if "c" in configs:
            model, net, opt = fresh()
            vq = build_vqvae(cfg.vqvae, cfg.data.image_size, load_weights=False).to(dev)
            size = cfg.data.image_size
            pixels = (torch.rand(batch, 3, 3, size, size) * 2 - 1).to(dev)  # (target, reference, context) per example
            out["c_encoder_flops_per_step"] = count_flops(lambda: vq.encode_clip(pixels))

            def reference_step(s: int) -> None:
                latents = vq.encode_clip(pixels)  # the frozen encoder inside the step, as the reference trainer
                step_batch = {"target": latents[:, 0], "reference": latents[:, 1], "context": latents[:, 2], "gap": fixed["gap"]}
                train_step(net, model, opt, interpolant, step_batch, info, cfg, s)

            out["c_encode_every_step_s"], out["c_warmup_s"] = _time_steps(reference_step, steps, dev, warmup)
            out["c_peak_memory_gb"] = _peak_gb(dev)
            del model, net, opt, vq, pixels
            _free(dev)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def main(
    batch: Annotated[int, typer.Option(help="Global batch (on a GPU: halved until it fits).")] = 8,
    steps: Annotated[int, typer.Option(help="Timed steps per configuration (after the warm-up).")] = 4,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto.")] = "cpu",
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast of the flow network (train.bf16=true).")] = False,
    compile_net: Annotated[bool, typer.Option("--compile", help="torch.compile the network (as train.compile=true).")] = False,
    configs: Annotated[str, typer.Option(help="Comma-separated configurations to time: a (bare), b (cached loader), c (encode inside).")] = "a,b,c",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Config override of configs/kth.yaml (repeatable), e.g. model.inner_dim=64.")] = None,
    peak_tflops: Annotated[float, typer.Option(help="Peak dense bf16 TFLOP/s for MFU (0: from the GPU's name).")] = 0.0,
    name: Annotated[str, typer.Option(help="Record name (default: train_step on CPU, else train_step_<device>[_bf16][_compiled]).")] = "",
) -> None:
    dev = resolve_device(device)
    chosen = [c.strip() for c in configs.split(",") if c.strip()]
    if not chosen or set(chosen) - {"a", "b", "c"}:
        raise typer.BadParameter(f"--configs {configs!r}: choose among a, b, c")
    cfg = load_config(REPO / "configs" / "kth.yaml", ["train.wandb_mode=disabled", f"train.bf16={str(bf16).lower()}",
                                                    f"train.compile={str(compile_net).lower()}", *(set_ or [])])
    requested = batch
    while True:
        try:
            out = measure(cfg, dev, batch, steps, chosen, compile_net)
            break
        except torch.cuda.OutOfMemoryError:
            _free(dev)
            if batch <= 1:
                raise
            print(f"bench_train: batch {batch} does not fit on {dev}; trying {batch // 2}", flush=True)
            batch //= 2

    result: dict[str, Any] = {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "bf16": bf16, "compile": compile_net, "batch_requested": requested, "steps": steps,
        "threads": torch.get_num_threads(), "latent_shape": [cfg.model.state_size, *cfg.model.state_res],
        **out,
    }
    for c, key in (("a", "a_bare_step_s"), ("b", "b_cached_loader_step_s"), ("c", "c_encode_every_step_s")):
        if key in out:
            result[key] = round(out[key], 4)
            result[f"{c}_warmup_s"] = round(out[f"{c}_warmup_s"], 2)
            result[f"{c}_samples_per_s"] = round(out["batch"] / out[key], 1)
    if "a_bare_step_s" in out and "b_cached_loader_step_s" in out:
        result["b_over_a"] = round(out["b_cached_loader_step_s"] / out["a_bare_step_s"], 3)
    if "b_cached_loader_step_s" in out and "c_encode_every_step_s" in out:
        result["c_over_b"] = round(out["c_encode_every_step_s"] / out["b_cached_loader_step_s"], 3)
    result["goal"] = {"b_over_a_max": 1.10, "c_over_b_about": 2.0}
    if dev.type == "cuda":
        peak, assumed = (peak_tflops * 1e12, f"given: {peak_tflops} TFLOP/s") if peak_tflops else \
            peak_bf16_flops(result["device_name"])
        result["peak_flops_assumed"] = assumed
        result["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        print(f"bench_train: MFU against {assumed}", flush=True)
        for c, key in (("a", "a_bare_step_s"), ("b", "b_cached_loader_step_s")):
            if key in out and peak:
                result[f"mfu_{c}"] = round(out["flops_per_step"] / out[key] / peak, 4)
        result["achieved_tflops_a"] = round(out["flops_per_step"] / out["a_bare_step_s"] / 1e12, 2) if "a_bare_step_s" in out else None
    default = "train_step" if dev.type == "cpu" and not bf16 and not compile_net else \
        "_".join(["train_step", dev.type, *(["bf16"] if bf16 else []), *(["compiled"] if compile_net else [])])
    record(name or default, result)


if __name__ == "__main__":
    typer.run(main)
