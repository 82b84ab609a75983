"""Train the demo's own VQVAE: the taming f8 architecture at a small width, on the demo's training frames.

    python -m pipeline.demo.vqvae_train --config configs/demo.yaml [--set autoencoder.steps=...] [--smoke] [--fresh]
    python -m pipeline.demo.vqvae_train psnr --config configs/demo.yaml [--ckpt file]

Recipe (configs/demo.yaml's ``autoencoder`` section): loss = l1 |x − y| + mse (x − y)² + the VQ-VAE quantiser loss
||z_q − sg(z)||² + beta ||sg(z_q) − z||² (taming's ``legacy=False``; legacy puts beta on the codebook term, giving
an encoder gradient 1/beta times this one: docs/METHOD.md §9.26). The first ``quantize_after`` steps train a plain
autoencoder, then k-means initialises the codebook; every ``restart_every`` steps unused codes restart at encoder
outputs. Optional crops and foreground weighting; bf16 convolutions, float32 codebook search; AdamW with warm-up
and cosine decay; deterministic. ``<out_dir>/latest.pt`` resumes under :mod:`pipeline.run.protocol` (the training
signature as inputs; ``--fresh`` starts over); the end exports a flat state dict to ``autoencoder.export``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import torch
import typer
from tqdm import tqdm

from pipeline.data.shards import ShardError, ShardReader
from pipeline.demo.state import STATE_FILE
from pipeline.demo.vqvae_recipe import (TrainError, autocast, frame_psnr, init_codebook, load_split_frames, lr_at,
                                        reconstruction_loss, reconstruction_psnr, restart_dead_codes, sample_batch,
                                        trainable_model)
from pipeline.run.cli import ConfigOption, DataRootOption, SetOption, SmokeOption, fail, load_cli_config
from pipeline.run.config import Config
from pipeline.run.protocol import Output, Verdict, decide
from pipeline.run.records import atomic_path, code_version, fingerprint, read_derived, sha256_file, write_json_atomic
from pipeline.run.safe_load import safe_torch_load
from pipeline.vqvae import FrozenVQVAE, build_vqvae

LATEST = "latest.pt"
REMEDY = "Rerun with --fresh to start over (or point autoencoder.out_dir elsewhere)."
# autoencoder keys that do not change what is trained
_RESUME_NEUTRAL = {"out_dir", "export", "threads", "log_every", "checkpoint_every", "val_videos", "eval_split",
                   "eval_videos", "max_minutes", "export_float16"}


def _training_signature(cfg: Config) -> dict[str, Any]:
    """The config entries that determine the trained model (compared on resume), as JSON stores them."""
    ae = {k: v for k, v in dataclasses.asdict(cfg.autoencoder).items() if k not in _RESUME_NEUTRAL}
    vq = {k: v for k, v in dataclasses.asdict(cfg.vqvae).items() if k not in ("ckpt", "batch_size")}
    signature = {"autoencoder": ae, "vqvae": vq, "image_size": cfg.data.image_size, "data_root": cfg.data.root,
                 "seed": cfg.seed}
    return json.loads(json.dumps(signature))


def _decide(cfg: Config, state: dict[str, Any] | None, latest: Path, target: Path, fresh: bool,
            log: Callable[[str], None]) -> Verdict:
    """The protocol's verdict with the signature as inputs; without a checkpoint ``state``, an export whose record
    names this signature is the finished output."""
    signature = _training_signature(cfg)
    if state is not None:
        record = {"fingerprint": fingerprint(state.get("signature")), "inputs": state.get("signature") or {}}
        complete, path = int(state["step"]) >= cfg.autoencoder.steps and target.exists(), latest
    else:
        matches = _export_matches(target, signature, log)
        record = {"fingerprint": fingerprint(signature), "inputs": signature} if matches else {}
        complete, path = True, target
    out = Output("autoencoder", str(path), "written", REMEDY, force_redoes=True)
    return decide(out, record, signature, fresh, complete=complete, detail=f"{cfg.autoencoder.steps} steps, ")


def export_path(cfg: Config) -> Path:
    """autoencoder.export, else ``<out_dir>/vqvae.pt``: never silently over the shipped vqvae.ckpt."""
    return Path(cfg.autoencoder.export or Path(cfg.autoencoder.out_dir) / "vqvae.pt")


def _export_matches(target: Path, signature: dict[str, Any], log: Callable[[str], None]) -> bool:
    """True when ``target`` exists and its JSON record names this training signature and the file's sha256 (a record
    that does not read is said and counts as no match: the VQVAE is trained again)."""
    record = read_derived(target.with_suffix(".json"), lambda line: log(f"autoencoder: {line}"), what="retraining") \
        if target.exists() else None
    if record is None or record.get("signature") != signature:
        return False
    return record.get("summary", {}).get("sha256") == sha256_file(target)


def export_model(model: torch.nn.Module, path: Path, float16: bool) -> str:
    """Write the flat state dict (contiguous, optionally float16) atomically; returns its sha256."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().contiguous().clone()
        state[k] = v.half() if (float16 and v.is_floating_point()) else v
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return sha256_file(path)


