"""Shared references for the genneg_ext oracle tests: shapely geometry built from the same numbers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

try:
    import shapely
except ImportError:  # e.g. the bare GPU machine: the tests that use `ref` skip, the rest run
    shapely = None


def box_polygons(boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``(..., 5)`` boxes -> shapely polygons of the same leading shape (corners in float64)."""
    b = np.asarray(boxes, dtype=np.float64)
    x, y, length, width, heading = np.moveaxis(b, -1, 0)
    hl, hw = length / 2 + margin, width / 2 + margin
    c, s = np.cos(heading), np.sin(heading)
    lx, ly, wx, wy = hl * c, hl * s, -hw * s, hw * c
    corners = np.stack(
        [
            np.stack([x + lx + wx, y + ly + wy], -1),
            np.stack([x - lx + wx, y - ly + wy], -1),
            np.stack([x - lx - wx, y - ly - wy], -1),
            np.stack([x + lx - wx, y + ly - wy], -1),
        ],
        axis=-2,
    )
    return shapely.polygons(corners)


def shapely_collisions(boxes: np.ndarray, valid: np.ndarray | None = None, margin: float = 0.0) -> np.ndarray:
    """Reference: vehicle collides iff some other valid vehicle's polygon meets it with area > 0."""
    b = np.asarray(boxes, dtype=np.float64)
    S, A = b.shape[:2]
    v = np.ones((S, A), bool) if valid is None else np.asarray(valid, bool)
    polys = box_polygons(b, margin)
    out = np.zeros((S, A), bool)
    for s in range(S):
        for i in range(A):
            for j in range(i + 1, A):
                if v[s, i] and v[s, j] and shapely.intersection(polys[s, i], polys[s, j]).area > 0:
                    out[s, i] = out[s, j] = True
    return out


def raster_union(drivable: np.ndarray, origin: tuple[float, float], resolution: float) -> shapely.Geometry:
    """Union of the drivable cells as one shapely geometry (possibly empty)."""
    i, j = np.nonzero(drivable)
    ox, oy = origin
    cells = shapely.box(
        ox + j * resolution, oy + i * resolution, ox + (j + 1) * resolution, oy + (i + 1) * resolution
    )
    return shapely.union_all(cells)


def shapely_offroad(
    boxes: np.ndarray, drivable: np.ndarray, origin: tuple[float, float], resolution: float, valid=None
) -> np.ndarray:
    """Reference: offroad iff the union of drivable cells does not cover the box."""
    b = np.asarray(boxes, dtype=np.float64)
    v = np.ones(b.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    union = raster_union(drivable, origin, resolution)
    polys = box_polygons(b)
    return ~shapely.covers(union, polys) & v


def random_scenes(rng: np.random.Generator, scenes: int, agents: int, extent_m: float) -> np.ndarray:
    """Dense random scenes: centres in ``[0, extent_m]^2``, car-to-bus sizes, any heading."""
    b = np.empty((scenes, agents, 5))
    b[..., 0:2] = rng.uniform(0, extent_m, (scenes, agents, 2))
    b[..., 2] = rng.uniform(0.5, 6.0, (scenes, agents))
    b[..., 3] = rng.uniform(0.3, 2.5, (scenes, agents))
    b[..., 4] = rng.uniform(-np.pi, np.pi, (scenes, agents))
    return b


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def ref() -> SimpleNamespace:
    """The reference functions above, for test modules (tests are not a package, so no imports)."""
    if shapely is None:
        pytest.skip("needs shapely (the reference geometry)")
    return SimpleNamespace(
        box_polygons=box_polygons,
        collisions=shapely_collisions,
        offroad=shapely_offroad,
        raster_union=raster_union,
        random_scenes=random_scenes,
    )
