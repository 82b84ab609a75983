"""Stage 2: train the interpolant flow on cached latents — one loop you can read in one sitting.

Contract: reads ``latents.zarr`` only (the VQVAE encoder never runs: rank 0 keeps only the decoder, for the
sample videos); writes ``<run>/checkpoints/{latest,NNNNNNN}.pt``, ``<run>/metrics.jsonl``, ``<run>/media/*.mp4`` and
``<run>/run.json``. The run's fingerprint covers the cache fingerprint and every setting that changes the
trained weights; logging cadence and wandb settings are excluded.

Per step ``s`` (reference order, bugs fixed): set lr(s) BEFORE the update (bug 6) → draw the triplet batch
(a pure function of (seed, rank, s)) → t, noise, (I_t, target) → loss = per-example sum, batch mean →
backward → clip → AdamW step → EMA (equal to the model until ``ema_start``, then averaged: bug 4). Global torch RNG is
re-seeded from (seed, rank, s) each step (dropout), so a resumed run reproduces an uninterrupted one exactly
(bug 3: the step, optimizer, EMA and sampler position are all restored) — at the same world size, which a resume
therefore requires.

One launch writes a run at a time (``<run>/.train.lock``, held by rank 0). A step's sample video is written
before its checkpoint, so a checkpointed step never lacks its video. What a run depends on and the decision for its
directory are in :mod:`pipeline.stages.train_state`, torch-free, so ``train_latent.py`` answers "up to date" without
loading torch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from pipeline.data.cache import LatentSplit
from pipeline.run.checkpoints import FlowCheckpoint, load_flow_checkpoint, save_checkpoint
from pipeline.run.config import Config
from pipeline.run.dist import DistInfo, all_ok, barrier, broadcast_object, init_distributed
from pipeline.core.interpolants import build_interpolant
from pipeline.core.model import build_model
from pipeline.run.locks import LockedError, output_lock
from pipeline.run.records import (atomic_path, clean_temporaries, code_version, fingerprint, read_json, write_error,
                              write_json_atomic)
from pipeline.run.tracking import log_row, log_video, start_training_run
from pipeline.stages.train_state import decide_run, training_inputs
from pipeline.data.triplets import TripletReader, TripletStream, auto_in_memory

LOCK = ".train.lock"  # in the run directory: one training process (rank 0 of one launch) writes a run at a time
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
    """Train (or resume, or report up to date) the run in ``out_dir``; every torchrun rank calls this.

    ``overrides`` (the --set list that made ``cfg``) is recorded in ``run.json`` so later stages of the run reapply
    it. ``dry_run`` logs what would be done (fresh / resume / up to date / refuse) and changes nothing.
    """
    info = init_distributed()
    if cfg.train.batch_size % info.world_size:
        raise TrainingError(f"train.batch_size={cfg.train.batch_size} does not divide by {info.world_size} processes")
    split = LatentSplit(store, cfg.train.split)
    if not split.attrs.get("complete"):
        raise TrainingError(f"{store} is not complete: finish `make encode` first")
    _check_latent_shape(cfg, split, store)
    inputs = training_inputs(cfg, split.attrs["fingerprint"], split.attrs.get("views"))
    key = fingerprint(inputs)
    with contextlib.ExitStack() as held:  # rank 0 holds the run's lock until training ends
        action, message = broadcast_object(_settle(out_dir, inputs, key, cfg, force, dry_run, held, log)
                                           if info.is_main else None)
        if dry_run:
            verdict = {"fresh": f"train {out_dir} from scratch ({cfg.train.steps} steps)", "resume": f"resume {out_dir}",
                       "stale": f"refuse: {message}", "discard": f"discard {out_dir} and train from scratch ({message})"}
            if action != "up to date" and info.is_main:
                log(f"train: dry run: would {verdict.get(action, f'stop: {message}')}")
            return "dry run"
        if action in ("stale", "locked", "error"):
            raise (LockedError if action == "locked" else TrainingError)(message)
        if action == "up to date":
            return action
        if action == "discard" and info.is_main:
            _discard(out_dir, message, log)
        barrier()
        return _train(cfg, store, out_dir, split, inputs, key, action, info, overrides or [], log)


def _train(cfg: Config, store: str, out_dir: Path, split: LatentSplit, inputs, key: str, action: str, info: DistInfo,
           overrides: list[str], log) -> str:
    """The training loop of every rank, from scratch or from the run's latest checkpoint."""
    ckpt_dir = out_dir / "checkpoints"
    torch.manual_seed(cfg.seed)  # the same initial weights in every run of this config (and on every rank)
    model = build_model(cfg.model).to(info.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            eps=cfg.train.adam_eps, weight_decay=cfg.train.weight_decay)
    start = 0
    if action == "resume":
        start = _restore(ckpt_dir / "latest.pt", model, ema, opt, info)
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
    logger = _Logger(cfg, out_dir, info, inputs, key, overrides, resumed=start > 0) if info.is_main else None
    sampler = _SampleVideos(cfg, store, out_dir) if info.is_main and cfg.train.sample_every else None
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
        # Until ema_start the EMA follows the model exactly (decay 0), so it starts in sync (bug 4) and every
        # checkpoint's EMA weights are usable; afterwards it averages with ema_decay.
        update_ema(ema, model, cfg.train.ema_decay if step >= cfg.train.ema_start else 0.0)
        done = step + 1
        if validation and (done % cfg.train.val_every == 0 or done == cfg.train.steps):
            logger.validation(done, validation.losses(model, ema))  # rank 0 only, before the step's training row
        if logger:
            logger.step(done, loss, grad_norm, lr, local_batch * info.world_size, data_wait)
        # The step's sample video before its checkpoint: a run that stops in between redoes the step, so every
        # step up to the latest checkpoint has its video.
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