def train_autoencoder(
    cfg: Config,
    fresh: bool = False,
    until_step: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the VQVAE of ``cfg.vqvae`` per ``cfg.autoencoder`` and export it when all steps are done
    (``until_step``: stop there with a checkpoint, no export). Returns a summary (steps, seconds, val PSNR, export)."""
    ae, vcfg = cfg.autoencoder, cfg.vqvae
    if vcfg.arch != "taming":
        raise TrainError(f"only vqvae.arch=taming can be trained here (got {vcfg.arch})")
    size = cfg.data.image_size
    factor = 2 ** (len(vcfg.ch_mult) - 1)
    crop = ae.crop_size if 0 < ae.crop_size < size else 0
    if size % factor or crop % factor:
        raise TrainError(f"image_size {size} and crop_size {crop} must be multiples of the downsampling factor {factor}")
    threads_before = torch.get_num_threads()
    if ae.threads:
        torch.set_num_threads(ae.threads)
    try:
        return _train(cfg, fresh, until_step, log, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: Config, fresh: bool, until_step: int | None, log: Callable[[str], None], progress: bool) -> dict[str, Any]:
    ae, vcfg = cfg.autoencoder, cfg.vqvae
    size = cfg.data.image_size
    crop = ae.crop_size if 0 < ae.crop_size < size else 0
    out_dir = Path(ae.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = out_dir / LATEST
    target = export_path(cfg)
    signature = _training_signature(cfg)

    torch.manual_seed(cfg.seed)
    model = trainable_model(cfg).to(memory_format=torch.channels_last)
    codebook = model.quantize.embedding.weight
    others = [p for n, p in model.named_parameters() if p is not codebook]
    opt = torch.optim.AdamW(
        [{"params": others, "weight_decay": ae.weight_decay}, {"params": [codebook], "weight_decay": 0.0}],
        lr=ae.lr, betas=(0.9, 0.99),
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    usage = torch.zeros(vcfg.n_embed, dtype=torch.long)
    step, elapsed, restarted = 0, 0.0, 0

    state = safe_torch_load(latest) if latest.exists() and not fresh else None
    verdict = _decide(cfg, state, latest, target, fresh, log)
    if verdict.action == "stale":
        raise TrainError(verdict.message)
    if verdict.action == "up to date":
        log(verdict.message)
        return {"steps": ae.steps, "export": str(target), "up_to_date": True}
    if verdict.action == "resume":
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        usage = state["usage"]
        step, elapsed, restarted = int(state["step"]), float(state["elapsed"]), int(state["restarted"])
        log(f"{verdict.message} at step {step}/{ae.steps}")

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "restarted": restarted,
            "usage": usage,
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "signature": signature,
            "config": cfg.to_dict(),
        }
        with atomic_path(latest) as tmp:
            torch.save(state, tmp)

    t0 = time.time()
    frames = load_split_frames(cfg.data.root, "train", size, ae.frame_stride)
    log(f"training frames: {len(frames)} from {cfg.data.root}/train ({time.time() - t0:.1f} s to load)")
    stop_at = ae.steps if until_step is None else min(ae.steps, until_step)
    run_start = time.time() - elapsed  # elapsed counts every run of this training, data loading included
    bar = tqdm(total=ae.steps, initial=step, desc="autoencoder", disable=not progress, dynamic_ncols=True)
    stats: dict[str, float] = {}
    model.train()
    while step < stop_at:
        if ae.max_minutes and time.time() - run_start > 60 * ae.max_minutes:
            warnings.warn(f"autoencoder: max_minutes={ae.max_minutes} reached at step {step}/{ae.steps}; stopping early")
            break
        quantize = step >= ae.quantize_after
        if step == ae.quantize_after:
            model.eval()
            init_codebook(model, frames, ae.kmeans_frames, gen, ae.bf16)
            model.train()
            usage.zero_()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, ae)
        full = step >= ae.steps - ae.full_frame_steps
        x = sample_batch(frames, ae.batch_size, 0 if full else crop, ae.flip, gen, ae.crop_candidates).contiguous(memory_format=torch.channels_last)
        with autocast(ae.bf16):
            z = model.encode(x)
        z = z.float()
        if quantize:
            z_q, q_loss, idx = model.quantize(z)
            usage += torch.bincount(idx.flatten(), minlength=vcfg.n_embed)
        else:
            z_q, q_loss = z, z.new_zeros(())
        with autocast(ae.bf16):
            y = model.decode_quantized(z_q)
        y = y.float()
        rec = reconstruction_loss(x, y, ae)
        loss = rec + q_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if quantize and ae.restart_every and (step - ae.quantize_after) % ae.restart_every == 0:
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            restarted += restart_dead_codes(model, opt, usage, flat, gen)
            stats["used"] = float((usage > 0).sum())
            usage.zero_()
        with torch.no_grad():
            batch_psnr = float(frame_psnr(x, y.clamp(-1, 1)).mean())
            stats["psnr"] = batch_psnr if "psnr" not in stats else 0.9 * stats["psnr"] + 0.1 * batch_psnr
            stats["rec"], stats["q"] = float(rec), float(q_loss)
        elapsed = time.time() - run_start
        bar.update(1)
        if step % ae.log_every == 0 or step == stop_at:
            bar.set_postfix(rec=f"{stats['rec']:.4f}", q=f"{stats['q']:.4f}", psnr=f"{stats['psnr']:.1f}",
                            codes=int(stats.get("used", 0)), restarts=restarted, lr=f"{lr_at(step - 1, ae):.1e}")
        if step % ae.checkpoint_every == 0 and step < stop_at:
            save_checkpoint()
    bar.close()
    elapsed = time.time() - run_start
    save_checkpoint()
    summary: dict[str, Any] = {"steps": step, "seconds": round(elapsed, 1), "restarted_codes": restarted}
    if step < ae.steps:
        log(f"stopped at step {step}/{ae.steps} after {elapsed:.0f} s; checkpoint {latest} (rerun to resume)")
        if until_step is not None:
            return summary

    model.eval()
    sha = export_model(model, target, ae.export_float16)
    summary.update(export=str(target), sha256=sha, size_bytes=target.stat().st_size)
    if ae.val_videos and "val" in cfg.data.splits and (Path(cfg.data.root) / "val").is_dir():
        vq = build_vqvae(dataclasses.replace(vcfg, ckpt=str(target)), size)  # measure the exported file itself
        val = load_split_frames(cfg.data.root, "val", size, 1, ae.val_videos)
        summary["val_psnr"], summary["val_frames"] = reconstruction_psnr(vq, val)
        summary["val_psnr"] = round(summary["val_psnr"], 3)
    record = {
        "what": "demo VQVAE trained by pipeline.demo.vqvae_train",
        "code_version": code_version(),
        "summary": summary,
        "signature": signature,
        "config": cfg.to_dict(),
    }
    write_json_atomic(target.with_suffix(".json"), record)
    write_json_atomic(out_dir / "record.json", record)
    log(
        f"trained {step} steps in {elapsed / 60:.1f} min; wrote {target} ({summary['size_bytes'] / 1e6:.1f} MB, "
        f"sha256 {sha[:12]}); val PSNR {summary.get('val_psnr', float('nan')):.2f} dB"
    )
    return summary


app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)


@app.callback(invoke_without_command=True)
def train_cli(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (configs/<dataset>.yaml).")] = None,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    data_root: DataRootOption = None,
    fresh: Annotated[bool, typer.Option(help="Ignore <out_dir>/latest.pt and train from scratch.")] = False,
) -> None:
    """Train the autoencoder (resuming <autoencoder.out_dir>/latest.pt) and export it to autoencoder.export
    (default <autoencoder.out_dir>/vqvae.pt; the config's vqvae.ckpt is overwritten only when export names it)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        fail("--config is required")
    cfg = load_cli_config(config, set_, smoke, data_root)
    try:
        train_autoencoder(cfg, fresh=fresh)
    except (TrainError, ShardError) as exc:
        fail(str(exc))


@app.command()
def psnr(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    data_root: DataRootOption = None,
    ckpt: Annotated[Optional[Path], typer.Option(help="Checkpoint to evaluate (default: vqvae.ckpt of the config).")] = None,
    trained: Annotated[bool, typer.Option("--trained", help="Evaluate the autoencoder trainer's export (autoencoder.export) instead.")] = False,
    split: Annotated[Optional[str], typer.Option(help="Split (default: autoencoder.eval_split).")] = None,
    videos: Annotated[Optional[int], typer.Option(help="Use the first N videos (default: autoencoder.eval_videos; 0 = all).")] = None,
) -> None:
    """Print the mean per-frame reconstruction PSNR, 10 log10(4 / MSE) on [-1, 1], of decode(encode(x)); on demo
    data (a split with its state sidecar) also how well the sprites survive (found in their colour, position error,
    PSNR on sprite pixels)."""
    cfg = load_cli_config(config, set_, smoke, data_root)
    ckpt = ckpt or (export_path(cfg) if trained else None)
    vcfg = dataclasses.replace(cfg.vqvae, ckpt=str(ckpt)) if ckpt else cfg.vqvae
    split = split or cfg.autoencoder.eval_split
    videos = cfg.autoencoder.eval_videos if videos is None else videos
    if cfg.autoencoder.threads:
        torch.set_num_threads(cfg.autoencoder.threads)
    try:
        vq = build_vqvae(vcfg, cfg.data.image_size)
        frames = load_split_frames(cfg.data.root, split, cfg.data.image_size, 1, videos)
    except (ShardError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    t0 = time.time()
    value, count = reconstruction_psnr(vq, frames, batch_size=vcfg.batch_size, progress=True)
    typer.echo(
        f"PSNR {value:.2f} dB  ({count} frames of {cfg.data.root}/{split}, checkpoint {vq.ckpt}, "
        f"{time.time() - t0:.0f} s)"
    )
    if (Path(cfg.data.root) / split / STATE_FILE).is_file():
        typer.echo(object_fidelity_line(vq, Path(cfg.data.root) / split, videos))


def object_fidelity_line(vq: FrozenVQVAE, split_dir: Path, videos: int) -> str:
    """One line of :func:`~pipeline.demo.readout.decoder_fidelity` on a VQVAE's reconstructions."""

    from pipeline.demo.readout import decoder_fidelity
    from pipeline.demo.state import load_state

    reader = ShardReader(split_dir)
    try:
        fid = decoder_fidelity(vq.reconstruct_uint8, reader, load_state(split_dir), videos)
    finally:
        reader.close()
    own = {k: (float("nan") if v is None else v) for k, v in fid["palette_colours"].items()}  # None: no sprite found
    return (f"sprites: {100 * own['found_rate']:.1f} % found in their own colour, position error RMS "
            f"{own['rms_vs_exact']:.2f} px (median {own['median_vs_exact']:.2f}, 90th pct {own['p90_vs_exact']:.2f}), "
            f"spurious objects in {100 * own['spurious_rate']:.1f} % of frames; PSNR on sprite pixels "
            f"{fid['psnr_sprite_pixels']:.2f} dB  ({fid['frames']} frames of {fid['videos']} videos)")


if __name__ == "__main__":
    app()
