"""Traffic data sets on disk: written once, memory-mapped for training.

Layout of a data set directory::

    config.json         generator config, token normalisation, seed, scene count, map names, format
    boxes.npy           (S, A, 5) float32  x m, y m, length m, width m, heading rad (world frame)
    speeds.npy          (S, A) float32     m/s
    valid.npy           (S, A) bool
    vehicle_class.npy   (S, A) int8        index into the config's vehicle classes, -1 on padding
    map_index.npy       (S,) int64         index into maps/
    centre_m.npy        (S, 2) float64     scene-window centres
    tokens.npy          (S, A, 7) float32  normalised scene-frame tokens (:mod:`.tokens`)
    map_crops.npy       (S, C, C) uint8    drivable crop of each window (1 = drivable)
    maps/map_KKK.npz    drivable raster, origin, resolution, lane centrelines of map K

Scenes are generated in chunks of ``chunk_scenes`` (chunk ``c`` uses a seed derived from ``(seed, c)``)
and written into pre-allocated ``.npy`` files, so data sets larger than memory can be written. The
directory is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from genneg.oracles.drivable_map import DrivableMap, RoadPolygons

from .roads import RoadMap
from .scenes import SceneConfig, TrafficScenes, generate_scenes
from .tokens import TOKEN_DIM, TokenNormalisation, crop_maps, scenes_to_tokens

__all__ = ["TrafficSceneDataset", "load_road_maps", "save_road_maps", "write_traffic_dataset"]

FORMAT_VERSION = 1


def save_road_maps(directory: str | Path, road_maps: Sequence[RoadMap]) -> None:
    """Write maps as ``directory/map_KKK.npz`` (raster, origin, resolution, lanes, name, and the exact road
    polygons when the map has them)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for k, m in enumerate(road_maps):
        lengths = np.array([lane.shape[0] for lane in m.lanes], dtype=np.int64)
        points = np.concatenate(m.lanes) if m.lanes else np.zeros((0, 2))
        polygons: dict[str, np.ndarray] = {}
        road = m.drivable_map.polygons
        if road is not None:
            for key, rings in (("shell", road.shells), ("hole", road.holes)):
                polygons[f"{key}_lengths"] = np.array([r.shape[0] for r in rings], dtype=np.int64)
                polygons[f"{key}_points"] = np.concatenate(rings) if rings else np.zeros((0, 2))
        np.savez_compressed(
            directory / f"map_{k:03d}.npz",
            name=np.array(m.name),
            drivable=m.drivable_map.drivable,
            origin_m=np.array(m.drivable_map.origin_m),
            resolution_m=np.array(m.drivable_map.resolution_m),
            lane_lengths=lengths,
            lane_points=points,
            **polygons,
        )


def load_road_maps(directory: str | Path) -> list[RoadMap]:
    """Read the maps written by :func:`save_road_maps`, in index order."""
    maps = []
    for path in sorted(Path(directory).glob("map_*.npz")):
        with np.load(path) as z:
            polygons = None
            if "shell_points" in z:
                shells, holes = (
                    tuple(np.split(z[f"{key}_points"], np.cumsum(z[f"{key}_lengths"])[:-1]))
                    if z[f"{key}_lengths"].size
                    else ()
                    for key in ("shell", "hole")
                )
                polygons = RoadPolygons(shells, holes)
            drivable_map = DrivableMap(
                z["drivable"], tuple(z["origin_m"]), float(z["resolution_m"]), polygons=polygons
            )
            lanes = np.split(z["lane_points"], np.cumsum(z["lane_lengths"])[:-1])
            maps.append(RoadMap(str(z["name"]), drivable_map, tuple(lanes)))
    return maps


_ARRAYS = ("boxes", "speeds", "valid", "vehicle_class", "map_index", "centre_m", "tokens", "map_crops")


