"""train.latent_norm=channel: the flow trains and samples on per-channel standardised latents, with the statistics
stage 1 recorded; they travel in the checkpoint (and its export), every sampler maps back, and off changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.api import load_run
from pipeline.core.interpolants import build_interpolant
from pipeline.core.latent_norm import LatentNorm, training_norm
from pipeline.core.sampling import rollout
from pipeline.data.cache import LatentSplit
from pipeline.data.triplets import TripletReader
from pipeline.run.checkpoints import export_for_sampling, load_flow_checkpoint
from pipeline.run.config import InterpolantConfig, SamplingConfig, load_config
from pipeline.stages.forecast import forecast
from pipeline.stages.train import TrainingError, train

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda _: None)
SMALL = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
         "train.sample_every=0", "train.val_every=0", "train.steps=3", "interpolant.kind=linear", "sample.steps=3",
         "sample.n_samples=2", "forecast.max_videos=2", "forecast.media_videos=0"]
NORM = LatentNorm((3.0, -2.0), (0.5, 2.0))


def test_the_map_inverts_on_the_channel_axis_and_off_is_the_identity() -> None:
    z = torch.randn(2, 5, 2, 3, 3) * 4
    x = NORM.to_flow(z)
    assert torch.allclose(x[:, :, 0], (z[:, :, 0] - 3.0) / 0.5) and torch.allclose(x[:, :, 1], (z[:, :, 1] + 2.0) / 2.0)
    assert torch.allclose(NORM.to_latent(x), z, atol=1e-6)
    off = LatentNorm()
    assert not off.active and off.record() is None and off.to_flow(z) is z and off.to_latent(z) is z
    assert LatentNorm.from_record(NORM.record(), "x") == NORM and LatentNorm.from_record(None, "x") == off
    with pytest.raises(ValueError, match="the 2 channels"):
        NORM.to_flow(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("record", [[1.0], {"mean": [1.0]}, {"mean": [1.0, 2.0], "std": [1.0]},
                                    {"mean": [1.0], "std": [0.0]}, {"mean": [float("nan")], "std": [1.0]},
                                    {"mean": ["a"], "std": [1.0]}, {"mean": [], "std": []}])
def test_a_malformed_record_is_refused_naming_its_file(record) -> None:
    with pytest.raises(ValueError, match=r"^flow\.pt: latent_norm"):
        LatentNorm.from_record(record, "flow.pt")


def test_the_training_statistics_come_from_the_store_or_the_error_says_reencode() -> None:
    stats = {"train": {"mean": [3.0, -2.0], "std": [0.5, 2.0], "frames_used": 10}, "val": {"mean": [0.0], "std": [1.0]}}
    assert training_norm("channel", stats, "train", "s.zarr") == NORM
    assert training_norm("none", None, "train", "s.zarr") == LatentNorm()
    with pytest.raises(ValueError, match=r"s\.zarr: no latent statistics for split 'test'.*make encode"):
        training_norm("channel", stats, "test", "s.zarr")


class _Drift(torch.nn.Module):
    """A deterministic stand-in network whose output depends on every input."""

    def forward(self, z, t, ref, context, gap):
        return 0.5 * z - ref + 0.1 * context + t.reshape(-1, 1, 1, 1) + 0.01 * gap.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("kind", ["linear", "ours"])
def test_a_rollout_runs_in_the_flow_coordinates_and_returns_latents(kind: str) -> None:
    cond = 3.0 + torch.randn(3, 2, 2, 4, 4)
    interpolant = build_interpolant(InterpolantConfig(kind=kind))
    cfg = SamplingConfig(steps=4, solver="euler" if kind == "linear" else "euler_maruyama")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    mine = rollout(_Drift(), interpolant, cond, 3, cfg, gen(), NORM).latents
    by_hand = NORM.to_latent(rollout(_Drift(), interpolant, NORM.to_flow(cond), 3, cfg, gen()).latents)
    assert torch.equal(mine[:, :2], cond)  # the conditioning frames exactly
    assert torch.allclose(mine[:, 2:], by_hand[:, 2:], atol=1e-5)
    assert not torch.allclose(mine, rollout(_Drift(), interpolant, cond, 3, cfg, gen()).latents, atol=1e-2)


def _cfg(overrides: list[str], *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", [*overrides, *SMALL, *extra], smoke=True)


def test_a_standardised_run_records_its_statistics_and_every_sampler_uses_them(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    runs = tmp_path / "outputs" / "demo" / "runs"
    cfg = _cfg(overrides, "train.latent_norm=channel")
    train(cfg, store, runs / "std", **QUIET)
    stats = zarr.open_group(store, mode="r").attrs["stats"]["train"]
    latest = load_flow_checkpoint(runs / "std" / "checkpoints" / "latest.pt")
    assert latest.raw["latent_norm"] == {"mean": stats["mean"], "std": stats["std"]}
    norm = LatentNorm.from_record(latest.raw["latent_norm"], "latest.pt")

    split = LatentSplit(store, "train")  # what the training loop reads: the same triplets, standardised
    plain, standard = (TripletReader(split, cfg.data.frames_per_sample, cfg.data.skip_frames, n).batch(
        np.random.default_rng(0), 8) for n in (LatentNorm(), norm))
    assert torch.allclose(standard["target"], norm.to_flow(plain["target"]))
    assert torch.equal(standard["gap"], plain["gap"])

    forecast(cfg, store, runs / "std", **QUIET)  # stage 3, then the API, on the same checkpoint
    stored = zarr.open_group(str(runs / "std" / "forecasts.zarr"), mode="r")
    assert stored.attrs["latent_norm"] == latest.raw["latent_norm"]
    run = load_run(runs / "std", **QUIET)
    assert run.norm == norm
    truth = torch.from_numpy(stored["truth_latents"][:])
    assert torch.equal(run.forecast_latents(truth[:, :cfg.data.cond_frames]), torch.from_numpy(stored["latents"][:]))

    export = tmp_path / "exported.pt"
    export_for_sampling(runs / "std" / "checkpoints" / "latest.pt", export)
    assert load_flow_checkpoint(export).raw["latent_norm"] == latest.raw["latent_norm"]

    with pytest.raises(TrainingError, match=r"train\.init_from=std: .* trained on standardised latents; this run "
                                            r"trains on raw latents \(train\.latent_norm\)"):
        train(_cfg(overrides, "train.init_from=std", "train.latent_norm=none"), store, runs / "raw", **QUIET)


def test_off_records_nothing(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    train(_cfg(overrides, "train.latent_norm=none"), store, tmp_path / "runs" / "plain", **QUIET)
    assert load_flow_checkpoint(tmp_path / "runs" / "plain" / "checkpoints" / "latest.pt").raw["latent_norm"] is None


def test_off_leaves_the_fingerprints_of_earlier_runs_unchanged() -> None:
    from pipeline.stages.train_state import training_inputs

    plain = training_inputs(_cfg([], "train.latent_norm=none"), "cache")
    assert "latent_norm" not in plain["train"]  # as recorded before the key existed
    assert training_inputs(_cfg([], "train.latent_norm=channel"), "cache")["train"]["latent_norm"] == "channel"


def test_a_store_without_statistics_stops_training_with_one_line(tiny_store, tmp_path: Path) -> None:
    import shutil

    _, overrides, store = tiny_store
    bare = tmp_path / "latents.zarr"
    shutil.copytree(store, bare)
    root = zarr.open_group(str(bare), mode="r+")
    root.attrs["stats"] = {"val": root.attrs["stats"]["val"]}  # no train entry
    with pytest.raises(TrainingError, match=r"latents\.zarr: no latent statistics for split 'train'.*make encode"):
        train(_cfg(overrides, "train.latent_norm=channel"), str(bare), tmp_path / "runs" / "x", **QUIET)
