"""Issue 16, "always on": Hypothesis fuzzing of every ``genneg_ext`` entry point and of ``TrafficOracle`` /
``DrivableMap`` over shapes, dtypes (float16/bfloat16 tensors, big-endian and integer arrays), strides,
memory order and values (NaN, inf, subnormals, huge). The property: the result is right or the error is a
clear ``ValueError``/``TypeError``; never a crash, never another exception.

"Right" is the PyTorch reference on the same numbers (in float64), where the answer is certain: a vehicle's
verdict counts only when it is the same with every box grown and shrunk by 1e-6 m (the contract is exact
only up to float64 rounding at exact touching, and the backends round the heading reduction differently).
``scripts/sanitize.sh`` runs this file against an ASan + UBSan build of ``csrc/``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from genneg.oracles import DrivableMap, TrafficOracle
from genneg.reference import traffic_oracle as reference

genneg_ext = pytest.importorskip("genneg_ext")

# Short in the default suite; GENNEG_FUZZ_EXAMPLES raises it (the sanitizer script uses more).
EXAMPLES = int(os.environ.get("GENNEG_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
CLEAR_ERRORS = (ValueError, TypeError)
EPS_M = 1e-6

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e-310, 1e-101, 1e-7, 1e308, -1e308, 1e15,
           1e7 + 1.0, 3.4e38, 2e100, 1.7e308, 65504.0]


@st.composite
def _box_values(draw: st.DrawFn) -> np.ndarray:
    """``(S, A, 5)`` float64: mostly realistic boxes, some fields replaced by special values."""
    s = draw(st.sampled_from([2, 1, 3, 0]))  # mostly non-empty; empty batches too
    a = draw(st.sampled_from([5, 2, 7, 1, 0, 17]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    b = np.empty((s, a, 5))
    b[..., :2] = rng.choice([0.0, 1.0, 2.0, 2.5, 4.0]) + rng.uniform(-6, 6, (s, a, 2))
    b[..., 2] = rng.uniform(0.2, 6.0, (s, a))
    b[..., 3] = rng.uniform(0.2, 3.0, (s, a))
    b[..., 4] = rng.uniform(-8, 8, (s, a))
    if draw(st.booleans()):  # grid-snapped values: exact touching and quarter turns
        b[..., :4] = np.round(b[..., :4] * 2) / 2
        b[..., 2:4] = np.maximum(b[..., 2:4], 0.5)
        b[..., 4] = rng.integers(-4, 5, (s, a)) * (np.pi / 2)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        if b.size:
            b.flat[draw(st.integers(0, b.size - 1))] = draw(st.sampled_from(SPECIAL))
    return b


NUMPY_DTYPES = ["<f8", ">f8", "<f4", ">f4", "<f2", "<i4", ">i8", "i1"]
TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int32]


@dataclass
class Case:
    boxes: Any  # what the entry point receives
    values: np.ndarray  # the same numbers as float64 (S, A, 5)
    valid: Any
    valid_bool: np.ndarray | None


def _layout(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros((a.shape[0], 2 * a.shape[1], 10), a.dtype)
        big[:, ::2, ::2] = a
        return big[:, ::2, ::2]
    if kind == "reversed":
        return np.ascontiguousarray(a[:, ::-1])[:, ::-1]
    return a


@st.composite
def cases(draw: st.DrawFn) -> Case:
    values = draw(_box_values())
    use_torch = draw(st.booleans())
    layout = draw(st.sampled_from(["c", "fortran", "strided", "reversed"]))
    with np.errstate(all="ignore"):
        if use_torch:
            dtype = draw(st.sampled_from(TORCH_DTYPES))
            if not dtype.is_floating_point:
                values = np.nan_to_num(values, nan=1.0, posinf=1e6, neginf=-1e6).clip(-1e6, 1e6).round()
            t = torch.as_tensor(values).to(dtype)
            if layout != "c" and t.ndim == 3:
                t = t.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous strides
            boxes, as64 = t, t.double().numpy()
        else:
            dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
            if dtype.kind == "i":
                info = np.iinfo(dtype)
                values = np.nan_to_num(values, nan=1.0, posinf=info.max, neginf=info.min)
                values = values.clip(info.min, info.max).round()
            arr = _layout(values.astype(dtype), layout)
            boxes, as64 = arr, arr.astype(np.float64)
    valid, valid_bool = None, None
    if draw(st.booleans()):
        mask = np.random.default_rng(draw(st.integers(0, 999))).random(values.shape[:2]) < 0.7
        vdtype = draw(st.sampled_from(["?", "u1", "i1", ">i2"]))
        valid, valid_bool = mask.astype(vdtype), mask
    return Case(boxes, as64, valid, valid_bool)


def _outcome(fn, *args, **kwargs) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", exception type)``; any other exception fails the test."""
    try:
        return "ok", fn(*args, **kwargs)
    except CLEAR_ERRORS as e:
        assert str(e), "an error must say what is wrong"
        return "error", type(e)


