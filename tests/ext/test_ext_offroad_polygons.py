"""genneg_ext.offroad_polygons against shapely ``covers`` on the union of the drivable polygons."""

from __future__ import annotations

import os

import numpy as np
import pytest
import shapely

import genneg_ext
from genneg.oracles.road_polygons import prepare_road, union_rings

UNCERTAIN_M = 1e-7  # closer than this to touching, shapely's corners (np.cos/np.sin) may round otherwise


def lanelet_map(rng: np.random.Generator, offset=(0.0, 0.0)) -> list[shapely.Polygon]:
    """Adjacent lanelets sharing edges exactly (two 3.5 m lanes of 20 m pieces along x), a diagonal road
    overlapping them, and a plaza with a hole (an island)."""
    ox, oy = offset
    polys = [
        shapely.box(ox + 20 * k, oy + y0, ox + 20 * (k + 1), oy + y0 + 3.5)
        for k in range(5)
        for y0 in (0, 3.5)
    ]
    diag = shapely.affinity.rotate(
        shapely.box(ox + 30, oy - 20, ox + 36, oy + 40), 30, origin=(ox + 33, oy + 3.5)
    )
    plaza = shapely.Polygon(
        [(ox + 60, oy + 7), (ox + 100, oy + 7), (ox + 100, oy + 40), (ox + 60, oy + 40)],
        [[(ox + 75, oy + 20), (ox + 85, oy + 20), (ox + 85, oy + 30), (ox + 75, oy + 30)]],
    )
    return [*polys, diag, plaza]


def truth(boxes: np.ndarray, polygons, ref) -> tuple[np.ndarray, np.ndarray]:
    """shapely verdicts (offroad = union does not cover the box) and whether each is clear of touching."""
    union = shapely.union_all(polygons)
    polys = ref.box_polygons(boxes)
    off = ~shapely.covers(union, polys)
    grown = shapely.buffer(polys, UNCERTAIN_M, join_style="mitre")
    certain_on = shapely.covers(union, grown)
    certain_off = ~shapely.covers(shapely.buffer(union, UNCERTAIN_M, join_style="mitre"), polys)
    return off, certain_on | certain_off


@pytest.mark.parametrize("offset", [(0.0, 0.0), (1e6, -1e6)])
def test_random_scenes_agree_with_shapely_covers(rng, ref, offset):
    polygons = lanelet_map(rng, offset)
    road = prepare_road(polygons)
    boxes = ref.random_scenes(rng, 40, 25, extent_m=1.0)
    boxes[..., 0] = offset[0] + rng.uniform(-5, 105, (40, 25))
    boxes[..., 1] = offset[1] + rng.uniform(-5, 45, (40, 25))
    boxes[..., 2:4] *= 0.8
    valid = rng.random((40, 25)) > 0.1
    expected, certain = truth(boxes, polygons, ref)
    got = genneg_ext.offroad_polygons(boxes, road, valid)
    assert certain.mean() > 0.99
    np.testing.assert_array_equal(got[certain & valid], expected[certain & valid])
    assert not got[~valid].any()
    assert 0.1 < expected.mean() < 0.9, "scenes should mix on-road and offroad vehicles"


HALF_PI = np.pi / 2
# (name, box, offroad) on the lanelet map at offset 0: lanes [0, 100] x [0, 7] shared edges at x = 20k
# and y = 3.5; plaza [60, 100] x [7, 40] with the island [75, 85] x [20, 30].
CASES = [
    ("straddles a shared lanelet edge", (20, 1.75, 4, 2, 0), False),
    ("straddles the shared lane line", (10, 3.5, 4, 2, 0), False),
    ("edge on the road edge", (10, 1, 4, 2, 0), False),
    ("edge on the road edge, quarter turn", (10, 2, 4, 2, HALF_PI), False),
    ("crosses the road edge by 1e-9", (10, 1 - 1e-9, 4, 2, 0), True),
    ("corner on a road vertex", (2, 1, 4, 2, 0), False),
    ("corner past the road's start", (2 - 1e-9, 1, 4, 2, 0), True),
    ("inside the island", (80, 25, 4, 2, 0.3), True),
    ("touching the island from outside", (73, 25, 4, 2, 0), False),
    ("entering the island by 1 um", (73 + 1e-6, 25, 4, 2, 0), True),
    ("around the island", (80, 25, 16, 14, 0), True),
    ("plaza corner touching collinear lane edge", (95, 9, 10, 4, 0), False),
    ("1 mm box on the lane line", (50, 3.5, 1e-3, 1e-3, 0.4), False),
    ("1 mm box just outside", (50, -1e-3, 1e-3, 1e-3, 0), True),
    ("far away", (500, 500, 4, 2, 0), True),
]


