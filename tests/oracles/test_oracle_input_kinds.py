"""Issue 16, the oracle's fault kinds, one test body over every backend (PyTorch reference, C++
``genneg_ext``, Triton under the interpreter, and the ``TrafficOracle`` wrapper on each):

- huge headings (reduction drift) and extreme values (overflow, underflow): the documented valid range,
  exact inside it, ``ValueError`` outside;
- one meaning for a 2-D ``(A, 5)`` array;
- every promised dtype accepted (integer rasters, float16/bfloat16 tensors, big-endian, strided).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from genneg.kernels._backend import has_triton, interpreter_enabled
from genneg.oracles import DrivableMap, TrafficOracle
from genneg.reference import traffic_oracle as reference

genneg_ext = pytest.importorskip("genneg_ext")

BACKENDS = ["reference", "cpp", "triton", "oracle-torch", "oracle-cpp"]


def _collide_fn(name: str) -> Callable[..., np.ndarray]:
    """``f(boxes (S, A, 5) ndarray, margin) -> (S, A) bool ndarray`` for one backend."""
    if name == "cpp":
        return lambda boxes, margin=0.0: genneg_ext.collisions(boxes, margin=margin)
    if name.startswith("oracle-"):
        def run(boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
            oracle = TrafficOracle(None, margin_m=margin, check_offroad=False, backend=name[7:])
            return oracle.details(boxes).collision

        return run
    if name == "triton":
        if not has_triton() or not interpreter_enabled():
            pytest.skip("Triton is not installed or TRITON_INTERPRET=1 is not set")
        from genneg.kernels import traffic_oracle as module
    else:
        module = reference
    return lambda boxes, margin=0.0: module.collisions(torch.as_tensor(boxes), margin=margin).numpy()


def _offroad_fn(name: str) -> Callable[..., np.ndarray]:
    """``f(boxes, drivable, origin, resolution) -> (S, A) bool`` for one backend."""
    if name == "cpp":
        return lambda b, d, o, r: genneg_ext.offroad(b, d, o, r)
    if name.startswith("oracle-"):
        return lambda b, d, o, r: TrafficOracle(DrivableMap(d, o, r), backend=name[7:]).details(b).offroad
    if name == "triton":
        if not has_triton() or not interpreter_enabled():
            pytest.skip("Triton is not installed or TRITON_INTERPRET=1 is not set")
        from genneg.kernels import traffic_oracle as module
    else:
        module = reference
    return lambda b, d, o, r: module.offroad(torch.as_tensor(b), torch.as_tensor(d), o, r).numpy()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _pair_2cm_apart(heading: float) -> np.ndarray:
    """Box A (0, 0, 4.5 x 1.8) and a 0.5 x 0.5 box B 2 m ahead and 1.17 m aside in A's frame: B's near
    edge is 1.17 - 0.25 = 0.92 m from A's axis, 2 cm clear of A's side at 0.9 m. Both share ``heading``,
    B's centre placed with the TRUE angle (math.cos/sin reduce exactly)."""
    c, s = math.cos(heading), math.sin(heading)
    bx, by = 2.0 * c - 1.17 * s, 2.0 * s + 1.17 * c
    return np.array([[[0.0, 0.0, 4.5, 1.8, heading], [bx, by, 0.5, 0.5, heading]]])


@pytest.mark.parametrize("heading", [0.3, 1e3 + 0.3, -9999.0])
def test_headings_inside_the_bound_are_exact(backend: str, heading: float) -> None:
    collide = _collide_fn(backend)
    assert not collide(_pair_2cm_apart(heading)).any()
    closer = _pair_2cm_apart(heading)
    c, s = math.cos(heading), math.sin(heading)
    closer[0, 1, :2] = [2.0 * c - 1.10 * s, 2.0 * s + 1.10 * c]  # 5 cm into A
    assert collide(closer).all()


@pytest.mark.parametrize("heading", [1e15, -1e15, 1e4 * 1.0000001, 3e300])
def test_headings_beyond_the_bound_raise(backend: str, heading: float) -> None:
    assert reference.MAX_ABS_HEADING_RAD == genneg_ext._C.MAX_ABS_HEADING_RAD
    with pytest.raises(ValueError, match="heading"):
        _collide_fn(backend)(_pair_2cm_apart(0.0) + np.array([0, 0, 0, 0, heading]))


def test_extreme_values_raise_outside_the_range(backend: str) -> None:
    collide = _collide_fn(backend)
    huge = np.array([[[0.0, 0.0, 1e308, 1e308, 0.0], [3e307, 0.0, 1e308, 1e308, 0.0]]])
    tiny = np.array([[[0.0, 0.0, 5e-324, 5e-324, 0.0], [0.0, 0.0, 5e-324, 5e-324, 0.0]]])
    far = np.array([[[2e100, 0.0, 4.0, 2.0, 0.0], [2e100, 1.0, 4.0, 2.0, 0.0]]])
    for boxes in (huge, tiny, far):
        with pytest.raises(ValueError, match="range"):
            collide(boxes)
    near = np.array([[[0.0, 0.0, 4.0, 2.0, 0.0], [3.0, 0.0, 4.0, 2.0, 0.0]]])
    for margin in (1.7e308, reference.MAX_SIZE_M * 1.01, math.nan, -1.0):
        with pytest.raises(ValueError, match="margin"):
            collide(near, margin)


