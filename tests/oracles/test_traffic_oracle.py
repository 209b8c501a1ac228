"""The traffic oracle: one test body holds every backend (PyTorch reference, C++ ``genneg_ext``, Triton
under the interpreter) to shapely and to analytic answers; then the :class:`TrafficOracle` wrapper.

Shapely is the ground truth: collision iff ``area(a ∩ b) > 0`` for the (margin-inflated) rectangles,
offroad iff the union of drivable cells does not cover the rectangle. Shapely's rectangles are built from
``np.cos``/``np.sin`` corners, so a pair within ~1e-7 m of touching is *uncertain* (the contract allows
either answer there: exact only up to float64 rounding at touching) and is skipped; cases with exactly
representable touching are asserted exactly in the analytic tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genneg.kernels._backend import has_triton, interpreter_enabled
from genneg.oracles import DrivableMap, TrafficOracle, evaluate_oracle, sample_verdicts
from genneg.reference import traffic_oracle as reference

try:
    import shapely
except ImportError:  # e.g. the bare GPU machine: the analytic and backend tests run, the shapely ones skip
    shapely = None
needs_shapely = pytest.mark.skipif(shapely is None, reason="needs shapely (the ground-truth geometry)")

# Distance (m) from touching below which shapely's verdict is treated as uncertain: shapely's corners are
# computed with np.cos/np.sin, ours with a quarter-turn reduction; they differ by ~1e-15 m, far below this.
UNCERTAIN_M = 1e-7


def _ext_ready() -> bool:
    try:
        import genneg_ext
    except ImportError:
        return False
    return hasattr(genneg_ext, "collisions") and hasattr(genneg_ext, "offroad")


@dataclass(frozen=True)
class Backend:
    """One implementation, called with NumPy inputs and returning NumPy bool verdicts."""

    name: str
    collisions: Callable[..., np.ndarray]
    offroad: Callable[..., np.ndarray]


def _torch_backend(name: str, module: object, device: str = "cpu") -> Backend:
    def to_t(a: np.ndarray | None) -> torch.Tensor | None:
        # torch cannot view negative NumPy strides; the kernel tests cover strided tensors.
        return None if a is None else torch.as_tensor(np.ascontiguousarray(a), device=device)

    def col(boxes, valid=None, margin=0.0):
        return module.collisions(to_t(boxes), to_t(valid), margin=margin).cpu().numpy()

    def off(boxes, drivable, origin, resolution, valid=None):
        return module.offroad(to_t(boxes), to_t(drivable), origin, resolution, to_t(valid)).cpu().numpy()

    return Backend(name, col, off)


def _cuda_kernels_ready() -> bool:
    """Compiled Triton kernels can run: triton, a CUDA device, and the interpreter off."""
    return has_triton() and torch.cuda.is_available() and not interpreter_enabled()


def _cpp_path_backend(name: str) -> Backend:
    """``cpp-<isa>-<broad phase>``: the C++ oracle with its instruction set and broad phase forced."""
    if not _ext_ready():
        pytest.skip("genneg_ext is not built with the traffic oracles")
    import genneg_ext

    _, isa, broad_phase = name.split("-")
    if isa not in genneg_ext.available_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels (it has {genneg_ext.available_isas()})")

    def col(boxes, valid=None, margin=0.0):
        return genneg_ext.collisions(boxes, valid, margin=margin, isa=isa, broad_phase=broad_phase)

    def off(boxes, drivable, origin, resolution, valid=None):
        return genneg_ext.offroad(boxes, drivable, origin, resolution, valid)

    return Backend(name, col, off)


def _make_backend(name: str) -> Backend:
    if name == "reference":
        return _torch_backend(name, reference)
    if name.startswith("cpp-"):
        return _cpp_path_backend(name)
    if name == "cpp":
        if not _ext_ready():
            pytest.skip("genneg_ext is not built with the traffic oracles")
        import genneg_ext

        return Backend(
            name,
            lambda boxes, valid=None, margin=0.0: genneg_ext.collisions(boxes, valid, margin=margin),
            lambda boxes, drivable, origin, resolution, valid=None: genneg_ext.offroad(
                boxes, drivable, origin, resolution, valid
            ),
        )
    if name == "reference-cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        return _torch_backend(name, reference, "cuda")
    if name == "triton-cuda":
        if not _cuda_kernels_ready():
            pytest.skip("needs triton, a CUDA device and TRITON_INTERPRET=0 (scripts/gpu_check.sh)")
        from genneg.kernels import traffic_oracle as kernels

        return _torch_backend(name, kernels, "cuda")
    if not has_triton() or not interpreter_enabled():
        pytest.skip("Triton is not installed or TRITON_INTERPRET=1 is not set")
    from genneg.kernels import traffic_oracle as kernels

    return _torch_backend(name, kernels)


# "triton" is the kernels under the interpreter (CPU tensors); the "-cuda" backends run on a GPU (-m gpu).
@pytest.fixture(
    params=[
        "reference",
        "cpp",
        "triton",
        pytest.param("reference-cuda", marks=pytest.mark.gpu),
        pytest.param("triton-cuda", marks=pytest.mark.gpu),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    return _make_backend(request.param)


# Collision tests also run every instruction set and broad phase of the C++ oracle (all bit-identical).
CPP_PATHS = [
    f"cpp-{isa}-{phase}" for isa in ("baseline", "avx2", "avx512") for phase in ("all_pairs", "sweep")
]


@pytest.fixture(params=["reference", "cpp", "triton", pytest.param("reference-cuda", marks=pytest.mark.gpu),
                        pytest.param("triton-cuda", marks=pytest.mark.gpu), *CPP_PATHS])
def collision_backend(request: pytest.FixtureRequest) -> Backend:
    return _make_backend(request.param)


# ---------------------------------------------------------------------------------------------------------
# Ground truth with shapely


def box_polygons(boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``(..., 5)`` boxes -> shapely polygons ``(...)``, length and width inflated by ``2 * margin``."""
    b = np.asarray(boxes, dtype=np.float64)
    x, y, h = b[..., 0], b[..., 1], b[..., 4]
    hl, hw = 0.5 * b[..., 2] + margin, 0.5 * b[..., 3] + margin
    c, s = np.cos(h), np.sin(h)
    signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    corners = np.stack(
        [np.stack([x + a * hl * c - w * hw * s, y + a * hl * s + w * hw * c], -1) for a, w in signs], -2
    )
    return shapely.polygons(corners)


