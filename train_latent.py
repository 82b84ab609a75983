#!/usr/bin/env python
"""Stage 2: train the interpolant flow ("ours" or "linear") on the cached latents, with DDP under torchrun.

    python train_latent.py --config configs/demo.yaml --interp ours
    python train_latent.py --config configs/demo.yaml --run-name lr5e-4 --set train.lr=5e-4     # a named run
    torchrun --nproc_per_node=2 train_latent.py --config configs/demo.yaml --interp linear

Writes <out>/<data.name>/runs/<run>/ (run.json, checkpoints/, metrics.jsonl, media/); the run records its --set
overrides, which forecast.py and evaluate.py reapply for that run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.run.cli import (ConfigOption, DataRootOption, DryRunOption, InterpOption, OutOption, RunOption, SetOption,
                          SmokeOption, StoreOption, exit_if_up_to_date, expected_errors, run_stage, setup_stage,
                          show_dry_run, stage_threads)

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    interp: InterpOption = None,
    run: RunOption = None,
    out: OutOption = "outputs",
    data_root: DataRootOption = None,
    store: StoreOption = None,
    force: Annotated[bool, typer.Option(help="Discard a run made from different inputs (cache, model, interpolant, training settings) and start over.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Train, resume an interrupted run exactly, or report 'up to date' when the run is finished."""
    from pipeline.stages.train_state import up_to_date_message

    stage = setup_stage(config, set_, smoke, out, data_root, interp, run, with_run=True)
    url = store or stage.layout.store_url
    exit_if_up_to_date(lambda: up_to_date_message(stage.cfg, url, stage.run_dir), dry_run)
    stage_threads("train")
    from pipeline.stages.train import TrainingError, train  # loads torch

    if dry_run:
        show_dry_run("train", stage.cfg)
    run_stage("train", lambda: train(stage.cfg, url, stage.run_dir, force=force, dry_run=dry_run,
                                     overrides=stage.overrides),
              expected_errors(TrainingError), dry_run)


if __name__ == "__main__":
    app()
