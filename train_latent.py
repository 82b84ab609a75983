#!/usr/bin/env python
"""Stage 2: train the interpolant flow ("ours" or "linear") on the cached latents, with DDP under torchrun.

    python train_latent.py --config configs/demo.yaml --interp ours
    torchrun --nproc_per_node=2 train_latent.py --config configs/demo.yaml --interp linear
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli import ConfigOption, InterpOption, OutOption, StoreOption, SetOption, SmokeOption, fail, load_cli_config

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    interp: InterpOption = None,
    out: OutOption = "outputs",
    store: StoreOption = None,
    force: Annotated[bool, typer.Option(help="Discard a run made from different inputs (cache, model, interpolant, training settings) and start over.")] = False,
) -> None:
    """Train, resume an interrupted run exactly, or report 'up to date' when the run is finished."""
    from pipeline.cache import store_url
    from pipeline.safe_load import CheckpointReadError
    from pipeline.train import TrainingError, run_dir, train

    cfg = load_cli_config(config, set_, smoke, interp)
    try:
        train(cfg, store or store_url(out, cfg.data.name), run_dir(out, cfg.data.name, cfg.interpolant.kind), force=force)
    except (TrainingError, FileNotFoundError, CheckpointReadError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    app()
