"""Stage 2: train the interpolant flow on cached latents (``latents.zarr`` only; rank 0 keeps the VQVAE decoder for
sample videos). Writes ``<run>/checkpoints/{latest,NNNNNNN}.pt``, ``metrics.jsonl``, ``media/*.mp4`` and ``run.json``.

Per step s: lr(s) → triplet batch, a pure function of (seed, rank, s) → t, noise, (I_t, target) → loss (per-example
sum, batch mean) → backward → clip → AdamW → EMA (equal to the model until ``ema_start``). The global torch RNG is
re-seeded from (seed, rank, s) and a checkpoint holds optimizer, EMA and sampler position, so a resumed run equals an
uninterrupted one at the same world size. Decision: :mod:`pipeline.stages.train_state` (torch-free).
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from pipeline.data.cache import LatentSplit
from pipeline.run.checkpoints import FlowCheckpoint, load_flow_checkpoint, save_checkpoint
from pipeline.run.config import Config
from pipeline.run.dist import DistInfo, all_ok, barrier, init_distributed
from pipeline.core.interpolants import build_interpolant
from pipeline.core.model import build_model
from pipeline.run.protocol import Verdict, settle
from pipeline.run.records import code_version, read_json, write_json_atomic
from pipeline.stages.train_monitor import MetricsLog, SampleVideos
from pipeline.stages.train_state import decide_run, run_output, training_inputs
from pipeline.data.triplets import TripletReader, TripletStream, auto_in_memory


class TrainingError(RuntimeError):
    """Training cannot start or continue (stale cache, NaN, ...); the message says where and why."""


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate of update ``step``: linear warm-up, then constant or cosine, never below min_lr."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    lr = t.lr * warm
    if t.schedule == "cosine" and step >= t.warmup_steps:
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        lr = t.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(lr, t.min_lr)


def _step_seed(cfg: Config, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, rank, step, 7]).generate_state(1)[0])


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


def train(cfg: Config, store: str, out_dir: Path, force: bool = False, dry_run: bool = False,
          overrides: list[str] | None = None, log: Callable[[str], None] = print) -> str:
    """Train, resume or report up to date the run in ``out_dir`` (every torchrun rank calls this). ``overrides``
    (the --set list behind ``cfg``) go to ``run.json`` for later stages; ``dry_run`` only logs what it would do."""
    info = init_distributed()
    if cfg.train.batch_size % info.world_size:
        raise TrainingError(f"train.batch_size={cfg.train.batch_size} does not divide by {info.world_size} processes")
    split = LatentSplit(store, cfg.train.split)
    if not split.attrs.get("complete"):
        raise TrainingError(f"{store} is not complete: finish `make encode` first")
    _check_latent_shape(cfg, split, store)
    inputs = training_inputs(cfg, split.attrs["fingerprint"], split.attrs.get("views"))
    with contextlib.ExitStack() as held:  # rank 0 holds the run's lock until training ends
        verdict = settle(run_output(out_dir), lambda: decide_run(out_dir, inputs, cfg, force), held, log, dry_run,
                         (TrainingError, TrainingError), clean=[out_dir, out_dir / "checkpoints", out_dir / "media"],
                         what=f" from scratch ({cfg.train.steps} steps)")
        if dry_run or verdict.action == "up to date":
            return "dry run" if dry_run else verdict.action
        if verdict.action == "rebuild" and info.is_main:
            _discard(out_dir)
        barrier()
        return _train(cfg, store, out_dir, split, verdict, info, overrides or [], log)


def _train(cfg: Config, store: str, out_dir: Path, split: LatentSplit, verdict: Verdict, info: DistInfo,
           overrides: list[str], log) -> str:
    """The training loop of every rank, from scratch or from the run's latest checkpoint."""
    ckpt_dir = out_dir / "checkpoints"
    torch.manual_seed(cfg.seed)  # the same initial weights in every run of this config (and on every rank)
    model = build_model(cfg.model).to(info.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            eps=cfg.train.adam_eps, weight_decay=cfg.train.weight_decay)
    inputs, key = verdict.inputs, verdict.key
    start = _restore(ckpt_dir / "latest.pt", model, ema, opt, info) if verdict.action == "resume" else 0
    if info.is_main:
        what = f"resuming {out_dir} at step {start}" if start else f"starting {out_dir}"
        log(f"train: {what}: {cfg.train.steps} steps, global batch {cfg.train.batch_size} over "
            f"{info.world_size} process(es) on {info.device.type}")
        if start:
            _note_thread_change(out_dir, log)
    net = DDP(model) if info.world_size > 1 else model
    if cfg.train.compile:
        net = torch.compile(net)
    interpolant = build_interpolant(cfg.interpolant)

    if auto_in_memory(split, cfg.loader.in_memory, cfg.loader.memory_fraction):
        split.load_into_memory()
    reader = TripletReader(split, cfg.data.frames_per_sample, cfg.data.skip_frames)
    local_batch = cfg.train.batch_size // info.world_size
    stream = TripletStream(reader, local_batch, seed=cfg.seed, rank=info.rank, start_step=start, num_steps=cfg.train.steps - start)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.loader.num_workers, pin_memory=info.device.type == "cuda",
                        generator=torch.Generator())
    logger = MetricsLog(cfg, out_dir, info, inputs, key, overrides, resumed=start > 0) if info.is_main else None
    sampler = SampleVideos(cfg, store, out_dir) if info.is_main and cfg.train.sample_every else None
    validation = _Validation(cfg, store, interpolant, info.device) if info.is_main and cfg.train.val_every else None
    overfit = None

    wait_start = time.perf_counter()
    for batch in loader:
        step = int(batch["step"])
        data_wait = time.perf_counter() - wait_start
        if cfg.train.overfit != "none":
            overfit = overfit or _overfit_batch(batch, cfg.train.overfit)
            batch = overfit
        torch.manual_seed(_step_seed(cfg, info.rank, step))
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, grad_norm = train_step(net, model, opt, interpolant, batch, info, cfg, step)
        update_ema(ema, model, cfg.train.ema_decay if step >= cfg.train.ema_start else 0.0)
        done = step + 1
        if validation and (done % cfg.train.val_every == 0 or done == cfg.train.steps):
            logger.validation(done, validation.losses(model, ema))  # rank 0 only, before the step's training row
        if logger:
            logger.step(done, loss, grad_norm, lr, local_batch * info.world_size, data_wait)
        # Video before checkpoint: a run stopped in between redoes the step, so no checkpointed step lacks its video.
        if sampler and (done % cfg.train.sample_every == 0 or done == cfg.train.steps):
            path = sampler.write(done, model, ema, interpolant)
            logger.media(done, path)
        if done % cfg.train.latest_every == 0 or done % cfg.train.save_every == 0 or done == cfg.train.steps:
            _checkpoint(ckpt_dir, done, model, ema, opt, cfg, key, inputs, info)
        wait_start = time.perf_counter()
    if logger:
        logger.finish()
    barrier()
    return "trained"