def _shrink(polys: np.ndarray) -> np.ndarray:
    return shapely.buffer(polys, -UNCERTAIN_M, join_style="mitre")


def _grow(polys: np.ndarray) -> np.ndarray:
    return shapely.buffer(polys, UNCERTAIN_M, join_style="mitre")


def collision_truth(boxes: np.ndarray, valid: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """``(S, A)`` shapely verdicts and whether each is certain (no pair within UNCERTAIN_M of touching)."""
    num_scenes, num_agents = valid.shape
    polys = box_polygons(boxes, margin)
    truth = np.zeros((num_scenes, num_agents), dtype=bool)
    sure_hit = np.zeros_like(truth)
    unsure = np.zeros_like(truth)
    ia, ib = np.triu_indices(num_agents, 1)
    for s in range(num_scenes):
        keep = valid[s, ia] & valid[s, ib]
        a, b = ia[keep], ib[keep]
        pa, pb = polys[s, a], polys[s, b]
        overlap = shapely.area(shapely.intersection(pa, pb)) > 0
        certain = (shapely.distance(pa, pb) > UNCERTAIN_M) | shapely.intersects(_shrink(pa), _shrink(pb))
        for i, j, o, c in zip(a, b, overlap, certain):
            truth[s, [i, j]] |= o
            sure_hit[s, [i, j]] |= o & c
            unsure[s, [i, j]] |= ~c
    return truth, sure_hit | ~unsure


def drivable_union(drivable: np.ndarray, origin: tuple[float, float], res: float):
    rows, cols = np.nonzero(drivable)
    x0, y0 = origin[0] + cols * res, origin[1] + rows * res
    return shapely.union_all(shapely.box(x0, y0, x0 + res, y0 + res))


def offroad_truth(
    boxes: np.ndarray, valid: np.ndarray, drivable: np.ndarray, origin: tuple[float, float], res: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(S, A)`` shapely verdicts (offroad iff the drivable union does not cover the box) and certainty."""
    road = drivable_union(drivable, origin, res)
    polys = box_polygons(boxes)
    truth = ~shapely.covers(road, polys) & valid
    certain = shapely.covers(road, _grow(polys)) | ~shapely.covers(road, _shrink(polys)) | ~valid
    return truth, certain


# ---------------------------------------------------------------------------------------------------------
# Scenes


def random_boxes(rng: np.random.Generator, num_scenes: int, num_agents: int, extent_m: float) -> np.ndarray:
    """``(S, A, 5)`` float64 vehicle-like boxes in ``[1, extent_m - 1]^2``, any heading."""
    boxes = np.empty((num_scenes, num_agents, 5))
    boxes[..., :2] = rng.uniform(1.0, extent_m - 1.0, (num_scenes, num_agents, 2))
    boxes[..., 2] = rng.uniform(2.5, 6.0, (num_scenes, num_agents))
    boxes[..., 3] = rng.uniform(1.2, 2.5, (num_scenes, num_agents))
    boxes[..., 4] = rng.uniform(-4.0, 4.0, (num_scenes, num_agents))
    return boxes


def road_raster(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint8: a wide cross of road, a one-cell non-drivable strip across it, scattered potholes."""
    h, w = shape
    drivable = np.zeros(shape, dtype=np.uint8)
    drivable[h // 4 : 3 * h // 4, :] = 1
    drivable[:, w // 4 : 3 * w // 4] = 1
    drivable[:, w // 2] = 0  # a thin strip: corner-only checks miss boxes straddling it
    holes = rng.random(shape) < 0.01
    drivable[holes] = 0
    return drivable


# ---------------------------------------------------------------------------------------------------------
# Agreement with shapely


@needs_shapely
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_collisions_match_shapely_on_random_scenes(collision_backend: Backend, dtype: type) -> None:
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 10, 11, extent_m=22.0).astype(dtype)
    valid = rng.random((10, 11)) < 0.8
    for margin in (0.0, 0.3):
        truth, certain = collision_truth(boxes, valid, margin)
        got = collision_backend.collisions(boxes, valid, margin=margin)
        assert got.dtype == np.bool_ and got.shape == (10, 11)
        assert certain.mean() > 0.95, "the random scenes should be almost all clear of touching"
        np.testing.assert_array_equal(got[certain], truth[certain])
        assert not got[~valid].any()
        assert 0.2 < truth[valid].mean() < 0.8, "scenes should mix colliding and free vehicles"


@needs_shapely
def test_offroad_matches_shapely_on_random_scenes(backend: Backend) -> None:
    rng = np.random.default_rng(11)
    drivable = road_raster(rng, (48, 52))
    origin, res = (-3.0, 2.0), 0.5
    boxes = random_boxes(rng, 8, 12, extent_m=26.0)
    boxes[..., 0] += origin[0]
    boxes[..., 1] += origin[1]
    valid = rng.random((8, 12)) < 0.85
    truth, certain = offroad_truth(boxes, valid, drivable, origin, res)
    got = backend.offroad(boxes, drivable, origin, res, valid)
    assert got.shape == (8, 12) and got.dtype == np.bool_
    assert certain.all()
    np.testing.assert_array_equal(got, truth)
    assert 0.1 < truth[valid].mean() < 0.9, "scenes should mix on-road and offroad vehicles"


# ---------------------------------------------------------------------------------------------------------
# Adversarial collisions, analytic answers (exactly representable numbers: every backend must be exact)

HALF_PI = math.pi / 2  # fl(pi/2); its float64 multiples by 0, ±1, ±2, ±4 are exact quarter turns

# (box a, box b, margin, collide?)
COLLISION_CASES = [
    pytest.param((0, 0, 4, 2, 0), (4, 0, 4, 2, 0), 0.0, False, id="touching-edges"),
    pytest.param((0, 0, 4, 2, 0), (4 - 1e-9, 0, 4, 2, 0), 0.0, True, id="overlap-1e-9"),
    pytest.param((0, 0, 2, 2, 0), (2, 2, 2, 2, 0), 0.0, False, id="touching-corners"),
    pytest.param((0, 0, 2, 2, 0), (2 - 1e-9, 2 - 1e-9, 2, 2, 0), 0.0, True, id="corners-overlap-1e-9"),
    pytest.param((1, 2, 4, 2, 0.3), (1, 2, 4, 2, 0.3), 0.0, True, id="identical"),
    pytest.param((0, 0, 6, 4, 0.2), (0.5, 0.2, 1, 0.5, 1.1), 0.0, True, id="inside"),
    pytest.param((0, 0, 4, 2, HALF_PI), (2, 0, 2, 2, 0), 0.0, False, id="quarter-turn-touching"),
    pytest.param((0, 0, 4, 2, -HALF_PI), (0, 3, 2, 2, math.pi), 0.0, False, id="minus-quarter-and-half-turn"),
    pytest.param((0, 0, 4, 2, 2 * math.pi), (0, -2, 4, 2, 0), 0.0, False, id="full-turn-touching"),
    pytest.param((0, 0, 4, 2, 0), (4, 0, 4, 2, 1e-9), 0.0, True, id="rotated-1e-9-corner-in"),
    pytest.param((0, 0, 4, 2, 0), (4 + 2e-9, 0, 4, 2, 1e-9), 0.0, False, id="rotated-1e-9-clear"),
    pytest.param((1e6, 1e6, 4, 2, 0), (1e6 + 4, 1e6, 4, 2, 0), 0.0, False, id="touching-near-1e6"),
    pytest.param((1e6, -1e6, 4, 2, 0), (1e6 + 3.5, -1e6, 4, 2, 0), 0.0, True, id="overlap-near-1e6"),
    pytest.param((0, 0, 4, 1e-3, 0), (0, 0, 4, 1e-3, HALF_PI), 0.0, True, id="thin-crossing"),
    pytest.param((0, 0, 4, 1e-3, 0), (0, 1e-3, 4, 1e-3, 0), 0.0, False, id="thin-touching"),
    pytest.param((0, 0, 4, 1e-3, 0), (0, 9e-4, 4, 1e-3, 0), 0.0, True, id="thin-overlapping"),
    pytest.param((0, 0, 4, 2, 0), (4.25, 0, 4, 2, 0), 0.125, False, id="margin-touching"),
    pytest.param((0, 0, 4, 2, 0), (4.25, 0, 4, 2, 0), 0.126, True, id="margin-overlap"),
]


def _with_dtypes(cases: list) -> list:
    """Each case in float64, and in float32 too where its numbers are exactly representable there."""
    out = []
    for case in cases:
        boxes = np.array(case.values[:2], dtype=np.float64)
        out.append(pytest.param(*case.values, np.float64, id=f"{case.id}-f64"))
        if np.array_equal(boxes.astype(np.float32).astype(np.float64), boxes):
            out.append(pytest.param(*case.values, np.float32, id=f"{case.id}-f32"))
    return out


@pytest.mark.parametrize(("box_a", "box_b", "margin", "expected", "dtype"), _with_dtypes(COLLISION_CASES))
def test_collision_adversarial(collision_backend: Backend, box_a, box_b, margin, expected, dtype) -> None:
    boxes = np.array([box_a, box_b], dtype=dtype)
    for order in ([0, 1], [1, 0]):
        got = collision_backend.collisions(boxes[order], margin=margin)
        np.testing.assert_array_equal(got, [expected, expected])
    # The same pair inside a batch, with an absent NaN slot between them that must change nothing.
    batch = np.full((3, 3, 5), np.nan, dtype=boxes.dtype)
    batch[1, 0], batch[1, 2] = boxes
    valid = np.zeros((3, 3), dtype=bool)
    valid[1, [0, 2]] = True
    got = collision_backend.collisions(batch, valid, margin=margin)
    np.testing.assert_array_equal(got, [[False] * 3, [expected, False, expected], [False] * 3])


# Raster for the offroad cases: 20 x 20 cells of 0.5 m from the origin, a non-drivable column at
# x in [5, 5.5] and one non-drivable cell at x in [6.5, 7], y in [3, 3.5].
def _case_raster() -> np.ndarray:
    drivable = np.ones((20, 20), dtype=np.uint8)
    drivable[:, 10] = 0
    drivable[6, 13] = 0
    return drivable


OFFROAD_CASES = [
    pytest.param((2, 1, 4, 2, 0), False, id="touching-raster-border"),
    pytest.param((2 - 0.01, 1, 4, 2, 0), True, id="leaving-raster-by-1cm"),
    pytest.param((2, 9, 4, 2, 0), False, id="touching-top-border"),
    pytest.param((2, 9 + 1e-9, 4, 2, 0), True, id="leaving-top-by-1e-9"),
    pytest.param((-20, 5, 4, 2, 0.4), True, id="fully-outside"),
    pytest.param((5.25, 8, 4, 2, 0), True, id="thin-strip-under-middle"),
    pytest.param((3, 8, 4, 2, 0), False, id="touching-strip"),
    pytest.param((3 + 1e-9, 8, 4, 2, 0), True, id="entering-strip-by-1e-9"),
    pytest.param((4, 8, 4, 2, HALF_PI), False, id="quarter-turn-touching-strip"),
    pytest.param((7.5, 8, 4, 2, math.pi), False, id="half-turn-touching-strip-right"),
    pytest.param((5.25, 8, 0.5, 1e-3, 0), True, id="thin-box-on-strip"),
    pytest.param((6.75, 3.25, 0.25, 0.25, 0.7), True, id="small-box-inside-bad-cell"),
    pytest.param((8, 2, 4, 1, math.pi / 4), False, id="diagonal-aabb-overlaps-bad-cell"),
    pytest.param((7.5, 4, 3, 0.5, math.pi / 4), True, id="diagonal-crosses-bad-cell"),
]


@pytest.mark.parametrize(("box", "expected"), OFFROAD_CASES)
@pytest.mark.parametrize("shift_m", [0.0, 1e6])
def test_offroad_adversarial(backend: Backend, box, expected, shift_m) -> None:
    drivable = _case_raster()
    origin = (shift_m, -shift_m)
    boxes = np.array([box], dtype=np.float64)
    boxes[:, 0] += origin[0]
    boxes[:, 1] += origin[1]
    got = backend.offroad(boxes, drivable, origin, 0.5)
    np.testing.assert_array_equal(got, [expected])
    if shapely is None:
        return
    truth, certain = offroad_truth(boxes[None], np.ones((1, 1), bool), drivable, origin, 0.5)
    if certain.all():  # shapely agrees wherever it can tell (not at exact touching)
        assert truth[0, 0] == expected


@needs_shapely
def test_offroad_sees_what_corner_checks_miss(backend: Backend) -> None:
    """A box straddling a one-cell strip has all four corners on drivable cells, yet is offroad."""
    drivable = _case_raster()
    box = np.array([[5.25, 8, 4, 2, 0.1]])
    res = 0.5
    corners = shapely.get_coordinates(box_polygons(box))[:4]
    cells = np.floor(corners / res).astype(int)
    assert drivable[cells[:, 1], cells[:, 0]].all()
    assert backend.offroad(box, drivable, (0.0, 0.0), res)[0]


# ---------------------------------------------------------------------------------------------------------
# Near touching: a corner placed ``gap`` metres outside (gap > 0) or inside (gap < 0) an edge, any
# headings. The answer is analytic (overlap iff gap < 0), and at |gap| = 1e-6 m every backend must get it.


def _closest_corner(heading: np.ndarray, half: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Offset (centre -> corner) of each box's corner with the smallest projection on ``normal``."""
    c, s = np.cos(heading), np.sin(heading)
    best = None
    for sl in (-1.0, 1.0):
        for sw in (-1.0, 1.0):
            off = np.stack(
                [sl * half[:, 0] * c - sw * half[:, 1] * s, sl * half[:, 0] * s + sw * half[:, 1] * c], -1
            )
            if best is None:
                best = off
            else:
                closer = (off * normal).sum(-1) < (best * normal).sum(-1)
                best = np.where(closer[:, None], off, best)
    return best


def near_touching_pairs(rng: np.random.Generator, n: int, gap: np.ndarray, offset_m: float) -> np.ndarray:
    """``(n, 2, 5)``: box b's closest corner lies ``gap`` beyond the width edge of box a, inside its span."""
    a = np.empty((n, 5))
    a[:, :2] = offset_m + rng.uniform(-50, 50, (n, 2))
    a[:, 2], a[:, 3] = rng.uniform(2, 6, n), rng.uniform(1, 3, n)
    a[:, 4] = rng.uniform(-4, 4, n)
    ua = np.stack([np.cos(a[:, 4]), np.sin(a[:, 4])], -1)
    va = np.stack([-ua[:, 1], ua[:, 0]], -1)
    along = rng.uniform(-0.8, 0.8, n)[:, None] * 0.5 * a[:, 2:3]
    point = a[:, :2] + ua * along + va * 0.5 * a[:, 3:4]
    b = np.empty((n, 5))
    b[:, 2], b[:, 3] = rng.uniform(2, 6, n), rng.uniform(1, 3, n)
    b[:, 4] = rng.uniform(-4, 4, n)
    b[:, :2] = point + va * gap[:, None] - _closest_corner(b[:, 4], 0.5 * b[:, 2:4], va)
    return np.stack([a, b], 1)


@pytest.mark.parametrize("offset_m", [0.0, 1e6])
def test_collisions_near_touching(collision_backend: Backend, offset_m: float) -> None:
    rng = np.random.default_rng(23)
    gap = np.where(rng.random(200) < 0.5, 1e-6, -1e-6)
    pairs = near_touching_pairs(rng, 200, gap, offset_m)
    got = collision_backend.collisions(pairs)
    np.testing.assert_array_equal(got[:, 0], gap < 0)
    np.testing.assert_array_equal(got[:, 1], gap < 0)


def test_offroad_near_touching(backend: Backend) -> None:
    """A box's lowest corner ``gap`` above the top edge of the only non-drivable cell, inside its span."""
    rng = np.random.default_rng(29)
    n, res = 200, 0.5
    drivable = np.ones((60, 60), dtype=np.uint8)
    drivable[30, 30] = 0  # cell [15, 15.5] x [15, 15.5] (origin 0)
    gap = np.where(rng.random(n) < 0.5, 1e-6, -1e-6)
    boxes = np.empty((n, 5))
    boxes[:, 2], boxes[:, 3] = rng.uniform(1, 5, n), rng.uniform(0.5, 2, n)
    boxes[:, 4] = rng.uniform(-4, 4, n)
    up = np.array([0.0, 1.0])
    corner = np.stack([15.0 + rng.uniform(0.05, 0.45, n), np.full(n, 15.5)], -1) + up * gap[:, None]
    boxes[:, :2] = corner - _closest_corner(boxes[:, 4], 0.5 * boxes[:, 2:4], up)
    got = backend.offroad(boxes, drivable, (0.0, 0.0), res)
    np.testing.assert_array_equal(got, gap < 0)


# ---------------------------------------------------------------------------------------------------------
# Invariances


def _rotate_scene(boxes: np.ndarray, angle: float, pivot: tuple[float, float]) -> np.ndarray:
    out = boxes.copy()
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = boxes[..., 0] - pivot[0], boxes[..., 1] - pivot[1]
    out[..., 0] = pivot[0] + c * dx - s * dy
    out[..., 1] = pivot[1] + s * dx + c * dy
    out[..., 4] = boxes[..., 4] + angle
    return out


def test_collision_invariances(collision_backend: Backend) -> None:
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 6, 13, extent_m=20.0)
    valid = rng.random((6, 13)) < 0.85
    base = collision_backend.collisions(boxes, valid)
    assert base.any() and (~base & valid).any()
    perm = rng.permutation(13)
    np.testing.assert_array_equal(collision_backend.collisions(boxes[:, perm], valid[:, perm]), base[:, perm])
    moved = _rotate_scene(boxes, 0.7, (3.0, -2.0))
    moved[..., :2] += (123.25, -45.5)
    np.testing.assert_array_equal(collision_backend.collisions(moved, valid), base)
    turned = boxes.copy()
    turned[..., 4] += np.where(rng.random((6, 13)) < 0.5, math.pi, -2 * math.pi)
    np.testing.assert_array_equal(collision_backend.collisions(turned, valid), base)
    # Invalid slots never affect others, whatever they hold.
    garbage = boxes.copy()
    garbage[~valid] = np.array([10.0, 10.0, 1e3, 1e3, 0.0])
    np.testing.assert_array_equal(collision_backend.collisions(garbage, valid), base)
    garbage[~valid] = np.nan
    np.testing.assert_array_equal(collision_backend.collisions(garbage, valid), base)


def test_collision_pairs_are_symmetric(collision_backend: Backend) -> None:
    """Two-vehicle scenes: both vehicles get the same verdict, in either order."""
    rng = np.random.default_rng(5)
    pairs = random_boxes(rng, 30, 2, extent_m=9.0)
    got = collision_backend.collisions(pairs)
    swapped = collision_backend.collisions(pairs[:, ::-1])
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    np.testing.assert_array_equal(swapped, got)
    assert got.any() and (~got).any()


def test_offroad_invariances(backend: Backend) -> None:
    rng = np.random.default_rng(13)
    drivable = road_raster(rng, (40, 36))
    origin, res = (1.0, -4.0), 0.5
    boxes = random_boxes(rng, 5, 10, extent_m=19.0)
    boxes[..., 0] += origin[0]
    boxes[..., 1] += origin[1]
    valid = rng.random((5, 10)) < 0.8
    base = backend.offroad(boxes, drivable, origin, res, valid)
    assert base.any() and (~base & valid).any()
    perm = rng.permutation(10)
    np.testing.assert_array_equal(
        backend.offroad(boxes[:, perm], drivable, origin, res, valid[:, perm]), base[:, perm]
    )
    # Translate scene and map together.
    shifted = boxes.copy()
    shifted[..., :2] += (37.5, -1000.0)
    np.testing.assert_array_equal(
        backend.offroad(shifted, drivable, (origin[0] + 37.5, origin[1] - 1000.0), res, valid), base
    )
    # Rotate scene and map by a quarter turn about the world origin: (x, y) -> (-y, x).
    h = drivable.shape[0]
    turned = _rotate_scene(boxes, HALF_PI, (0.0, 0.0))
    turned_map = np.ascontiguousarray(drivable[::-1, :].T)
    turned_origin = (-(origin[1] + h * res), origin[0])
    np.testing.assert_array_equal(backend.offroad(turned, turned_map, turned_origin, res, valid), base)
    # Invalid slots are ignored whatever they hold.
    garbage = boxes.copy()
    garbage[~valid] = np.nan
    np.testing.assert_array_equal(backend.offroad(garbage, drivable, origin, res, valid), base)


# ---------------------------------------------------------------------------------------------------------
# Shapes and bad input


def test_empty_and_two_dimensional_inputs(backend: Backend) -> None:
    drivable = np.ones((4, 4), dtype=np.uint8)
    for shape in [(0, 3, 5), (2, 0, 5), (0, 5)]:
        boxes = np.zeros(shape)
        assert backend.collisions(boxes).shape == shape[:-1]
        assert backend.offroad(boxes, drivable, (0.0, 0.0), 1.0).shape == shape[:-1]
    single = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(backend.collisions(single), [False])
    np.testing.assert_array_equal(backend.offroad(single, drivable, (0.0, 0.0), 1.0), [False])
    flat = np.array([[0, 0, 4, 2, 0], [3, 0, 4, 2, 0], [9, 9, 1, 1, 0]], dtype=np.float64)
    np.testing.assert_array_equal(backend.collisions(flat), [True, True, False])
    np.testing.assert_array_equal(backend.collisions(flat, np.array([True, False, True])), [False] * 3)


def test_bad_inputs_raise_value_error(backend: Backend) -> None:
    good = np.ones((2, 3, 5))
    drivable = np.ones((4, 4), dtype=np.uint8)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: backend.collisions(np.ones((2, 3, 4))), r"\(S, A, 5\)"),
        (lambda: backend.collisions(np.ones(5)), r"\(S, A, 5\)"),
        (lambda: backend.collisions(np.ones((1, 2, 3, 5))), r"\(S, A, 5\)"),
        (lambda: backend.collisions(good, np.ones((3, 2), bool)), "valid"),
        (lambda: backend.collisions(good, margin=-0.1), "margin"),
        (lambda: backend.collisions(good, margin=float("nan")), "margin"),
        (lambda: backend.offroad(good, drivable, (0.0, 0.0), 0.0), "resolution"),
        (lambda: backend.offroad(good, drivable, (0.0, 0.0), -1.0), "resolution"),
        (lambda: backend.offroad(good, np.ones((0, 4), np.uint8), (0.0, 0.0), 1.0), "empty"),
        (lambda: backend.offroad(good, drivable, (0.0, float("inf")), 1.0), "origin"),
    ]
    for field_, value, pattern in [
        (0, np.nan, "non-finite"),
        (1, np.inf, "non-finite"),
        (2, 0.0, "length"),
        (3, -1.0, "width"),
    ]:
        bad = good.copy()
        bad[1, 2, field_] = value
        cases.append((lambda bad=bad: backend.collisions(bad), rf"boxes\[1, 2\].*{pattern}"))
        cases.append((lambda bad=bad: backend.offroad(bad, drivable, (0.0, 0.0), 1.0), r"boxes\[1, 2\]"))
    bad2d = np.ones((3, 5))
    bad2d[2, 4] = np.nan
    cases.append((lambda: backend.collisions(bad2d), r"boxes\[2\]"))
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    # The same bad values in an absent slot are ignored.
    bad = good.copy()
    bad[1, 2] = np.nan
    valid = np.ones((2, 3), bool)
    valid[1, 2] = False
    assert not backend.collisions(bad, valid)[1, 2]


@settings(max_examples=40, deadline=None)
@given(
    num_scenes=st.integers(0, 3),
    num_agents=st.integers(0, 4),
    use_float32=st.booleans(),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=60, max_size=60),
    mask=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_fuzzed_inputs_raise_or_answer(num_scenes, num_agents, use_float32, values, mask) -> None:
    """Random shapes and values (NaN, inf, huge, zero) give a ValueError or well-formed verdicts."""
    count = num_scenes * num_agents
    boxes = np.array(values[: count * 5], dtype=np.float32 if use_float32 else np.float64)
    boxes = boxes.reshape(num_scenes, num_agents, 5)
    valid = np.array(mask[:count], dtype=bool).reshape(num_scenes, num_agents)
    drivable = np.ones((6, 5), dtype=np.uint8)
    drivable[2, 3] = 0
    names = ["reference", "cpp"] if _ext_ready() else ["reference"]
    answers = []
    for name in names:
        backend = _make_backend(name)
        try:
            col = backend.collisions(boxes, valid, margin=0.5)
            off = backend.offroad(boxes, drivable, (-1.0, -1.0), 0.75, valid)
        except ValueError:
            answers.append(None)
            continue
        assert col.shape == off.shape == (num_scenes, num_agents)
        assert not (col | off)[~valid].any()
        answers.append((col, off))
    assert all((a is None) == (answers[0] is None) for a in answers), "backends disagree on rejecting"


# ---------------------------------------------------------------------------------------------------------
# DrivableMap.from_polygons


def test_drivable_map_from_hand_made_polygon() -> None:
    # An L-shaped road with a square median cut out, on a 12 x 10 raster of 0.5 m from (-1, 0).
    road = np.array([(0, 0.5), (4, 0.5), (4, 2.5), (2, 2.5), (2, 5), (0, 5)])
    median = np.array([(0.5, 1.0), (1.5, 1.0), (1.5, 2.0), (0.5, 2.0)])
    drivable_map = DrivableMap.from_polygons(
        [road], origin_m=(-1.0, 0.0), resolution_m=0.5, shape=(12, 10), holes=[median]
    )
    expected = np.zeros((12, 10), dtype=np.uint8)
    # Cell (i, j) centre = (-1 + 0.5 j + 0.25, 0.5 i + 0.25); inside the L: x in (0, 4), y in (0.5, 2.5)
    # -> j 2..9, i 1..4; or x in (0, 2), y in (0.5, 5) -> j 2..5, i 1..9. Median x in (0.5, 1.5),
    # y in (1, 2) -> j 3..4, i 2..3.
    expected[1:5, 2:10] = 1
    expected[1:10, 2:6] = 1
    expected[2:4, 3:5] = 0
    np.testing.assert_array_equal(drivable_map.drivable, expected)
    assert drivable_map.extent_m == (-1.0, 4.0, 0.0, 6.0)

    oracle = TrafficOracle(drivable_map, backend="torch")
    boxes = np.array(
        [
            [
                [3.0, 1.5, 1.5, 1.0, 0.0],  # on the horizontal arm
                [1.0, 4.0, 1.5, 0.8, HALF_PI],  # on the vertical arm
                [1.0, 1.5, 0.9, 0.9, 0.0],  # on the median
                [3.5, 3.5, 1.0, 1.0, 0.0],  # in the L's notch
            ]
        ]
    )
    details = oracle.details(boxes)
    np.testing.assert_array_equal(details.offroad, [[False, False, True, True]])
    np.testing.assert_array_equal(details.collision, [[False] * 4])
    with pytest.raises(ValueError, match="polygon 0"):
        DrivableMap.from_polygons([np.zeros((2, 2))], (0.0, 0.0), 1.0, (2, 2))


# ---------------------------------------------------------------------------------------------------------
# TrafficOracle


def _oracle_scene() -> tuple[DrivableMap, np.ndarray, np.ndarray]:
    drivable = np.ones((20, 40), dtype=np.uint8)
    drivable[:, 30] = 0
    drivable_map = DrivableMap(drivable, origin_m=(0.0, 0.0), resolution_m=0.5)
    boxes = np.array(
        [
            [[3, 3, 4, 2, 0], [6, 3, 4, 2, 0], [12, 5, 4, 2, 0.3], [15, 5, 4, 2, 0]],  # pair overlap
            [[3, 3, 4, 2, 0], [15.25, 5, 4, 2, 0], [3, 9, 4, 2, 0], [0, 0, 1, 1, 0]],  # strip, border
        ],
        dtype=np.float64,
    )
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    return drivable_map, boxes, valid


def test_traffic_oracle_verdicts_and_details() -> None:
    drivable_map, boxes, valid = _oracle_scene()
    oracle = TrafficOracle(drivable_map)
    details = oracle.details(boxes, valid)
    np.testing.assert_array_equal(details.collision, [[True, True, False, False], [False] * 4])
    np.testing.assert_array_equal(details.offroad, [[False] * 4, [False, True, False, True]])
    verdicts = oracle(boxes, valid)
    assert isinstance(verdicts, np.ndarray)
    np.testing.assert_array_equal(verdicts, ~(details.collision | details.offroad))
    assert verdicts[0, 3], "absent vehicles are valid"
    # Tensors in, tensors out; the flattened (N, 5 * A) form reads the same.
    as_tensor = oracle(torch.as_tensor(boxes), torch.as_tensor(valid))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.bool
    np.testing.assert_array_equal(as_tensor.numpy(), verdicts)
    flat = oracle(torch.as_tensor(boxes, dtype=torch.float32).reshape(2, 20), torch.as_tensor(valid))
    np.testing.assert_array_equal(flat.numpy(), verdicts)
    # Margin and check_offroad.
    no_map = TrafficOracle(None, margin_m=2.01, check_offroad=False)
    np.testing.assert_array_equal(no_map.details(boxes, valid).offroad, np.zeros((2, 4), bool))
    # Inflated by 2.01 m a side, vehicle 0 of scene 1 reaches vehicles 2 and 3; vehicle 1 stays clear.
    np.testing.assert_array_equal(no_map(boxes, valid)[1], [False, True, False, False])
    # The oracle protocol: evaluate_oracle and sample_verdicts.
    per_vehicle = evaluate_oracle(oracle, torch.as_tensor(boxes))
    assert per_vehicle.shape == (2, 4)
    np.testing.assert_array_equal(sample_verdicts(per_vehicle).numpy(), [False, False])


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("auto", "cpu"),
        ("cpp", "cpu"),
        ("torch", "cpu"),
        ("triton", "cpu"),
        pytest.param("auto", "cuda", marks=pytest.mark.gpu),
        pytest.param("cpp", "cuda", marks=pytest.mark.gpu),
        pytest.param("torch", "cuda", marks=pytest.mark.gpu),
        pytest.param("triton", "cuda", marks=pytest.mark.gpu),
    ],
)
def test_traffic_oracle_backends_agree(name: str, device: str) -> None:
    """Every backend of the wrapper against ``backend="torch"`` on the CPU; on CUDA tensors ``auto``
    picks the compiled Triton kernels."""
    if name == "cpp" and not _ext_ready():
        pytest.skip("genneg_ext is not built with the traffic oracles")
    if device == "cpu" and name == "triton" and not (has_triton() and interpreter_enabled()):
        pytest.skip("Triton is not installed or TRITON_INTERPRET=1 is not set")
    kernels_needed = name in ("auto", "triton")
    if device == "cuda" and not (torch.cuda.is_available() and (not kernels_needed or _cuda_kernels_ready())):
        pytest.skip("needs a CUDA device (and for Triton: triton, TRITON_INTERPRET=0)")
    rng = np.random.default_rng(17)
    drivable = road_raster(rng, (40, 40))
    drivable_map = DrivableMap(drivable, origin_m=(0.0, 0.0), resolution_m=0.5)
    boxes = random_boxes(rng, 6, 9, extent_m=20.0)
    valid = rng.random((6, 9)) < 0.9
    expected = TrafficOracle(drivable_map, margin_m=0.2, backend="torch").details(boxes, valid)
    oracle = TrafficOracle(drivable_map, margin_m=0.2, backend=name)
    got = oracle.details(torch.as_tensor(boxes, device=device), torch.as_tensor(valid, device=device))
    assert got.collision.device.type == device
    np.testing.assert_array_equal(got.collision.cpu().numpy(), expected.collision)
    np.testing.assert_array_equal(got.offroad.cpu().numpy(), expected.offroad)


