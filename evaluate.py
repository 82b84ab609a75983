#!/usr/bin/env python
"""Stage 4: evaluate the forecasts of one interpolant: PSNR/SSIM (mean, best-of-N, per frame) and FVD.

    python evaluate.py --config configs/demo.yaml --interp ours --i3d checkpoints/i3d_torchscript.pt
    make eval DATASET=kth INTERP=linear I3D=checkpoints/i3d_torchscript.pt

Writes <out>/<data.name>/<interp>/eval/metrics.json and psnr_per_frame.png, and rewrites <out>/<data.name>/report.md
(both interpolants side by side once both are evaluated). Without --i3d, FVD is null and fvd_status says why.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.cli import ConfigOption, InterpOption, OutOption, SetOption, SmokeOption, fail, load_cli_config

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    interp: InterpOption = None,
    out: OutOption = "outputs",
    forecasts: Annotated[Optional[str], typer.Option(help="Forecasts store path/URL (overrides <out>/<data.name>/<interp>/forecasts.zarr).")] = None,
    i3d: Annotated[Optional[str], typer.Option(help="StyleGAN-V TorchScript I3D file (i3d_torchscript.pt); sets eval.i3d. Without it FVD is null.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute the metrics even when they are up to date.")] = False,
) -> None:
    """Compute the metrics, or print 'up to date' when the forecasts, eval settings and I3D file are unchanged."""
    from pathlib import Path

    from pipeline.evaluate import EvalError, evaluate, forecasts_url

    cfg = load_cli_config(config, set_, smoke, interp)
    if i3d:
        cfg.eval.i3d = i3d  # a plain string: not parsed as YAML like --set values
    kind = cfg.interpolant.kind
    try:
        evaluate(cfg, forecasts or forecasts_url(out, cfg.data.name, kind), Path(out) / cfg.data.name / kind, force=force)
    except (EvalError, FileNotFoundError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    app()