def _check_latent_shape(cfg: Config, split: LatentSplit, store: str) -> None:
    want = (cfg.model.state_size, *cfg.model.state_res)
    if tuple(split.latent_shape) != want:
        raise TrainingError(f"{store}: latents are {list(split.latent_shape)} but model.state_size/state_res expect {list(want)}")


def _discard(out_dir: Path) -> None:
    """--force: delete a run's training outputs (its forecasts and evaluation are refused or redone downstream)."""
    for name in ("checkpoints", "media", "metrics.jsonl", "run.json"):
        target = out_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def _restore(path: Path, model, ema, opt, info: DistInfo) -> int:
    """Load the run's latest checkpoint into the model, EMA and optimizer; returns the step to continue from."""
    ckpt = load_flow_checkpoint(path)
    _check_resumable(ckpt, path, info)
    model.load_state_dict(ckpt.model)
    ema.load_state_dict(ckpt.ema)
    opt.load_state_dict(ckpt.raw["opt"])
    return ckpt.step


def _check_resumable(ckpt: FlowCheckpoint, path: Path, info: DistInfo) -> None:
    """Refuse a checkpoint of another trainer, or of another world size (the data stream depends on it)."""
    sampler = ckpt.raw.get("sampler")
    if ckpt.kind != "pipeline" or not isinstance(ckpt.raw.get("opt"), dict) or not isinstance(sampler, dict):
        raise TrainingError(f"{path}: not a checkpoint of this trainer (no format tag, optimizer state or data-stream "
                            "position), so the run cannot resume from it; move it away to train from scratch")
    recorded = sampler.get("world_size")
    if recorded != info.world_size:
        raise TrainingError(
            f"{path} was written by {recorded} training process(es), and this run has {info.world_size}: each rank "
            f"draws its batches from (seed, rank, step), so resuming with another world size would continue a "
            f"different data stream and match neither an uninterrupted {recorded}- nor {info.world_size}-process run. "
            f"Resume with {recorded} process(es) in all (make train TRAIN_NPROC={recorded}; TRAIN_NPROC x NNODES "
            f"across nodes), or train with {info.world_size} as a new run (make train RUN=<new name>).")


def _note_thread_change(out_dir: Path, log) -> None:
    """Note a resume with another torch thread count: CPU float32 sums then differ in the last bits."""
    began = (read_json(out_dir / "run.json") or {}).get("torch_threads")
    now = torch.get_num_threads()
    if began is not None and began != now:
        log(f"train: note: this run began with {began} torch thread(s) per process and resumes with {now}; its "
            f"weights will differ in the last bits from an uninterrupted run (THREADS={began} resumes it as it began)")


