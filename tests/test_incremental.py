"""Incremental reruns by content: each stage reruns only when something it depends on changed.

The chain is the one `make demo` runs (encode, then train / forecast / eval), through the real stage scripts,
on the tiny setting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import make_tiny_vqvae

FAST = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
        "train.sample_every=0", "train.steps=4", "train.latest_every=2", "forecast.max_videos=2", "forecast.media_videos=1",
        "sample.n_samples=2", "sample.steps=3"]
STAGES = {  # script, whether it takes --interp, whether make demo passes FORCE=1
    "encode": ("encode_latents.py", False, True),
    "train": ("train_latent.py", True, True),
    "forecast": ("forecast.py", True, True),
    "eval": ("evaluate.py", True, False),
}


def run_chain(repo: Path, out: Path, overrides: list[str]) -> dict[str, str]:
    """Run the four stages in order; return each stage's stdout."""
    outputs = {}
    for stage, (script, takes_interp, forced) in STAGES.items():
        command = [sys.executable, str(repo / script), "--config", str(repo / "configs" / "demo.yaml"), "--smoke",
                   "--out", str(out), *[a for o in [*FAST, *overrides] for a in ("--set", o)]]
        command += ["--interp", "ours"] if takes_interp else []
        command += ["--force"] if forced else []
        result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
        outputs[stage] = result.stdout
    return outputs


def reused(outputs: dict[str, str]) -> set[str]:
    return {stage for stage, text in outputs.items() if "up to date" in text}


def test_each_change_reruns_exactly_the_stages_that_depend_on_it(tiny, tmp_path: Path, repo: Path) -> None:
    cfg, overrides = tiny
    out = tmp_path / "out"
    assert reused(run_chain(repo, out, overrides)) == set()  # (nothing changed, nothing recomputed: tests/test_runs.py)
    # an evaluation setting: only evaluation reruns
    outputs = run_chain(repo, out, [*overrides, "eval.videos=1"])
    assert reused(outputs) == {"encode", "train", "forecast"} and "changed:" in outputs["eval"]
    # a training setting: train, forecast and eval rerun; the latent cache is reused
    outputs = run_chain(repo, out, [*overrides, "eval.videos=1", "train.lr=3e-4"])
    assert reused(outputs) == {"encode"} and "train.lr" in outputs["train"]
    # a replaced VQVAE checkpoint: everything downstream reruns
    make_tiny_vqvae(cfg, Path(cfg.vqvae.ckpt), seed=7)
    outputs = run_chain(repo, out, [*overrides, "eval.videos=1", "train.lr=3e-4"])
    assert reused(outputs) == set() and "vqvae.ckpt_sha256" in outputs["encode"]
