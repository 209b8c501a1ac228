"""Scene frame and per-vehicle tokens: what the scene transformer reads and writes.

A scene is expressed in its own frame: the centre of its window is the origin and positions are divided by
``position_scale_m`` (half the window, so the window spans ``[-1, 1]²``); the frame is not rotated (map crops
stay axis-aligned with the map). A token is ``(x, y, cos h, sin h, length, width, speed)`` with

- ``x, y = (position - centre) / position_scale_m``,
- ``cos h, sin h`` unchanged,
- ``length = (length_m - length_mean_m) / length_std_m``, likewise width and speed.

The default constants match the moments of the default scene generator (class mix in
:mod:`genneg.data.traffic.scenes`): length 5.13 ± 1.45 m, width 1.93 ± 0.20 m, speed 6.4 ± 4.8 m/s,
rounded as below. Padding tokens are all zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from genneg.oracles.drivable_map import DrivableMap

__all__ = ["TOKEN_DIM", "TokenNormalisation", "crop_maps", "scenes_to_tokens", "tokens_to_scenes"]

TOKEN_DIM = 7


@dataclass(frozen=True)
class TokenNormalisation:
    """Constants of the token normalisation (metres, m/s)."""

    position_scale_m: float = 32.0
    length_mean_m: float = 5.1
    length_std_m: float = 1.5
    width_mean_m: float = 1.93
    width_std_m: float = 0.2
    speed_mean_mps: float = 6.4
    speed_std_mps: float = 4.8

    def __post_init__(self) -> None:
        for name in ("position_scale_m", "length_std_m", "width_std_m", "speed_std_mps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """The constants as a JSON-able dict."""
        return asdict(self)


def scenes_to_tokens(
    boxes: np.ndarray,
    speeds: np.ndarray,
    valid: np.ndarray,
    centre_m: np.ndarray,
    norm: TokenNormalisation,
) -> np.ndarray:
    """World-frame scenes to normalised tokens.

    Args:
        boxes: ``(S, A, 5)`` float: x m, y m, length m, width m, heading rad.
        speeds: ``(S, A)`` float, m/s.
        valid: ``(S, A)`` bool; padding tokens are set to zero.
        centre_m: ``(S, 2)`` float, scene-window centres, metres.
        norm: normalisation constants.

    Returns:
        ``(S, A, 7)`` float32 tokens.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 3 or boxes.shape[-1] != 5:
        raise ValueError(f"boxes must have shape (S, A, 5), got {boxes.shape}")
    s, a = boxes.shape[:2]
    speeds = np.asarray(speeds, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    centre_m = np.asarray(centre_m, dtype=np.float64)
    if speeds.shape != (s, a) or valid.shape != (s, a):
        raise ValueError(f"speeds and valid must have shape ({s}, {a}), got {speeds.shape}, {valid.shape}")
    if centre_m.shape != (s, 2):
        raise ValueError(f"centre_m must have shape ({s}, 2), got {centre_m.shape}")
    tokens = np.stack(
        [
            (boxes[..., 0] - centre_m[:, None, 0]) / norm.position_scale_m,
            (boxes[..., 1] - centre_m[:, None, 1]) / norm.position_scale_m,
            np.cos(boxes[..., 4]),
            np.sin(boxes[..., 4]),
            (boxes[..., 2] - norm.length_mean_m) / norm.length_std_m,
            (boxes[..., 3] - norm.width_mean_m) / norm.width_std_m,
            (speeds - norm.speed_mean_mps) / norm.speed_std_mps,
        ],
        axis=-1,
    )
    return np.where(valid[..., None], tokens, 0.0).astype(np.float32)


def tokens_to_scenes(
    tokens: np.ndarray,
    centre_m: np.ndarray,
    norm: TokenNormalisation,
    min_size_m: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised tokens (e.g. model samples) back to world-frame boxes and speeds.

    The heading is ``atan2(sin h, cos h)`` (the pair need not be unit length). Lengths and widths below
    ``min_size_m`` are raised to it, so that every decoded box is a box the oracle accepts; speeds are
    returned as decoded (they may be negative).

    Args:
        tokens: ``(S, A, 7)`` float.
        centre_m: ``(S, 2)`` float, metres.
        norm: the constants used for encoding.
        min_size_m: smallest length and width returned, metres.

    Returns:
        ``boxes (S, A, 5)`` float32 (x m, y m, length m, width m, heading rad) and ``speeds (S, A)`` float32.
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    if tokens.ndim != 3 or tokens.shape[-1] != TOKEN_DIM:
        raise ValueError(f"tokens must have shape (S, A, {TOKEN_DIM}), got {tokens.shape}")
    centre_m = np.asarray(centre_m, dtype=np.float64)
    if centre_m.shape != (tokens.shape[0], 2):
        raise ValueError(f"centre_m must have shape ({tokens.shape[0]}, 2), got {centre_m.shape}")
    boxes = np.stack(
        [
            tokens[..., 0] * norm.position_scale_m + centre_m[:, None, 0],
            tokens[..., 1] * norm.position_scale_m + centre_m[:, None, 1],
            np.maximum(tokens[..., 4] * norm.length_std_m + norm.length_mean_m, min_size_m),
            np.maximum(tokens[..., 5] * norm.width_std_m + norm.width_mean_m, min_size_m),
            np.arctan2(tokens[..., 3], tokens[..., 2]),
        ],
        axis=-1,
    )
    speeds = tokens[..., 6] * norm.speed_std_mps + norm.speed_mean_mps
    return boxes.astype(np.float32), speeds.astype(np.float32)


def crop_maps(drivable_map: DrivableMap, centre_m: np.ndarray, window_m: float, cells: int) -> np.ndarray:
    """Axis-aligned crops of the drivable raster around scene centres, resampled to ``cells × cells``.

    Crop cell ``(i, j)`` holds the map cell containing the point ``centre + window_m · ((j + ½)/cells - ½,
    (i + ½)/cells - ½)`` (nearest-cell sampling; row ``i`` is ``y`` as in :class:`DrivableMap`); points
    outside the raster read 0 (not drivable), as the offroad oracle treats them.

    Args:
        drivable_map: the map.
        centre_m: ``(N, 2)`` float, metres.
        window_m: crop edge, metres.
        cells: crop edge, cells.

    Returns:
        ``(N, cells, cells)`` uint8, 1 = drivable.
    """
    centre_m = np.asarray(centre_m, dtype=np.float64)
    if centre_m.ndim != 2 or centre_m.shape[1] != 2:
        raise ValueError(f"centre_m must have shape (N, 2), got {centre_m.shape}")
    if cells < 1 or not window_m > 0:
        raise ValueError(f"need cells >= 1 and window_m > 0, got {cells}, {window_m}")
    offsets = window_m * ((np.arange(cells) + 0.5) / cells - 0.5)
    xs = centre_m[:, 0, None] + offsets[None]  # (N, cells)
    ys = centre_m[:, 1, None] + offsets[None]
    h, w = drivable_map.shape
    ox, oy = drivable_map.origin_m
    col = np.floor((xs - ox) / drivable_map.resolution_m).astype(np.int64)
    row = np.floor((ys - oy) / drivable_map.resolution_m).astype(np.int64)
    inside = (row[:, :, None] >= 0) & (row[:, :, None] < h) & (col[:, None, :] >= 0) & (col[:, None, :] < w)
    values = drivable_map.drivable[np.clip(row, 0, h - 1)[:, :, None], np.clip(col, 0, w - 1)[:, None, :]]
    return np.where(inside, values, 0).astype(np.uint8)
