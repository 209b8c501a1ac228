"""TrafficOracle and DrivableMap with exact road polygons: the oracle judges offroad against the union of
the drivable polygons when a map has them (shapely ``covers`` is the ground truth), the raster otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

import genneg_ext
from genneg.data.traffic.dataset import load_road_maps, save_road_maps
from genneg.data.traffic.roads import RoadMap
from genneg.oracles import DrivableMap, TrafficOracle
from genneg.oracles.drivable_map import RoadPolygons

UNCERTAIN_M = 1e-7


def lanelets() -> list[np.ndarray]:
    """Two lanes of 10 m lanelets along x sharing edges, and a ramp at 30 degrees."""
    out = [
        np.array([(x, y), (x + 10, y), (x + 10, y + 3.5), (x, y + 3.5)])
        for x in range(0, 40, 10)
        for y in (0, 3.5)
    ]
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    ramp = np.array([(0, 0), (30, 0), (30, 3.5), (0, 3.5)]) @ np.array([[c, s], [-s, c]]) + (10, 7)
    return [*out, ramp]


def polygon_map() -> DrivableMap:
    island = np.array([(24, 2), (26, 2), (26, 5), (24, 5)])
    return DrivableMap.from_polygons(lanelets(), (-5.0, -5.0), 0.5, (60, 100), holes=[island])


def random_boxes(rng: np.random.Generator, n_scenes: int, agents: int) -> np.ndarray:
    b = np.empty((n_scenes, agents, 5))
    b[..., 0] = rng.uniform(-2, 42, (n_scenes, agents))
    b[..., 1] = rng.uniform(-2, 22, (n_scenes, agents))
    b[..., 2] = rng.uniform(2, 4.5, (n_scenes, agents))
    b[..., 3] = rng.uniform(1, 2, (n_scenes, agents))
    b[..., 4] = rng.uniform(-np.pi, np.pi, (n_scenes, agents))
    return b


def shapely_truth(boxes: np.ndarray, area) -> tuple[np.ndarray, np.ndarray]:
    x, y, length, width, heading = np.moveaxis(boxes, -1, 0)
    c, s = np.cos(heading), np.sin(heading)
    corners = np.stack(
        [
            np.stack(
                [x + a * length / 2 * c - w * width / 2 * s, y + a * length / 2 * s + w * width / 2 * c], -1
            )
            for a, w in [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        ],
        -2,
    )
    polys = shapely.polygons(corners)
    off = ~shapely.covers(area, polys)
    on_sure = shapely.covers(area, shapely.buffer(polys, UNCERTAIN_M, join_style="mitre"))
    off_sure = ~shapely.covers(shapely.buffer(area, UNCERTAIN_M, join_style="mitre"), polys)
    return off, on_sure | off_sure


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_oracle_uses_the_polygons_and_agrees_with_shapely(backend):
    rng = np.random.default_rng(3)
    drivable_map = polygon_map()
    assert drivable_map.polygons is not None
    boxes = random_boxes(rng, 30, 12)
    valid = rng.random((30, 12)) > 0.1
    got = TrafficOracle(drivable_map, backend=backend).details(boxes, valid).offroad
    expected, certain = shapely_truth(boxes, drivable_map.polygons.geometry())
    assert certain.mean() > 0.99
    np.testing.assert_array_equal(got[certain & valid], expected[certain & valid])
    assert not got[~valid].any()
    # The raster (cell-centre rule, 0.5 m cells) changes the verdict of some vehicles near the edges.
    raster = (
        TrafficOracle(drivable_map, backend=backend, offroad_geometry="raster").details(boxes, valid).offroad
    )
    np.testing.assert_array_equal(
        raster,
        genneg_ext.offroad(
            boxes, drivable_map.drivable, drivable_map.origin_m, drivable_map.resolution_m, valid
        ),
    )
    assert (raster != got).any()


def test_straddling_a_shared_lanelet_edge_is_on_the_road():
    oracle = TrafficOracle(polygon_map(), offroad_geometry="polygons")
    boxes = np.array(
        [
            [10.0, 1.75, 4.0, 1.8, 0.0],  # across the lanelet seam x = 10
            [15.0, 3.5, 4.0, 1.8, 0.0],  # across the lane line y = 3.5
            [25.0, 3.5, 4.0, 1.8, 0.0],  # over the island
            [15.0, 0.9, 4.0, 1.8, 0.0],  # bottom edge on the road edge y = 0: touching, on the road
            [15.0, 0.9 - 1e-9, 4.0, 1.8, 0.0],  # 1e-9 m over it
        ]
    )
    np.testing.assert_array_equal(oracle.details(boxes[None]).offroad[0], [False, False, True, False, True])


def test_offroad_geometry_choices_and_bad_polygons():
    raster_only = DrivableMap(np.ones((4, 4), np.uint8), (0.0, 0.0), 1.0)
    boxes = np.array([[[2.0, 2.0, 1.0, 1.0, 0.0]]])
    assert not TrafficOracle(raster_only).details(boxes).offroad.any()
    with pytest.raises(ValueError, match="offroad_geometry='polygons' but the DrivableMap has no polygons"):
        TrafficOracle(raster_only, offroad_geometry="polygons").details(boxes)
    with pytest.raises(ValueError, match="offroad_geometry must be"):
        TrafficOracle(raster_only, offroad_geometry="exact")
    with pytest.raises(ValueError, match="this DrivableMap is a raster only"):
        raster_only.prepared_road()
    with pytest.raises(ValueError, match=r"polygon 1 must have shape \(V>=3, 2\)"):
        RoadPolygons((np.zeros((3, 2)), np.zeros((2, 2))))
    with pytest.raises(ValueError, match="hole 0 has a non-finite vertex"):
        RoadPolygons((np.eye(3)[:, :2],), (np.full((3, 2), np.nan),))
    with pytest.raises(ValueError, match="at least one shell"):
        RoadPolygons(())
    with pytest.raises(TypeError, match="polygons must be RoadPolygons"):
        DrivableMap(np.ones((2, 2)), (0.0, 0.0), 1.0, polygons=[np.eye(3)])


def test_saved_maps_keep_their_polygons(tmp_path):
    drivable_map = polygon_map()
    lane = (np.array([[0.0, 1.75], [40.0, 1.75]]),)
    raster_only = DrivableMap(np.ones((2, 2)), (0, 0), 1)
    save_road_maps(tmp_path, [RoadMap("poly", drivable_map, lane), RoadMap("raster", raster_only, lane)])
    loaded, raster = load_road_maps(tmp_path)
    assert raster.drivable_map.polygons is None
    assert loaded.drivable_map.polygons is not None
    for a, b in zip(drivable_map.polygons.shells, loaded.drivable_map.polygons.shells):
        np.testing.assert_array_equal(a, b)
    assert len(loaded.drivable_map.polygons.holes) == 1
    boxes = random_boxes(np.random.default_rng(5), 5, 10)
    np.testing.assert_array_equal(
        TrafficOracle(loaded.drivable_map).details(boxes).offroad,
        TrafficOracle(drivable_map).details(boxes).offroad,
    )


def test_with_gaps_closed_heals_mesh_cracks_and_keeps_real_gaps():
    """A road mesh whose triangles do not meet exactly (a vertex 1 micron off where it should be) leaves
    a crack; a vehicle across it is offroad against the exact union and on the
    road once cracks narrower than 2 cm are closed. A 10 cm gap between two roads stays, and the area
    keeps its edges and corners (to rounding)."""
    from genneg.oracles.road_polygons import prepare_road

    # Square [0, 10] x [0, 10] as two triangles whose diagonals miss each other by up to 1e-6 m at the
    # top: a sliver along (10, 0)-(0, 10) is left uncovered.
    triangles = [
        np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]),
        np.array([[10.0, 0.0], [10.0, 10.0], [1e-6, 10.0]]),
        np.array([[10.0, 0.0], [20.0, 0.0], [20.0, 10.0], [10.0, 10.0]]),
        np.array([[20.1, 0.0], [30.0, 0.0], [30.0, 10.0], [20.1, 10.0]]),  # a second road, 10 cm away
    ]
    exact = RoadPolygons(tuple(triangles))
    healed = RoadPolygons.with_gaps_closed(triangles, 0.01)
    across_crack = np.array([[5.0, 5.0, 4.0, 2.0, 0.3]])  # straddles the diagonal
    across_gap = np.array([[20.05, 5.0, 4.0, 2.0, 0.0]])
    inside = np.array([[15.0, 5.0, 4.0, 2.0, 0.3]])
    exact_road, healed_road = prepare_road(exact.geometry()), prepare_road(healed.geometry())
    assert shapely.difference(exact.geometry(), healed.geometry()).area == 0.0
    assert shapely.difference(healed.geometry(), exact.geometry()).area < 1e-5  # the crack only
    assert genneg_ext.offroad_polygons(across_gap, healed_road).tolist() == [True]
    assert genneg_ext.offroad_polygons(inside, healed_road).tolist() == [False]
    assert genneg_ext.offroad_polygons(across_crack, healed_road).tolist() == [False]
    assert genneg_ext.offroad_polygons(across_crack, exact_road).tolist() == [True]
    with pytest.raises(ValueError, match="gap_m must be a positive number"):
        RoadPolygons.with_gaps_closed(triangles, 0.0)
