#!/usr/bin/env python
"""Stage 2: train the interpolant flow ("ours" or "linear") on the cached latents, with DDP under torchrun.

    python train_latent.py --config configs/demo.yaml --interp ours
    python train_latent.py --config configs/demo.yaml --run-name lr5e-4 --set train.lr=5e-4     # a named run
    torchrun --nproc_per_node=2 train_latent.py --config configs/demo.yaml --interp linear

Writes <out>/<data.name>/runs/<run>/ (run.json, checkpoints/, metrics.jsonl, media/); the run records its --set
overrides, which forecast.py and evaluate.py reapply for that run.
"""

from pipeline.run.commands import train, script

app = script(train)  # the same command as `lip train` (pipeline/run/commands.py)

if __name__ == "__main__":
    app()