def test_traffic_oracle_bad_construction_and_input(monkeypatch: pytest.MonkeyPatch) -> None:
    drivable_map, boxes, _ = _oracle_scene()
    with pytest.raises(ValueError, match="margin_m"):
        TrafficOracle(drivable_map, margin_m=-1.0)
    with pytest.raises(ValueError, match="backend"):
        TrafficOracle(drivable_map, backend="cuda")
    with pytest.raises(ValueError, match="drivable_map is None"):
        TrafficOracle(None)
    with pytest.raises(TypeError, match="DrivableMap"):
        TrafficOracle(np.ones((3, 3)))
    with pytest.raises(ValueError, match="threads"):
        TrafficOracle(drivable_map, threads=-1)
    oracle = TrafficOracle(drivable_map)
    with pytest.raises(ValueError, match=r"\(N, A, 5\)"):
        oracle(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"\(N, A, 5\)"):
        oracle(np.ones((2, 7)))
    with pytest.raises(ValueError, match="valid"):
        oracle(boxes, np.ones((2, 5), bool))
    with pytest.raises(TypeError, match="boxes"):
        oracle([[0.0] * 5])
    if has_triton():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA"):
            TrafficOracle(drivable_map, backend="triton")(torch.as_tensor(boxes))


def test_traffic_oracle_without_extension_falls_back_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before genneg_ext is built, ``auto`` on the CPU warns and runs the reference; ``cpp`` refuses."""
    import genneg.oracles.traffic as traffic

    drivable_map, boxes, valid = _oracle_scene()
    expected = TrafficOracle(drivable_map, backend="torch")(boxes, valid)
    monkeypatch.setattr(traffic, "_extension_ready", lambda: False)
    with pytest.warns(RuntimeWarning, match="genneg_ext is not built"):
        np.testing.assert_array_equal(TrafficOracle(drivable_map)(boxes, valid), expected)
    with pytest.raises(ImportError, match="genneg_ext"):
        TrafficOracle(drivable_map, backend="cpp")(boxes, valid)
