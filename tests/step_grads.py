"""The gradients of one training step (``pipeline.stages.train.train_step``) for the tests of gradient accumulation.

    python tests/step_grads.py OUT.pt STORE SETTINGS_JSON            # one process
    torchrun --nproc_per_node=2 tests/step_grads.py OUT.pt STORE SETTINGS_JSON

SETTINGS_JSON maps a label to the ``--set`` overrides of one step (the demo config at its smoke setting); for each,
rank 0 saves the all-reduced gradients and the loss of step 3 under that label in OUT.pt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.core.interpolants import build_interpolant
from pipeline.core.model import build_model
from pipeline.data.cache import LatentSplit
from pipeline.data.triplets import TripletReader, TripletStream
from pipeline.run.config import load_config
from pipeline.run.dist import init_distributed
from pipeline.stages.train import train_step

STEP = 3
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def step_grads(overrides: list[str], store: str, info) -> tuple[dict[str, torch.Tensor], float]:
    """Gradients (after DDP's all-reduce, before any update: lr 0) and this process's loss of step ``STEP``."""
    cfg = load_config(CONFIG, overrides, smoke=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    net = DDP(model) if info.world_size > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    reader = TripletReader(LatentSplit(store, cfg.train.split), cfg.data.frames_per_sample, cfg.data.skip_frames)
    stream = TripletStream(reader, cfg.train.batch_size, cfg.seed, info.rank, info.world_size, STEP, 1)
    loss, _ = train_step(net, model, opt, build_interpolant(cfg.interpolant), next(iter(stream)), info, cfg, STEP)
    return {name: p.grad.clone() for name, p in model.named_parameters()}, loss


def main(out: str, store: str, settings: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed(prefer_cuda=False)
    results = {label: step_grads(overrides, store, info) for label, overrides in json.loads(settings).items()}
    if info.is_main:
        torch.save(results, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
