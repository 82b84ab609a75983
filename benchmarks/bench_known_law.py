"""Cost and accuracy of the demo's known-law scoring (pipeline/known_law.py), per video, on the CPU.

Timed per video (best of ``repeats``; the demo's forecast protocol: clip of 16 frames, 4 conditioning, P = 12
predicted, 64 px): the read-out of S = 4 decoded samples (48 frames), the oracle (M = 256 futures of 12 frames:
simulation, and the exact measurement of its 3072 frames), and all of ``video_scores`` (model, oracle,
copy-last, constant velocity and real sets). Measured: the read-out's position error on ground-truth frames, on
blurred + noisy frames, and (when the shipped VQVAE checkpoint is there) on VQ reconstructions, read in palette
colours and in the colours calibrated on two other reconstructed frames of the same video.

    python -m benchmarks.bench_known_law [--videos 16] [--repeats 3] [--vq/--no-vq]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import typer

from benchmarks.common import best_time, record
from pipeline import known_law as KL
from pipeline.config import DemoConfig
from pipeline.data.demo import generate_demo
from pipeline.data.demo_state import load_state
from pipeline.data.shards import ShardReader

REPO = Path(__file__).resolve().parent.parent
CLIP, COND, SAMPLES = np.arange(16), 4, 4


def _pooled(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean over videos of each readout_error entry (max for the max_ entries), rounded."""
    out = {}
    for key in results[0]:
        values = [r[key] for r in results if not np.isnan(r[key])]
        out[key] = round(float(max(values) if key.startswith("max_") else np.mean(values)), 3) if values else None
    return out


def _blur_and_noise(frames: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A 3 x 3 box blur and Gaussian noise of std ``noise`` (grey levels)."""
    size = frames.shape[1]
    f = np.pad(frames.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(f[:, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9
    return np.clip(blurred + rng.normal(0, noise, blurred.shape), 0, 255).round().astype(np.uint8)


def _vq_errors(state, reader, videos: int) -> dict[str, dict[str, float]] | None:
    """Read-out error on the shipped VQVAE's reconstructions (every 4th frame of each video), or None."""
    import torch

    from pipeline.config import load_config
    from pipeline.vqvae import build_vqvae

    cfg = load_config(REPO / "configs" / "demo.yaml")
    if not (REPO / cfg.vqvae.ckpt).is_file():
        return None
    cfg.vqvae.ckpt = str(REPO / cfg.vqvae.ckpt)
    vq = build_vqvae(cfg.vqvae, cfg.data.image_size)
    ids = np.arange(0, reader.lengths.min(), 4)
    palette, calibrated = [], []
    for v in range(videos):
        frames = reader.read_frames(v, ids)
        with torch.inference_mode():
            out = vq(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1)
        recon = ((out.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        track = state.track(v)
        colours = KL.calibrate_colours(recon[:2], track, ids[:2])
        palette.append(KL.readout_error(recon[2:], track, ids[2:]))
        calibrated.append(KL.readout_error(recon[2:], track, ids[2:], colours=colours))
    return {"palette_colours": _pooled(palette), "calibrated_colours": _pooled(calibrated)}


def main(videos: int = 16, repeats: int = 3, vq: bool = typer.Option(True, help="also measure on VQ reconstructions")) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_known_law_") as root:
        generate_demo(DemoConfig(videos={"test": videos}), 64, root)
        state, reader = load_state(Path(root) / "test"), ShardReader(Path(root) / "test")
        clips = [KL.Clip(state.track(v), state.process, CLIP, COND, v) for v in range(videos)]
        samples = [KL.render_states(c.oracle(SAMPLES, seed=1), c.track, 64) for c in clips]  # stand-ins for decoded samples
        real = [reader.read_frames(v, CLIP[COND:]) for v in range(videos)]

        per_video = lambda fn: best_time(lambda: [fn(v) for v in range(videos)], repeats) / videos  # noqa: E731
        timings = {
            "readout_s": per_video(lambda v: clips[v].read(samples[v])),
            "oracle_simulate_s": per_video(lambda v: clips[v].oracle(KL.ORACLE_SAMPLES)),
            "oracle_measure_s": per_video(lambda v: clips[v].measure(clips[v].oracle(KL.ORACLE_SAMPLES))),
            "video_scores_s": per_video(lambda v: KL.video_scores(samples[v], clips[v], real=real[v])),
        }
        rng = np.random.default_rng(0)
        all_frames = np.arange(reader.lengths.min())
        exact = [KL.readout_error(reader.read_frames(v), state.track(v), all_frames) for v in range(videos)]
        noisy = [KL.readout_error(_blur_and_noise(reader.read_frames(v), 8.0, rng), state.track(v), all_frames)
                 for v in range(videos)]
        start = time.perf_counter()
        vq_errors = _vq_errors(state, reader, videos) if vq else None
        vq_s = time.perf_counter() - start

    result = {
        "setting": f"{videos} demo videos (default config, 64 px); clip 16 frames, {COND} conditioning, "
                   f"P = {len(CLIP) - COND}; S = {SAMPLES} samples; M = {KL.ORACLE_SAMPLES} oracle futures; seconds "
                   f"per video, best of {repeats}",
        **{k: round(v, 4) for k, v in timings.items()},
        "readout_error_ground_truth": _pooled(exact),
        "readout_error_blur3_noise8": _pooled(noisy),
        "readout_error_vq": vq_errors,
        "vq_measure_s": round(vq_s, 1),
    }
    record("known_law", result)


if __name__ == "__main__":
    typer.run(main)
