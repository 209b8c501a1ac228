"""genneg_ext.collisions / collision_pairs against shapely, on adversarial cases and under invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genneg_ext

HALF_PI = np.pi / 2


def pairs_to_mask(pairs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[pairs[:, 0], pairs[:, 1]] = True
    out[pairs[:, 0], pairs[:, 2]] = True
    return out


@pytest.mark.parametrize("margin", [0.0, 0.4])
def test_random_scenes_agree_with_shapely(rng, ref, margin):
    boxes = ref.random_scenes(rng, 40, 14, extent_m=18.0)
    valid = rng.random((40, 14)) > 0.15
    expected = ref.collisions(boxes, valid, margin)
    got = genneg_ext.collisions(boxes, valid, margin=margin)
    np.testing.assert_array_equal(got, expected)
    assert 0.1 < expected[valid].mean() < 0.9, "scenes should mix colliding and free vehicles"
    pairs = genneg_ext.collision_pairs(boxes, valid, margin=margin)
    np.testing.assert_array_equal(pairs_to_mask(pairs, valid.shape), expected)


def test_pairs_are_exactly_the_overlapping_pairs(rng, ref):
    boxes = ref.random_scenes(rng, 6, 10, extent_m=10.0)
    polys = ref.box_polygons(boxes)
    expected = [
        (s, i, j)
        for s in range(6)
        for i in range(10)
        for j in range(i + 1, 10)
        if polys[s, i].intersection(polys[s, j]).area > 0
    ]
    pairs = genneg_ext.collision_pairs(boxes)
    assert pairs.dtype == np.int64 and pairs.shape == (len(expected), 3)
    assert [tuple(p) for p in pairs.tolist()] == expected


# Constructed-exact cases: axis-aligned boxes with integer or dyadic coordinates, so every corner is
# exact in float64 and "touching" is exactly touching. (name, box a, box b, collides)
EXACT_CASES = [
    ("touching edges", (0, 0, 2, 2, 0), (2, 0, 2, 2, 0), False),
    ("touching edges, offset", (0, 0, 2, 2, 0), (2, 1, 2, 2, 0), False),
    ("touching corners", (0, 0, 2, 2, 0), (2, 2, 2, 2, 0), False),
    ("gap", (0, 0, 2, 2, 0), (2.5, 0, 2, 2, 0), False),
    ("overlap by 2^-30 m", (0, 0, 2, 2, 0), (2 - 2.0**-30, 0, 2, 2, 0), True),
    ("identical", (3, 4, 4, 2, 0.7), (3, 4, 4, 2, 0.7), True),
    ("inside", (0, 0, 10, 6, 0.3), (0.5, 0.2, 1, 1, 1.1), True),
    ("crossing thin", (0, 0, 10, 1e-3, 0), (0, 0, 10, 1e-3, HALF_PI), True),
    ("parallel thin, apart", (0, 0, 10, 2.0**-10, 0), (0, 2.0**-9, 10, 2.0**-10, 0), False),
    ("parallel thin, touching", (0, 0, 10, 2.0**-10, 0), (0, 2.0**-10, 10, 2.0**-10, 0), False),
    ("quarter turn, touching", (0, 0, 4, 2, 0), (3, 0, 4, 2, HALF_PI), False),
    ("quarter turn, overlapping", (0, 0, 4, 2, 0), (2.5, 0, 4, 2, HALF_PI), True),
    ("diamond touching edge", (0, 0, 2, 2, np.pi / 4), (2, 0, 2, 2, 0), True),
]


@pytest.mark.parametrize(("name", "a", "b", "collides"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3, -5])
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_exact_cases(name, a, b, collides, quarter_turns, offset, ref):
    boxes = np.array([a, b], dtype=np.float64)
    # Rotate the whole scene by k quarter turns exactly (coordinate swaps) and translate by an integer.
    for _ in range(quarter_turns % 4):
        boxes[:, [0, 1]] = np.stack([-boxes[:, 1], boxes[:, 0]], -1)
        boxes[:, 4] += HALF_PI
    boxes[:, 4] += 2 * np.pi * (quarter_turns // 4)  # and headings shifted by whole turns
    boxes[:, :2] += offset
    got = genneg_ext.collisions(boxes)
    np.testing.assert_array_equal(got, [collides, collides])
    if quarter_turns == 0 and offset == 0.0 and name != "diamond touching edge":
        # shapely agrees on the exact numbers (the diamond's corners are irrational, skip it there).
        np.testing.assert_array_equal(ref.collisions(boxes[None])[0], [collides, collides])


def test_rotation_by_1e_9_keeps_separated_and_overlapping(rng, ref):
    boxes = ref.random_scenes(rng, 20, 10, extent_m=15.0)
    before = genneg_ext.collisions(boxes)
    angle = 1e-9
    c, s = np.cos(angle), np.sin(angle)
    moved = boxes.copy()
    moved[..., 0] = c * boxes[..., 0] - s * boxes[..., 1]
    moved[..., 1] = s * boxes[..., 0] + c * boxes[..., 1]
    moved[..., 4] += angle
    np.testing.assert_array_equal(genneg_ext.collisions(moved), before)


def test_tilt_by_1e_9_turns_touching_into_overlap(ref):
    # Two unit squares touching along x = 1; tilting the second by 1e-9 rad pushes a corner ~1e-9 m
    # into the first: a real overlap, which shapely also sees.
    boxes = np.array([[[0.5, 0.5, 1, 1, 0], [1.5, 0.5, 1, 1, 1e-9]]])
    assert genneg_ext.collisions(boxes).all()
    assert ref.collisions(boxes).all()


def test_coordinates_near_1e6_agree_with_shapely(rng, ref):
    boxes = ref.random_scenes(rng, 20, 10, extent_m=15.0)
    boxes[..., :2] += np.array([1e6, -1e6])
    np.testing.assert_array_equal(genneg_ext.collisions(boxes), ref.collisions(boxes))


def test_permutation_permutes_result(rng, ref):
    boxes = ref.random_scenes(rng, 10, 16, extent_m=14.0)
    valid = rng.random((10, 16)) > 0.2
    base = genneg_ext.collisions(boxes, valid)
    perm = rng.permutation(16)
    np.testing.assert_array_equal(genneg_ext.collisions(boxes[:, perm], valid[:, perm]), base[:, perm])


def test_rigid_motion_changes_nothing(rng, ref):
    boxes = ref.random_scenes(rng, 20, 12, extent_m=15.0)
    base = genneg_ext.collisions(boxes, margin=0.1)
    for angle, shift in [(0.7, (5.0, -3.0)), (-2.9, (-1e4, 2e3)), (np.pi, (0.0, 0.0))]:
        c, s = np.cos(angle), np.sin(angle)
        moved = boxes.copy()
        moved[..., 0] = c * boxes[..., 0] - s * boxes[..., 1] + shift[0]
        moved[..., 1] = s * boxes[..., 0] + c * boxes[..., 1] + shift[1]
        moved[..., 4] += angle
        np.testing.assert_array_equal(genneg_ext.collisions(moved, margin=0.1), base)


def test_invalid_slots_never_affect_others(rng, ref):
    boxes = ref.random_scenes(rng, 12, 10, extent_m=12.0)
    valid = rng.random((12, 10)) > 0.3
    base = genneg_ext.collisions(boxes, valid)
    base_pairs = genneg_ext.collision_pairs(boxes, valid)
    garbage = boxes.copy()
    garbage[~valid] = np.array([6.0, 6.0, 1e3, 1e3, 0.0])  # would cover everything if it were present
    garbage[~valid & (rng.random((12, 10)) > 0.5)] = np.nan
    np.testing.assert_array_equal(genneg_ext.collisions(garbage, valid), base)
    np.testing.assert_array_equal(genneg_ext.collision_pairs(garbage, valid), base_pairs)
    assert not base[~valid].any()
    # Dropping the invalid slots entirely gives the same verdicts for the others.
    for s in range(12):
        np.testing.assert_array_equal(genneg_ext.collisions(boxes[s][valid[s]]), base[s][valid[s]])


def test_margin_is_inflation_and_monotone(rng, ref):
    boxes = ref.random_scenes(rng, 15, 10, extent_m=16.0)
    inflated = boxes.copy()
    inflated[..., 2:4] += 2 * 0.3
    np.testing.assert_array_equal(genneg_ext.collisions(boxes, margin=0.3), genneg_ext.collisions(inflated))
    small, large = genneg_ext.collisions(boxes, margin=0.1), genneg_ext.collisions(boxes, margin=0.5)
    assert np.all(large >= small)


def test_float32_input_is_evaluated_in_float64(rng, ref):
    boxes32 = ref.random_scenes(rng, 20, 12, extent_m=14.0).astype(np.float32)
    np.testing.assert_array_equal(
        genneg_ext.collisions(boxes32), genneg_ext.collisions(boxes32.astype(np.float64))
    )
    # Exact touching survives float32 input (integers are exact in float32).
    touching = np.array([[0, 0, 2, 2, 0], [2, 0, 2, 2, 0]], np.float32)
    assert not genneg_ext.collisions(touching).any()


def test_strided_views_and_torch_tensors(rng, ref):
    boxes = ref.random_scenes(rng, 16, 12, extent_m=12.0)
    valid = rng.random((16, 12)) > 0.2
    base = genneg_ext.collisions(boxes, valid)
    fields_first = np.ascontiguousarray(np.moveaxis(boxes, -1, 0))  # (5, S, A) storage
    variants = {
        "fortran": (np.asfortranarray(boxes), valid),
        "fields strided": (np.moveaxis(fields_first, 0, -1), valid),
        "every other scene": (np.repeat(boxes, 2, axis=0)[::2], np.repeat(valid, 2, axis=0)[::2]),
        "reversed agents": (boxes[:, ::-1][:, ::-1], valid[:, ::-1][:, ::-1]),
        "torch": (torch.from_numpy(boxes), torch.from_numpy(valid)),
        "torch float32 transposed": (
            torch.from_numpy(fields_first.astype(np.float32)).permute(1, 2, 0),
            torch.from_numpy(valid.T.copy()).T,
        ),
        "torch requires_grad": (torch.from_numpy(boxes).requires_grad_(True), valid),
    }
    for name, (b, v) in variants.items():
        expected = base if "float32" not in name else genneg_ext.collisions(boxes.astype(np.float32), valid)
        np.testing.assert_array_equal(genneg_ext.collisions(b, v), expected, err_msg=name)


def test_thread_counts_give_identical_results(rng, ref):
    boxes = ref.random_scenes(rng, 97, 20, extent_m=15.0)
    base = genneg_ext.collisions(boxes, threads=1)
    base_pairs = genneg_ext.collision_pairs(boxes, threads=1)
    for threads in (0, 2, 3, 8, 200):
        np.testing.assert_array_equal(genneg_ext.collisions(boxes, threads=threads), base)
        np.testing.assert_array_equal(genneg_ext.collision_pairs(boxes, threads=threads), base_pairs)


def test_thread_counts_with_crowded_scenes(rng, ref):
    # 150 vehicles per scene: each scene is worth a thread, so every thread count splits differently.
    boxes = ref.random_scenes(rng, 7, 150, extent_m=60.0)
    valid = rng.random((7, 150)) > 0.1
    base = genneg_ext.collisions(boxes, valid, threads=1)
    base_pairs = genneg_ext.collision_pairs(boxes, valid, threads=1)
    assert base.any() and not base.all()
    for threads in (2, 3, 4, 7, 9):
        np.testing.assert_array_equal(genneg_ext.collisions(boxes, valid, threads=threads), base)
        np.testing.assert_array_equal(genneg_ext.collision_pairs(boxes, valid, threads=threads), base_pairs)
    np.testing.assert_array_equal(base[0], ref.collisions(boxes[:1], valid[:1])[0])


def test_available_cores_is_what_threads_zero_uses():
    assert genneg_ext.available_cores() >= 1


def test_two_dimensional_input_and_empty_batches():
    single = np.array([[0, 0, 2, 2, 0], [1, 0, 2, 2, 0], [9, 9, 1, 1, 0]], np.float64)
    np.testing.assert_array_equal(genneg_ext.collisions(single), [True, True, False])
    np.testing.assert_array_equal(genneg_ext.collision_pairs(single), [[0, 0, 1]])
    np.testing.assert_array_equal(genneg_ext.collisions(single, valid=[True, False, True]), [False] * 3)
    assert genneg_ext.collisions(np.zeros((0, 5))).shape == (0,)
    assert genneg_ext.collisions(np.zeros((0, 7, 5))).shape == (0, 7)
    assert genneg_ext.collisions(np.zeros((4, 0, 5))).shape == (4, 0)
    assert genneg_ext.collision_pairs(np.zeros((0, 3, 5))).shape == (0, 3)
