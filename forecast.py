#!/usr/bin/env python
"""Stage 3: forecast the test videos with a trained flow into <out>/<data.name>/runs/<run>/forecasts.zarr (+ GIF/MP4).

    python forecast.py --config configs/demo.yaml --interp ours
    python forecast.py --config configs/demo.yaml --run-name lr5e-4          # a named run, as it was trained
    python forecast.py --config configs/kth.yaml --run-name published --interp ours --ckpt checkpoints/kth_model_ours.pt
    torchrun --nproc_per_node=2 forecast.py --config configs/demo.yaml  # disjoint videos per rank
"""

from __future__ import annotations

from typing import Annotated, Optional

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
    ckpt: Annotated[Optional[str], typer.Option(help="Flow checkpoint, ours or published (default <out>/<data.name>/runs/<run>/checkpoints/latest.pt).")] = None,
    force: Annotated[bool, typer.Option(help="Discard forecasts made from different inputs (checkpoint, cache, sampler settings) and redo them.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Forecast, resume an interrupted run, or report 'up to date' when the forecasts are complete."""
    from pipeline.stages.forecast_state import up_to_date_message

    stage = setup_stage(config, set_, smoke, out, data_root, interp, run, with_run=True)
    url = store or stage.layout.store_url
    exit_if_up_to_date(lambda: up_to_date_message(stage.cfg, url, stage.run_dir, ckpt), dry_run)
    stage_threads("forecast")
    from pipeline.data.shards import ShardError  # from here on torch loads
    from pipeline.stages.forecast import ForecastError, forecast
    from pipeline.vqvae import CheckpointFormatError, CheckpointMismatchError

    if dry_run:
        show_dry_run("forecast", stage.cfg)
    run_stage("forecast", lambda: forecast(stage.cfg, url, stage.run_dir, ckpt=ckpt, force=force, dry_run=dry_run),
              expected_errors(ForecastError, ShardError, CheckpointMismatchError, CheckpointFormatError, ValueError),
              dry_run)


if __name__ == "__main__":
    app()