def _settle(out_dir: Path, inputs, key, cfg: Config, force: bool, dry_run: bool, held: contextlib.ExitStack,
            log) -> tuple[str, str]:
    """Rank 0: (action, message) for every rank; work is decided again under the run's lock, which ``held`` keeps.

    The first decision takes no lock, so checking a finished run never collides with another check. Under the
    lock, the temporaries that interrupted writes left in the run are removed (their writers are dead).
    """
    try:
        verdict = decide_run(out_dir, inputs, key, cfg, force)
        if verdict[0] == "up to date":
            log(verdict[1])
        if dry_run or verdict[0] in ("up to date", "stale"):
            return verdict
        held.enter_context(output_lock(out_dir / LOCK, out_dir, "train", log))
        clean_temporaries("train", [out_dir, out_dir / "checkpoints", out_dir / "media"], log)
        return decide_run(out_dir, inputs, key, cfg, force)
    except LockedError as exc:
        return "locked", str(exc)
    except OSError as exc:  # a read-only output directory, for example: the message names it
        return "error", str(exc)
    except Exception as exc:  # reported to every rank, so none waits forever at the broadcast
        return "error", f"{type(exc).__name__}: {exc}"


def _discard(out_dir: Path, why: str, log) -> None:
    """--force: delete a run's training outputs (its forecasts and evaluation are refused or redone downstream)."""
    log(f"train: --force: discarding {out_dir} ({why})")
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
    """Refuse a checkpoint this trainer did not write, and one written by another number of processes.

    Each rank draws its batches from (seed, rank, step), so the data stream depends on the world size: continuing
    with another one would match neither an uninterrupted run of the old size nor one of the new.
    """
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
    """Say when a resumed run trains with another torch thread count than it began with: CPU float32 sums then
    round differently in the last bits (1 vs 2 threads: max |dweight| ~1e-6 after 3 steps), so the weights will not
    be bit-identical to an uninterrupted run. The count follows the CPUs idle at start (pipeline/run/threads.py)."""
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