def _overfit_batch(batch: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """The first batch, repeated (``batch``) or made of copies of its first example (``one``)."""
    if mode == "one":
        return {k: v[:1].expand_as(v).clone() if v.ndim else v for k, v in batch.items()}
    return batch


def train_step(net, model, opt, interpolant, batch, info: DistInfo, cfg: Config, step: int) -> tuple[float, float]:
    device = info.device
    x1, ref, ctx = (batch[k].to(device, non_blocking=True) for k in ("target", "reference", "context"))
    gap = batch["gap"].to(device)
    gen = torch.Generator(device=device).manual_seed(_step_seed(cfg, info.rank, step) + 1)
    t = interpolant.sample_t(x1.shape[0], generator=gen, device=device)
    pair = interpolant.training_pair(x1, ref, t, generator=gen)
    net.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.bf16 else contextlib.nullcontext()
    with autocast:
        pred = net(pair.xt, t, ref, ctx, gap)
    loss = interpolant.loss(pred.float(), pair.target)
    if not all_ok(bool(torch.isfinite(loss))):
        raise TrainingError(f"non-finite loss at step {step} (rank {info.rank}: {loss.item()}); inputs finite: "
                            f"{bool(torch.isfinite(pair.xt).all())}, prediction finite: {bool(torch.isfinite(pred).all())}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    if not math.isfinite(grad_norm):
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        raise TrainingError(f"non-finite gradient at step {step} in {bad[:5]}")
    opt.step()
    return loss.item(), grad_norm


def _checkpoint(ckpt_dir: Path, done: int, model, ema, opt, cfg: Config, key: str, inputs, info: DistInfo) -> None:
    """Rank 0 writes latest.pt (and a numbered copy on save_every); run.json records the step last."""
    if info.is_main:
        payload = {
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": done,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "sampler": {"kind": "TripletStream", "next_step": done, "seed": cfg.seed, "world_size": info.world_size},
            "config": cfg.to_dict(), "fingerprint": key, "cache_fingerprint": inputs["cache"], "code_version": code_version(),
        }
        if done % cfg.train.save_every == 0 or done == cfg.train.steps:
            save_checkpoint(ckpt_dir / f"{done:07d}.pt", payload)
        save_checkpoint(ckpt_dir / "latest.pt", payload)
        run = ckpt_dir.parent / "run.json"
        write_json_atomic(run, {**(read_json(run) or {}), "step": done})
    barrier()


class _Validation:
    """Rank 0: loss of the raw model and the EMA on fixed ``val_split`` triplets, t and noise, drawn once from the seed
    (every evaluation and resume scores the same set). Eval mode, no grad, no global-RNG draws: training is the same
    with validation on or off."""

    TAG = 11  # separates the validation draws from the training stream's (seed, rank, step)

    def __init__(self, cfg: Config, store: str, interpolant, device: torch.device):
        try:
            split = LatentSplit(store, cfg.train.val_split)
            reader = TripletReader(split, cfg.data.frames_per_sample, cfg.data.skip_frames)
        except (FileNotFoundError, ValueError) as exc:  # no such split, or no video long enough for a clip
            raise TrainingError(f"train.val_split={cfg.train.val_split}: {exc}; choose a split with clips or set "
                                "train.val_every=0") from None
        triplets, noise = np.random.SeedSequence([cfg.seed, self.TAG]).spawn(2)
        batch = reader.batch(np.random.default_rng(triplets), cfg.train.val_clips)
        gen = torch.Generator().manual_seed(int(noise.generate_state(1)[0]))
        t = interpolant.sample_t(cfg.train.val_clips, generator=gen)
        pair = interpolant.training_pair(batch["target"], batch["reference"], t, generator=gen)
        self.inputs = [x.to(device) for x in (pair.xt, t, batch["reference"], batch["context"], batch["gap"])]
        self.target = pair.target.to(device)
        self.interpolant, self.chunk, self.bf16 = interpolant, cfg.train.batch_size, cfg.train.bf16

    def losses(self, model: torch.nn.Module, ema: torch.nn.Module) -> dict[str, float]:
        """``val_loss`` (raw model) and ``val_loss_ema`` on the fixed set."""
        return {"val_loss": self._loss(model), "val_loss_ema": self._loss(ema)}

    @torch.no_grad()
    def _loss(self, net: torch.nn.Module) -> float:
        """The training loss (per-example sum, mean over the set) of ``net`` in eval mode; its mode is restored."""
        was_training = net.training
        net.eval()
        device = self.target.device
        per_example = []
        for i in range(0, len(self.target), self.chunk):
            with torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext():
                pred = net(*(x[i : i + self.chunk] for x in self.inputs))
            per_example.append(self.interpolant.per_example_loss(pred.float(), self.target[i : i + self.chunk]))
        net.train(was_training)
        return float(torch.cat(per_example).mean())
