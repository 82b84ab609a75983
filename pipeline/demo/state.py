"""The ground-truth state sidecar of a demo split, ``<root>/<split>/demo_state.npz``: the simulator's state behind
every frame, written beside the shards, read by :mod:`pipeline.demo.known_law`.

Format: a numpy ``.npz`` without pickles, deterministic bytes. V videos in shard order, T frames, K = ``max_sprites``
(padded; ``present`` marks the first ``counts[v]`` slots)::

    format      int64   []             STATE_FORMAT
    positions   float64 [V, T, K, 2]   top-left corner (row y, column x), pixels, that renders frame t (NaN = pad)
    velocities  float64 [V, T, K, 2]   velocity (pixels/frame) the step from frame t to t+1 starts from (NaN = pad)
    sizes       float64 [V, K]         side of a square / diameter of a disc, pixels (NaN = pad)
    discs       bool    [V, K]         disc (True) or square
    colours     int64   [V, K]         index into the palette (``process["palette"]``; -1 = pad)
    present     bool    [V, K]         slot k of video v holds a sprite
    counts      int64   [V]            sprites per video
    sources     str     []             JSON list of each video's ``source`` key as the shards have it (demo/test/00003)
    process     str     []             JSON dict of the process parameters (``generator.process_parameters``)

A pixel is painted when its centre (i + 0.5, j + 0.5) lies in the sprite; frame t is rendered from the state at t,
then one step (kick, speed cap, move, reflect).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.run.records import atomic_path

STATE_FILE = "demo_state.npz"
STATE_FORMAT = 1
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the file's bytes depend on the state only


@dataclass
class SpriteTrack:
    """One video's state, frame by frame: the corner that renders frame t and the velocity ``generator._step``
    starts from there; K sprites in drawing order (later on top)."""


    positions: np.ndarray  # float64 [T, K, 2]
    velocities: np.ndarray  # float64 [T, K, 2]
    sizes: np.ndarray  # float64 [K], side (square) or diameter (disc), pixels
    discs: np.ndarray  # bool [K]
    colours: np.ndarray  # int64 [K], indices into the palette


@dataclass
class DemoState:
    """A split's sidecar in memory: padded arrays (see the module docstring), process parameters and sources."""

    positions: np.ndarray
    velocities: np.ndarray
    sizes: np.ndarray
    discs: np.ndarray
    colours: np.ndarray
    present: np.ndarray
    process: dict[str, Any]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def track(self, video: int) -> SpriteTrack:
        """Video ``video``'s state (its sprites only, unpadded)."""
        k = int(self.present[video].sum())
        return SpriteTrack(self.positions[video, :, :k].copy(), self.velocities[video, :, :k].copy(),
                           self.sizes[video, :k].copy(), self.discs[video, :k].copy(), self.colours[video, :k].copy())

    def index(self, source: str) -> int:
        """The video index of a shard ``source`` key (e.g. ``demo/test/00003``); KeyError if absent."""
        try:
            return self.sources.index(source)
        except ValueError:
            raise KeyError(f"no video with source {source!r} in this state sidecar") from None


def pack_tracks(tracks: list[SpriteTrack], max_sprites: int) -> dict[str, np.ndarray]:
    """The padded arrays of the sidecar from per-video tracks (all with the same frame count)."""
    frames = tracks[0].positions.shape[0] if tracks else 0
    v, k = len(tracks), max_sprites
    out = {
        "positions": np.full((v, frames, k, 2), np.nan), "velocities": np.full((v, frames, k, 2), np.nan),
        "sizes": np.full((v, k), np.nan), "discs": np.zeros((v, k), bool), "colours": np.full((v, k), -1, np.int64),
        "present": np.zeros((v, k), bool), "counts": np.array([len(t.sizes) for t in tracks], np.int64),
    }
    for i, track in enumerate(tracks):
        n = len(track.sizes)
        out["positions"][i, :, :n], out["velocities"][i, :, :n] = track.positions, track.velocities
        out["sizes"][i, :n], out["discs"][i, :n], out["colours"][i, :n] = track.sizes, track.discs, track.colours
        out["present"][i, :n] = True
    return out


def write_state(path: str | Path, tracks: list[SpriteTrack], sources: list[str], process: dict[str, Any]) -> Path:
    """Write a split's sidecar to ``path`` atomically (deterministic bytes); returns ``path``."""
    if len(tracks) != len(sources):
        raise ValueError(f"{len(tracks)} tracks but {len(sources)} sources")
    arrays = {"format": np.array(STATE_FORMAT, np.int64), **pack_tracks(tracks, int(process["max_sprites"])),
              "sources": np.array(json.dumps(sources)), "process": np.array(json.dumps(process, sort_keys=True))}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME), buffer.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)
    return Path(path)


def load_state(path: str | Path) -> DemoState:
    """Read a sidecar: ``path`` is the ``.npz`` file or the split directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != STATE_FORMAT:
                raise ValueError(f"state format {int(data['format'])}, this code reads {STATE_FORMAT}")
            arrays = {name: data[name] for name in ("positions", "velocities", "sizes", "discs", "colours", "present")}
            return DemoState(**arrays, process=json.loads(str(data["process"])), sources=json.loads(str(data["sources"])))
    except Exception as exc:  # an input of eval: never rebuilt here, named (garbage raises zip, numpy, JSON errors)
        from pipeline.data.checked_store import DataIntegrityError  # zarr's import: not for the data stage's writers

        raise DataIntegrityError(f"cannot read the demo state sidecar {path} ({type(exc).__name__}: "
                                 f"{(str(exc).splitlines() or [''])[0][:200]}): rebuild it with the data stage "
                                 "(make data)") from None