class _Logger:
    """Rank 0: metrics.jsonl, wandb (offline by default) and a progress line with ETA.

    metrics.jsonl holds one JSON object per line, each with ``step``: training rows (loss, grad_norm, lr,
    clip_fraction, ...; ``clip_warning`` once when clipping acts on nearly every step) and validation rows
    (``val_loss``, ``val_loss_ema``). A validation row comes before the training row of the same step.
    """

    CLIP_WARN_FRACTION = 0.9  # warn once when clipping acts on at least this fraction of a logging window's steps

    def __init__(self, cfg: Config, out_dir: Path, info: DistInfo, inputs, key: str, overrides: list[str], resumed: bool):
        self.cfg, self.out_dir = cfg, out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            write_json_atomic(out_dir / "run.json", {"fingerprint": key, "inputs": inputs, "config": cfg.to_dict(),
                                                     "args": {"set": overrides}, "code_version": code_version(),
                                                     "world_size": info.world_size,
                                                     "torch_threads": torch.get_num_threads(), "step": 0})
        self.metrics = self._open_metrics(out_dir / "metrics.jsonl", resumed)
        self.window: list[tuple[float, float, float]] = []
        self.window_start = time.perf_counter()
        self.wait = 0.0
        self.clip_warned = False
        self.wandb = start_training_run(cfg, out_dir, key)

    def _open_metrics(self, path: Path, resumed: bool):
        """Fresh run: a new file. Resumed: keep the rows up to the checkpoint's step (later ones are redone).

        The kept rows are rewritten atomically (a crash now loses none), then the file is appended to. A line that
        does not parse, such as the last one of a crash in mid-write, is dropped with a note.
        """
        keep, dropped = [], 0
        if resumed and path.exists():
            step = int((read_json(self.out_dir / "run.json") or {}).get("step", 0))
            for line in path.read_text(errors="replace").splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line)
                except (json.JSONDecodeError, TypeError, KeyError):
                    dropped += 1
        if dropped:
            print(f"train: {path}: dropped {dropped} unreadable line(s), left by a write that a crash cut short", flush=True)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))
        return open(path, "a")

    def _write(self, row: dict[str, Any]) -> None:
        try:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        except OSError as exc:
            raise write_error(self.metrics.name, exc) from exc
        if self.wandb:
            log_row(self.wandb, row)

    def step(self, done: int, loss: float, grad_norm: float, lr: float, batch: int, data_wait: float) -> None:
        self.window.append((loss, grad_norm, float(grad_norm > self.cfg.train.grad_clip > 0)))
        self.wait += data_wait
        if done % self.cfg.train.log_every and done != self.cfg.train.steps:
            return
        elapsed = time.perf_counter() - self.window_start
        losses, norms, clipped = map(np.array, zip(*self.window))
        row = {"step": done, "loss": float(losses.mean()), "grad_norm": float(norms.mean()), "lr": lr,
               "clip_fraction": float(clipped.mean()), "samples_per_s": len(self.window) * batch / elapsed,
               "data_wait_fraction": self.wait / elapsed}
        if not self.clip_warned and row["clip_fraction"] >= self.CLIP_WARN_FRACTION:
            row["clip_warning"] = self._clip_warning(row, len(self.window))
            self.clip_warned = True
            print(f"step {done}: warning: {row['clip_warning']}", flush=True)
        self._write(row)
        eta = (self.cfg.train.steps - done) * elapsed / len(self.window)
        print(f"step {done}/{self.cfg.train.steps}  loss {row['loss']:.4f}  |g| {row['grad_norm']:.3f}  lr {lr:.2e}  "
              f"{row['samples_per_s']:.0f} samples/s  wait {row['data_wait_fraction']:.0%}  ETA {eta / 60:.1f} min", flush=True)
        self.window, self.wait, self.window_start = [], 0.0, time.perf_counter()

    def _clip_warning(self, row: dict[str, Any], steps: int) -> str:
        """What near-permanent clipping means under AdamW: every gradient is normalised to the clip norm.

        AdamW divides by the running RMS of the gradients, so a common rescaling of all of them mostly cancels: the
        step size still follows the lr schedule. What clipping on every step changes is the weighting between steps
        (each contributes a unit-norm direction, whatever its |g|), which is worth knowing, not necessarily wrong.
        """
        clip, norm = self.cfg.train.grad_clip, row["grad_norm"]
        return (f"gradient clipping was active on {row['clip_fraction']:.0%} of the last {steps} steps (mean pre-clip "
                f"|g| {norm:.3g} vs train.grad_clip {clip:g}): every gradient is rescaled to norm {clip:g}, so AdamW "
                f"sees gradient directions only (its per-parameter normalisation keeps the step size on the lr "
                f"schedule, but steps are no longer weighted by |g|). Raise train.grad_clip towards the typical |g| "
                f"if clipping is meant only to catch outliers.")

    def validation(self, done: int, losses: dict[str, float]) -> None:
        """A validation row (``val_loss``, ``val_loss_ema``) at step ``done``."""
        self._write({"step": done, **losses})
        print(f"step {done}: validation loss {losses['val_loss']:.4f} (EMA {losses['val_loss_ema']:.4f}) on "
              f"{self.cfg.train.val_clips} fixed {self.cfg.train.val_split} triplets", flush=True)

    def media(self, done: int, path: Path) -> None:
        print(f"step {done}: wrote {path}", flush=True)
        if self.wandb:
            log_video(self.wandb, "media/real_vs_generated", path, step=done, caption=_SampleVideos.CAPTION)

    def finish(self) -> None:
        self.metrics.close()
        if self.wandb:
            self.wandb.finish()


