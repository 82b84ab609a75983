"""Sampler cost and quality: network evaluations (NFE) and wall time per generated frame for each solver at a few
step counts; with a trained checkpoint, best-of-N PSNR of the predicted frames against the real ones vs NFE.

    python -m benchmarks.bench_samplers                        # the demo store + checkpoint when present, else a
                                                               # randomly initialised network of the config's size
    python -m benchmarks.bench_samplers --store outputs/demo/latents.zarr --ckpt outputs/demo/ours/checkpoints/latest.pt

Protocol (as stage 3): the first clip of the first ``--videos`` eligible videos of ``forecast.split``; its first
``data.cond_frames`` cached latents condition ``--samples`` rollouts per video (one random stream per rollout, so
every solver and step count sees the same seeds). Wall time covers the whole rollout of all videos x samples in one
batch, divided by the generated frames (rows x frames). PSNR (data range 2 on [-1, 1] pixels) is per clip over the
predicted frames only, 10 log10(4 / MSE): the best of the samples per video averaged over videos (best-of-N), and
the mean over all videos and samples (mean, the criterion of the demo); ``vq_ceiling`` is the same for
decode(cached latents of the real clip), ``copy_last`` for the last conditioning frame repeated. Results are stored
per interpolant (``samplers_ours``, ``samplers_linear``; on a GPU or in bf16 ``samplers_<interp>_<device>[_bf16]``).

On a GPU (``--device cuda``) the network, the conditioning and the random streams live on the device and the
clock stops after a synchronisation; ``generated_frames_per_s`` is rows x generated frames / wall time, and
``peak_memory_gb`` the most the device held. ``--bf16`` runs each network call under bfloat16 autocast (its
output cast back to float32): stage 3 has no such option (it forecasts in float32), so this measures what one
would give. For KTH-size throughput without trained weights:

    python -m benchmarks.bench_samplers --config configs/kth.yaml --device cuda --videos 16 --samples 16 \
        --solvers euler_maruyama --steps 21,101 --set data.frames_per_sample=12
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

from benchmarks.common import record
from pipeline.run.config import load_config
from pipeline.stages.forecast import row_generators, select_videos
from pipeline.core.interpolants import build_interpolant
from pipeline.run.layout import Layout
from pipeline.core.sampling import sample

REPO = Path(__file__).resolve().parent.parent


def psnr(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """PSNR per clip of [..., T, 3, H, W] pixels in [-1, 1] (data range 2): 10 log10(4 / MSE over T, 3, H, W)."""
    mse = ((pred - real) ** 2).flatten(start_dim=pred.ndim - 4).mean(dim=-1)
    return 10 * torch.log10(4.0 / (mse + 1e-10))


def main(
    config: Annotated[Path, typer.Option(help="Config (data protocol, model size, sample section).")] = REPO / "configs" / "demo.yaml",
    store: Annotated[Optional[str], typer.Option(help="Latent store (default outputs/<data.name>/latents.zarr if present).")] = None,
    ckpt: Annotated[Optional[str], typer.Option(help="Trained flow checkpoint (default outputs/<data.name>/runs/<interp>/checkpoints/latest.pt if present).")] = None,
    interp: Annotated[str, typer.Option(help="Interpolant: ours | linear.")] = "ours",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Config override (repeatable).")] = None,
    steps: Annotated[str, typer.Option(help="Comma-separated grid sizes N (N - 1 solver steps).")] = "5,10,20",
    solvers: Annotated[str, typer.Option(help="Comma-separated solvers.")] = "euler,heun,euler_maruyama,heun_sde",
    videos: Annotated[int, typer.Option(help="Conditioning videos.")] = 4,
    samples: Annotated[int, typer.Option(help="Samples per video (best-of-N PSNR).")] = 4,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = leave the default).")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto.")] = "cpu",
    bf16: Annotated[bool, typer.Option("--bf16", help="Run the network under bfloat16 autocast (not a stage-3 option).")] = False,
    name: Annotated[str, typer.Option(help="Record name (default: samplers_<interp>, plus _<device> off CPU and _bf16).")] = "",
) -> None:
    from benchmarks.bench_train import resolve_device, sync

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    cfg = load_config(config, [*(set_ or []), f"interpolant.kind={interp}"])
    layout = Layout(str(REPO / "outputs"), cfg.data.name)
    store = store or _existing(Path(layout.store_url))
    ckpt = ckpt or _existing(layout.run_dir(interp) / "checkpoints" / "latest.pt")
    n0, gen = cfg.data.cond_frames, cfg.data.frames_per_sample - cfg.data.cond_frames
    real = clip_latents = vq = None
    if store and ckpt:
        from pipeline.stages.forecast import load_flow

        cond, clip_latents, real = _conditioning(cfg, store, videos)
        cond, clip_latents = cond.to(dev), clip_latents.to(dev)
        real = real.to(dev) if real is not None else None
        model, info = load_flow(cfg, ckpt, dev, log=lambda _: None)
        setting = f"trained checkpoint {ckpt} ({info['kind']} checkpoint, step {info['step']}, ema {info['use_ema']}) on {store}"
        if real is not None and cfg.vqvae.ckpt and Path(cfg.vqvae.ckpt).is_file():
            from pipeline.vqvae import build_vqvae

            vq = build_vqvae(cfg.vqvae, cfg.data.image_size).to(dev)
    else:
        from pipeline.core.model import build_model

        torch.manual_seed(0)
        model = build_model(cfg.model).eval().requires_grad_(False).to(dev)
        cond = torch.randn(videos, n0, cfg.model.state_size, *cfg.model.state_res, generator=torch.Generator().manual_seed(0)).to(dev)
        setting = "randomly initialised network of the config's size on random conditioning latents (no PSNR)"
    net = _Autocast(model, dev) if bf16 else model
    interpolant = build_interpolant(cfg.interpolant)
    video_ids = np.arange(cond.shape[0])
    rows_total = cond.shape[0] * samples

    base = copy.deepcopy(cfg.sample)
    base.n_samples, base.batch_size = samples, rows_total
    warm = copy.deepcopy(base)
    warm.steps = 2
    sample(net, interpolant, cond, 1, warm, row_generators(0, video_ids, samples, dev))  # warm-up
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    ceiling = copy_last = None
    if vq is not None:
        ceiling = float(psnr(_decode(vq, clip_latents[:, n0:]), real[:, n0:]).mean())
        copy_last = float(psnr(real[:, n0 - 1 : n0].expand_as(real[:, n0:]), real[:, n0:]).mean())
    results = []
    for solver in solvers.split(","):
        for n in (int(s) for s in steps.split(",")):
            scfg = copy.deepcopy(base)
            scfg.solver, scfg.steps = solver, n
            scfg.validate()
            gens = row_generators(base.seed, video_ids, samples, dev)
            sync(dev)
            start = time.perf_counter()
            out = sample(net, interpolant, cond, gen, scfg, gens)
            sync(dev)
            wall = time.perf_counter() - start
            row = {"solver": out.solver, "steps": n, "nfe_per_frame": out.nfe_per_frame,
                   "ms_per_generated_frame": round(1000 * wall / (rows_total * gen), 3),
                   "ms_per_frame_of_batch": round(1000 * wall / gen, 2),
                   "generated_frames_per_s": round(rows_total * gen / wall, 2)}
            if vq is not None:
                values = psnr(_decode(vq, out.latents[:, :, n0:]), real[:, None, n0:])  # [videos, samples]
                row.update(psnr_best_of_n=round(float(values.max(dim=1).values.mean()), 3),
                           psnr_mean=round(float(values.mean()), 3))
            results.append(row)
            print(row, flush=True)
    suffix = ("" if dev.type == "cpu" else f"_{dev.type}") + ("_bf16" if bf16 else "")
    record(name or f"samplers_{cfg.interpolant.kind}{suffix}", {
        "setting": setting + (f"; network under bfloat16 autocast" if bf16 else ""), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "bf16": bf16,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None, "interpolant": cfg.interpolant.kind, "videos": int(cond.shape[0]), "samples": samples,
        "cond_frames": n0, "generated_frames": gen, "latent_shape": list(cond.shape[2:]), "grid": cfg.sample.grid,
        "context": cfg.sample.context, "batch_rows": rows_total, "threads": torch.get_num_threads(),
        "vq_ceiling_psnr": None if ceiling is None else round(ceiling, 3),
        "copy_last_psnr": None if copy_last is None else round(copy_last, 3), "results": results,
    })


class _Autocast:
    """The network called under bfloat16 autocast, its output cast back to float32 (the solvers' arithmetic)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device

    def __call__(self, z, t, ref, context, gap):
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.model(z, t, ref, context, gap).float()


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


def _conditioning(cfg, store: str, videos: int):
    """(conditioning latents [V, n0, C, h, w], clip latents [V, T, ...], real clip pixels [V, T, 3, H, W] in [-1, 1])."""
    from pipeline.data.cache import LatentSplit
    from pipeline.data.clips import to_model_range
    from pipeline.data.shards import ShardReader
    from pipeline.stages.forecast import _clip_latents, clip_frames

    split = LatentSplit(store, cfg.forecast.split)
    chosen = select_videos(split.lengths, cfg)[:videos]
    frames = clip_frames(cfg)
    clips = torch.stack([torch.from_numpy(_clip_latents(split, int(k), frames)) for k in chosen])
    real = None
    shard_dir = Path(cfg.data.root) / cfg.forecast.split
    if shard_dir.is_dir():
        reader = ShardReader(shard_dir, validate=False)
        real = torch.stack([to_model_range(reader.read_frames(int(k), frames)) for k in chosen])
    return clips[:, : cfg.data.cond_frames], clips, real


def _decode(vq, latents: torch.Tensor) -> torch.Tensor:
    """Latents [..., C, h, w] -> pixels [..., 3, H, W] in [-1, 1]."""
    lead = latents.shape[:-3]
    pixels = vq.decode(latents.reshape(-1, *latents.shape[-3:]))
    return pixels.reshape(*lead, *pixels.shape[1:])


if __name__ == "__main__":
    typer.run(main)
