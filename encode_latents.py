#!/usr/bin/env python
"""Stage 1: encode every shard once with the frozen VQVAE into a chunked Zarr latent store.

    python encode_latents.py --config configs/demo.yaml
    torchrun --nproc_per_node=2 encode_latents.py --config configs/demo.yaml   # disjoint videos per rank

Writes <out>/<data.name>/latents.zarr, shared by every run of the dataset.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.run.cli import (ConfigOption, DataRootOption, DryRunOption, OutOption, SetOption, SmokeOption, StoreOption,
                          exit_if_up_to_date, expected_errors, run_stage, setup_stage, show_dry_run, stage_threads)

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    out: OutOption = "outputs",
    data_root: DataRootOption = None,
    store: StoreOption = None,
    force: Annotated[bool, typer.Option(help="Delete a store built from different inputs and rebuild it.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Write the latent store; prints 'up to date' and does nothing when its inputs are unchanged."""
    from pipeline.data.shards import ShardError
    from pipeline.stages.encode import EncodeError, encode_latents, up_to_date_message

    stage = setup_stage(config, set_, smoke, out, data_root)
    url = store or stage.layout.store_url
    exit_if_up_to_date(lambda: up_to_date_message(stage.cfg, url), dry_run)
    stage_threads("encode")
    from pipeline.vqvae import CheckpointFormatError, CheckpointMismatchError  # loads torch

    if dry_run:
        show_dry_run("encode", stage.cfg)
    run_stage("encode", lambda: encode_latents(stage.cfg, url, force=force, dry_run=dry_run),
              expected_errors(EncodeError, ShardError, CheckpointMismatchError, CheckpointFormatError), dry_run)


if __name__ == "__main__":
    app()
