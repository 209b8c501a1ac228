"""Real-map loaders: a hand-written lanelet2 file, road meshes, and a CARLA-layout wheel built by the test."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from genneg.data.traffic import (
    carla_maps_from_wheel,
    fetch_carla_maps,
    lanelet2_road_map,
    load_road_mesh,
    mesh_drivable_map,
    parse_lanelet2,
)
from genneg.data.traffic.lanelet2 import utm_local

# Lanelet 100: a 10 m x 4 m rectangle [0, 10] x [0, 4] heading +x (both bounds run +x).
# Lanelet 101: [10, 14] x [0, 4], its right bound stored against the left one (must be re-oriented).
# Lanelet 102: a crosswalk over [2, 4] x [4, 8]: not drivable, must be left out.
TINY_OSM = """<?xml version="1.0"?>
<osm version="0.6" generator="test">
  <node id="1"><tag k="local_x" v="0"/><tag k="local_y" v="4"/></node>
  <node id="2"><tag k="local_x" v="10"/><tag k="local_y" v="4"/></node>
  <node id="3"><tag k="local_x" v="0"/><tag k="local_y" v="0"/></node>
  <node id="4"><tag k="local_x" v="10"/><tag k="local_y" v="0"/></node>
  <node id="5"><tag k="local_x" v="14"/><tag k="local_y" v="4"/></node>
  <node id="6"><tag k="local_x" v="14"/><tag k="local_y" v="0"/></node>
  <node id="7" x="2" y="4"/>
  <node id="8" x="2" y="8"/>
  <node id="9" x="4" y="4"/>
  <node id="10" x="4" y="8"/>
  <way id="20"><nd ref="1"/><nd ref="2"/></way>
  <way id="21"><nd ref="3"/><nd ref="4"/></way>
  <way id="22"><nd ref="2"/><nd ref="5"/></way>
  <way id="23"><nd ref="6"/><nd ref="4"/></way>
  <way id="24"><nd ref="7"/><nd ref="8"/></way>
  <way id="25"><nd ref="9"/><nd ref="10"/></way>
  <relation id="100">
    <member type="way" ref="20" role="left"/><member type="way" ref="21" role="right"/>
    <tag k="type" v="lanelet"/><tag k="subtype" v="road"/>
  </relation>
  <relation id="101">
    <member type="way" ref="22" role="left"/><member type="way" ref="23" role="right"/>
    <tag k="type" v="lanelet"/><tag k="subtype" v="road"/>
  </relation>
  <relation id="102">
    <member type="way" ref="24" role="left"/><member type="way" ref="25" role="right"/>
    <tag k="type" v="lanelet"/><tag k="subtype" v="crosswalk"/>
  </relation>
  <relation id="200">
    <member type="way" ref="20" role="refers"/><tag k="type" v="regulatory_element"/>
  </relation>
