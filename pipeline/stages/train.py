"""Stage 2: train the interpolant flow on cached latents (``latents.zarr`` only; rank 0 keeps the VQVAE decoder for
sample videos). Writes ``<run>/checkpoints/{latest,NNNNNNN}.pt``, ``metrics.jsonl``, ``media/*.mp4`` and ``run.json``.

Per step s: lr(s) (:mod:`pipeline.stages.train_plan`) -> the global batch of s, its t and noise, all pure functions
of (seed, s) -> this process's share, in micro-batches whose gradients accumulate (per-example sum, mean over the
global batch; DDP all-reduces once, on the last) -> clip -> AdamW -> EMA (equal to the model until ``ema_start``).
A checkpoint holds optimizer, EMA and stream position, so a resumed run equals an uninterrupted one at the same
process count, and continues the same global stream at another (equal up to float summation order). Decision:
:mod:`pipeline.stages.train_state` (torch-free).
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
from pipeline.stages.encode import check_store_data
from pipeline.run.checkpoints import FlowCheckpoint, load_flow_checkpoint, save_checkpoint
from pipeline.run.config import Config
from pipeline.run.dist import DistInfo, all_ok, barrier, broadcast_object, init_distributed
from pipeline.core.interpolants import build_interpolant
from pipeline.core.model import build_model
from pipeline.run.locks import LockedError, locks_within
from pipeline.run.protocol import Verdict, settle
from pipeline.run.records import code_version, read_json, replace_directory, write_json_atomic
from pipeline.stages.train_monitor import MetricsLog, SampleVideos, TrainingError, ValidationLoss
from pipeline.stages.train_plan import (batch_split, checkpoints_to_delete, lr_at, numbered_checkpoints, recorded_plan,
                                        replan, start_plan)
from pipeline.stages.train_state import decide_run, init_source, rebuild_dir, run_output, training_inputs
from pipeline.core.latent_norm import LatentNorm, training_norm
from pipeline.data.triplets import TripletReader, TripletStream, auto_in_memory


def _step_seed(cfg: Config, rank: int, step: int) -> int:
    """The seed of step ``step``'s draws: rank 0's for the global batch's t and noise, each rank's for dropout."""
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
    """Train, resume or report up to date the run in ``out_dir`` (every torchrun rank calls this); ``force`` trains
    a run of other settings again beside it and swaps it in when finished. ``overrides`` (the --set list behind
    ``cfg``) go to ``run.json`` for later stages; ``dry_run`` only logs what it would do."""
    info = init_distributed()
    try:
        batch_split(cfg.train, info.world_size)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    split = LatentSplit(store, cfg.train.split)
    if not split.attrs.get("complete"):
        raise TrainingError(f"{store} is not complete: finish `make encode` first")
    _check_latent_shape(cfg, split, store)
    check_store_data(cfg, split)  # another dataset's store of the same layout is refused, naming its config
    hashes = dict((read_json(out_dir / "run.json") or {}).get("file_hashes", {}))  # a warm start's source, hashed once
    try:
        inputs = training_inputs(cfg, split.attrs["fingerprint"], split.attrs.get("views"), out_dir, hashes)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(str(exc)) from None
    with contextlib.ExitStack() as held:  # rank 0 holds the run's lock until training ends
        clean = [run / sub for run in (out_dir, rebuild_dir(out_dir)) for sub in ("", "checkpoints", "media")]
        verdict = settle(run_output(out_dir), lambda: decide_run(out_dir, inputs, cfg, force), held, log, dry_run,
                         (TrainingError, TrainingError), clean=clean, what=f" from scratch ({cfg.train.steps} steps)",
                         then=_clear_rebuild)
        if dry_run or verdict.action == "up to date":
            return "dry run" if dry_run else verdict.action
        target = Path(verdict.target)  # the run, or under --force its rebuild beside it (train_state.decide_run)
        _train(cfg, store, target, split, verdict, info, overrides or [], hashes, log)
        if target != out_dir:
            failed = broadcast_object(_swap_in(target, out_dir, log) if info.is_main else None)
            if failed:
                raise TrainingError(failed)
        return "trained"


def _train(cfg: Config, store: str, out_dir: Path, split: LatentSplit, verdict: Verdict, info: DistInfo,
           overrides: list[str], hashes: dict, log) -> str:
    """The training loop of every rank: from scratch (or a warm start), or from the run's latest checkpoint."""
    ckpt_dir = out_dir / "checkpoints"
    torch.manual_seed(cfg.seed)  # the same initial weights in every run of this config (and on every rank)
    model = build_model(cfg.model).to(info.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            eps=cfg.train.adam_eps, weight_decay=cfg.train.weight_decay)
    inputs, key = verdict.inputs, verdict.key
    try:
        norm = training_norm(cfg.train.latent_norm, split.attrs.get("stats"), cfg.train.split, store)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    start, plan, worlds = 0, start_plan(cfg.train.steps), [{"from_step": 0, "processes": info.world_size}]
    if verdict.action == "resume":
        start, plan, worlds = _restore(ckpt_dir / "latest.pt", model, ema, opt, info, out_dir)
    elif cfg.train.init_from:
        _warm_start(init_source(cfg, out_dir), cfg.train.init_from, model, ema, norm)
    plan = replan(plan, start, cfg.train.steps)
    if worlds[-1]["processes"] != info.world_size:
        worlds = [*worlds, {"from_step": start, "processes": info.world_size}]
    local_batch, micro = batch_split(cfg.train, info.world_size)
    if info.is_main:
        _record_start(out_dir, verdict, cfg, info, {"args": {"set": overrides}, "steps_plan": plan,
                                                    "world_sizes": worlds, "file_hashes": hashes, "step": start})
        _announce(out_dir, cfg, info, start, plan, worlds, micro, log)
    net = DDP(model) if info.world_size > 1 else model
    if cfg.train.compile:
        net = torch.compile(net)
    interpolant = build_interpolant(cfg.interpolant)

    if auto_in_memory(split, cfg.loader.in_memory, cfg.loader.memory_fraction):
        split.load_into_memory()
    reader = TripletReader(split, cfg.data.frames_per_sample, cfg.data.skip_frames, norm)
    stream = TripletStream(reader, cfg.train.batch_size, seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                           start_step=start, num_steps=cfg.train.steps - start)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.loader.num_workers, pin_memory=info.device.type == "cuda",
                        generator=torch.Generator())
    logger = MetricsLog(cfg, out_dir, key, start) if info.is_main else None
    sampler = SampleVideos(cfg, store, out_dir, norm) if info.is_main and cfg.train.sample_every else None
    validation = ValidationLoss(cfg, store, interpolant, info.device, norm) if info.is_main and cfg.train.val_every else None
    overfit = None

    wait_start = time.perf_counter()
    for batch in loader:
        step = int(batch["step"])
        data_wait = time.perf_counter() - wait_start
        if cfg.train.overfit != "none":
            overfit = overfit or _overfit_batch(batch, cfg.train.overfit)
            batch = overfit
        torch.manual_seed(_step_seed(cfg, info.rank, step))
        lr = lr_at(step, cfg.train, plan)
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
            _checkpoint(ckpt_dir, done, model, ema, opt, cfg, key, inputs, info, plan, worlds, norm)
        wait_start = time.perf_counter()
    if logger:
        logger.finish()
    barrier()
    return "trained"