def test_extreme_values_inside_the_range_are_exact(backend: str) -> None:
    collide = _collide_fn(backend)
    # The smallest boxes: identical ones overlap, ones exactly side by side touch (no collision).
    w = reference.MIN_SIZE_M
    same = np.array([[[0.0, 0.0, w, w, 0.0], [0.0, 0.0, w, w, 0.0]]])
    assert collide(same).all()
    side = np.array([[[0.0, 0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0, 0.0]]])
    assert not collide(side).any()
    # The largest: boxes of the largest size, a quarter of it apart ([-M, 0] and [M/4, 5M/4] along x),
    # overlap with a margin of M/4 (2 margins > the gap) and not with M/16; every finite float32 fits.
    m = reference.MAX_SIZE_M
    big = np.array([[[-m / 2, 0.0, m, m, 0.0], [3 * m / 4, 0.0, m, m, 0.0]]])
    assert not collide(big).any()
    assert not collide(big, margin=m / 16).any()
    assert collide(big, margin=m / 4).all()
    f32 = float(np.finfo(np.float32).max)
    wild = np.array([[[f32, -f32, f32, f32, 3.0], [-f32, f32, 0.1, 0.1, -3.0]]])
    assert not collide(wild).any()
    # Far from the origin (UTM-like coordinates, 1e7 m) the same pair keeps its answer.
    offset = np.array([9.9e6, -9.9e6, 0.0, 0.0, 0.0])
    assert not collide(side + offset).any()


def test_offroad_raster_placement_outside_the_range_raises(backend: str) -> None:
    offroad = _offroad_fn(backend)
    boxes = np.array([[[1.0, 1.0, 1.0, 1.0, 0.0]]])
    drivable = np.ones((4, 4), np.uint8)
    with pytest.raises(ValueError, match="resolution"):
        offroad(boxes, drivable, (0.0, 0.0), 5e-324)
    with pytest.raises(ValueError, match="origin"):
        offroad(boxes, drivable, (1e308, 0.0), 1.0)
    assert not offroad(boxes, drivable, (0.0, 0.0), 1.0).any()


def test_2d_boxes_have_one_meaning() -> None:
    # Two overlapping vehicles given as (A, 5) = (2, 5): one scene of two vehicles for genneg_ext and the
    # reference; TrafficOracle refuses the shape rather than reading two one-vehicle scenes.
    boxes = np.array([[0.0, 0.0, 4.0, 2.0, 0.0], [1.0, 0.0, 4.0, 2.0, 0.0]])
    assert genneg_ext.collisions(boxes).tolist() == [True, True]
    assert reference.collisions(torch.as_tensor(boxes)).tolist() == [True, True]
    for name in ("cpp", "torch"):
        oracle = TrafficOracle(None, check_offroad=False, backend=name)
        with pytest.raises(ValueError, match="ambiguous"):
            oracle(boxes)
        assert oracle(boxes[None]).tolist() == [[False, False]]
        flat = np.concatenate([boxes[0], boxes[1]])[None]  # (1, 10): one scene, flattened
        assert oracle(flat).tolist() == [[False, False]]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.int64, np.bool_, np.uint8, ">i4"])
def test_integer_rasters_mean_nonzero_drivable(backend: str, dtype) -> None:
    offroad = _offroad_fn(backend)
    drivable = np.ones((6, 6), np.int64)
    drivable[2, 3] = 0
    boxes = np.array([[[3.5, 2.5, 0.8, 0.8, 0.0], [1.0, 1.0, 0.8, 0.8, 0.0]]])
    raster = (drivable * (-3 if np.dtype(dtype).kind == "i" else 1)).astype(dtype)
    if backend in ("reference", "triton") and not raster.dtype.isnative:
        raster = raster.astype(raster.dtype.newbyteorder("="))  # torch tensors are native-endian
    assert offroad(boxes, raster, (0.0, 0.0), 1.0).tolist() == [[True, False]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.float32])
def test_every_real_tensor_dtype_works(dtype: torch.dtype) -> None:
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 2.0, 0.0], [3.0, 0.0, 4.0, 2.0, 0.0], [8.0, 0.0, 2.0, 2.0, 0.0]]])
    expected = [[True, True, False]]
    assert genneg_ext.collisions(boxes.to(dtype)).tolist() == expected
    assert genneg_ext.collisions(boxes.to(dtype).transpose(0, 1).contiguous().transpose(0, 1)).tolist() \
        == expected
    for name in ("cpp", "torch"):
        oracle = TrafficOracle(None, check_offroad=False, backend=name)
        assert (~oracle(boxes.to(dtype))).tolist() == expected


def test_big_endian_and_strided_arrays() -> None:
    boxes = np.array([[[0.0, 0.0, 4.0, 2.0, 0.0], [3.0, 0.0, 4.0, 2.0, 0.0], [8.0, 0.0, 2.0, 2.0, 0.0]]])
    expected = [[True, True, False]]
    big = boxes.astype(">f8")
    assert genneg_ext.collisions(big).tolist() == expected
    assert (~TrafficOracle(None, check_offroad=False, backend="cpp")(big)).tolist() == expected
    assert (~TrafficOracle(None, check_offroad=False, backend="torch")(big)).tolist() == expected
    wide = np.zeros((1, 6, 10))
    wide[:, ::2, ::2] = boxes
    assert genneg_ext.collisions(wide[:, ::2, ::2]).tolist() == expected
    assert genneg_ext.collisions(boxes[:, ::-1])[:, ::-1].tolist() == expected
    fortran = np.asfortranarray(boxes)
    assert genneg_ext.collisions(fortran).tolist() == expected
