"""genneg_ext.offroad against the union of drivable cells (shapely), on adversarial cases and under
rigid motions of the scene together with its raster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genneg_ext

HALF_PI = np.pi / 2


def random_map(rng: np.random.Generator, shape=(36, 44), p_drivable=0.85) -> np.ndarray:
    return (rng.random(shape) < p_drivable).astype(np.uint8)


def corners_reference(boxes, drivable, origin, resolution):
    """NumPy twin of mode="corners": look up the cell of each corner (clamped), outside = offroad."""
    x, y, length, width, heading = np.moveaxis(np.asarray(boxes, np.float64), -1, 0)
    c, s = np.cos(heading), np.sin(heading)
    hl, hw = length / 2, width / 2
    out = np.zeros(x.shape, bool)
    h, w = drivable.shape
    for sl, sw in [(1, 1), (-1, 1), (-1, -1), (1, -1)]:
        px = x + sl * hl * c - sw * hw * s
        py = y + sl * hl * s + sw * hw * c
        tx, ty = (px - origin[0]) / resolution, (py - origin[1]) / resolution
        outside = (tx < 0) | (ty < 0) | (tx > w) | (ty > h)
        j = np.clip(np.floor(tx), 0, w - 1).astype(int)
        i = np.clip(np.floor(ty), 0, h - 1).astype(int)
        out |= outside | (drivable[i, j] == 0)
    return out


@pytest.mark.parametrize("resolution", [0.5, 0.37])
def test_random_scenes_agree_with_shapely(rng, ref, resolution):
    drivable = random_map(rng)
    origin = (-3.25, 1.5)
    extent = np.array([44, 36]) * resolution
    boxes = ref.random_scenes(rng, 30, 10, extent_m=1.0)
    boxes[..., :2] = origin + rng.uniform(-1.0, 1.0, (30, 10, 2)) + rng.random((30, 10, 2)) * extent
    boxes[..., 2:4] *= 0.6
    valid = rng.random((30, 10)) > 0.1
    expected = ref.offroad(boxes, drivable, origin, resolution, valid)
    got = genneg_ext.offroad(boxes, drivable, origin, resolution, valid)
    np.testing.assert_array_equal(got, expected)
    assert 0.1 < expected[valid].mean() < 0.95, "scenes should mix onroad and offroad vehicles"


def test_agrees_with_shapely_on_a_road_map_near_1e6(rng, ref):
    # A road map (mostly drivable strips), placed far from the origin.
    drivable = np.zeros((40, 60), np.uint8)
    drivable[15:25, :] = 1
    drivable[:, 25:33] = 1
    origin = (1e6 + 0.25, -1e6)
    boxes = ref.random_scenes(rng, 25, 8, extent_m=1.0)
    boxes[..., 0] = origin[0] + rng.uniform(0, 30, (25, 8))
    boxes[..., 1] = origin[1] + rng.uniform(5, 15, (25, 8))
    boxes[..., 2] = rng.uniform(1.0, 4.5, (25, 8))
    boxes[..., 3] = rng.uniform(0.5, 1.8, (25, 8))
    expected = ref.offroad(boxes, drivable, origin, 0.5)
    np.testing.assert_array_equal(genneg_ext.offroad(boxes, drivable, origin, 0.5), expected)


def test_thin_strip_under_the_middle_is_offroad_exact_only():
    # 10 cm cells; a one-cell non-drivable column under the middle of a 4 m car.
    drivable = np.ones((100, 100), np.uint8)
    drivable[:, 50] = 0  # x in [5.0, 5.1]
    car = np.array([[5.05, 5.0, 4.0, 1.8, 0.0], [5.05, 5.0, 4.0, 1.8, HALF_PI]])
    assert genneg_ext.offroad(car, drivable, (0.0, 0.0), 0.1).all()
    # The corners all sit on drivable cells: the approximate mode misses the strip.
    assert not genneg_ext.offroad(car, drivable, (0.0, 0.0), 0.1, mode="corners").any()


# Exact cases on a 1 m raster covering [0, 10] x [0, 8] with the non-drivable cell (i=4, j=6), i.e.
# [6, 7] x [4, 5]. (name, box, offroad)
EXACT_CASES = [
    ("well inside", (2, 2, 2, 1, 0), False),
    ("touching the bad cell's edge", (5, 4.5, 2, 1, 0), False),
    ("touching the bad cell's corner", (5, 3, 2, 2, 0), False),
    ("into the bad cell by 2^-30", (5 + 2.0**-30, 4.5, 2, 1, 0), True),
    ("covering the bad cell", (6.5, 4.5, 3, 3, 0.4), True),
    ("inside the bad cell", (6.5, 4.5, 0.5, 0.25, 1.0), True),
    ("thin box across the bad cell", (6.5, 2, 1e-3, 6, 0), True),
    ("thin box along its edge", (6.5, 3.5, 4, 1e-3, 0), False),
    ("on the raster border", (1, 1, 2, 2, 0), False),
    ("whole raster", (5, 4, 10, 8, 0), True),  # contains the bad cell
    ("leaving by 2^-30", (1 - 2.0**-30, 1, 2, 2, 0), True),
    ("leaving at the top", (3, 7.5, 2, 2, HALF_PI), True),
    ("entirely outside", (-5, -5, 1, 1, 0), True),
    ("quarter turn touching", (4.5, 4.5, 2, 1, HALF_PI), False),
]


def exact_map():
    drivable = np.ones((8, 10), np.uint8)
    drivable[4, 6] = 0
    return drivable


@pytest.mark.parametrize(("name", "box", "expected"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_exact_cases(name, box, expected, ref):
    boxes = np.array([box], np.float64)
    assert genneg_ext.offroad(boxes, exact_map(), (0, 0), 1.0)[0] == expected
    if box[4] == 0:  # axis-aligned: shapely sees the exact same corners
        assert ref.offroad(boxes[None], exact_map(), (0, 0), 1.0)[0, 0] == expected


def rotate_quarter(boxes, drivable, origin, resolution):
    """The scene and its raster rotated by +90 degrees about (0, 0): (x, y) -> (-y, x), exactly."""
    h = drivable.shape[0]
    moved = boxes.copy()
    moved[..., 0], moved[..., 1] = -boxes[..., 1], boxes[..., 0]
    moved[..., 4] = boxes[..., 4] + HALF_PI
    new_map = np.ascontiguousarray(drivable[::-1, :].T)  # new[i', j'] = old[H-1-j', i']
    new_origin = (-(origin[1] + h * resolution), origin[0])
    return moved, new_map, new_origin


def test_rigid_motions_with_the_map_change_nothing(rng, ref):
    drivable = random_map(rng, (20, 30), 0.9)
    origin, resolution = (-2.0, 3.0), 0.5
    boxes = ref.random_scenes(rng, 20, 10, extent_m=1.0)
    boxes[..., 0] = origin[0] + rng.uniform(-0.5, 15.5, (20, 10))
    boxes[..., 1] = origin[1] + rng.uniform(-0.5, 10.5, (20, 10))
    boxes[..., 2:4] *= 0.5
    base = genneg_ext.offroad(boxes, drivable, origin, resolution)
    assert base.any() and not base.all()
    b, d, o = boxes, drivable, origin
    for _ in range(4):
        b, d, o = rotate_quarter(b, d, o, resolution)
        np.testing.assert_array_equal(genneg_ext.offroad(b, d, o, resolution), base)
    # Integer translations of the raster by whole cells, with the scene.
    for shift in [(3, -7), (1000, 2000), (-123456, 654321)]:
        moved = boxes.copy()
        moved[..., 0] += shift[0] * resolution
        moved[..., 1] += shift[1] * resolution
        o = (origin[0] + shift[0] * resolution, origin[1] + shift[1] * resolution)
        np.testing.assert_array_equal(genneg_ext.offroad(moved, drivable, o, resolution), base)


def test_exact_cases_survive_quarter_turns():
    boxes = np.array([c[1] for c in EXACT_CASES], np.float64)
    expected = np.array([c[2] for c in EXACT_CASES])
    b, d, o = boxes, exact_map(), (0.0, 0.0)
    for _ in range(4):
        b, d, o = rotate_quarter(b, d, o, 1.0)
        np.testing.assert_array_equal(genneg_ext.offroad(b, d, o, 1.0), expected)


def test_corners_mode_matches_its_numpy_twin_and_is_never_stricter(rng, ref):
    drivable = random_map(rng)
    origin, resolution = (0.0, 0.0), 0.5
    boxes = ref.random_scenes(rng, 20, 10, extent_m=20.0)
    boxes[..., 2:4] *= 0.5
    corners = genneg_ext.offroad(boxes, drivable, origin, resolution, mode="corners")
    np.testing.assert_array_equal(corners, corners_reference(boxes, drivable, origin, resolution))
    exact = genneg_ext.offroad(boxes, drivable, origin, resolution)
    assert np.all(exact >= corners)  # a corner in a bad cell means the interior meets it too
    assert (exact & ~corners).any(), "the corner-only mode should miss some offroad vehicles here"


def test_invalid_slots_threads_dtypes_and_layouts(rng, ref):
    drivable = random_map(rng)
    origin, resolution = (-1.0, -1.0), 0.5
    boxes = ref.random_scenes(rng, 41, 9, extent_m=20.0)
    boxes[..., 2:4] *= 0.5
    valid = rng.random((41, 9)) > 0.25
    base = genneg_ext.offroad(boxes, drivable, origin, resolution, valid, threads=1)
    assert not base[~valid].any()
    garbage = boxes.copy()
    garbage[~valid] = np.nan
    np.testing.assert_array_equal(genneg_ext.offroad(garbage, drivable, origin, resolution, valid), base)
    for threads in (0, 2, 5, 64):
        np.testing.assert_array_equal(
            genneg_ext.offroad(boxes, drivable, origin, resolution, valid, threads=threads), base
        )
    b32 = boxes.astype(np.float32)
    np.testing.assert_array_equal(
        genneg_ext.offroad(b32, drivable, origin, resolution, valid),
        genneg_ext.offroad(b32.astype(np.float64), drivable, origin, resolution, valid),
    )
    big_map = np.zeros((drivable.shape[0], 2 * drivable.shape[1]), np.uint8)
    big_map[:, ::2] = drivable
    layouts = {
        "bool map": (boxes, drivable.astype(bool), valid),
        "strided map": (boxes, big_map[:, ::2], valid),
        "fortran map and boxes": (np.asfortranarray(boxes), np.asfortranarray(drivable), valid),
        "int64 map": (boxes, drivable.astype(np.int64), valid),
        "torch": (torch.from_numpy(boxes), torch.from_numpy(drivable), torch.from_numpy(valid)),
        "torch transposed map": (boxes, torch.from_numpy(drivable.T.copy()).T, valid),
    }
    for name, (b, d, v) in layouts.items():
        np.testing.assert_array_equal(genneg_ext.offroad(b, d, origin, resolution, v), base, err_msg=name)
    assert genneg_ext.offroad(boxes[0], drivable, origin, resolution).shape == (9,)
    assert genneg_ext.offroad(np.zeros((0, 9, 5)), drivable, origin, resolution).shape == (0, 9)
    assert genneg_ext.offroad(np.zeros((3, 0, 5)), drivable, origin, resolution).shape == (3, 0)
