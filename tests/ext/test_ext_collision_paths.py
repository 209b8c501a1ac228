"""Every instruction set and broad phase of genneg_ext.collisions gives the same verdicts, bit for bit.

The adversarial and shapely cases run over every path in tests/oracles/test_traffic_oracle.py; here the
paths are held to each other on inputs where float64 rounding decides (pairs a few ulps from touching),
and the sweep broad phase to shapely's STRtree on large scenes and awkward layouts.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import shapely

import genneg_ext

ISAS = ("baseline", "avx2", "avx512")
PHASES = ("all_pairs", "sweep")
PATHS = list(itertools.product(ISAS, PHASES))


def _require(isa: str) -> None:
    if isa not in genneg_ext.available_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels (it has {genneg_ext.available_isas()})")


def rounding_pairs(rng: np.random.Generator, scenes: int, agents: int) -> np.ndarray:
    """Scenes of vehicles placed side by side at random headings, each pair's gap a few ulps from zero
    (some overlap, some not, some exactly touch in float64): the verdict depends on the last bit."""
    b = np.empty((scenes, agents, 5))
    b[..., 2] = rng.uniform(3.5, 5.5, (scenes, agents))
    b[..., 3] = rng.uniform(1.6, 2.2, (scenes, agents))
    heading = rng.uniform(-np.pi, np.pi, (scenes, 1))
    b[..., 4] = heading + rng.choice([0.0, np.pi, 1e-12, -1e-12], (scenes, agents))
    # Along the width axis, consecutive vehicles touch: offset = (w_k + w_{k+1}) / 2 * (1 + eps * ulps).
    normal = np.concatenate([-np.sin(heading), np.cos(heading)], -1)  # (S, 2)
    half = 0.5 * b[..., 3]
    offsets = np.concatenate([np.zeros((scenes, 1)), np.cumsum(half[:, 1:] + half[:, :-1], axis=1)], 1)
    offsets *= 1.0 + np.finfo(float).eps * rng.integers(-3, 4, (scenes, agents))
    origin = rng.uniform(-50, 50, (scenes, 1, 2))
    b[..., :2] = origin + offsets[..., None] * normal[:, None, :]
    along = np.stack([np.cos(heading), np.sin(heading)], -1)  # (S, 1, 2)
    b[..., :2] += rng.uniform(-0.5, 0.5, (scenes, agents, 1)) * along
    return b


@pytest.mark.parametrize(("isa", "broad_phase"), PATHS)
def test_every_path_matches_the_scalar_all_pairs_bit_for_bit(rng, ref, isa, broad_phase):
    _require(isa)
    boxes = rounding_pairs(rng, 60, 9)
    dense = ref.random_scenes(rng, 60, 40, extent_m=30.0)
    for case in (boxes, dense, boxes + np.array([1e6, -1e6, 0, 0, 0])):
        valid = rng.random(case.shape[:2]) > 0.1
        for margin in (0.0, 0.05):
            expected = genneg_ext.collisions(case, valid, margin, isa="baseline", broad_phase="all_pairs")
            got = genneg_ext.collisions(case, valid, margin, isa=isa, broad_phase=broad_phase)
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(
                genneg_ext.collision_pairs(case, valid, margin, isa=isa, broad_phase=broad_phase),
                genneg_ext.collision_pairs(case, valid, margin, isa="baseline", broad_phase="all_pairs"),
            )
    # The rounding scenes really are on the edge: some neighbours overlap, some do not.
    verdicts = genneg_ext.collisions(boxes)
    assert 0.05 < verdicts.mean() < 0.95


def strtree_pairs(boxes: np.ndarray, ref) -> np.ndarray:
    """``(P, 2)`` overlapping pairs ``i < j`` of one scene, by shapely (STRtree, then area > 0)."""
    polys = ref.box_polygons(boxes)
    tree = shapely.STRtree(polys)
    a, b = tree.query(polys, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    area = shapely.area(shapely.intersection(polys[a], polys[b]))
    pairs = np.stack([a[area > 0], b[area > 0]], 1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def big_layouts(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = 1500
    square = ref_scene(rng, n, 250.0, 250.0)
    line_y = ref_scene(rng, n, 3.0, 900.0)  # spread along y: the sweep must pick y
    far = square + np.array([1e6, 1e6, 0, 0, 0])
    mixed = square.copy()
    mixed[::50, 2] = rng.uniform(50.0, 400.0, mixed[::50].shape[0])  # a few very long boxes
    mixed[1::50, 2:4] = 1e-3  # and a few 1 mm ones
    stacked = ref_scene(rng, 200, 1.0, 1.0)  # everything on top of everything
    return {
        "square": square,
        "line along y": line_y,
        "near 1e6": far,
        "long and tiny": mixed,
        "stacked": stacked,
    }


def ref_scene(rng: np.random.Generator, n: int, width_m: float, height_m: float) -> np.ndarray:
    b = np.empty((n, 5))
    b[:, 0] = rng.uniform(0, width_m, n)
    b[:, 1] = rng.uniform(0, height_m, n)
    b[:, 2] = rng.uniform(3.5, 5.5, n)
    b[:, 3] = rng.uniform(1.6, 2.2, n)
    b[:, 4] = rng.uniform(-np.pi, np.pi, n)
    return b


@pytest.mark.parametrize("isa", ISAS)
def test_sweep_on_large_scenes_matches_shapely(rng, ref, isa):
    _require(isa)
    for name, boxes in big_layouts(rng).items():
        expected = strtree_pairs(boxes, ref)
        assert expected.shape[0] > 0, name
        for broad_phase in ("sweep", "auto"):
            got = genneg_ext.collision_pairs(boxes, isa=isa, broad_phase=broad_phase)
            np.testing.assert_array_equal(got[:, 1:], expected, err_msg=f"{name}, {broad_phase}")
            flags = np.zeros(boxes.shape[0], bool)
            flags[expected.ravel()] = True
            got_flags = genneg_ext.collisions(boxes, isa=isa, broad_phase=broad_phase)
            np.testing.assert_array_equal(got_flags, flags)


def test_large_scene_with_absent_slots_and_threads(rng):
    boxes = np.stack([ref_scene(rng, 700, 150.0, 150.0) for _ in range(3)])
    valid = rng.random((3, 700)) > 0.2
    boxes[~valid] = np.nan  # absent slots are never read
    expected = genneg_ext.collisions(boxes, valid, broad_phase="all_pairs", threads=1)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(genneg_ext.collisions(boxes, valid, threads=threads), expected)
        np.testing.assert_array_equal(
            genneg_ext.collision_pairs(boxes, valid, threads=threads),
            genneg_ext.collision_pairs(boxes, valid, broad_phase="all_pairs", threads=1),
        )


def test_available_isas_and_bad_choices():
    isas = genneg_ext.available_isas()
    assert isas[0] == "baseline" and set(isas) <= set(ISAS)
    boxes = np.array([[0, 0, 2, 2, 0], [1, 0, 2, 2, 0]], np.float64)
    with pytest.raises(ValueError, match="isa must be 'auto', 'baseline', 'avx2' or 'avx512', got 'sse9'"):
        genneg_ext.collisions(boxes, isa="sse9")
    with pytest.raises(ValueError, match="broad_phase must be 'auto', 'all_pairs' or 'sweep', got 'grid'"):
        genneg_ext.collision_pairs(boxes, broad_phase="grid")
    for isa in set(ISAS) - set(isas):
        with pytest.raises(ValueError, match=f"isa '{isa}' is not supported by this CPU"):
            genneg_ext.collisions(boxes, isa=isa)


def awkward_headings(rng: np.random.Generator) -> np.ndarray:
    """Headings (rad) where the quarter-turn reduction and the polynomials are at their edges: float64
    multiples of fl(pi/2) and their neighbours, quadrant boundaries (odd multiples of pi/4), signed
    zeros, tiny angles, the ends of the valid range, and uniform draws."""
    half_pi = np.pi / 2
    k = np.concatenate([np.arange(-8, 9), rng.integers(-6366, 6367, 200)]).astype(np.float64)
    multiples = k * half_pi
    eighths = (k + 0.5) * half_pi
    near = np.concatenate([np.nextafter(multiples, np.inf), np.nextafter(multiples, -np.inf)])
    near_eighths = np.concatenate([np.nextafter(eighths, np.inf), np.nextafter(eighths, -np.inf)])
    special = np.array([0.0, -0.0, 1e-300, -1e-300, 1e-9, -1e-12, 1e4, -1e4, np.pi, -np.pi, np.pi / 4])
    uniform = np.concatenate([rng.uniform(-np.pi, np.pi, 2000), rng.uniform(-1e4, 1e4, 500)])
    return np.concatenate([multiples, eighths, near, near_eighths, special, uniform])


@pytest.mark.parametrize("isa", ISAS)
def test_box_preparation_is_bit_identical_to_make_rect(rng, isa):
    """The vectorised preparation (heading reduction, sin/cos polynomials, bounding extents) rounds
    exactly as geometry.cpp's make_rect, the scalar code the offroad oracles use, on every path."""
    _require(isa)
    heading = awkward_headings(rng)
    boxes = np.empty((1, heading.size, 5))
    boxes[0, :, 0] = rng.uniform(-1e6, 1e6, heading.size)
    boxes[0, :, 1] = rng.uniform(-50, 50, heading.size)
    boxes[0, :, 2] = rng.uniform(1e-3, 20.0, heading.size)
    boxes[0, :, 3] = rng.uniform(1e-3, 3.0, heading.size)
    boxes[0, :, 4] = heading
    for case in (boxes, boxes.astype(np.float32), boxes[:, ::-1]):
        for margin in (0.0, 0.05):
            expected = genneg_ext._C.rect_frames(case, margin, "make_rect")
            got = genneg_ext._C.rect_frames(case, margin, isa)
            # Bit for bit, signed zeros included.
            np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64))


