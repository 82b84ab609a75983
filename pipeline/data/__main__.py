"""``python -m pipeline.data``: write the dataset's shards (demo generator or raw-video converter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.run.cli import ConfigOption, DataRootOption, DryRunOption, SetOption, SmokeOption, fail, load_cli_config, show_dry_run
from pipeline.data.convert import ConvertError
from pipeline.data.shards import ShardError
from pipeline.run.locks import LockedError

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    data_root: DataRootOption = None,
    raw: Annotated[Optional[Path], typer.Option(help="Raw videos to convert (KTH, CLEVRER or <split>/<video> folders). Omit for the demo generator, or to use the shards already in data.root.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when the shards are up to date.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Write <data.root>/<split>/shard_NNNN.hdf5 for every split; up to date when nothing changed."""
    from pipeline.stages.data import prepare_data

    cfg = load_cli_config(config, set_, smoke, data_root)
    if dry_run:
        show_dry_run("data", cfg)
    try:
        prepare_data(cfg, Path(cfg.data.root), raw=raw, force=force, dry_run=dry_run)
    except (ConvertError, ShardError, ValueError, LockedError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    app()
