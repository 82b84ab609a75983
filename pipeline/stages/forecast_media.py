"""Stage 3's media: a GIF and an MP4 grid per forecast video (truth, VQ reconstruction, samples)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.data.checked_store import open_node, open_store, read_array, verify_rows
from pipeline.run.config import Config
from pipeline.stages.forecast_state import ROW_ARRAYS, media_files

COND_COLOUR, GEN_COLOUR = (40, 200, 40), (220, 40, 40)  # tile borders: conditioning / generated frames


def media_grid(real: np.ndarray, recon: np.ndarray, samples: np.ndarray, cond: int, min_tile: int = 64,
               border: int = 2) -> np.ndarray:
    """Animation frames uint8 [T, rows * tile, label + tile, 3]: labelled rows truth, VQ recon, samples; tiles
    bordered green while conditioning, red once generated; frames under ``min_tile`` enlarged (nearest neighbour)."""
    rows = np.concatenate([real[None], recon[None], samples])  # [R, T, H, W, 3]
    scale = max(1, math.ceil(min_tile / rows.shape[2]))
    if scale > 1:
        rows = rows.repeat(scale, axis=2).repeat(scale, axis=3)
    n_rows, t, h, w, _ = rows.shape
    tiles = np.zeros((n_rows, t, h + 2 * border, w + 2 * border, 3), dtype=np.uint8)
    for k in range(t):
        tiles[:, k] = COND_COLOUR if k < cond else GEN_COLOUR
    tiles[:, :, border : border + h, border : border + w] = rows
    grid = tiles.transpose(1, 0, 2, 3, 4).reshape(t, n_rows * tiles.shape[2], tiles.shape[3], 3)
    labels = ["truth", "VQ recon", *(f"sample {j + 1}" for j in range(len(samples)))]
    strip = row_labels(labels, tiles.shape[2])
    return np.concatenate([np.broadcast_to(strip, (t, *strip.shape)), grid], axis=2)


def row_labels(labels: list[str], row_height: int, width: int = 72) -> np.ndarray:
    """A white-on-black uint8 strip [len(labels) * row_height, width, 3] with one label per row (PIL's default font)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, len(labels) * row_height))
    draw = ImageDraw.Draw(image)
    for k, label in enumerate(labels):
        draw.text((4, k * row_height + row_height // 2), label, fill=(255, 255, 255), anchor="lm")
    return np.asarray(image)


def write_media(cfg: Config, url: str, media_dir: Path, log, only_missing: bool = False) -> list[Path]:
    """GIF and MP4 grids of the first ``forecast.media_videos`` videos: media/forecast_<k>.{gif,mp4}."""
    import imageio.v3 as iio

    root = open_store(url)
    count = min(cfg.forecast.media_videos, root["done"].shape[0])
    cond = int(root.attrs["cond_frames"])
    written = []
    for k in range(count):
        paths = media_files(media_dir, k)
        if only_missing and all(p.exists() for p in paths):
            continue
        verify_rows(root, list(ROW_ARRAYS), k, url)
        rows = {"real": k, "recon": k, "samples": (k, slice(0, cfg.forecast.media_samples))}
        real, recon, samples = (read_array(open_node(root, n, url), sel, url, f"video row {k}") for n, sel in rows.items())
        frames = media_grid(real, recon, samples, cond)
        media_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # ffmpeg needs the suffix
            try:
                if path.suffix == ".gif":
                    iio.imwrite(tmp, frames, duration=1000.0 / cfg.forecast.fps, loop=0)
                else:
                    iio.imwrite(tmp, frames, fps=cfg.forecast.fps, macro_block_size=1)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
    if written:
        log(f"forecast: wrote {len(written)} media files to {media_dir}")
    return written
