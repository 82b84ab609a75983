#!/usr/bin/env python
"""Stage 3: forecast the test videos with a trained flow into <out>/<data.name>/<interp>/forecasts.zarr (+ GIF/MP4).

    python forecast.py --config configs/demo.yaml --interp ours
    python forecast.py --config configs/kth.yaml --interp ours --ckpt checkpoints/kth_model_ours.pt   # published
    torchrun --nproc_per_node=2 forecast.py --config configs/demo.yaml                           # disjoint videos per rank
"""

from __future__ import annotations

from typing import Annotated, Optional

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
    ckpt: Annotated[Optional[str], typer.Option(help="Flow checkpoint, ours or published (default <out>/<data.name>/<interp>/checkpoints/latest.pt).")] = None,
    force: Annotated[bool, typer.Option(help="Discard forecasts made from different inputs (checkpoint, cache, sampler settings) and redo them.")] = False,
) -> None:
    """Forecast, resume an interrupted run, or report 'up to date' when the forecasts are complete."""
    from pipeline.cache import store_url
    from pipeline.data.shards import ShardError
    from pipeline.forecast import ForecastError, forecast
    from pipeline.safe_load import CheckpointReadError
    from pipeline.train import run_dir
    from pipeline.vqvae import CheckpointFormatError, CheckpointMismatchError

    cfg = load_cli_config(config, set_, smoke, interp)
    try:
        forecast(cfg, store or store_url(out, cfg.data.name), run_dir(out, cfg.data.name, cfg.interpolant.kind),
                 ckpt=ckpt, force=force)
    except (ForecastError, ShardError, FileNotFoundError, CheckpointReadError, CheckpointMismatchError,
            CheckpointFormatError, ValueError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    app()
