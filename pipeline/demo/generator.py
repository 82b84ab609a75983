"""The synthetic ``demo`` dataset: 1–3 coloured sprites (squares or discs) that move with constant velocity, reflect
off the walls and, with probability ``kick_prob`` per frame, get a Gaussian velocity kick, so the future is uncertain.
Video ``i`` of split ``s`` uses the random stream ``(seed, s, i)``: one split's size never changes another. The state
behind every frame goes to a sidecar (:mod:`pipeline.demo.state`), so the law of the future is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.run.config import DemoConfig
from pipeline.demo.state import STATE_FILE, SpriteTrack, write_state
from pipeline.data.shards import ShardWriter

PALETTE = np.array(
    [[230, 60, 60], [60, 200, 80], [70, 110, 240], [240, 200, 50], [200, 80, 220], [60, 210, 220], [250, 140, 40]],
    dtype=np.uint8,
)
BACKGROUND = np.array([24, 24, 32], dtype=np.uint8)
MAX_SPEED = 4.0  # pixels per frame; kicks never push a sprite faster
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def render_video(cfg: DemoConfig, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One demo video ``uint8 [frames, S, S, 3]`` drawn from ``rng``."""
    return simulate_video(cfg, image_size, rng)[0]


def simulate_video(cfg: DemoConfig, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, SpriteTrack]:
    """One demo video ``uint8 [frames, S, S, 3]`` and the state that rendered each frame."""

    count = int(rng.integers(cfg.min_sprites, cfg.max_sprites + 1))
    sizes = rng.integers(cfg.sprite_size[0], cfg.sprite_size[1] + 1, size=count).astype(np.float64)
    palette_index = rng.choice(len(PALETTE), size=count, replace=False)
    colours = PALETTE[palette_index]
    discs = rng.random(count) < 0.5
    position = rng.uniform(0, image_size - sizes[:, None], size=(count, 2))
    angle = rng.uniform(0, 2 * np.pi, size=count)
    speed = rng.uniform(cfg.speed[0], cfg.speed[1], size=count)
    velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]

    yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5
    video = np.empty((cfg.frames, image_size, image_size, 3), dtype=np.uint8)
    positions = np.empty((cfg.frames, count, 2))
    velocities = np.empty((cfg.frames, count, 2))
    for t in range(cfg.frames):
        positions[t], velocities[t] = position, velocity
        frame = video[t]
        frame[:] = BACKGROUND
        for k in range(count):
            frame[_sprite_mask(position[k], sizes[k], discs[k], yy, xx)] = colours[k]
        position, velocity = _step(position, velocity, sizes, image_size, cfg, rng)
    return video, SpriteTrack(positions, velocities, sizes, discs, palette_index.astype(np.int64))


def _sprite_mask(corner: np.ndarray, size: float, disc: bool, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Pixels whose centres ``(yy, xx)`` lie in the sprite with top-left ``corner``: a square of side ``size`` or
    the disc inscribed in it."""
    y0, x0 = corner
    if disc:
        radius = size / 2
        return (yy - (y0 + radius)) ** 2 + (xx - (x0 + radius)) ** 2 <= radius**2
    return (yy >= y0) & (yy < y0 + size) & (xx >= x0) & (xx < x0 + size)


def _step(position, velocity, sizes, image_size, cfg: DemoConfig, rng: np.random.Generator):
    """Advance one frame: random kicks, move, reflect off the walls."""
    kicked = rng.random(len(sizes)) < cfg.kick_prob
    velocity = velocity + kicked[:, None] * rng.normal(0.0, cfg.kick_scale, size=velocity.shape)
    speed = np.linalg.norm(velocity, axis=1, keepdims=True)
    velocity = np.where(speed > MAX_SPEED, velocity * MAX_SPEED / np.maximum(speed, 1e-9), velocity)
    position = position + velocity
    upper = image_size - sizes[:, None]
    below, above = position < 0, position > upper
    position = np.where(below, -position, np.where(above, 2 * upper - position, position))
    velocity = np.where(below | above, -velocity, velocity)
    return position, velocity


def process_parameters(cfg: DemoConfig, image_size: int, split: str) -> dict[str, Any]:
    """The parameters of the process that made a split (the ``process`` entry of its state sidecar)."""
    return {
        "kick_prob": cfg.kick_prob, "kick_scale": cfg.kick_scale, "max_speed": MAX_SPEED,
        "speed": list(cfg.speed), "sprite_size": list(cfg.sprite_size), "min_sprites": cfg.min_sprites,
        "max_sprites": cfg.max_sprites, "frames": cfg.frames, "image_size": image_size,
        "walls": "reflecting: each coordinate of the corner stays in [0, image_size - size]",
        "seed": cfg.seed, "split": split, "split_code": split_code(split),
        "rng": "numpy default_rng([seed, split_code, video index])",
        "palette": PALETTE.tolist(), "background": BACKGROUND.tolist(),
        "geometry": "position = top-left corner (row, column); centre = position + size / 2; pixel (i, j) is painted "
                    "when (i + 0.5, j + 0.5) lies in the sprite; later sprites drawn on top",
        "timing": "frame t is rendered from the state at t, then one step: kick, speed cap, move, reflect",
    }


def split_code(split: str) -> int:
    """The number that separates a split's random streams."""
    return SPLIT_CODES.get(split, sum(map(ord, split)))


def generate_demo(cfg: DemoConfig, image_size: int, out_root: str | Path) -> dict[str, int]:
    """Write every split of the demo dataset under ``out_root/<split>/`` (its shards and, beside them, the state
    sidecar :data:`STATE_FILE`); returns videos per split."""
    counts = {}
    for split, n_videos in cfg.videos.items():
        code = split_code(split)
        attrs = {"split": split, "split_rule": "synthetic demo", "generator": "bouncing sprites", "seed": cfg.seed}
        tracks, sources = [], []
        with ShardWriter(Path(out_root) / split, attrs=attrs) as writer:
            for index in tqdm(range(n_videos), desc=f"demo {split}", unit="video", leave=False):
                rng = np.random.default_rng([cfg.seed, code, index])
                video, track = simulate_video(cfg, image_size, rng)
                sources.append(f"demo/{split}/{index:05d}")
                writer.add(video, source=sources[-1])
                tracks.append(track)
        if n_videos:  # an empty split has no directory (no shard), so no sidecar either
            write_state(Path(out_root) / split / STATE_FILE, tracks, sources, process_parameters(cfg, image_size, split))
        counts[split] = n_videos
    return counts