def _record_start(out_dir: Path, verdict: Verdict, cfg: Config, info: DistInfo, now: dict) -> None:
    """Rank 0, before this launch's first step: a new run's whole ``run.json``; for a resumed run the entries of
    ``now``: overrides (which later stages reapply, e.g. a raised ``train.steps``), steps plan, process counts, file
    hashes and the step of the checkpoint it continues from (ahead of the recorded one after a kill between them)."""
    path = out_dir / "run.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if verdict.action == "resume":
        write_json_atomic(path, {**(read_json(path) or {}), **now})
        return
    write_json_atomic(path, {"fingerprint": verdict.key, "inputs": verdict.inputs, "config": cfg.to_dict(), **now,
                             "code_version": code_version(), "world_size": info.world_size,
                             "torch_threads": torch.get_num_threads()})


def _announce(out_dir: Path, cfg: Config, info: DistInfo, start: int, plan, worlds, micro: int, log) -> None:
    """Rank 0: the launch's first line, and notes on what differs from how the run began."""
    what = f"resuming {out_dir} at step {start}" if start else f"starting {out_dir}"
    accumulate = f", {cfg.train.batch_size // info.world_size // micro} micro-batches of {micro} per process" \
        if micro < cfg.train.batch_size // info.world_size else ""
    log(f"train: {what}: {cfg.train.steps} steps, global batch {cfg.train.batch_size} over "
        f"{info.world_size} process(es) on {info.device.type}{accumulate}")
    if start and plan[-1]["from_step"] == start and len(plan) > 1 and cfg.train.schedule == "cosine":
        log(f"train: note: the cosine decay is re-planned from step {start} (lr {lr_at(start, cfg.train, plan):.2e}) "
            f"to reach 0 (floor train.min_lr) at step {cfg.train.steps}")
    if start and len(worlds) > 1 and worlds[-1]["from_step"] == start:
        log(f"train: note: resuming with {info.world_size} process(es) where the last launch had "
            f"{worlds[-2]['processes']}: the same global batches continue, equal up to float summation order")
    if start:
        _note_thread_change(out_dir, log)


