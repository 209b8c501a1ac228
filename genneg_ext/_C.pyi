"""Stubs of the compiled module; call the typed wrappers in :mod:`genneg_ext` instead."""

import numpy as np

__version__: str
MAX_ABS_COORDINATE_M: float
MIN_SIZE_M: float
MAX_SIZE_M: float
MAX_ABS_HEADING_RAD: float

def collisions(
    boxes: np.ndarray,
    valid: np.ndarray | None,
    margin: float,
    threads: int,
    batched: bool,
    isa: str = "auto",
    broad_phase: str = "auto",
) -> np.ndarray: ...
def collision_pairs(
    boxes: np.ndarray,
    valid: np.ndarray | None,
    margin: float,
    threads: int,
    batched: bool,
    isa: str = "auto",
    broad_phase: str = "auto",
) -> np.ndarray: ...
def offroad(
    boxes: np.ndarray,
    valid: np.ndarray | None,
    drivable: np.ndarray,
    origin_x: float,
    origin_y: float,
    resolution: float,
    mode: str,
    threads: int,
    batched: bool,
) -> np.ndarray: ...
def rect_frames(boxes: np.ndarray, margin: float, isa: str) -> np.ndarray: ...
def available_cores() -> int: ...
def available_isas() -> list[str]: ...

class RoadGeometry:
    @property
    def segments(self) -> int: ...
    @property
    def bounds(self) -> tuple[float, float, float, float]: ...

def road_from_rings(points: np.ndarray, ring_offsets: np.ndarray) -> RoadGeometry: ...
def offroad_polygons(
    boxes: np.ndarray, valid: np.ndarray | None, road: RoadGeometry, threads: int, batched: bool
) -> np.ndarray: ...
