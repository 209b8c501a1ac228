"""Issue 16, kind 3: the cell-centre rule of every polygon rasteriser (``DrivableMap.from_polygons``,
``rasterise_polygons``): a centre on an edge counts as inside (closed polygons; open holes), whatever the
polygon's orientation or starting vertex. Shapely's ``covers`` (closed) is the truth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genneg.data.traffic.raster import rasterise_polygons
from genneg.oracles import DrivableMap, TrafficOracle

shapely = pytest.importorskip("shapely")

LANE = np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 3.5], [0.0, 3.5]])
ORIGIN, RES, SHAPE = (-0.25, -0.25), 0.5, (10, 44)


def _variants(poly: np.ndarray) -> list[np.ndarray]:
    """Both orientations, every starting vertex, and the explicitly closed ring."""
    out = []
    for ring in (poly, poly[::-1]):
        out += [np.roll(ring, k, axis=0) for k in range(len(ring))]
    out.append(np.concatenate([poly, poly[:1]]))
    return out


def _rasterisers():
    return {
        "DrivableMap.from_polygons": lambda p: DrivableMap.from_polygons([p], ORIGIN, RES, SHAPE).drivable,
        "rasterise_polygons": lambda p: rasterise_polygons([p], ORIGIN, RES, SHAPE),
    }


def _truth(poly: np.ndarray) -> np.ndarray:
    h, w = SHAPE
    xs = ORIGIN[0] + (np.arange(w) + 0.5) * RES
    ys = ORIGIN[1] + (np.arange(h) + 0.5) * RES
    gx, gy = np.meshgrid(xs, ys)
    return shapely.covers(shapely.Polygon(poly), shapely.points(gx, gy)).astype(np.uint8)


@pytest.mark.parametrize("name", list(_rasterisers()))
def test_lane_with_edges_through_cell_centres(name: str) -> None:
    rasterise = _rasterisers()[name]
    rasters = [rasterise(p) for p in _variants(LANE)]
    for r in rasters:
        np.testing.assert_array_equal(r, rasters[0])
    np.testing.assert_array_equal(rasters[0], _truth(LANE))
    assert int(rasters[0].sum()) == 41 * 8  # centres x = 0, 0.5, ..., 20 and y = 0, 0.5, ..., 3.5
    car = np.array([[[2.35, 1.75, 4.5, 1.8, 0.0]]])
    verdicts = {bool(TrafficOracle(DrivableMap(r, ORIGIN, RES))(car)[0, 0]) for r in rasters}
    assert verdicts == {True}  # on the road in every vertex order


def test_hole_edges_stay_drivable() -> None:
    hole = np.array([[5.0, 1.0], [10.0, 1.0], [10.0, 2.5], [5.0, 2.5]])
    maps = [DrivableMap.from_polygons([LANE], ORIGIN, RES, SHAPE, holes=[h]).drivable
            for h in _variants(hole)]
    for m in maps:
        np.testing.assert_array_equal(m, maps[0])
    interior = shapely.contains_properly  # open hole: only centres strictly inside are removed
    h, w = SHAPE
    gx, gy = np.meshgrid(ORIGIN[0] + (np.arange(w) + 0.5) * RES, ORIGIN[1] + (np.arange(h) + 0.5) * RES)
    expected = _truth(LANE) & ~interior(shapely.Polygon(hole), shapely.points(gx, gy))
    np.testing.assert_array_equal(maps[0], expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 18)), min_size=3, max_size=9,
                unique_by=lambda p: p[0]))
def test_star_polygons_on_the_half_cell_lattice(polar: list[tuple[int, int]]) -> None:
    """Star-shaped polygons with vertices on multiples of 0.25 m: many edges run through cell centres."""
    angles = np.array([a for a, _ in polar]) * (2 * np.pi / 41)
    radii = np.array([r for _, r in polar]) * 0.25
    order = np.argsort(angles)
    xy = np.stack([10.0 + radii * np.cos(angles), 2.0 + radii * np.sin(angles)], -1)[order]
    poly = np.round(xy * 4) / 4
    if shapely.Polygon(poly).area <= 0 or not shapely.Polygon(poly).is_valid:
        return
    for rasterise in _rasterisers().values():
        for variant in _variants(poly):
            np.testing.assert_array_equal(rasterise(variant), _truth(poly))
