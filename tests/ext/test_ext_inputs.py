"""Bad inputs raise the documented errors, naming what and where; fuzzed inputs never crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import genneg_ext

MAP = np.ones((10, 10), np.uint8)


def good_boxes() -> np.ndarray:
    return np.tile(np.array([1.0, 1.0, 2.0, 1.0, 0.0]), (3, 4, 1))


def call_all(boxes, valid=None, **kwargs):
    genneg_ext.collisions(boxes, valid, **kwargs)
    genneg_ext.collision_pairs(boxes, valid, **kwargs)
    genneg_ext.offroad(boxes, MAP, (0.0, 0.0), 1.0, valid, **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (0, np.nan, r"boxes\[2, 3\] \(scene 2, vehicle 3\): non-finite x \(nan\)"),
        (1, np.inf, r"boxes\[2, 3\] \(scene 2, vehicle 3\): non-finite y \(inf\)"),
        (4, -np.inf, r"scene 2, vehicle 3\): non-finite heading \(-inf\)"),
        (2, 0.0, r"scene 2, vehicle 3\): length must be > 0"),
        (3, -1.0, r"scene 2, vehicle 3\): width must be > 0"),
        (2, np.nan, r"scene 2, vehicle 3\): non-finite length"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_box_values_name_scene_and_vehicle(field, value, message, dtype):
    boxes = good_boxes().astype(dtype)
    boxes[2, 3, field] = value
    boxes[2, 1, 2] = 1.0  # a good box before it in the same scene
    for fn in (genneg_ext.collisions, genneg_ext.collision_pairs):
        with pytest.raises(ValueError, match=message):
            fn(boxes, threads=2)
    with pytest.raises(ValueError, match=message):
        genneg_ext.offroad(boxes, MAP, (0, 0), 1.0, threads=2)
    # Absent slots are never read.
    valid = np.ones((3, 4), bool)
    valid[2, 3] = False
    call_all(boxes, valid)


def test_first_bad_box_is_reported_whatever_the_threads():
    boxes = np.tile(np.array([1.0, 1.0, 2.0, 1.0, 0.0]), (50, 4, 1))
    boxes[40, 0, 0] = np.nan
    boxes[7, 2, 3] = 0.0
    for threads in (1, 2, 7):
        with pytest.raises(ValueError, match=r"scene 7, vehicle 2\): width"):
            genneg_ext.collisions(boxes, threads=threads)


def test_two_dimensional_errors_name_the_vehicle():
    boxes = good_boxes()[0]
    boxes[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"boxes\[1\] \(vehicle 1\): non-finite x"):
        genneg_ext.collisions(boxes)


@pytest.mark.parametrize("shape", [(5,), (4, 4), (2, 3, 4), (2, 3, 6), (1, 2, 3, 5), ()])
def test_wrong_rank_or_last_dimension(shape):
    with pytest.raises(ValueError, match=r"boxes must have shape \(S, A, 5\) or \(A, 5\)"):
        call_all(np.ones(shape))


@pytest.mark.parametrize("valid_shape", [(3,), (4, 3), (3, 4, 1), (1, 4)])
def test_valid_shape_mismatch(valid_shape):
    with pytest.raises(ValueError, match=r"valid must have shape \(3, 4\)"):
        call_all(good_boxes(), np.ones(valid_shape, bool))
    with pytest.raises(ValueError, match=r"valid must have shape \(4,\)"):
        genneg_ext.collisions(good_boxes()[0], np.ones((5,), bool))


def test_map_errors():
    b = good_boxes()
    for bad in (np.ones((0, 4), np.uint8), np.ones((4, 0), np.uint8)):
        with pytest.raises(ValueError, match="drivable map is empty"):
            genneg_ext.offroad(b, bad, (0, 0), 1.0)
    with pytest.raises(ValueError, match=r"drivable must have shape \(H, W\)"):
        genneg_ext.offroad(b, np.ones((2, 2, 2), np.uint8), (0, 0), 1.0)
    for res in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match=r"resolution must be a number of metres per cell in \["):
            genneg_ext.offroad(b, MAP, (0, 0), res)
    for origin in ((0.0,), (0.0, np.nan), (1.0, 2.0, 3.0)):
        with pytest.raises(ValueError, match="origin must be two finite numbers"):
            genneg_ext.offroad(b, MAP, origin, 1.0)
    with pytest.raises(ValueError, match="mode must be 'exact' or 'corners'"):
        genneg_ext.offroad(b, MAP, (0, 0), 1.0, mode="centre")
    with pytest.raises(TypeError, match="drivable must be a bool or integer raster"):
        genneg_ext.offroad(b, MAP.astype(np.float32), (0, 0), 1.0)


def test_margin_threads_and_dtype_errors():
    for margin in (-0.1, np.nan, np.inf):
        with pytest.raises(ValueError, match=r"margin must be a number of metres in \[0, "):
            genneg_ext.collisions(good_boxes(), margin=margin)
    for threads in (-1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an int >= 0"):
            genneg_ext.collisions(good_boxes(), threads=threads)
    for dtype in (np.complex128, np.bool_, object):
        with pytest.raises(TypeError, match="boxes must hold real numbers"):
            genneg_ext.collisions(good_boxes().astype(dtype))
    with pytest.raises(TypeError, match="valid must be a bool mask"):
        genneg_ext.collisions(good_boxes(), np.ones((3, 4), np.float32))


def test_non_cpu_tensor_points_at_traffic_oracle():
    boxes = torch.empty((3, 4, 5), device="meta")  # any non-CPU device takes the same path as CUDA
    with pytest.raises(TypeError, match=r"genneg\.oracles\.TrafficOracle"):
        genneg_ext.collisions(boxes)
    with pytest.raises(TypeError, match=r"genneg\.oracles\.TrafficOracle"):
        genneg_ext.offroad(torch.zeros(3, 4, 5), torch.ones(4, 4, device="meta"), (0, 0), 1.0)


def test_other_real_dtypes_and_byte_orders_are_converted():
    base = genneg_ext.collisions(np.array([[0, 0, 2, 2, 0], [1, 0, 2, 2, 0], [5, 5, 1, 1, 0]], np.float64))
    for dtype in (np.int32, np.uint16, np.float16, ">f8", ">f4"):
        b = np.array([[0, 0, 2, 2, 0], [1, 0, 2, 2, 0], [5, 5, 1, 1, 0]], dtype=dtype)
        np.testing.assert_array_equal(genneg_ext.collisions(b), base, err_msg=str(dtype))
    np.testing.assert_array_equal(
        genneg_ext.collisions(torch.tensor([[0, 0, 2, 2, 0], [1, 0, 2, 2, 0]])), [1, 1]
    )


# Fuzzing: any shape up to rank 4, any dtype, any values: the call returns a bool array of the right
# shape or raises ValueError / TypeError; the process never crashes.
DTYPES = st.sampled_from(
    [np.float32, np.float64, np.float16, np.int8, np.int64, np.uint8, np.bool_, np.complex64]
)


@st.composite
def arbitrary_boxes(draw):
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=rank, max_size=rank)))
    if rank >= 2 and draw(st.booleans()):
        shape = (*shape[:-1], 5)
    dtype = draw(DTYPES)
    elements = None
    if np.dtype(dtype).kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=arbitrary_boxes(),
    valid_kind=st.sampled_from(["none", "match", "random"]),
    margin=st.sampled_from([0.0, 0.5, -1.0, np.nan]),
    threads=st.sampled_from([0, 1, 3]),
    data=st.data(),
)
def test_fuzzed_inputs_never_crash(boxes, valid_kind, margin, threads, data):
    valid = None
    if valid_kind == "match" and boxes.ndim >= 2:
        valid = data.draw(hnp.arrays(np.bool_, boxes.shape[:-1]))
    elif valid_kind == "random":
        valid = data.draw(
            hnp.arrays(np.bool_, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
        )
    res = data.draw(st.sampled_from([0.5, 0.0, np.inf]))
    drivable = data.draw(
        hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    )
    calls = [
        lambda: genneg_ext.collisions(boxes, valid, margin=margin, threads=threads),
        lambda: genneg_ext.offroad(boxes, drivable, (0.0, -1.0), res, valid, threads=threads),
        lambda: genneg_ext.offroad(boxes, drivable, (0.0, -1.0), res, valid, threads=threads, mode="corners"),
    ]
    for call in calls:
        try:
            out = call()
        except (ValueError, TypeError):
            continue
        assert out.dtype == np.bool_ and out.shape == boxes.shape[:-1]
    try:
        pairs = genneg_ext.collision_pairs(boxes, valid, margin=margin, threads=threads)
    except (ValueError, TypeError):
        return
    assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 3
    if len(pairs):
        assert np.all(pairs[:, 1] < pairs[:, 2])
