"""A run's plan, torch-free: its learning rate across extensions, how a global batch splits over processes and
micro-batches, and which numbered checkpoints stay.

``steps_plan`` (``run.json`` and every checkpoint) lists ``{"from_step": s, "steps": N}``, oldest first: from step
``s`` on the run trains towards ``N`` steps. The first entry is the run's start; each later one is an extension (or a
new target for an unfinished run), recorded when training continues with another ``train.steps``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pipeline.run.config import TrainConfig

NUMBERED = re.compile(r"(\d{7})\.pt")  # checkpoints/NNNNNNN.pt; latest.pt is not numbered


def start_plan(steps: int) -> list[dict[str, int]]:
    """The plan of a run that begins now with ``steps`` steps."""
    return [{"from_step": 0, "steps": steps}]


def replan(plan: list[dict[str, int]], step: int, steps: int) -> list[dict[str, int]]:
    """``plan`` continued at ``step`` towards ``steps`` (unchanged when that already is its target). A new target set
    where the last one was set (no step trained since) replaces it."""
    if plan[-1]["steps"] == steps:
        return plan
    kept = plan[:-1] if plan[-1]["from_step"] == step and len(plan) > 1 else plan
    return [*kept, {"from_step": step, "steps": steps}]


def lr_at(step: int, t: TrainConfig, plan: list[dict[str, int]] | None = None) -> float:
    """Learning rate of update ``step``: linear warm-up, then constant or cosine, never below ``min_lr``.

    The cosine decays from ``lr`` at the end of warm-up to 0 at the run's target. An extension at step ``e`` after
    warm-up re-plans the decay from there: from the rate step ``e`` had towards 0 at the new target, so the rate is
    continuous and a finished cosine run is extended at its final rate (``min_lr``). Constant: extensions change
    nothing."""
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    lr = t.lr * warm
    if t.schedule == "cosine" and step >= t.warmup_steps:
        start, peak, end = t.warmup_steps, t.lr, t.steps
        for entry in plan or start_plan(t.steps):
            if entry["from_step"] > step:
                break
            if entry["from_step"] > start:
                peak, start = max(_cosine(entry["from_step"], start, peak, end), t.min_lr), entry["from_step"]
            end = entry["steps"]
        lr = _cosine(step, start, peak, end)
    return max(lr, t.min_lr)


def _cosine(step: int, start: int, peak: float, end: int) -> float:
    """Half a cosine from ``peak`` at ``start`` to 0 at ``end`` (0 after it)."""
    progress = (step - start) / max(1, end - start)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch_split(t: TrainConfig, world_size: int) -> tuple[int, int]:
    """(examples per process, examples per forward/backward pass) of the global ``train.batch_size``; ValueError
    naming the keys when they do not divide."""
    if t.batch_size % world_size:
        raise ValueError(f"train.batch_size={t.batch_size} does not divide by {world_size} processes")
    local = t.batch_size // world_size
    micro = t.micro_batch or local
    if local % micro:
        raise ValueError(f"train.micro_batch={micro} does not divide the {local} examples per process "
                         f"(train.batch_size={t.batch_size} over {world_size} processes)")
    return local, micro


def numbered_checkpoints(ckpt_dir: Path) -> dict[int, Path]:
    """{step: path} of the numbered checkpoints in ``ckpt_dir``."""
    found = (NUMBERED.fullmatch(p.name) for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else ()
    return {int(m.group(1)): ckpt_dir / m.group(0) for m in found if m}


def checkpoints_to_delete(steps: list[int], keep: int, keep_every: int) -> list[int]:
    """The numbered checkpoints retention removes: all but the ``keep`` newest, sparing multiples of ``keep_every``
    (marked ones); ``keep`` 0 keeps every one."""
    if not keep:
        return []
    unmarked = [s for s in sorted(steps) if not (keep_every and s % keep_every == 0)]
    return unmarked[: max(0, len(unmarked) - keep)]


def recorded_plan(record: dict[str, Any], begun: int) -> list[dict[str, int]]:
    """The ``steps_plan`` of a run record or checkpoint; one written before plans existed began with ``begun``
    steps (its recorded ``train.steps``)."""
    return record.get("steps_plan") or start_plan(begun)