def _resized(values: np.ndarray, delta_m: float) -> np.ndarray:
    out = values.copy()
    out[..., 2:4] += 2 * delta_m
    return out


def _reference_collisions(values: np.ndarray, valid: np.ndarray | None, margin: float):
    v = None if valid is None else torch.as_tensor(valid)
    return reference.collisions(torch.as_tensor(values), v, margin=margin).numpy()


def _certain(fn, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference verdict and where it is certain: the same with boxes grown and shrunk by EPS_M, or
    by 1e-12 of the largest coordinate or size when that is more (float64 rounding grows with it)."""
    base = fn(values)
    finite = np.abs(values[..., :4][np.isfinite(values[..., :4])])
    delta = max(EPS_M, 1e-12 * float(finite.max(initial=0.0)))
    grown = _outcome(fn, _resized(values, delta))
    shrunk = _outcome(fn, _resized(values, -delta))
    if grown[0] != "ok" or shrunk[0] != "ok":
        return None  # at the edge of the valid range: only the error behaviour is compared
    return base, (grown[1] == base) & (shrunk[1] == base)


@FUZZ
@given(cases(), st.sampled_from([0.0, 0.25, 1e7, 1e99, 1.7e308, math.nan, -1.0, math.inf]),
       st.sampled_from([1, 2]))
def test_fuzz_collisions(case: Case, margin: float, threads: int) -> None:
    got = _outcome(genneg_ext.collisions, case.boxes, case.valid, margin=margin, threads=threads)
    pairs = _outcome(genneg_ext.collision_pairs, case.boxes, case.valid, margin=margin, threads=threads)
    ref = _outcome(_reference_collisions, case.values, case.valid_bool, margin)
    event(f"collisions: {got[0]}")
    assert got[0] == pairs[0] == ref[0], (got, pairs, ref)
    if got[0] == "error":
        assert got[1] is ref[1], (got, ref)
        return
    out, rows = got[1], pairs[1]
    assert out.shape == case.values.shape[:2] and out.dtype == np.bool_
    from_pairs = np.zeros_like(out)
    from_pairs[rows[:, 0], rows[:, 1]] = True
    from_pairs[rows[:, 0], rows[:, 2]] = True
    np.testing.assert_array_equal(out, from_pairs)
    certain = _certain(lambda v: _reference_collisions(v, case.valid_bool, margin), case.values)
    if certain is not None:
        expected, sure = certain
        event(f"collisions: compared verdicts: {'some' if sure.any() else 'none'}; "
              f"hits: {'some' if expected[sure].any() else 'none'}")
        np.testing.assert_array_equal(out[sure], expected[sure])


ROAD = np.zeros((24, 30), np.uint8)
ROAD[6:18, :] = 1
ROAD[10:12, 14:16] = 0


@st.composite
def rasters(draw: st.DrawFn) -> tuple[Any, np.ndarray]:
    """The road raster in a promised dtype and layout (any nonzero = drivable), and its bool truth."""
    scale = draw(st.sampled_from([1, -3, 7]))
    kind = draw(st.sampled_from(["?", "u1", "i1", ">i2", "<u2", "<i8", "torch-u8", "torch-i32",
                                 "torch-bool"]))
    layout = draw(st.sampled_from(["c", "fortran", "strided"]))
    values = ROAD.astype(np.int64) * scale
    if kind.startswith("torch"):
        dtype = {"torch-u8": torch.uint8, "torch-i32": torch.int32, "torch-bool": torch.bool}[kind]
        t = torch.as_tensor(np.abs(values)).to(dtype)
        if layout != "c":
            t = t.t().contiguous().t()
        return t, ROAD != 0
    with np.errstate(all="ignore"):
        arr = values.astype(kind) if kind != "?" else values != 0
    if layout == "fortran":
        arr = np.asfortranarray(arr)
    elif layout == "strided":
        big = np.zeros((arr.shape[0], arr.shape[1] * 3), arr.dtype)
        big[:, ::3] = arr
        arr = big[:, ::3]
    return arr, ROAD != 0


GRID = [(-2.0, -1.0, 0.5), (0.0, 0.0, 1.0), (math.nan, 0.0, 0.5), (0.0, math.inf, 0.5), (1e308, 0.0, 0.5),
        (0.0, 0.0, 5e-324), (0.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 0.0, 1e308), (-3.0, -2.0, 0.37)]


@FUZZ
@given(cases(), rasters(), st.sampled_from(GRID), st.sampled_from(["exact", "corners"]),
       st.sampled_from([1, 2]))
def test_fuzz_offroad(case: Case, raster: tuple[Any, np.ndarray], grid, mode: str, threads: int) -> None:
    drivable, truth = raster
    ox, oy, res = grid

    def ref_fn(values: np.ndarray) -> np.ndarray:
        v = None if case.valid_bool is None else torch.as_tensor(case.valid_bool)
        return reference.offroad(torch.as_tensor(values), torch.as_tensor(truth), (ox, oy), res, v).numpy()

    got = _outcome(genneg_ext.offroad, case.boxes, drivable, (ox, oy), res, case.valid, threads=threads,
                   mode=mode)
    ref = _outcome(ref_fn, case.values)
    event(f"offroad: {got[0]}")
    assert got[0] == ref[0], (got, ref)
    if got[0] == "error":
        assert got[1] is ref[1], (got, ref)
        return
    assert got[1].shape == case.values.shape[:2]
    if mode == "exact":
        certain = _certain(ref_fn, case.values)
        if certain is not None:
            expected, sure = certain
            event(f"offroad: compared verdicts: {'some' if sure.any() else 'none'}; "
                  f"offroad: {'some' if expected[sure].any() else 'none'}")
            np.testing.assert_array_equal(got[1][sure], expected[sure])


@FUZZ
@given(cases(), st.sampled_from(["cpp", "torch"]), st.booleans())
def test_fuzz_traffic_oracle(case: Case, backend: str, offroad: bool) -> None:
    road = DrivableMap(ROAD, (-2.0, -1.0), 0.5)
    oracle = TrafficOracle(road if offroad else None, margin_m=0.1, check_offroad=offroad, backend=backend)
    boxes = case.boxes
    valid = None
    if case.valid_bool is not None:
        valid = torch.as_tensor(case.valid_bool) if isinstance(boxes, torch.Tensor) else case.valid
    got = _outcome(oracle, boxes, valid)
    ref = _outcome(TrafficOracle(road if offroad else None, margin_m=0.1, check_offroad=offroad,
                                 backend="torch"), torch.as_tensor(case.values),
                   None if case.valid_bool is None else torch.as_tensor(case.valid_bool))
    assert got[0] == ref[0], (got, ref)
    if got[0] == "ok":
        out = got[1].numpy() if isinstance(got[1], torch.Tensor) else got[1]
        assert out.shape == case.values.shape[:2]


@FUZZ
@given(rasters(), st.sampled_from(GRID))
def test_fuzz_drivable_map(raster: tuple[Any, np.ndarray], grid) -> None:
    drivable, truth = raster
    ox, oy, res = grid
    got = _outcome(DrivableMap, drivable, (ox, oy), res)
    if got[0] == "ok":
        np.testing.assert_array_equal(got[1].drivable, truth.astype(np.uint8))
        assert got[1].drivable.flags.c_contiguous and got[1].drivable.dtype == np.uint8
    else:
        finite_ok = all(abs(v) <= reference.MAX_ABS_COORDINATE_M for v in (ox, oy)) and (
            reference.MIN_SIZE_M <= res <= reference.MAX_SIZE_M)
        assert not finite_ok, got
