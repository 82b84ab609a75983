#!/usr/bin/env python
"""Stage 1: encode every shard once with the frozen VQVAE into a chunked Zarr latent store.

    python encode_latents.py --config configs/demo.yaml
    torchrun --nproc_per_node=2 encode_latents.py --config configs/demo.yaml   # disjoint videos per rank
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli import ConfigOption, OutOption, StoreOption, SetOption, SmokeOption, fail, load_cli_config

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    out: OutOption = "outputs",
    store: StoreOption = None,
    force: Annotated[bool, typer.Option(help="Delete a store built from different inputs and rebuild it.")] = False,
) -> None:
    """Write the latent store; prints 'up to date' and does nothing when its inputs are unchanged."""
    from pipeline.cache import store_url
    from pipeline.data.shards import ShardError
    from pipeline.encode import EncodeError, encode_latents
    from pipeline.vqvae import CheckpointFormatError, CheckpointMismatchError

    cfg = load_cli_config(config, set_, smoke)
    try:
        encode_latents(cfg, store or store_url(out, cfg.data.name), force=force)
    except (EncodeError, ShardError, FileNotFoundError, CheckpointMismatchError, CheckpointFormatError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    app()
