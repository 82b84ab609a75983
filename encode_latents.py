#!/usr/bin/env python
"""Stage 1: encode every shard once with the frozen VQVAE into a chunked Zarr latent store.

    python encode_latents.py --config configs/demo.yaml
    torchrun --nproc_per_node=2 encode_latents.py --config configs/demo.yaml   # disjoint videos per rank

Writes <out>/<data.name>/latents.zarr, shared by every run of the dataset.
"""

from pipeline.run.commands import encode, script

app = script(encode)  # the same command as `lip encode` (pipeline/run/commands.py)

if __name__ == "__main__":
    app()