def test_box_axes_are_accurate_and_quarter_turns_exact(rng):
    """The polynomial sin/cos: within 2 ulp of the correctly rounded value for |heading| <= pi/4 (NumPy's
    cos/sin are within 1 ulp of it: 3 ulp between the two), within the reduction's drift
    (|k| * |fl(pi/2) - pi/2| <= 6367 * 6.2e-17 rad) elsewhere in the valid range, and exactly 0 and
    +-1 at float64 multiples of fl(pi/2) up to two quarter turns."""
    heading = awkward_headings(rng)
    boxes = np.zeros((1, heading.size, 5))
    boxes[0, :, 2:4] = 1.0
    boxes[0, :, 4] = heading
    frames = genneg_ext._C.rect_frames(boxes, 0.0, "make_rect")
    c, s = frames[:, 2], frames[:, 3]
    small = np.abs(heading) <= np.pi / 4
    ulp_c, ulp_s = np.spacing(np.abs(np.cos(heading))), np.spacing(np.abs(np.sin(heading)))
    assert np.all(np.abs(c - np.cos(heading))[small] <= 3 * ulp_c[small])
    assert np.all(np.abs(s - np.sin(heading))[small] <= 3 * ulp_s[small])
    drift = 6367 * 6.2e-17 + 4e-16  # rad, plus the polynomial's few ulp
    assert np.all(np.abs(c - np.cos(heading)) <= drift)
    assert np.all(np.abs(s - np.sin(heading)) <= drift)
    quarter = np.arange(-2, 3) * (np.pi / 2)
    boxes = np.zeros((1, 5, 5))
    boxes[0, :, 2:4] = 1.0
    boxes[0, :, 4] = quarter
    frames = genneg_ext._C.rect_frames(boxes, 0.0, "make_rect")
    np.testing.assert_array_equal(frames[:, 2], [-1.0, 0.0, 1.0, 0.0, -1.0])
    np.testing.assert_array_equal(frames[:, 3], [0.0, -1.0, 0.0, 1.0, 0.0])
