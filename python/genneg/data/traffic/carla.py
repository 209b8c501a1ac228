"""CARLA town maps from the ``torchdrivesim`` wheel (downloaded with pip, read as a zip, never imported).

The wheel (``torchdrivesim==0.2.3`` on PyPI, inspected 2026-11) ships, per town, under
``torchdrivesim/resources/maps/carla_TownXX/``: ``metadata.json`` (``lanelet_path``, ``mesh_path``,
``lanelet_map_origin``, ...), a lanelet2 ``.osm`` (nodes in lat/lon about origin ``(0, 0)``) and a road mesh
``*_mesh.json`` (``verts (1, V, 2)`` metres, ``faces``, per-vertex category ``road`` / ``left_lane`` /
``right_lane``). Towns: 01, 02, 03, 04, 06, 07, 10HD. The lanelet2 nodes projected with the equirectangular
projection of :mod:`.lanelet2` land on the mesh vertices (same frame, no axis flip).

A :class:`RoadMap` per town: the drivable raster from the mesh's ``road`` triangles (``drivable_source=
"mesh"``, what torchdrivesim renders), the lanelet polygons (``"lanelet"``) or both (``"union"``), on one
grid covering both; lanes are the lanelet centrelines. Built maps are cached beside the wheel.

Command line: ``python -m genneg.data.traffic --cache-dir DIR [--resolution-m 0.5]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genneg.oracles.drivable_map import DrivableMap, RoadPolygons

from .dataset import load_road_maps, save_road_maps
from .lanelet2 import parse_lanelet2
from .mesh import parse_torchdrivesim_mesh
from .raster import raster_grid_for, rasterise_polygons, rasterise_triangles
from .roads import RoadMap

__all__ = ["TORCHDRIVESIM_VERSION", "carla_maps_from_wheel", "fetch_carla_maps", "main"]

TORCHDRIVESIM_VERSION = "0.2.3"
_MAPS_PREFIX = "torchdrivesim/resources/maps/"
MESH_GAP_M = 0.01  # cracks between a road mesh's triangles narrower than 2 cm are closed (RoadPolygons)
_DRIVABLE_SOURCES = ("mesh", "lanelet", "union")


def _download_wheel(cache_dir: Path, version: str) -> Path:
    found = sorted(cache_dir.glob(f"torchdrivesim-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        f"torchdrivesim=={version}", "-d", str(cache_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache_dir.glob(f"torchdrivesim-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download torchdrivesim=={version} with pip (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}"
        )
    return found[0]


def carla_maps_from_wheel(
    wheel: str | Path,
    resolution_m: float = 0.5,
    towns: Sequence[str] | None = None,
    drivable_source: str = "mesh",
    margin_m: float = 4.0,
) -> list[RoadMap]:
    """Build CARLA :class:`RoadMap` s from a torchdrivesim wheel file (read as a zip).

    Args:
        wheel: path of the ``.whl``.
        resolution_m: raster cell edge, metres.
        towns: town directory names (e.g. ``["carla_Town01"]``); default all in the wheel, sorted.
        drivable_source: ``"mesh"``, ``"lanelet"`` or ``"union"`` (see module docstring).
        margin_m: raster border around the road, metres.

    Returns:
        One map per town, named like its directory.
    """
    if drivable_source not in _DRIVABLE_SOURCES:
        raise ValueError(f"drivable_source must be one of {_DRIVABLE_SOURCES}, got {drivable_source!r}")
    maps = []
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_files = [n for n in names if n.startswith(_MAPS_PREFIX) and n.endswith("/metadata.json")]
        available = sorted({n[len(_MAPS_PREFIX) :].split("/")[0] for n in meta_files})
        if not available:
            raise ValueError(f"{wheel} holds no {_MAPS_PREFIX}*/metadata.json")
        wanted = available if towns is None else list(towns)
        missing = [t for t in wanted if t not in available]
        if missing:
            raise ValueError(f"towns {missing} not in the wheel; available: {available}")
        for town in wanted:
            base = f"{_MAPS_PREFIX}{town}/"
            meta = json.loads(z.read(base + "metadata.json"))
            origin = tuple(meta.get("lanelet_map_origin", (0.0, 0.0)))
            lanelets = parse_lanelet2(z.read(base + meta["lanelet_path"]), origin_latlon=origin)
            verts, faces = parse_torchdrivesim_mesh(json.loads(z.read(base + meta["mesh_path"])))
            triangles = verts[faces]
            pts = np.concatenate([triangles.reshape(-1, 2), *lanelets.polygons])
            grid_origin, shape = raster_grid_for(pts, resolution_m, margin_m)
            drivable = np.zeros(shape, dtype=np.uint8)
            shells: list[np.ndarray] = []  # the exact drivable area, for the polygon offroad check
            if drivable_source in ("mesh", "union"):
                drivable |= rasterise_triangles(triangles, grid_origin, resolution_m, shape)
                shells.extend(triangles)
            if drivable_source in ("lanelet", "union"):
                drivable |= rasterise_polygons(lanelets.polygons, grid_origin, resolution_m, shape)
                shells.extend(lanelets.polygons)
            # The mesh's triangles leave micron-wide cracks at T-junctions: closed for the offroad check.
            polygons = (
                RoadPolygons.with_gaps_closed(shells, MESH_GAP_M)
                if drivable_source in ("mesh", "union")
                else RoadPolygons(tuple(shells))
            )
            drivable_map = DrivableMap(drivable, grid_origin, resolution_m, polygons=polygons)
            maps.append(RoadMap(town, drivable_map, tuple(lanelets.centrelines)))
    return maps


def fetch_carla_maps(
    cache_dir: str | Path,
    resolution_m: float = 0.5,
    towns: Sequence[str] | None = None,
    drivable_source: str = "mesh",
    version: str = TORCHDRIVESIM_VERSION,
) -> list[RoadMap]:
    """Download the torchdrivesim wheel into ``cache_dir`` (once) and return its CARLA towns as maps.

    Built maps are cached under ``cache_dir/carla_maps_<source>_<resolution>/``; later calls read them.

    Args:
        cache_dir: directory for the wheel and the built maps.
        resolution_m, towns, drivable_source: as for :func:`carla_maps_from_wheel`.
        version: torchdrivesim version to fetch.

    Raises:
        RuntimeError: when pip cannot fetch the wheel (no network, no such version).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    built = cache_dir / f"carla_maps_{drivable_source}_{resolution_m:g}m_v{version}"
    if (built / "done").is_file():
        maps = load_road_maps(built)
    else:
        wheel = _download_wheel(cache_dir, version)
        maps = carla_maps_from_wheel(wheel, resolution_m, None, drivable_source)
        tmp = built.with_name(built.name + ".tmp")
        save_road_maps(tmp, maps)
        (tmp / "done").write_text("\n".join(m.name for m in maps))
        tmp.rename(built)
    if towns is not None:
        by_name = {m.name: m for m in maps}
        missing = [t for t in towns if t not in by_name]
        if missing:
            raise ValueError(f"towns {missing} not available; have {sorted(by_name)}")
        maps = [by_name[t] for t in towns]
    return maps


def main(argv: Sequence[str] | None = None) -> int:
    """Command: fetch the CARLA maps into a cache and print one line per town."""
    parser = argparse.ArgumentParser(prog="python -m genneg.data.traffic", description=main.__doc__)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--resolution-m", type=float, default=0.5)
    parser.add_argument("--drivable-source", choices=_DRIVABLE_SOURCES, default="mesh")
    args = parser.parse_args(argv)
    maps = fetch_carla_maps(args.cache_dir, args.resolution_m, drivable_source=args.drivable_source)
    for m in maps:
        h, w = m.drivable_map.shape
        print(
            f"{m.name}: {h}x{w} cells at {m.drivable_map.resolution_m} m, "
            f"{int(m.drivable_map.drivable.sum()) * m.drivable_map.resolution_m**2:.0f} m² drivable, "
            f"{len(m.lanes)} lanes"
        )
    return 0