def write_traffic_dataset(
    directory: str | Path,
    road_maps: Sequence[RoadMap],
    n_scenes: int,
    config: SceneConfig,
    seed: int,
    norm: TokenNormalisation | None = None,
    crop_cells: int = 64,
    chunk_scenes: int = 1024,
    crop_margin_m: float = 0.0,
    extra_config: dict | None = None,
) -> Path:
    """Generate ``n_scenes`` valid scenes on ``road_maps`` and write them (with their config) to disk.

    Args:
        directory: the data set directory to create (must not exist).
        road_maps: maps the scenes are placed on (saved with the data set).
        n_scenes: number of scenes ``S``.
        config: scene generator options.
        seed: generation seed.
        norm: token normalisation (default :class:`TokenNormalisation`; its ``position_scale_m`` should be
            ``config.window_m / 2`` so the window spans ``[-1, 1]²``).
        crop_cells: edge of the stored map crops, cells.
        chunk_scenes: scenes generated per chunk.
        crop_margin_m: the crops reach this far beyond the scene window on every side (metres), so that
            boxes near the window's edge see the road that continues there; the crop edge is
            ``window_m + 2 · crop_margin_m`` (:attr:`TrafficSceneDataset.crop_extent`).
        extra_config: JSON-able facts to store beside the config (e.g. the road generator's config).

    Returns:
        The directory.
    """
    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"data set directory {directory} already exists")
    if not crop_margin_m >= 0:
        raise ValueError(f"crop_margin_m must be >= 0, got {crop_margin_m}")
    if n_scenes < 1 or chunk_scenes < 1:
        raise ValueError(f"n_scenes and chunk_scenes must be >= 1, got {n_scenes}, {chunk_scenes}")
    norm = norm if norm is not None else TokenNormalisation(position_scale_m=0.5 * config.window_m)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    a = config.max_vehicles
    shapes = {
        "boxes": ((n_scenes, a, 5), np.float32),
        "speeds": ((n_scenes, a), np.float32),
        "valid": ((n_scenes, a), np.bool_),
        "vehicle_class": ((n_scenes, a), np.int8),
        "map_index": ((n_scenes,), np.int64),
        "centre_m": ((n_scenes, 2), np.float64),
        "tokens": ((n_scenes, a, TOKEN_DIM), np.float32),
        "map_crops": ((n_scenes, crop_cells, crop_cells), np.uint8),
    }
    out = {
        k: open_memmap(tmp / f"{k}.npy", mode="w+", dtype=dt, shape=shp) for k, (shp, dt) in shapes.items()
    }
    for c, s0 in enumerate(range(0, n_scenes, chunk_scenes)):
        s1 = min(s0 + chunk_scenes, n_scenes)
        chunk_seed = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
        scenes = generate_scenes(road_maps, s1 - s0, config, seed=chunk_seed)
        _write_chunk(out, s0, s1, scenes, road_maps, config, norm, crop_cells, crop_margin_m)
    for arr in out.values():
        arr.flush()
    del out
    save_road_maps(tmp / "maps", road_maps)
    meta = {
        "format_version": FORMAT_VERSION,
        "n_scenes": n_scenes,
        "seed": seed,
        "crop_cells": crop_cells,
        "crop_margin_m": crop_margin_m,
        "chunk_scenes": chunk_scenes,
        "scene_config": json.loads(config.to_json()),
        "token_normalisation": norm.to_dict(),
        "maps": [m.name for m in road_maps],
        "extra": extra_config or {},
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.rename(directory)
    return directory


def _write_chunk(
    out: dict[str, np.ndarray],
    s0: int,
    s1: int,
    scenes: TrafficScenes,
    road_maps: Sequence[RoadMap],
    config: SceneConfig,
    norm: TokenNormalisation,
    crop_cells: int,
    crop_margin_m: float,
) -> None:
    out["boxes"][s0:s1] = scenes.boxes
    out["speeds"][s0:s1] = scenes.speeds
    out["valid"][s0:s1] = scenes.valid
    out["vehicle_class"][s0:s1] = scenes.vehicle_class
    out["map_index"][s0:s1] = scenes.map_index
    out["centre_m"][s0:s1] = scenes.centre_m
    out["tokens"][s0:s1] = scenes_to_tokens(scenes.boxes, scenes.speeds, scenes.valid, scenes.centre_m, norm)
    crops = np.zeros((s1 - s0, crop_cells, crop_cells), dtype=np.uint8)
    for m in np.unique(scenes.map_index):
        rows = np.flatnonzero(scenes.map_index == m)
        crops[rows] = crop_maps(
            road_maps[int(m)].drivable_map, scenes.centre_m[rows], config.window_m + 2 * crop_margin_m,
            crop_cells,
        )
    out["map_crops"][s0:s1] = crops


class TrafficSceneDataset(torch.utils.data.Dataset):
    """A written traffic data set, memory-mapped (``np.load(mmap_mode="r")``).

    ``dataset[i]`` is a dict of tensors:

    - ``"tokens"``: ``(A, 7)`` float32, normalised scene-frame tokens (zero at padding),
    - ``"valid"``: ``(A,)`` bool,
    - ``"map"``: ``(1, C, C)`` float32 drivable crop (1 = drivable),
    - ``"index"``: scalar int64, the scene index.

    Attributes:
        directory: the data set directory.
        meta: the parsed ``config.json``.
        scene_config: the generator config; ``norm``: the token normalisation.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{self.directory} is not a traffic data set (no config.json)")
        self.meta = json.loads(config_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            version = self.meta.get("format_version")
            raise ValueError(f"{self.directory}: unsupported format_version {version}")
        self.scene_config = SceneConfig.from_json(json.dumps(self.meta["scene_config"]))
        self.norm = TokenNormalisation(**self.meta["token_normalisation"])
        half = 0.5 * self.scene_config.window_m
        #: half the crop edge in normalised token units (1 = the scene window's edge)
        self.crop_extent = (half + float(self.meta.get("crop_margin_m", 0.0))) / self.norm.position_scale_m
        self.arrays = {k: np.load(self.directory / f"{k}.npy", mmap_mode="r") for k in _ARRAYS}

    def __len__(self) -> int:
        return int(self.meta["n_scenes"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} scenes")
        return {
            "tokens": torch.from_numpy(np.array(self.arrays["tokens"][index])),
            "valid": torch.from_numpy(np.array(self.arrays["valid"][index])),
            "map": torch.from_numpy(np.array(self.arrays["map_crops"][index], dtype=np.float32))[None],
            "index": torch.tensor(index % len(self), dtype=torch.int64),
        }

    def road_maps(self) -> list[RoadMap]:
        """The maps the scenes are placed on (indexed by ``arrays["map_index"]``)."""
        return load_road_maps(self.directory / "maps")

    def scenes(self) -> TrafficScenes:
        """All scenes in the world frame (memory-mapped arrays)."""
        a = self.arrays
        return TrafficScenes(
            a["boxes"], a["speeds"], a["valid"], a["vehicle_class"], a["map_index"], a["centre_m"]
        )