</osm>
"""


def test_tiny_lanelet2_map_rasterises_to_the_expected_cells(tmp_path):
    path = tmp_path / "tiny.osm"
    path.write_text(TINY_OSM)
    road_map = lanelet2_road_map(path, resolution_m=1.0, margin_m=2.0)
    dm = road_map.drivable_map
    # Grid: lanelets span [0, 14] x [0, 4]; margin 2 m -> origin (-2, -2), 18 x 8 cells.
    assert dm.origin_m == (-2.0, -2.0)
    assert dm.shape == (8, 18)
    expected = np.zeros((8, 18), dtype=np.uint8)
    expected[2:6, 2:16] = 1  # cell centres (x, y) in (0, 14) x (0, 4)
    np.testing.assert_array_equal(dm.drivable, expected)
    assert road_map.name == "tiny"
    assert len(road_map.lanes) == 2
    np.testing.assert_allclose(road_map.lanes[0], [[0.0, 2.0], [10.0, 2.0]])
    np.testing.assert_allclose(road_map.lanes[1], [[10.0, 2.0], [14.0, 2.0]])


def test_lanelet2_excluded_subtypes_and_bytes_input():
    parsed = parse_lanelet2(TINY_OSM.encode(), exclude_subtypes=())
    assert parsed.lanelet_ids == [100, 101, 102]
    assert parse_lanelet2(TINY_OSM.encode()).lanelet_ids == [100, 101]


def test_lanelet2_bad_input_raises():
    with pytest.raises(ValueError, match="not valid XML"):
        parse_lanelet2(b"<osm><node")
    broken = TINY_OSM.replace('<nd ref="4"/></way>\n  <way id="22">', '<nd ref="99"/></way>\n  <way id="22">')
    with pytest.raises(ValueError, match="missing node 99"):
        parse_lanelet2(broken.encode())
    no_right = TINY_OSM.replace('<member type="way" ref="21" role="right"/>', "")
    with pytest.raises(ValueError, match="lanelet 100 lacks"):
        parse_lanelet2(no_right.encode())


def test_utm_projection_matches_published_coordinates():
    # WGS84 UTM zone 31 (central meridian 3° E): (0° N, 0° E) has easting 166 021.443 m, northing 0;
    # (1° N, 3° E) has northing k0 · meridian arc(1°) = 0.9996 · 110 574.389 m = 110 530.159 m.
    xy = utm_local(np.array([0.0, 1.0]), np.array([0.0, 3.0]), origin_latlon=(0.0, 3.0))
    np.testing.assert_allclose(xy[0], [166_021.443 - 500_000.0, 0.0], atol=2e-3)
    np.testing.assert_allclose(xy[1], [0.0, 110_530.159], atol=2e-3)


def test_lanelet2_lat_lon_nodes_are_projected(tmp_path):
    # The same rectangle as lanelet 100 written in lat/lon about origin (0, 0) with the UTM projection.
    lat_per_m = 1.0 / 110_574.389 / 0.9996 / 1.0013  # rough inverse: only used to place nodes
    text = TINY_OSM
    for nid, (x, y) in {"1": (0, 4), "2": (10, 4), "3": (0, 0), "4": (10, 0)}.items():
        text = text.replace(
            f'<node id="{nid}"><tag k="local_x" v="{x}"/><tag k="local_y" v="{y}"/></node>',
            f'<node id="{nid}" lat="{y * lat_per_m:.12f}" lon="{x * lat_per_m:.12f}"/>',
        )
    parsed = parse_lanelet2(text.encode())
    left = parsed.polygons[0][:2]
    # Forward projection of the written lat/lon, independently of the parser.
    ref = utm_local(np.array([4 * lat_per_m, 4 * lat_per_m]), np.array([0.0, 10 * lat_per_m]), (0.0, 0.0))
    np.testing.assert_allclose(left, ref, atol=1e-9)
    # And it is close to metres: within 1 % of the intended 10 m.
    assert abs(left[1, 0] - left[0, 0] - 10.0) < 0.1


SQUARE_OBJ = """# two triangles covering [0, 4] x [0, 2], written as one quad and split by the reader
v 0 0 0.1
v 4 0 0.1
v 4 2 0.1
v 0 2 0.1
f 1/1/1 2/2/2 3/3/3 4/4/4
"""

SQUARE_PLY = """ply
format ascii 1.0
element vertex 4
property float x
property float y
property float z
element face 2
property list uchar int vertex_indices
end_header
0 0 0
4 0 0
4 2 0
0 2 0
3 0 1 2
3 0 2 3
"""


@pytest.mark.parametrize("suffix,text", [(".obj", SQUARE_OBJ), (".ply", SQUARE_PLY)])
def test_mesh_files_rasterise_to_the_expected_cells(tmp_path, suffix, text):
    path = tmp_path / f"road{suffix}"
    path.write_text(text)
    vertices, faces = load_road_mesh(path)
    assert vertices.shape == (4, 2) and faces.shape == (2, 3)
    dm = mesh_drivable_map(vertices, faces, resolution_m=0.5, margin_m=1.0)
    assert dm.origin_m == (-1.0, -1.0) and dm.shape == (8, 12)
    expected = np.zeros((8, 12), dtype=np.uint8)
    expected[2:6, 2:10] = 1
    np.testing.assert_array_equal(dm.drivable, expected)


def test_mesh_npz_and_bad_indices(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, vertices=np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), faces=np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="face indices"):
        load_road_mesh(path)
    with pytest.raises(ValueError, match="unsupported mesh format"):
        load_road_mesh(tmp_path / "m.stl")


def _fake_wheel(path, town="carla_TownT"):
    """A wheel with the torchdrivesim layout: metadata, lanelet2 map, road mesh with lane-marking faces."""
    base = f"torchdrivesim/resources/maps/{town}/"
    mesh = {
        # Road: the two lanelets' area [0, 14] x [0, 4] as two triangles; a lane-marking strip far away
        # (category left_lane) that must not become drivable.
        "verts": [[[0, 0], [14, 0], [14, 4], [0, 4], [30, 30], [31, 30], [31, 31]]],
        "faces": [[[0, 1, 2], [0, 2, 3], [4, 5, 6]]],
        "categories": ["right_lane", "left_lane", "road"],
        "vert_category": [[2, 2, 2, 2, 1, 1, 1]],
    }
    meta = {
        "name": town,
        "lanelet_path": f"{town}.osm",
        "mesh_path": f"{town}_mesh.json",
        "lanelet_map_origin": [0, 0],
    }
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(base + "metadata.json", json.dumps(meta))
        z.writestr(base + f"{town}.osm", TINY_OSM)
        z.writestr(base + f"{town}_mesh.json", json.dumps(mesh))
        z.writestr("torchdrivesim/__init__.py", "raise ImportError('never imported')")


def test_carla_maps_from_a_wheel_with_the_torchdrivesim_layout(tmp_path):
    wheel = tmp_path / "torchdrivesim-0.0.0-py3-none-any.whl"
    _fake_wheel(wheel)
    (mesh_map,) = carla_maps_from_wheel(wheel, resolution_m=1.0, drivable_source="mesh")
    (lanelet_map,) = carla_maps_from_wheel(wheel, resolution_m=1.0, drivable_source="lanelet")
    assert mesh_map.name == "carla_TownT" and len(mesh_map.lanes) == 2
    # Both sources on one grid; the road agrees, the far lane-marking triangle is not drivable.
    np.testing.assert_array_equal(mesh_map.drivable_map.drivable, lanelet_map.drivable_map.drivable)
    assert mesh_map.drivable_map.drivable.sum() == 14 * 4
    with pytest.raises(ValueError, match="not in the wheel"):
        carla_maps_from_wheel(wheel, towns=["carla_Town99"])


def test_fetch_carla_maps_uses_the_cached_wheel_and_caches_maps(tmp_path):
    _fake_wheel(tmp_path / "torchdrivesim-0.0.0-py3-none-any.whl")
    maps = fetch_carla_maps(tmp_path, resolution_m=1.0, version="0.0.0")
    again = fetch_carla_maps(tmp_path, resolution_m=1.0, version="0.0.0", towns=["carla_TownT"])
    np.testing.assert_array_equal(maps[0].drivable_map.drivable, again[0].drivable_map.drivable)
    assert (tmp_path / "carla_maps_mesh_1m_v0.0.0" / "done").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    "GENNEG_CARLA_CACHE" not in os.environ, reason="set GENNEG_CARLA_CACHE to a cache directory"
)
def test_fetch_real_carla_maps():
    """Fetches torchdrivesim from the package index (once per cache): seven towns, mesh = lanelets."""
    mesh_maps = fetch_carla_maps(os.environ["GENNEG_CARLA_CACHE"])
    lanelet_maps = fetch_carla_maps(os.environ["GENNEG_CARLA_CACHE"], drivable_source="lanelet")
    assert len(mesh_maps) == 7
    for a, b in zip(mesh_maps, lanelet_maps):
        x, y = a.drivable_map.drivable.astype(bool), b.drivable_map.drivable.astype(bool)
        assert (x & y).sum() / (x | y).sum() > 0.99, a.name


def test_real_map_loaders_keep_the_exact_polygons(tmp_path):
    """lanelet2 and CARLA maps carry their drivable polygons; the oracle judges offroad against them."""
    from genneg.oracles import TrafficOracle

    path = tmp_path / "tiny.osm"
    path.write_text(TINY_OSM)
    lanelet_map = lanelet2_road_map(path, resolution_m=1.0, margin_m=2.0)
    assert lanelet_map.drivable_map.polygons is not None
    assert len(lanelet_map.drivable_map.polygons.shells) == 2  # the crosswalk is left out
    wheel = tmp_path / "torchdrivesim-0.0.0-py3-none-any.whl"
    _fake_wheel(wheel)
    boxes = np.array(
        [
            [
                [10.0, 2.0, 4.0, 1.8, 0.0],  # across the seam of lanelets 100 and 101: on the road
                [3.0, 3.5, 2.0, 1.8, 0.0],  # half on the crosswalk [2, 4] x [4, 8]: offroad
                [12.5, 1.0, 3.0, 2.0, 0.0],  # right end exactly on x = 14, bottom on y = 0: on the road
                [12.6, 1.0, 3.0, 2.0, 0.0],  # 0.1 m past the end of the road
            ]
        ]
    )
    expected = [[False, True, False, True]]
    for source in ("mesh", "lanelet", "union"):
        (carla_map,) = carla_maps_from_wheel(wheel, resolution_m=1.0, drivable_source=source)
        assert carla_map.drivable_map.polygons is not None
        oracle = TrafficOracle(carla_map.drivable_map, offroad_geometry="polygons")
        np.testing.assert_array_equal(oracle.details(boxes).offroad, expected, err_msg=source)
    oracle = TrafficOracle(lanelet_map.drivable_map, offroad_geometry="polygons")
    np.testing.assert_array_equal(oracle.details(boxes).offroad, expected)