@pytest.mark.parametrize(("name", "box", "offroad"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("shift", [0.0, 1e6])
def test_adversarial_cases(rng, name, box, offroad, shift):
    road = prepare_road(lanelet_map(rng, (shift, shift)))
    b = np.array([box], np.float64)
    b[:, :2] += shift
    np.testing.assert_array_equal(genneg_ext.offroad_polygons(b, road), [offroad])


def test_sliver_gap_between_lanelets_is_offroad(ref):
    # Two lanelets 1 mm apart: the union has a sliver of non-road; a box across it is offroad, one beside
    # it is not. And a collinear chain of edges (many vertices on one line) changes nothing.
    left = shapely.box(0, 0, 10, 4)
    right = shapely.box(10.001, 0, 20, 4)
    chain = shapely.Polygon([(20, 0), *[(20 + 0.5 * k, 0) for k in range(1, 20)], (30, 0), (30, 4), (20, 4)])
    road = prepare_road([left, right, chain])
    boxes = np.array([[10, 2, 2, 1, 0], [5, 2, 2, 1, 0], [20, 2, 2, 1, 0], [25, 0.5, 4, 1, 0]], np.float64)
    np.testing.assert_array_equal(genneg_ext.offroad_polygons(boxes, road), [True, False, False, False])
    expected, certain = truth(boxes[None], [left, right, chain], ref)
    assert certain[0, :3].all()  # the last box touches the road edge: exact touching, on the road by rule
    np.testing.assert_array_equal(expected[0], [True, False, False, False])


def test_matches_the_raster_oracle_on_axis_aligned_cells(rng, ref):
    # A raster's drivable cells as polygons: the polygon oracle must agree with the exact raster oracle.
    drivable = (rng.random((30, 40)) < 0.85).astype(np.uint8)
    origin, res = (-2.0, 3.0), 0.5
    i, j = np.nonzero(drivable)
    cells = shapely.box(
        origin[0] + j * res, origin[1] + i * res, origin[0] + (j + 1) * res, origin[1] + (i + 1) * res
    )
    road = prepare_road(cells)
    boxes = ref.random_scenes(rng, 20, 10, extent_m=1.0)
    boxes[..., 0] = origin[0] + rng.uniform(0, 20, (20, 10))
    boxes[..., 1] = origin[1] + rng.uniform(0, 15, (20, 10))
    boxes[..., 2:4] *= 0.5
    np.testing.assert_array_equal(
        genneg_ext.offroad_polygons(boxes, road), genneg_ext.offroad(boxes, drivable, origin, res)
    )


def test_union_rings_and_bad_inputs(rng):
    points, offsets = union_rings(lanelet_map(rng))
    assert points.dtype == np.float64 and offsets[0] == 0 and offsets[-1] == points.shape[0]
    road = genneg_ext.road_from_rings(points, offsets)
    assert road.segments == points.shape[0]
    with pytest.raises(ValueError, match=r"points must have shape \(P, 2\)"):
        genneg_ext.road_from_rings(points[:, :1], offsets)
    with pytest.raises(ValueError, match="ring_offsets must start at 0"):
        genneg_ext.road_from_rings(points, offsets + 1)
    with pytest.raises(ValueError, match="ring 0 has 2 points"):
        genneg_ext.road_from_rings(points[:2], np.array([0, 2]))
    bad = points.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="point 3 of the road is not finite"):
        genneg_ext.road_from_rings(bad, offsets)
    with pytest.raises(TypeError, match=r"road must come from genneg_ext\.road_from_rings"):
        genneg_ext.offroad_polygons(np.zeros((1, 5)), "road")
    with pytest.raises(ValueError, match=r"scene 0, vehicle 1\): width must be > 0"):
        genneg_ext.offroad_polygons(np.array([[[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]]), road)
    with pytest.raises(ValueError, match="no area"):
        union_rings([shapely.LineString([(0, 0), (1, 1)]).buffer(0)])


@pytest.mark.parametrize("kind", ["roundabout", "merge", "crossroads", "curve"])
def test_procedural_maps_agree_with_shapely_covers(rng, ref, kind):
    from genneg.data.traffic.roads import RoadNetworkConfig, generate_road_map

    drivable_map = generate_road_map(kind, RoadNetworkConfig(), seed=11).drivable_map
    area = drivable_map.polygons.geometry()
    boxes = ref.random_scenes(rng, 20, 32, extent_m=1.0)
    boxes[..., :2] = rng.uniform(-40, 40, (20, 32, 2))
    boxes[..., 2:4] *= 0.9
    polys = ref.box_polygons(boxes)
    expected = ~shapely.covers(area, polys)
    certain = shapely.covers(area, shapely.buffer(polys, UNCERTAIN_M, join_style="mitre")) | ~shapely.covers(
        shapely.buffer(area, UNCERTAIN_M, join_style="mitre"), polys
    )
    got = genneg_ext.offroad_polygons(boxes, drivable_map.prepared_road())
    assert certain.mean() > 0.99 and 0.1 < expected.mean() < 0.95
    np.testing.assert_array_equal(got[certain], expected[certain])


def exact_offroad(frame: np.ndarray, points: np.ndarray, offsets: np.ndarray) -> bool:
    """The documented rule in rational arithmetic (no rounding at all), for the rectangle genneg_ext
    prepares from a box (centre, float64 unit axis (c, s), half extents): offroad iff a boundary segment
    of the union meets the open rectangle, or the centre is outside the union (even-odd crossings)."""
    from fractions import Fraction

    cx, cy, c, s, hl, hw = (Fraction(float(v)) for v in frame[:6])
    edges = []
    for r in range(offsets.size - 1):
        ring = [(Fraction(float(x)), Fraction(float(y))) for x, y in points[offsets[r] : offsets[r + 1]]]
        edges += [(p, q) for p, q in zip(ring, ring[1:] + ring[:1]) if p != q]

    def overlaps(a0: Fraction, a1: Fraction, half: Fraction) -> bool:
        return min(a0, a1) < half and max(a0, a1) > -half

    for (x0, y0), (x1, y1) in edges:
        dx0, dy0, dx1, dy1 = x0 - cx, y0 - cy, x1 - cx, y1 - cy
        if not overlaps(dx0 * c + dy0 * s, dx1 * c + dy1 * s, hl):
            continue
        if not overlaps(dy0 * c - dx0 * s, dy1 * c - dx1 * s, hw):
            continue
        nx, ny = y0 - y1, x1 - x0
        if abs(dx0 * nx + dy0 * ny) < hl * abs(c * nx + s * ny) + hw * abs(c * ny - s * nx):
            return True
    inside = False
    for (x0, y0), (x1, y1) in edges:
        if (y0 > cy) != (y1 > cy) and x0 + (cy - y0) * (x1 - x0) / (y1 - y0) > cx:
            inside = not inside
    return not inside


def touching_boxes(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, list]:
    """A road band at a random heading (its corners rounded to float64 as any map's are) and boxes at
    nearly the same heading touching its side from inside or outside within a few ulps, or with a corner
    a few ulps from one of the band's corners: the verdicts float64 alone cannot settle."""
    heading = rng.uniform(-np.pi, np.pi)
    u = np.array([np.cos(heading), np.sin(heading)])
    v = np.array([-u[1], u[0]])
    origin = np.array([shift + rng.uniform(-5, 5), -shift + rng.uniform(-5, 5)])
    band = [
        origin - 50 * u - 4 * v,
        origin + 50 * u - 4 * v,
        origin + 50 * u + 4 * v,
        origin - 50 * u + 4 * v,
    ]
    boxes = np.empty((1, n, 5))
    length, width = rng.uniform(3.5, 5.0, n), rng.uniform(1.6, 2.1, n)
    along = rng.uniform(-40, 40, n)
    along[: n // 4] = 50 - length[: n // 4] / 2  # a box corner a few ulps from the band's corner
    side = rng.choice([-1.0, 1.0], n)
    across = side * (4 - width / 2) * (1 + np.finfo(float).eps * rng.integers(-4, 5, n))
    centres = origin + along[:, None] * u + across[:, None] * v
    boxes[0, :, 0:2] = centres
    boxes[0, :, 2], boxes[0, :, 3] = length, width
    boxes[0, :, 4] = heading + rng.choice([0.0, np.pi, 1e-15, -1e-15], n)
    return boxes, [shapely.Polygon(band)]


@pytest.mark.parametrize("shift", [0.0, 1e6])
def test_touching_within_ulps_follows_the_exact_rule(rng, shift):
    """Boxes a few ulps from the road edge: the float64 filter cannot decide them, the exact fallback
    must, and it must give the rational-arithmetic answer for every box."""
    boxes, band = touching_boxes(rng, 200, shift)
    points, offsets = union_rings(band)
    road = genneg_ext.road_from_rings(points, offsets)
    got = genneg_ext.offroad_polygons(boxes, road=road)[0]
    frames = genneg_ext._C.rect_frames(boxes, 0.0, "make_rect")
    expected = np.array([exact_offroad(f, points, offsets) for f in frames])
    np.testing.assert_array_equal(got, expected)
    # The scenes are really on the edge: both verdicts occur.
    assert 0.1 < expected.mean() < 0.9


def boxes_on_a_map(rng: np.random.Generator, drivable_map, scenes: int, agents: int) -> np.ndarray:
    """``(scenes, agents, 5)`` car-sized boxes at any heading, half centred within 2 m of a vertex of the
    road's boundary (many straddle an edge), half on random drivable raster cells."""
    area = drivable_map.polygons.geometry()
    vertices = shapely.get_coordinates(shapely.boundary(area))
    n = scenes * agents
    near = vertices[rng.integers(0, len(vertices), n // 2)] + rng.uniform(-2.0, 2.0, (n // 2, 2))
    rows, cols = np.nonzero(drivable_map.drivable)
    pick = rng.integers(0, rows.size, n - n // 2)
    ox, oy = drivable_map.origin_m
    res = drivable_map.resolution_m
    inside = np.stack([ox + (cols[pick] + 0.5) * res, oy + (rows[pick] + 0.5) * res], -1)
    boxes = np.empty((n, 5))
    boxes[:, :2] = np.concatenate([near, inside])[rng.permutation(n)]
    boxes[:, 2] = rng.uniform(3.8, 5.2, n)
    boxes[:, 3] = rng.uniform(1.7, 2.1, n)
    boxes[:, 4] = rng.uniform(-np.pi, np.pi, n)
    return boxes.reshape(scenes, agents, 5)


@pytest.mark.slow
@pytest.mark.skipif(
    "GENNEG_CARLA_CACHE" not in os.environ, reason="set GENNEG_CARLA_CACHE to a cache directory"
)
@pytest.mark.parametrize("town", ["carla_Town03", "carla_Town10HD"])
def test_random_scenes_on_carla_maps_agree_with_shapely_covers(rng, ref, town):
    """Real road meshes (tens of thousands of triangles unioned): 0 disagreements with shapely's covers
    on the union away from exact touching (torchdrivesim's wheel from the package index, cached)."""
    from genneg.data.traffic.carla import fetch_carla_maps

    (road_map,) = fetch_carla_maps(os.environ["GENNEG_CARLA_CACHE"], towns=[town])
    drivable_map = road_map.drivable_map
    boxes = boxes_on_a_map(rng, drivable_map, 100, 32)
    got = genneg_ext.offroad_polygons(boxes, road=drivable_map.prepared_road())
    off, certain = truth(boxes, [drivable_map.polygons.geometry()], ref)
    assert certain.mean() > 0.95 and 0.1 < off.mean() < 0.9
    np.testing.assert_array_equal(got[certain], off[certain])
