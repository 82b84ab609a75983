"""The stage command lines, installed with the package: the ``lip`` console script, ``python -m pipeline`` (also
``torchrun -m pipeline``) and the four top-level stage scripts all run the functions of this module."""

from __future__ import annotations

from typing import Annotated, Callable, Optional

import typer

from pipeline.run.cli import (ConfigOption, DataRootOption, DryRunOption, InterpOption, OutOption, RunOption, SetOption,
                              SmokeOption, StoreOption, exit_if_up_to_date, expected_errors, run_stage, setup_stage,
                              show_dry_run, stage_threads)

HELP = """The pipeline's commands, one per stage (make chains them: README). COMMAND --help lists its options.

\b
  lip data -c demo --smoke                  # shards; -c demo: the project's configs/demo.yaml, from any directory
  lip encode -c demo --smoke                # stage 1: the latent store
  lip train -c demo --smoke --interp ours   # stage 2: run 'ours' (--run-name to name it otherwise)
  lip forecast -c demo --smoke --interp ours
  lip eval -c demo --smoke --interp ours
  python -m torch.distributed.run --standalone --nproc_per_node=2 -m pipeline train -c demo   # DDP
"""
CkptOption = Annotated[Optional[str], typer.Option(help="Flow checkpoint, ours or published (default <out>/<data.name>/runs/<run>/checkpoints/latest.pt).")]
ForecastsOption = Annotated[Optional[str], typer.Option(help="Forecasts store path/URL (overrides <out>/<data.name>/runs/<run>/forecasts.zarr).")]
I3DOption = Annotated[Optional[str], typer.Option(help="FVD's I3D: builtin (default), a path to StyleGAN-V's i3d_torchscript.pt (TorchScript runs the code it holds: used only with the environment variable I3D_TRUST_CODE=1), or none (FVD off); sets eval.i3d.")]


def encode(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    out: OutOption = "outputs",
    data_root: DataRootOption = None,
    store: StoreOption = None,
    force: Annotated[bool, typer.Option(help="Delete a store built from different inputs and rebuild it.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Stage 1: encode every shard once with the frozen VQVAE into <out>/<data.name>/latents.zarr, shared by every
    run; prints 'up to date' and does nothing when its inputs are unchanged."""
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


def train(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    interp: InterpOption = None,
    run: RunOption = None,
    out: OutOption = "outputs",
    data_root: DataRootOption = None,
    store: StoreOption = None,
    force: Annotated[bool, typer.Option(help="Train a run made from different inputs (cache, model, interpolant, training settings) again from scratch, beside it in <run>.rebuild (resumed by the next --force); it replaces the run when finished.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Stage 2: train the flow of a run on the cached latents into <out>/<data.name>/runs/<run>/ (DDP under
    torchrun); resumes an interrupted run exactly, or reports 'up to date' when it is finished. The run records its
    --set overrides, which forecast and eval reapply."""
    from pipeline.stages.train_state import up_to_date_message

    stage = setup_stage(config, set_, smoke, out, data_root, interp, run, with_run=True)
    url = store or stage.layout.store_url
    exit_if_up_to_date(lambda: up_to_date_message(stage.cfg, url, stage.run_dir), dry_run)
    stage_threads("train")
    from pipeline.stages.train import TrainingError, train as train_run  # loads torch

    if dry_run:
        show_dry_run("train", stage.cfg)
    run_stage("train", lambda: train_run(stage.cfg, url, stage.run_dir, force=force, dry_run=dry_run,
                                         overrides=stage.overrides),
              expected_errors(TrainingError), dry_run)


def forecast(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    interp: InterpOption = None,
    run: RunOption = None,
    out: OutOption = "outputs",
    data_root: DataRootOption = None,
    store: StoreOption = None,
    ckpt: CkptOption = None,
    force: Annotated[bool, typer.Option(help="Discard forecasts made from different inputs (checkpoint, cache, sampler settings) and redo them.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Stage 3: forecast the test videos with a run's flow (or --ckpt) into <out>/<data.name>/runs/<run>/
    forecasts.zarr (+ GIF/MP4); resumes an interrupted run, or reports 'up to date' when they are complete."""
    from pipeline.stages.forecast_state import up_to_date_message

    stage = setup_stage(config, set_, smoke, out, data_root, interp, run, with_run=True)
    url = store or stage.layout.store_url
    exit_if_up_to_date(lambda: up_to_date_message(stage.cfg, url, stage.run_dir, ckpt), dry_run)
    stage_threads("forecast")
    from pipeline.data.shards import ShardError  # from here on torch loads
    from pipeline.stages.forecast import ForecastError, forecast as forecast_run
    from pipeline.vqvae import CheckpointFormatError, CheckpointMismatchError

    if dry_run:
        show_dry_run("forecast", stage.cfg)
    run_stage("forecast", lambda: forecast_run(stage.cfg, url, stage.run_dir, ckpt=ckpt, force=force, dry_run=dry_run),
              expected_errors(ForecastError, ShardError, CheckpointMismatchError, CheckpointFormatError, ValueError),
              dry_run)


def evaluate(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    interp: InterpOption = None,
    run: RunOption = None,
    out: OutOption = "outputs",
    data_root: DataRootOption = None,
    forecasts: ForecastsOption = None,
    i3d: I3DOption = None,
    force: Annotated[bool, typer.Option(help="Recompute the metrics even when they are up to date.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Stage 4: score a run's forecasts (PSNR/SSIM, CRPS, energy score, spread-skill, diversity, FVD, each with a
    95 % bootstrap interval over videos) into runs/<run>/eval/metrics.json and rewrite <out>/<data.name>/report.md;
    'up to date' when the forecasts, eval settings and I3D weights are unchanged."""
    from pipeline.eval.fvd import I3DError
    from pipeline.eval.i3d import I3DWeightsError
    from pipeline.stages.evaluate import EvalError, evaluate as evaluate_run
    from pipeline.stages.forecast_state import forecast_url

    stage = setup_stage(config, [*(set_ or []), *([f"eval.i3d={i3d}"] if i3d else [])], smoke, out, data_root, interp, run,
                        with_run=True)
    stage_threads("eval")
    if dry_run:
        show_dry_run("eval", stage.cfg)
    run_stage("eval", lambda: evaluate_run(stage.cfg, forecasts or forecast_url(stage.run_dir), stage.run_dir,
                                           force=force, dry_run=dry_run),
              expected_errors(EvalError, I3DError, I3DWeightsError), dry_run)


def config_keys() -> None:
    """List every config key with its type, bounds, default and meaning."""
    from pipeline.run.config import main

    main()


def script(command: Callable[..., None]) -> typer.Typer:
    """A one-command app of ``command``: what a top-level stage script runs (``python encode_latents.py ...``)."""
    single = typer.Typer(add_completion=False, rich_markup_mode=None)
    single.command()(command)
    return single


def lip() -> typer.Typer:
    """The app of every command; built on call, so the stage scripts import only what their stage needs (the data
    stage's command line, defined with its stage, loads h5py)."""
    from pipeline.data.__main__ import main as data

    app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None, no_args_is_help=True)
    for name, command in (("data", data), ("encode", encode), ("train", train), ("forecast", forecast),
                          ("eval", evaluate), ("config-keys", config_keys)):
        app.command(name)(command)
    return app


def main() -> None:
    """The ``lip`` console script and ``python -m pipeline``."""
    lip()()
