"""The traffic oracle: a scene is valid iff no vehicle overlaps another and none leaves the road.

Contract (the same on every backend; see :mod:`genneg.reference.traffic_oracle` for the geometry):

- A vehicle is a rectangle ``(x, y, length, width, heading)``: centre in metres, full length along the
  heading, full width across it, heading in radians.
- **Collision**: the interior of a vehicle's rectangle, inflated by ``margin_m`` on every side, intersects
  the interior of another present vehicle's (inflated) rectangle in the same scene. Touching is allowed.
- **Offroad**: the interior of the rectangle (not inflated) intersects the interior of a non-drivable cell of
  the :class:`DrivableMap`, or part of the rectangle lies outside the raster. The whole box counts. When
  the map carries its exact polygons (:class:`~genneg.oracles.drivable_map.RoadPolygons`), offroad is
  instead: the interior of the rectangle is not covered by the union of the drivable polygons (see
  ``offroad_geometry``).
- Geometry in float64 whatever the input dtype; exact up to float64 rounding at exact touching. Backends
  agree on every input not within 1e-6 m of touching.

Backends (``backend=``):

- ``"auto"``: NumPy arrays and CPU tensors go to the C++ extension ``genneg_ext`` (multi-threaded); CUDA
  tensors go to the Triton kernels in :mod:`genneg.kernels.traffic_oracle`, or to the PyTorch reference
  when Triton is not installed. If the extension is not built, CPU work falls back to the reference with a
  warning.
- ``"cpp"``: always ``genneg_ext`` (CUDA tensors are copied to the host and the verdicts copied back).
- ``"triton"``: the Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``, for tests).
- ``"torch"``: the pure-PyTorch reference on the tensors' own device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from genneg.oracles.drivable_map import DrivableMap

__all__ = ["TrafficOracle", "TrafficVerdicts"]

_BACKENDS = ("auto", "cpp", "triton", "torch")


class TrafficVerdicts(NamedTuple):
    """Per-vehicle infractions, each ``(N, A)`` bool, True = the infraction happens.

    Same kind as the oracle's input: a tensor on the input's device, or a NumPy array. Absent vehicles
    (``valid`` False) are False in both.
    """

    collision: Any
    offroad: Any


def _extension_ready() -> bool:
    """True when ``genneg_ext`` is built with the traffic oracles (imported lazily)."""
    try:
        import genneg_ext
    except ImportError:
        return False
    return hasattr(genneg_ext, "collisions") and hasattr(genneg_ext, "offroad")


def _mask_tensor(valid: torch.Tensor | np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    """``valid`` as a tensor on ``device`` (dtype untouched: the backends check it)."""
    if valid is None:
        return None
    if isinstance(valid, torch.Tensor):
        return valid.detach().to(device)
    if isinstance(valid, np.ndarray):
        return torch.as_tensor(_torch_readable(valid), device=device)
    raise TypeError(f"valid must be a torch.Tensor, numpy.ndarray or None, got {type(valid).__name__}")


def _torch_readable(a: Any) -> Any:
    """A NumPy array torch can wrap: native byte order and no negative strides (copied only if needed)."""
    if not isinstance(a, np.ndarray):
        return a
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if any(stride < 0 for stride in a.strides):
        a = np.ascontiguousarray(a)
    return a


@dataclass(frozen=True)
class TrafficOracle:
    """Per-vehicle validity of traffic scenes: ``oracle(boxes, valid=None) -> (N, A)`` bool, True = valid.

    A vehicle is valid iff it neither collides nor (when ``check_offroad``) is offroad; absent vehicles
    are valid. A sample (scene) is valid iff all its vehicles are (:func:`genneg.oracles.sample_verdicts`).

    Attributes:
        drivable_map: the road raster; may be None only when ``check_offroad`` is False.
        margin_m: metres >= 0 added on every side of each box for the collision check (length and width
            grow by ``2 * margin_m``); the offroad check uses the boxes as given.
        check_offroad: also check the drivable area.
        backend: ``"auto"``, ``"cpp"``, ``"triton"`` or ``"torch"`` (see the module docstring).
        threads: C++ worker threads, 0 = all cores.
        offroad_geometry: what offroad is judged against. ``"auto"``: the map's exact polygons when it
            has them (:attr:`DrivableMap.polygons`; CARLA, lanelet2, mesh and procedural maps do) and
            ``genneg_ext`` is built, else the raster. ``"polygons"`` requires them; ``"raster"`` always
            uses the raster. The polygon check runs in C++ on the host whatever ``backend`` is.
    """

    drivable_map: DrivableMap | None
    margin_m: float = 0.0
    check_offroad: bool = True
    backend: Literal["auto", "cpp", "triton", "torch"] = "auto"
    threads: int = 0
    offroad_geometry: Literal["auto", "raster", "polygons"] = "auto"
    _rasters: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.drivable_map is None:
            if self.check_offroad:
                raise ValueError("drivable_map is None but check_offroad is True; give a DrivableMap")
        elif not isinstance(self.drivable_map, DrivableMap):
            raise TypeError(f"drivable_map must be a DrivableMap, got {type(self.drivable_map).__name__}")
        from genneg.reference.traffic_oracle import MAX_SIZE_M

        margin = float(self.margin_m)
        if not (0 <= margin <= MAX_SIZE_M):
            raise ValueError(f"margin_m must be a number of metres in [0, {MAX_SIZE_M:g}], "
                             f"got {self.margin_m}")
        object.__setattr__(self, "margin_m", margin)
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be an int >= 0 (0 = all cores), got {self.threads!r}")
        if self.offroad_geometry not in ("auto", "raster", "polygons"):
            raise ValueError(
                f"offroad_geometry must be 'auto', 'raster' or 'polygons', got {self.offroad_geometry!r}"
            )

    def __call__(
        self, boxes: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray | None = None
    ) -> Any:
        """Per-vehicle verdicts, True = valid.

        Args:
            boxes: ``(N, A, 5)`` float tensor (any device) or NumPy array (any strides, either byte
                order): x m, y m, length m, width m, heading rad; float16, bfloat16 and integer inputs
                are converted to float64. ``(N, 5 * A)`` with ``A >= 2`` (flattened vehicles) is read
                as ``(N, A, 5)``; ``(N, 5)`` is refused as ambiguous (``genneg_ext`` reads ``(A, 5)``
                as one scene). Valid range of a present box: see :mod:`genneg.reference.traffic_oracle`
                (``MAX_*``).
            valid: optional ``(N, A)`` bool mask of present vehicles, same kind and device as ``boxes``.

        Returns:
            ``(N, A)`` bool, same kind as ``boxes`` (tensor on its device, or NumPy): True = the vehicle is
            present-and-fine or absent.

        Raises:
            TypeError: ``boxes`` is neither a tensor nor an array, or has a non-float dtype.
            ValueError: bad or ambiguous shape, NaN/inf or a value outside the valid range in a present
                box (scene and vehicle named), mismatched ``valid``.
        """
        verdicts = self.details(boxes, valid)
        if self.check_offroad:
            return ~(verdicts.collision | verdicts.offroad)
        return ~verdicts.collision

    def details(
        self, boxes: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray | None = None
    ) -> TrafficVerdicts:
        """Collision and offroad masks separately; arguments as for :meth:`__call__`.

        Returns:
            :class:`TrafficVerdicts` of two ``(N, A)`` bool masks, True = infraction; ``offroad`` is all
            False when ``check_offroad`` is off.
        """
        if isinstance(boxes, np.ndarray):
            boxes, valid = _torch_readable(boxes), _torch_readable(valid)
            collision, offroad = self._run(torch.as_tensor(boxes), _mask_tensor(valid, torch.device("cpu")))
            return TrafficVerdicts(collision.numpy(), offroad.numpy())
        if not isinstance(boxes, torch.Tensor):
            raise TypeError(f"boxes must be a torch.Tensor or numpy.ndarray, got {type(boxes).__name__}")
        collision, offroad = self._run(boxes.detach(), _mask_tensor(valid, boxes.device))
        return TrafficVerdicts(collision, offroad)

    def _run(self, boxes: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both masks for tensors, dispatched to the backend; shapes checked here, values by the backend."""
        if boxes.ndim == 2 and boxes.shape[1] == 5:
            # genneg_ext and the reference read (A, 5) as ONE scene of A vehicles; (N, 5 * A) flattened
            # scenes with A = 1 would read as N scenes. Refuse the ambiguous shape instead of guessing.
            raise ValueError(
                f"boxes of shape {tuple(boxes.shape)} are ambiguous: pass (1, A, 5) for one scene of A "
                f"vehicles or (N, 1, 5) for N one-vehicle scenes"
            )
        if boxes.ndim == 2 and boxes.shape[1] % 5 == 0 and boxes.shape[1] > 0:
            boxes = boxes.reshape(boxes.shape[0], boxes.shape[1] // 5, 5)
        if boxes.dtype.is_complex or boxes.dtype == torch.bool:
            raise TypeError(f"boxes must hold real numbers (float32 or float64), got {boxes.dtype}")
        if boxes.dtype not in (torch.float32, torch.float64):  # float16, bfloat16, integers: exact
            boxes = boxes.to(torch.float64)
        if valid is not None and valid.dtype != torch.bool:
            if valid.dtype.is_floating_point or valid.dtype.is_complex:
                raise TypeError(f"valid must be a bool (or integer, nonzero = present) mask, "
                                f"got {valid.dtype}")
            valid = valid != 0
        if boxes.ndim != 3 or boxes.shape[2] != 5:
            raise ValueError(
                f"boxes must have shape (N, A, 5) or (N, 5*A) [x m, y m, length m, width m, heading rad], "
                f"got {tuple(boxes.shape)}"
            )
        if valid is not None and tuple(valid.shape) != tuple(boxes.shape[:2]):
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {tuple(boxes.shape[:2])}")
        backend = self._resolve(boxes.device)
        collision = self._collisions(boxes, valid, backend)
        if not self.check_offroad:
            return collision, torch.zeros_like(collision)
        if self._polygon_offroad():
            return collision, self._offroad_polygons(boxes, valid)
        return collision, self._offroad_raster(boxes, valid, backend)

    def _collisions(self, boxes: torch.Tensor, valid: torch.Tensor | None, backend: str) -> torch.Tensor:
        if backend == "cpp":
            import genneg_ext

            valid_host = None if valid is None else valid.cpu()
            collision = genneg_ext.collisions(
                boxes.cpu(), valid_host, margin=self.margin_m, threads=self.threads
            )
            return torch.from_numpy(collision).to(boxes.device)
        return self._ops(backend).collisions(boxes, valid, margin=self.margin_m)

    def _offroad_raster(self, boxes: torch.Tensor, valid: torch.Tensor | None, backend: str) -> torch.Tensor:
        assert self.drivable_map is not None  # checked in __post_init__
        if backend == "cpp":
            import genneg_ext

            offroad = genneg_ext.offroad(
                boxes.cpu(),
                self.drivable_map.drivable,
                self.drivable_map.origin_m,
                self.drivable_map.resolution_m,
                None if valid is None else valid.cpu(),
                threads=self.threads,
            )
            return torch.from_numpy(offroad).to(boxes.device)
        return self._ops(backend).offroad(
            boxes,
            self._raster(boxes.device),
            self.drivable_map.origin_m,
            self.drivable_map.resolution_m,
            valid,
        )

    def _offroad_polygons(self, boxes: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Exact offroad against the map's polygons, on the host (C++), whatever the collision backend."""
        import genneg_ext

        assert self.drivable_map is not None  # checked in __post_init__
        road = self.drivable_map.prepared_road()
        valid_host = None if valid is None else valid.cpu()
        offroad = genneg_ext.offroad_polygons(boxes.cpu(), road, valid_host, threads=self.threads)
        return torch.from_numpy(offroad).to(boxes.device)

    def _polygon_offroad(self) -> bool:
        """Whether offroad is judged against the map's polygons (see ``offroad_geometry``)."""
        has_polygons = self.drivable_map is not None and self.drivable_map.polygons is not None
        if self.offroad_geometry == "raster" or not has_polygons:
            if self.offroad_geometry == "polygons":
                raise ValueError("offroad_geometry='polygons' but the DrivableMap has no polygons")
            return False
        if _extension_ready():
            return True
        if self.offroad_geometry == "polygons":
            raise ImportError("offroad_geometry='polygons' needs the compiled genneg_ext (pip install .)")
        return False

    @staticmethod
    def _ops(backend: str) -> Any:
        if backend == "triton":
            from genneg.kernels import traffic_oracle as ops
        else:
            from genneg.reference import traffic_oracle as ops
        return ops

    def _resolve(self, device: torch.device) -> Literal["cpp", "triton", "torch"]:
        from genneg.kernels._backend import resolve_backend

        if self.backend == "cpp":
            if not _extension_ready():
                raise ImportError(
                    "backend='cpp' needs the compiled genneg_ext; reinstall genneg (pip install .)"
                )
            return "cpp"
        if self.backend == "auto" and device.type == "cpu":
            if _extension_ready():
                return "cpp"
            warnings.warn(
                "genneg_ext is not built; TrafficOracle runs the (slower) PyTorch reference on the CPU",
                RuntimeWarning,
                stacklevel=4,
            )
            return "torch"
        return resolve_backend(self.backend, device)

    def _raster(self, device: torch.device) -> torch.Tensor:
        """The drivable raster as a uint8 tensor on ``device``, cached per device."""
        key = str(device)
        if key not in self._rasters:
            assert self.drivable_map is not None  # checked in __post_init__
            self._rasters[key] = torch.from_numpy(self.drivable_map.drivable).to(device)
        return self._rasters[key]
