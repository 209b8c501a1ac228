"""The Triton traffic-oracle kernels against their PyTorch reference and C++: under the interpreter on the
CPU, compiled on CUDA tensors (``-m gpu``, see ``conftest.py``).

The geometry itself is held to shapely in ``tests/oracles/test_traffic_oracle.py``; here the launchers'
own concerns: block boundaries (A around BLOCK_I = 16 and BLOCK_J = 32), strided and float32 inputs,
boxes covering more cells than one BLOCK_C tile, float64 parameters (a float32 origin or margin would show),
and the device check. Exact equality is the right tolerance: kernel and reference evaluate the same float64
formulas, and the random inputs are nowhere near touching.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genneg.kernels._backend import has_triton, interpreter_enabled
from genneg.reference import traffic_oracle as reference

pytestmark = pytest.mark.skipif(not has_triton(), reason="needs the triton package")
# The CPU tests run the kernels in Triton's interpreter; conftest switches it on unless the environment
# already says TRITON_INTERPRET=0 (how a GPU machine runs the compiled kernels: only the CUDA test then).
needs_interpreter = pytest.mark.skipif(
    not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 on the CPU"
)


@pytest.fixture(scope="module")
def kernels():
    from genneg.kernels import traffic_oracle

    return traffic_oracle


def _boxes(generator: torch.Generator, shape: tuple[int, ...], extent_m: float, dtype=torch.float64):
    boxes = torch.empty((*shape, 5), dtype=torch.float64)
    boxes[..., :2] = torch.rand((*shape, 2), generator=generator, dtype=torch.float64) * extent_m
    boxes[..., 2] = 2.5 + 3.5 * torch.rand(shape, generator=generator, dtype=torch.float64)
    boxes[..., 3] = 1.2 + 1.3 * torch.rand(shape, generator=generator, dtype=torch.float64)
    boxes[..., 4] = 8.0 * torch.rand(shape, generator=generator, dtype=torch.float64) - 4.0
    return boxes.to(dtype)


def _on(device: torch.device, fn, *args, **kwargs) -> torch.Tensor:
    """``fn`` with its tensor arguments moved to ``device`` (the kernel's), its result back on the CPU."""
    move = lambda a: a.to(device) if isinstance(a, torch.Tensor) else a  # noqa: E731
    return fn(*map(move, args), **{k: move(v) for k, v in kwargs.items()}).cpu()


def _ext():
    try:
        import genneg_ext
    except ImportError:
        return None
    return genneg_ext if hasattr(genneg_ext, "collisions") else None


@pytest.mark.parametrize("num_agents", [1, 17, 41])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_collisions_match_reference_across_block_sizes(kernels, device, num_agents: int, dtype) -> None:
    g = torch.Generator().manual_seed(num_agents)
    num_scenes = 2
    boxes = _boxes(g, (num_scenes, num_agents), extent_m=4.0 * num_agents**0.5 + 4.0, dtype=dtype)
    valid = torch.rand((num_scenes, num_agents), generator=g) < 0.85
    for mask, margin in ((None, 0.0), (valid, 0.25)):
        expected = reference.collisions(boxes, mask, margin=margin)
        got = _on(device, kernels.collisions, boxes, mask, margin=margin)
        assert got.dtype == torch.bool and got.shape == (num_scenes, num_agents)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    if num_agents > 2:
        assert expected.any() and not expected.all()


def test_strided_inputs(kernels, device) -> None:
    """Non-contiguous boxes (a feature-major buffer, every other scene) and valid masks read correctly."""
    g = torch.Generator().manual_seed(0)
    buffer = _boxes(g, (8, 19), extent_m=15.0).permute(2, 0, 1).contiguous()  # (5, S, A)
    mask_buffer = torch.rand((19, 8), generator=g) < 0.8
    raster_buffer = torch.ones((40, 40), dtype=torch.bool)
    raster_buffer[10:12, :] = False

    def views(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same strided views of the buffers on ``dev`` (moving a view would make it contiguous)."""
        boxes = buffer.to(dev).permute(1, 2, 0)[::2]  # (4, 19, 5), strides (2*19, 1, 8*19)
        return boxes, mask_buffer.to(dev).T[::2], raster_buffer.to(dev).T  # strided mask and raster

    boxes, valid, drivable = views(torch.device("cpu"))
    k_boxes, k_valid, k_drivable = views(device)
    assert not k_boxes.is_contiguous() and not k_valid.is_contiguous() and not k_drivable.is_contiguous()
    where = ((-2.0, -3.0), 0.5)
    torch.testing.assert_close(
        kernels.collisions(k_boxes, k_valid).cpu(), reference.collisions(boxes, valid), rtol=0, atol=0
    )
    torch.testing.assert_close(
        kernels.offroad(k_boxes, k_drivable, *where, k_valid).cpu(),
        reference.offroad(boxes, drivable, *where, valid),
        rtol=0,
        atol=0,
    )
    # Two-dimensional input: one scene.
    torch.testing.assert_close(
        kernels.collisions(k_boxes[1]).cpu(), reference.collisions(boxes[1]), rtol=0, atol=0
    )
    torch.testing.assert_close(
        kernels.offroad(k_boxes[1], k_drivable, *where).cpu(),
        reference.offroad(boxes[1], drivable, *where),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("raster_dtype", [torch.uint8, torch.bool])
def test_offroad_matches_reference_and_cpp(kernels, device, raster_dtype) -> None:
    """Fine raster (0.2 m): a vehicle's bounding box spans ~200-1000 cells, i.e. several BLOCK_C tiles."""
    g = torch.Generator().manual_seed(1)
    drivable = (torch.rand((90, 110), generator=g) > 0.004).to(raster_dtype)
    drivable[:, 55] = 0  # thin strip
    origin, res = (10.0, -5.0), 0.2
    boxes = _boxes(g, (4, 9), extent_m=19.0)
    boxes[..., 0] += origin[0] + 1.0
    boxes[..., 1] += origin[1] + 1.0
    valid = torch.rand((4, 9), generator=g) < 0.85
    expected = reference.offroad(boxes, drivable, origin, res, valid)
    got = _on(device, kernels.offroad, boxes, drivable, origin, res, valid)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert expected[valid].any() and not expected[valid].all()
    ext = _ext()
    if ext is not None:
        np.testing.assert_array_equal(
            got.numpy(), ext.offroad(boxes.numpy(), drivable.numpy(), origin, res, valid.numpy())
        )
        np.testing.assert_array_equal(
            _on(device, kernels.collisions, boxes, valid).numpy(),
            ext.collisions(boxes.numpy(), valid.numpy()),
        )


def test_float64_parameters_near_1e6(kernels, device) -> None:
    """Origin, resolution and margin reach the kernel in float64: in float32 they would move by ~3 cm."""
    g = torch.Generator().manual_seed(2)
    origin, res = (1e6 + 0.3, -1e6 - 0.7), 0.3
    drivable = torch.ones((70, 70), dtype=torch.uint8)
    drivable[:, 35] = 0
    drivable[20, :] = 0
    boxes = _boxes(g, (20, 8), extent_m=19.0)
    boxes[..., 0] += origin[0] + 1.0
    boxes[..., 1] += origin[1] + 1.0
    # Each box touches the strip column x in [ox + 10.5, ox + 10.8] to within 1e-4 m on its left side.
    boxes[..., 4] = 0.0
    boxes[:, :4, 0] = origin[0] + 10.8 + 0.5 * boxes[:, :4, 2] + 1e-4
    boxes[:, 4:, 0] = origin[0] + 10.8 + 0.5 * boxes[:, 4:, 2] - 1e-4
    boxes[..., 1] = origin[1] + 11.0 + torch.arange(8, dtype=torch.float64) * 0.4
    expected = reference.offroad(boxes, drivable, origin, res)
    assert not expected[:, :4].any() and expected[:, 4:].all()
    got = _on(device, kernels.offroad, boxes, drivable, origin, res)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # Margin: gaps of margin*2 +- 2e-9 m; a float32 margin (0.1 -> 0.10000000149) would close the first.
    pair = torch.tensor([[[0.0, 0.0, 4.0, 2.0, 0.0], [4.2 + 2e-9, 0.0, 4.0, 2.0, 0.0]]], dtype=torch.float64)
    assert not _on(device, kernels.collisions, pair, margin=0.1).any()
    pair[0, 1, 0] = 4.2 - 2e-9
    assert _on(device, kernels.collisions, pair, margin=0.1).all()


@needs_interpreter
def test_empty_inputs_and_device_check(kernels, monkeypatch: pytest.MonkeyPatch) -> None:
    drivable = torch.ones((3, 3), dtype=torch.uint8)
    for shape in [(0, 4, 5), (3, 0, 5), (0, 5)]:
        boxes = torch.zeros(shape)
        assert kernels.collisions(boxes).shape == shape[:-1]
        assert kernels.offroad(boxes, drivable, (0.0, 0.0), 1.0).shape == shape[:-1]
    with pytest.raises(ValueError, match=r"boxes\[0, 1\]"):
        kernels.collisions(torch.tensor([[[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, float("nan"), 0.0]]]))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.collisions(torch.zeros((2, 3, 5), dtype=torch.float16))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        kernels.collisions(torch.ones((1, 2, 5)))
    with pytest.raises(ValueError, match="CUDA"):
        kernels.offroad(torch.ones((1, 2, 5)), drivable, (0.0, 0.0), 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_reference(kernels) -> None:
    """On a GPU: the kernels (compiled when TRITON_INTERPRET=0) against the CPU reference, 64k vehicles."""
    g = torch.Generator().manual_seed(3)
    boxes = _boxes(g, (2000, 32), extent_m=30.0)
    valid = torch.rand((2000, 32), generator=g) < 0.9
    drivable = (torch.rand((80, 80), generator=g) > 0.01).to(torch.uint8)
    expected_col = reference.collisions(boxes, valid, margin=0.1)
    expected_off = reference.offroad(boxes, drivable, (-5.0, -5.0), 0.5, valid)
    cuda = torch.device("cuda")
    got_col = kernels.collisions(boxes.to(cuda), valid.to(cuda), margin=0.1).cpu()
    got_off = kernels.offroad(boxes.to(cuda), drivable.to(cuda), (-5.0, -5.0), 0.5, valid.to(cuda)).cpu()
    torch.testing.assert_close(got_col, expected_col, rtol=0, atol=0)
    torch.testing.assert_close(got_off, expected_off, rtol=0, atol=0)


# Compiles both kernels to sm_90 cubins with Triton's bundled ptxas: the GPU lowering (float64 math,
# dynamic loop bounds, masked 2-D loads) is checked on machines without a GPU. Needs TRITON_INTERPRET=0,
# hence a subprocess; the signatures follow the launchers' argument order.
_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from genneg.kernels import traffic_oracle as k

strides = {name: "i32" for name in ["stride_bs", "stride_ba", "stride_bf", "stride_vs", "stride_va"]}
blocks = {"HAS_VALID": "constexpr", "BLOCK_I": "constexpr", "BLOCK_J": "constexpr"}
collisions = {"valid_ptr": "*u8", "out_ptr": "*u8", "num_agents": "i32", **strides, "params_ptr": "*fp64"}
offroad = {"boxes_ptr": "*fp64", "valid_ptr": "*u8", "drivable_ptr": "*u8", "table_ptr": "*i32",
           "out_ptr": "*u8", "num_boxes": "i64", "num_agents": "i32", **strides, "stride_dh": "i32",
           "stride_dw": "i32", "stride_th": "i32", "params_ptr": "*fp64",
           "HAS_VALID": "constexpr", "BLOCK_B": "constexpr", "BLOCK_C": "constexpr"}
variants = [
    (k._collisions_kernel, {"boxes_ptr": "*fp32", **collisions, **blocks},
     {"HAS_VALID": True, "BLOCK_I": 16, "BLOCK_J": 32}),
    (k._collisions_kernel, {"boxes_ptr": "*fp64", **collisions, **blocks},
     {"HAS_VALID": False, "BLOCK_I": 8, "BLOCK_J": 8}),
    (k._offroad_kernel, offroad, {"HAS_VALID": True, "BLOCK_B": 16, "BLOCK_C": 64}),
]
for fn, signature, constexprs in variants:
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"enable_fp_fusion": False},
    )
    assert len(compiled.asm["cubin"]) > 0 and ".f64" in compiled.asm["ptx"]
print("compiled", len(variants))
"""


def test_kernels_compile_for_sm90_without_a_gpu(tmp_path: Path) -> None:
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton wheel has no bundled ptxas")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "compiled 3" in result.stdout