class _SampleVideos:
    """Rank 0: real vs generated (raw model and EMA) videos on fixed validation clips, written as mp4."""

    CAPTION = "rows: real (VQ reconstruction), raw model, EMA; one column per clip"

    def __init__(self, cfg: Config, store: str, out_dir: Path):
        from pipeline.vqvae import build_vqvae

        self.cfg, self.out_dir = cfg, out_dir
        split = LatentSplit(store, cfg.train.sample_split)
        clip = cfg.data.frames_per_sample
        stride = cfg.data.skip_frames + 1
        videos = [k for k in range(len(split)) if split.lengths[k] >= (clip - 1) * stride + 1][: cfg.train.sample_videos]
        self.real = torch.stack([torch.from_numpy(split.video(k)[: (clip - 1) * stride + 1 : stride].astype(np.float32)) for k in videos])
        self.vq = build_vqvae(cfg.vqvae, cfg.data.image_size).drop_encoder()  # training never encodes

    def write(self, done: int, model, ema, interpolant) -> Path:
        import imageio.v3 as iio
        from einops import rearrange

        from pipeline.data.clips import to_uint8
        from pipeline.core.sampling import rollout

        sample_cfg = copy.deepcopy(self.cfg.sample)
        sample_cfg.steps = self.cfg.train.sample_steps
        n0 = self.cfg.data.cond_frames
        device = next(model.parameters()).device
        rows = [self.real]
        for net in (model, ema):
            was_training = net.training
            net.eval()
            gen = torch.Generator(device=device).manual_seed(self.cfg.seed)
            out = rollout(net, interpolant, self.real[:, :n0].to(device), self.real.shape[1] - n0, sample_cfg, gen)
            rows.append(out.latents.cpu())
            net.train(was_training)
        pixels = torch.stack([self.vq.decode_clip(r) for r in rows])  # [rows, B, T, 3, H, W]
        grid = to_uint8(rearrange(pixels, "r b t c h w -> t c (r h) (b w)"))
        path = self.out_dir / "media" / f"real_raw_ema_{done:07d}.mp4"
        with atomic_path(path, keep_suffix=True) as tmp:  # ffmpeg picks the format by the suffix
            iio.imwrite(tmp, grid, fps=4, macro_block_size=1)
        return path


class _Validation:
    """Rank 0: the loss of the raw model and of the EMA on a fixed set of validation triplets.

    The set — triplets of ``val_split``, their times t and their interpolant noise — is drawn once from the seed
    alone, so every evaluation (and every resumed run) scores the same examples and the curve is comparable across
    steps. Both networks run in eval mode (no dropout) without gradients, and no draw touches the global RNG, so
    the training trajectory is the same with validation on or off. Runs on the unwrapped model, not the DDP one.
    """

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