def _check_latent_shape(cfg: Config, split: LatentSplit, store: str) -> None:
    want = (cfg.model.state_size, *cfg.model.state_res)
    if tuple(split.latent_shape) != want:
        raise TrainingError(f"{store}: latents are {list(split.latent_shape)} but model.state_size/state_res expect {list(want)}")


def _clear_rebuild(verdict: Verdict) -> None:
    """Rank 0, before a --force rebuild starts: remove what an abandoned rebuild of other settings left beside the
    run (a rebuild verdict never targets the run itself)."""
    if verdict.action == "rebuild" and Path(verdict.target).exists():
        shutil.rmtree(verdict.target)


def _swap_in(rebuild: Path, out_dir: Path, log) -> str | None:
    """Rank 0, under the run's lock, once the rebuild has trained all its steps: it replaces the whole run directory
    (the old run's forecasts and scores go with it) by :func:`replace_directory`, holding the locks of the run's later
    stages so none writes into a directory moving away; a kill between its renames is finished by the next launch
    (the protocol's recovery). None, or the error for every rank."""
    try:
        with locks_within(out_dir, "train", log):
            replace_directory(rebuild, out_dir)
    except (LockedError, OSError) as exc:
        return f"{rebuild} has finished but cannot replace {out_dir} now: {exc} (make train FORCE=1 swaps it in)"
    log(f"train: {out_dir} replaced by its rebuild")
    return None


def _restore(path: Path, model, ema, opt, info: DistInfo, out_dir: Path) -> tuple[int, list, list]:
    """Load the run's latest checkpoint into the model, EMA and optimizer; returns the step to continue from, the
    run's steps plan and its process counts so far."""
    ckpt = load_flow_checkpoint(path)
    sampler = _check_resumable(ckpt, path, info)
    model.load_state_dict(ckpt.model)
    ema.load_state_dict(ckpt.ema)
    opt.load_state_dict(ckpt.raw["opt"])
    begun = ((ckpt.config or {}).get("train") or {}).get("steps", ckpt.step)
    worlds = ckpt.raw.get("world_sizes") or [{"from_step": 0, "processes": sampler["world_size"]}]
    return ckpt.step, recorded_plan(ckpt.raw, begun), worlds


def _check_resumable(ckpt: FlowCheckpoint, path: Path, info: DistInfo) -> dict:
    """The checkpoint's stream position; refuses a checkpoint of another trainer, or one whose stream was per process
    (written by an earlier version with several processes: its batches cannot be continued). Returns the sampler."""
    sampler = ckpt.raw.get("sampler")
    if ckpt.kind != "pipeline" or not isinstance(ckpt.raw.get("opt"), dict) or not isinstance(sampler, dict):
        raise TrainingError(f"{path}: not a checkpoint of this trainer (no format tag, optimizer state or data-stream "
                            "position), so the run cannot resume from it; move it away to train from scratch")
    if sampler.get("kind") == "TripletStream" and sampler.get("world_size") != 1:
        raise TrainingError(
            f"{path} was written by an earlier version of the trainer with {sampler.get('world_size')} processes, "
            "whose data stream depended on the process count: this version draws each global batch whole, so it "
            "cannot continue that stream. The run's checkpoints still forecast (make forecast CKPT=...); train on "
            "as a new run (make train RUN=<new name>, train.init_from=<this run> to start from its weights).")
    return sampler


