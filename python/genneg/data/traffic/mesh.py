"""Triangulated road meshes → drivable raster.

Readers return ``vertices (V, 2)`` float64 metres (``z`` dropped: the road is seen from above) and
``faces (F, 3)`` int64 vertex indices (0-based; polygons are fan-triangulated). Supported:

- Wavefront ``.obj``: ``v x y z`` and ``f a b c ...`` lines (``a/t/n`` forms and negative indices accepted);
- ASCII ``.ply``: ``vertex`` (``x``, ``y`` properties) and ``face`` (vertex-index list) elements;
- ``.npz``: arrays ``vertices`` and ``faces``;
- the torchdrivesim ``*_mesh.json`` layout: ``verts (1, V, 2)``, ``faces (1, F, 3)``, ``vert_category (1, V)``
  indexing ``categories`` (``road``, ``left_lane``, ``right_lane``); only faces whose three vertices are
  in ``categories_kept`` are returned.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genneg.oracles.drivable_map import DrivableMap, RoadPolygons

from .raster import raster_grid_for, rasterise_triangles

__all__ = ["load_road_mesh", "mesh_drivable_map", "parse_obj", "parse_ply_ascii", "parse_torchdrivesim_mesh"]


def _fan(polygon: list[int]) -> list[tuple[int, int, int]]:
    return [(polygon[0], polygon[k], polygon[k + 1]) for k in range(1, len(polygon) - 1)]


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if vertices.ndim != 2 or vertices.shape[1] < 2:
        raise ValueError(f"vertices must have shape (V, 2) or (V, 3), got {vertices.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise ValueError(
            f"face indices must lie in [0, {vertices.shape[0]}), got range [{faces.min()}, {faces.max()}]"
        )
    return vertices[:, :2].copy(), faces


def parse_obj(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of a Wavefront OBJ document."""
    verts, faces = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            if len(parts) < 3:
                raise ValueError(f"obj line {lineno}: vertex needs at least x and y")
            verts.append([float(p) for p in parts[1:4]] + [0.0] * (4 - len(parts)))
        elif parts[0] == "f":
            idx = []
            for p in parts[1:]:
                k = int(p.split("/")[0])
                idx.append(k - 1 if k > 0 else len(verts) + k)
            if len(idx) < 3:
                raise ValueError(f"obj line {lineno}: face needs at least 3 vertices")
            faces.extend(_fan(idx))
    return _check_mesh(np.array(verts).reshape(-1, 3), np.array(faces))


def parse_ply_ascii(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of an ASCII PLY document (``format ascii 1.0``)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "ply":
        raise ValueError("not a PLY document (first line must be 'ply')")
    elements: list[tuple[str, int, list[str]]] = []
    body = 0
    for k, line in enumerate(lines[1:], 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format" and parts[1] != "ascii":
            raise ValueError(f"only ASCII PLY is supported, got format {parts[1]}")
        if parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            elements[-1][2].append(parts[-1])
        elif parts[0] == "end_header":
            body = k + 1
            break
    else:
        raise ValueError("PLY header has no end_header")
    verts, faces = np.zeros((0, 2)), []
    row = body
    for name, count, props in elements:
        block = [lines[row + i].split() for i in range(count)]
        row += count
        if name == "vertex":
            if "x" not in props or "y" not in props:
                raise ValueError(f"PLY vertex element needs x and y properties, got {props}")
            ix, iy = props.index("x"), props.index("y")
            verts = np.array([[float(b[ix]), float(b[iy])] for b in block]).reshape(-1, 2)
        elif name == "face":
            for b in block:
                n = int(b[0])
                faces.extend(_fan([int(v) for v in b[1 : 1 + n]]))
    return _check_mesh(verts, np.array(faces))


def parse_torchdrivesim_mesh(
    data: dict, categories_kept: tuple[str, ...] = ("road",)
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of a torchdrivesim ``*_mesh.json`` document (already parsed with ``json``)."""
    verts = np.asarray(data["verts"], dtype=np.float64).reshape(-1, 2)
    faces = np.asarray(data["faces"], dtype=np.int64).reshape(-1, 3)
    if "vert_category" in data and "categories" in data:
        cats = list(data["categories"])
        unknown = [c for c in categories_kept if c not in cats]
        if unknown:
            raise ValueError(f"mesh categories {cats} lack {unknown}")
        vert_cat = np.asarray(data["vert_category"], dtype=np.int64).reshape(-1)
        keep_cat = np.isin(vert_cat, [cats.index(c) for c in categories_kept])
        faces = faces[keep_cat[faces].all(axis=1)]
    return _check_mesh(verts, faces)


def load_road_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a road mesh file (``.obj``, ``.ply``, ``.npz`` or torchdrivesim ``.json``).

    Returns:
        ``vertices (V, 2)`` float64 metres and ``faces (F, 3)`` int64.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return parse_obj(path.read_text())
    if suffix == ".ply":
        return parse_ply_ascii(path.read_text(errors="strict"))
    if suffix == ".npz":
        with np.load(path) as z:
            return _check_mesh(z["vertices"], z["faces"])
    if suffix == ".json":
        return parse_torchdrivesim_mesh(json.loads(path.read_text()))
    raise ValueError(f"unsupported mesh format {suffix!r} ({path}); use .obj, .ply, .npz or .json")


def mesh_drivable_map(
    vertices: np.ndarray, faces: np.ndarray, resolution_m: float = 0.5, margin_m: float = 4.0
) -> DrivableMap:
    """Rasterise the union of the mesh's triangles (cell-centre rule) on a grid covering the mesh plus
    ``margin_m``.

    Args:
        vertices: ``(V, 2)`` (or ``(V, 3)``, ``z`` ignored) float, metres.
        faces: ``(F, 3)`` int vertex indices.
        resolution_m: cell edge, metres.
        margin_m: border, metres.
    """
    vertices, faces = _check_mesh(vertices, faces)
    if faces.shape[0] == 0:
        raise ValueError("the mesh has no faces")
    triangles = vertices[faces]
    origin, shape = raster_grid_for(triangles.reshape(-1, 2), resolution_m, margin_m)
    drivable = rasterise_triangles(triangles, origin, resolution_m, shape)
    # Triangles that do not meet exactly leave cracks; closed (2 cm and narrower) for the offroad check.
    polygons = RoadPolygons.with_gaps_closed(tuple(triangles), 0.01)
    return DrivableMap(drivable, origin, resolution_m, polygons=polygons)
