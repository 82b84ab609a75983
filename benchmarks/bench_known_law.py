"""Cost and accuracy of the demo's known-law scoring (pipeline/demo/{known_law,oracle,readout}.py), per video, on the CPU.

Timed per video (best of ``repeats``; the demo's forecast protocol: clip of 16 frames, 4 conditioning, P = 12
predicted, 64 px): the read-out of S = 4 decoded samples (48 frames), the oracle (M = 256 futures of 12 frames:
simulation, and the exact measurement of its 3072 frames), and all of ``video_scores`` (model, oracle,
copy-last, constant velocity and real sets), and with the shipped VQVAE the ``oracle_vq`` set (the oracle's S draws
rendered and passed through it, 48 frames). Measured: the read-out's position error on ground-truth frames, on
blurred + noisy frames, and (when the shipped VQVAE checkpoint is there) on VQ reconstructions, read in palette
colours and in the colours calibrated on two other reconstructed frames of the same video, with the
reconstructions' PSNR over whole frames and over sprite pixels.

    python -m benchmarks.bench_known_law [--videos 16] [--repeats 3] [--vq/--no-vq] [--vq-ckpt FILE]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from benchmarks.common import best_time, record
from pipeline.demo import known_law as KL, oracle as OR, readout as RO
from pipeline.run.config import DemoConfig
from pipeline.demo.generator import generate_demo
from pipeline.demo.state import load_state
from pipeline.data.shards import ShardReader

REPO = Path(__file__).resolve().parent.parent
CLIP, COND, SAMPLES = np.arange(16), 4, 4


def _blur_and_noise(frames: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A 3 x 3 box blur and Gaussian noise of std ``noise`` (grey levels)."""
    size = frames.shape[1]
    f = np.pad(frames.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(f[:, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9
    return np.clip(blurred + rng.normal(0, noise, blurred.shape), 0, 255).round().astype(np.uint8)


def _demo_vqvae(ckpt: Path | None = None):
    """A demo VQVAE: the shipped one (configs/demo.yaml's vqvae.ckpt) unless ``ckpt``; None when there is none."""
    from pipeline.run.config import load_config
    from pipeline.vqvae import build_vqvae

    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.vqvae.ckpt = str(ckpt if ckpt is not None else REPO / cfg.vqvae.ckpt)
    return build_vqvae(cfg.vqvae, cfg.data.image_size) if Path(cfg.vqvae.ckpt).is_file() else None


def _oracle_vq(clip: KL.Clip, vq) -> np.ndarray:
    """The evaluation's ``oracle_vq`` set of one video: S oracle draws rendered and passed through the VQVAE."""
    drawn = RO.render_states(clip.oracle(SAMPLES, 0, KL.STREAM_FORECAST), clip.track, 64)
    return vq.reconstruct_uint8(drawn.reshape(-1, *drawn.shape[-3:])).reshape(drawn.shape)


def main(videos: int = 16, repeats: int = 3, vq: bool = typer.Option(True, help="also measure on VQ reconstructions"),
         vq_ckpt: Optional[Path] = typer.Option(None, help="a demo VQVAE checkpoint to measure instead of the shipped one")) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_known_law_") as root:
        generate_demo(DemoConfig(videos={"test": videos}), 64, root)
        state, reader = load_state(Path(root) / "test"), ShardReader(Path(root) / "test")
        clips = [KL.Clip(state.track(v), state.process, CLIP, COND, v) for v in range(videos)]
        samples = [RO.render_states(c.oracle(SAMPLES, seed=1), c.track, 64) for c in clips]  # stand-ins for decoded samples
        real = [reader.read_frames(v, CLIP[COND:]) for v in range(videos)]

        per_video = lambda fn: best_time(lambda: [fn(v) for v in range(videos)], repeats) / videos  # noqa: E731
        timings = {
            "readout_s": per_video(lambda v: clips[v].read(samples[v])),
            "oracle_simulate_s": per_video(lambda v: clips[v].oracle(OR.ORACLE_SAMPLES)),
            "oracle_measure_s": per_video(lambda v: clips[v].measure(clips[v].oracle(OR.ORACLE_SAMPLES))),
            "video_scores_s": per_video(lambda v: KL.video_scores(samples[v], clips[v], real=real[v])),
        }
        rng = np.random.default_rng(0)
        all_frames = np.arange(reader.lengths.min())
        exact = [RO.readout_error(reader.read_frames(v), state.track(v), all_frames) for v in range(videos)]
        noisy = [RO.readout_error(_blur_and_noise(reader.read_frames(v), 8.0, rng), state.track(v), all_frames)
                 for v in range(videos)]
        start = time.perf_counter()
        model = _demo_vqvae(vq_ckpt) if vq else None
        vq_errors = None if model is None else {
            "ckpt": Path(model.ckpt).name, **RO.decoder_fidelity(model.reconstruct_uint8, reader, state, videos)}
        vq_s = time.perf_counter() - start
        if model is not None:  # eval's perfect latent forecaster: S x P frames through the VQVAE per video
            timings["oracle_vq_s"] = per_video(lambda v: _oracle_vq(clips[v], model))

    result = {
        "setting": f"{videos} demo videos (default config, 64 px); clip 16 frames, {COND} conditioning, "
                   f"P = {len(CLIP) - COND}; S = {SAMPLES} samples; M = {OR.ORACLE_SAMPLES} oracle futures; seconds "
                   f"per video, best of {repeats}",
        **{k: round(v, 4) for k, v in timings.items()},
        "readout_error_ground_truth": RO.pooled_readout_errors(exact),
        "readout_error_blur3_noise8": RO.pooled_readout_errors(noisy),
        "readout_error_vq": vq_errors,
        "vq_measure_s": round(vq_s, 1),
    }
    record("known_law", result)


if __name__ == "__main__":
    typer.run(main)
