"""The demo's known-law scores in eval: the forecasts' sprites read from pixels and compared with their true law
(:mod:`pipeline.demo.known_law`), beside the oracle, deterministic references and the VQVAE's ceiling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.demo.known_law import STREAM_FORECAST, Clip, render_states, video_scores
from pipeline.demo.readout import calibrate_colours
from pipeline.demo.state import STATE_FILE, load_state
from pipeline.eval.stats import bootstrap_interval, paired_difference
from pipeline.run.config import Config
from pipeline.run.records import atomic_path, cached_sha256, fingerprint, read_derived, sha256_file
from pipeline.stages.evaluate_scores import interval_of, summarize_metric


def known_law_scores(cfg: Config, store, videos: int, bootstrap: dict[str, Any], log, cache_dir: Path) -> dict[str, Any]:
    """metrics.json's ``known_law`` block: {status, sets: {set: {metric: block}}, horizons}; other data: a status.

    Sets: model, oracle (S draws of the true law: the noise floor), copy_last, constant_velocity, vq_ceiling, real
    (the read-out's ceiling) and, when the config's VQVAE decoded the forecasts, oracle_vq (the oracle through the
    VQVAE: what any model decoded by it can reach). Sprites are read in colours calibrated per video on the decoded
    conditioning frames. The oracle_vq frames depend on the videos and the VQVAE only, not on the run: they are
    cached in ``cache_dir`` (:func:`oracle_vq_frames`), so later runs of the same dataset reuse them.
    """
    path = Path(cfg.data.root) / str(store.attrs.get("split")) / STATE_FILE
    if not path.is_file():
        return {"status": f"no state sidecar {path}: regenerate the demo data (make data) to get known-law scores"}
    state = load_state(path)
    channel, channel_note = decoder_channel(cfg, store.attrs) if cfg.eval.oracle_vq else (None, "eval.oracle_vq off")
    frames, c = np.asarray(store.attrs["frame_indices"]), store.cond
    clips = [Clip(state.track(index), state.process, frames, c, video=index)
             for index in (state.index(store.attrs["videos"][v]["source"]) for v in range(videos))]
    decoded = None if channel is None else oracle_vq_frames(clips, path, channel, store.n_samples, cfg.eval.seed,
                                                            Path(cache_dir), log)
    rows = []
    for v, clip in enumerate(tqdm(clips, desc="eval: known law", unit="video")):
        samples, real, recon = store.row("samples", v), store.row("real", v), store.row("recon", v)
        colours = calibrate_colours(samples[0, :c], clip.track, frames[:c])
        frame_sets = {"vq_ceiling": recon[None, c:]}
        if decoded is not None:  # the oracle's own draws through the VQVAE
            frame_sets["oracle_vq"] = decoded[v]
        rows.append(video_scores(samples[:, c:], clip, real=real[c:], n_oracle=cfg.eval.oracle_samples,
                                 seed=cfg.eval.seed, colours=colours, frame_sets=frame_sets))
    sets = {name: {metric: summarize_metric(metric, [row[name][metric] for row in rows], bootstrap)
                   for metric in rows[0][name]} for name in rows[0]}
    horizons = horizon_comparisons(rows, bootstrap)
    log(f"eval: known law: identity kept {sets['model']['identity_kept']['value']:.3f} (oracle "
        f"{sets['oracle']['identity_kept']['value']:.3f}), law distance {sets['model']['law_distance']['value']:.2f} px "
        f"(noise floor {sets['oracle']['law_distance']['value']:.2f}, copy-last {sets['copy_last']['law_distance']['value']:.2f})")
    return {"status": f"ok: {videos} videos, {cfg.eval.oracle_samples} oracle draws each, state {path}; {channel_note}",
            "sets": sets, "horizons": horizons}


ORACLE_VQ_VERSION = 1  # bump when the oracle's draws, their rendering or the decoding change


def oracle_vq_key(clips: list[Clip], state_path: Path, channel: "DecoderChannel", samples: int, seed: int) -> dict[str, Any]:
    """Everything the oracle_vq frames depend on: the VQVAE's and the state sidecar's bytes, videos, frames, draws."""
    return {"vqvae_sha256": channel.sha256, "state_sha256": sha256_file(state_path), "videos": [k.video for k in clips],
            "frame_indices": clips[0].frame_indices.tolist(), "cond": clips[0].cond, "samples": samples, "seed": seed,
            "stream": STREAM_FORECAST, "version": ORACLE_VQ_VERSION}


def oracle_vq_frames(clips: list[Clip], state_path: Path, channel: "DecoderChannel", samples: int, seed: int,
                     cache_dir: Path, log) -> np.ndarray:
    """The oracle_vq set, ``uint8 [videos, samples, predicted frames, H, W, 3]``: ``samples`` draws of each clip's
    true law, rendered and passed through the forecasts' VQVAE. Cached in ``cache_dir`` under the fingerprint of
    :func:`oracle_vq_key`: every run scored on the same videos with the same VQVAE reuses them (the decoding is most
    of the known-law scores' time); a cache file that does not read is remade."""
    path = cache_dir / f"oracle_vq-{fingerprint(oracle_vq_key(clips, state_path, channel, samples, seed))}.npy"
    shape = (len(clips), samples, len(clips[0].offsets), clips[0].image_size, clips[0].image_size, 3)
    decoded = read_derived(path, lambda line: log(f"eval: oracle_vq cache {line}"), lambda p: _read_uint8(p, shape), "recomputing")
    if decoded is not None:
        return decoded
    decoded = np.empty(shape, np.uint8)
    for v, clip in enumerate(tqdm(clips, desc="eval: oracle through the VQVAE", unit="video")):
        drawn = render_states(clip.oracle(samples, seed, STREAM_FORECAST), clip.track, clip.image_size, clip.palette)
        decoded[v] = channel(drawn.reshape(-1, *drawn.shape[-3:])).reshape(drawn.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, keep_suffix=True) as tmp:
        np.save(tmp, decoded, allow_pickle=False)
    return decoded


def _read_uint8(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A cached uint8 array of ``shape``, else ValueError."""
    values = np.load(path, allow_pickle=False)
    if values.dtype != np.uint8 or values.shape != shape:
        raise ValueError(f"{values.dtype} {values.shape}, expected uint8 {shape}")
    return values


@dataclass(frozen=True)
class DecoderChannel:
    """A VQVAE as a channel, uint8 frames ``[N, H, W, 3]`` -> their reconstructions; ``sha256`` of its file."""

    reconstruct: Callable[[np.ndarray], np.ndarray]
    sha256: str

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.reconstruct(frames)


def decoder_channel(cfg: Config, attrs: dict[str, Any]) -> tuple[DecoderChannel | None, str]:
    """The forecasts' VQVAE as a channel, uint8 frames ``[N, H, W, 3]`` -> their reconstructions, and a note; None
    (and why) unless the config's VQVAE checkpoint is the file the forecasts were decoded with (same bytes)."""
    from pipeline.vqvae import build_vqvae

    path = Path(cfg.vqvae.ckpt) if cfg.vqvae.ckpt else None
    hashes = dict(attrs.get("file_hashes") or {})  # the forecasts' record: an unchanged file is not hashed again
    recorded = hashes.get(str(path.resolve())) if path and path.is_file() else None
    if not recorded or recorded[-1] != cached_sha256(path, hashes):
        return None, (f"no oracle_vq set: vqvae.ckpt '{cfg.vqvae.ckpt}' is not the VQVAE file the forecasts recorded "
                      "(file_hashes)")
    vq = build_vqvae(cfg.vqvae, int(attrs["image_size"]))
    return DecoderChannel(vq.reconstruct_uint8, recorded[-1]), f"oracle_vq through {path}"


HORIZON_PAIRS = (("model", "constant_velocity"), ("model", "copy_last"), ("oracle", "constant_velocity"),
                 ("oracle_vq", "constant_velocity"), ("model", "oracle_vq"))
HORIZON_IDENTITY = ("model", "vq_ceiling", "oracle", "oracle_vq")


def horizon_comparisons(rows: list[dict[str, dict[str, np.ndarray]]], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """Per predicted frame, with intervals over videos: {law_distance: {"a-b": paired a − b of :data:`HORIZON_PAIRS`
    whose two sets were scored}, identity_kept: {set: interval}}. The oracle's rows say at which horizons even the
    true law beats constant velocity with these videos and samples; model − oracle_vq (the perfect latent
    forecaster, when the VQVAE decoded the forecasts) is the reference of the report's bar."""
    def per_frame(name: str, metric: str) -> np.ndarray:  # [videos, frames]
        return np.stack([row[name][metric] for row in rows]).astype(np.float64)

    law = {}
    for a, b in [(a, b) for a, b in HORIZON_PAIRS if a in rows[0] and b in rows[0]]:
        da, db = per_frame(a, "law_distance"), per_frame(b, "law_distance")
        law[f"{a}-{b}"] = [{k: r[k] for k in ("diff", "low", "high", "verdict")}
                           for r in (paired_difference(da[:, p], db[:, p], False, **bootstrap) for p in range(da.shape[1]))]
    identity = {name: [interval_of(bootstrap_interval(column, **bootstrap)) for column in per_frame(name, "identity_kept").T]
                for name in HORIZON_IDENTITY if name in rows[0]}
    return {"law_distance": law, "identity_kept": identity}