def _warm_start(path: Path, source: str, model: torch.nn.Module, ema: torch.nn.Module, norm: LatentNorm) -> None:
    """A new run's weights from a checkpoint: the raw model from its model weights, the EMA from its EMA (or the
    model's when it has none); the optimizer stays fresh. Refused when one side standardises latents and the other
    does not (its network would start in other coordinates)."""
    ckpt = load_flow_checkpoint(path)
    if LatentNorm.from_record(ckpt.raw.get("latent_norm"), str(path)).active != norm.active:
        theirs, mine = ("on standardised latents", "raw") if not norm.active else ("on raw latents", "standardised")
        raise TrainingError(f"train.init_from={source}: {path} was trained {theirs}; this run trains on {mine} "
                            "latents (train.latent_norm)")
    try:
        model.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.weights(use_ema=True))
    except RuntimeError as exc:  # load_state_dict: a headline, then one line per missing or mis-shaped tensor
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise TrainingError(f"train.init_from={source}: {path} does not fit this run's model settings (model.*): "
                            f"{detail}") from None


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
    """One update from this process's share of the global batch of ``step``, in micro-batches of
    ``train.micro_batch`` whose gradients accumulate (DDP all-reduces on the last only). Returns (the share's mean
    loss, the pre-clip gradient norm)."""
    device = info.device
    local, micro = batch_split(cfg.train, info.world_size)
    x1, ref, ctx = (batch[k].to(device, non_blocking=True) for k in ("target", "reference", "context"))
    gap = batch["gap"].to(device)
    if x1.shape[0] != local:
        raise TrainingError(f"a batch of {x1.shape[0]} examples; train.batch_size={cfg.train.batch_size} over "
                            f"{info.world_size} process(es) is {local} per process")
    t, x0, xi = _step_draws(interpolant, cfg, step, x1.shape[1:], device, rows=slice(info.rank * local, (info.rank + 1) * local))
    net.train()
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for lo in range(0, local, micro):
        rows = slice(lo, lo + micro)
        last = lo + micro >= local
        with contextlib.nullcontext() if last else getattr(net, "no_sync", contextlib.nullcontext)():
            pair = interpolant.training_pair(x1[rows], ref[rows], t[rows], xi=xi[rows],
                                             x0=None if x0 is None else x0[rows])
            with torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.bf16 else contextlib.nullcontext():
                pred = net(pair.xt, t[rows], ref[rows], ctx[rows], gap[rows])
            loss = interpolant.per_example_loss(pred.float(), pair.target).sum() / local
            if not all_ok(bool(torch.isfinite(loss))):
                raise TrainingError(f"non-finite loss at step {step} (rank {info.rank}: {loss.item()}); inputs finite: "
                                    f"{bool(torch.isfinite(pair.xt).all())}, prediction finite: "
                                    f"{bool(torch.isfinite(pred).all())}")
            loss.backward()
        total += loss.item()
    clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    if not math.isfinite(grad_norm):
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        raise TrainingError(f"non-finite gradient at step {step} in {bad[:5]}")
    opt.step()
    return total, grad_norm


def _step_draws(interpolant, cfg: Config, step: int, shape, device: torch.device, rows: slice):
    """Rows ``rows`` of the global batch's times t, base draws x0 (gaussian base; else None) and noise xi: drawn
    whole from (seed, step), so no example's draws depend on the process count or the micro-batch."""
    gen = torch.Generator(device=device).manual_seed(_step_seed(cfg, 0, step) + 1)
    full = (cfg.train.batch_size, *shape)
    t = interpolant.sample_t(cfg.train.batch_size, generator=gen, device=device)
    x0 = torch.randn(full, generator=gen, device=device) if interpolant.base == "gaussian" else None
    xi = torch.randn(full, generator=gen, device=device)
    return t[rows], None if x0 is None else x0[rows], xi[rows]


def _checkpoint(ckpt_dir: Path, done: int, model, ema, opt, cfg: Config, key: str, inputs, info: DistInfo,
                plan: list[dict[str, int]], worlds: list[dict[str, int]], norm: LatentNorm) -> None:
    """Rank 0 writes latest.pt (and a numbered copy on save_every, then applies retention); run.json records the
    step last. The latent standardisation trained with travels with the weights (sampling applies it)."""
    if info.is_main:
        payload = {
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": done,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "sampler": {"kind": "GlobalTripletStream", "next_step": done, "samples": done * cfg.train.batch_size,
                        "batch_size": cfg.train.batch_size, "seed": cfg.seed, "world_size": info.world_size},
            "steps_plan": plan, "world_sizes": worlds, "latent_norm": norm.record(),
            "config": cfg.to_dict(), "fingerprint": key, "cache_fingerprint": inputs["cache"], "code_version": code_version(),
        }
        if done % cfg.train.save_every == 0 or done == cfg.train.steps:
            save_checkpoint(ckpt_dir / f"{done:07d}.pt", payload)
            numbered = numbered_checkpoints(ckpt_dir)
            for step in checkpoints_to_delete(list(numbered), cfg.train.keep, cfg.train.keep_every):
                numbered[step].unlink(missing_ok=True)
        save_checkpoint(ckpt_dir / "latest.pt", payload)
        run = ckpt_dir.parent / "run.json"
        write_json_atomic(run, {**(read_json(run) or {}), "step": done})
    barrier()
