"""Long clips into training windows: resampling, time warps, canonical frames, mirroring.

A source clip is joint positions ``(T, J, 3)`` (metres, y up) at known frame times. A window is
``frames`` poses at ``fps``, taken every ``stride`` output frames from the clip played at speed
``warp`` (``warp = 1.1``: 10% faster; positions linearly interpolated between source frames), then made
**canonical**: translated so that the root starts at ``x = z = 0`` and turned about the vertical so that
the body faces ``+z`` at its first frame (facing = ``across × up`` with ``across`` the horizontal
right-to-left hip vector). The **mirror image** (``x -> -x`` with left and right joints swapped) is a
valid motion of the same body and doubles the windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .skeleton import Skeleton

__all__ = ["canonicalise", "mirror", "resample", "slice_windows"]


def resample(positions_m: np.ndarray, times_s: np.ndarray, fps: float, warp: float = 1.0) -> np.ndarray:
    """Positions at ``fps`` of the clip played at speed ``warp``.

    Args:
        positions_m: ``(T, J, 3)`` source positions, metres.
        times_s: ``(T,)`` increasing source frame times, seconds.
        fps: output frame rate (``> 0``); warp: playback speed (``> 0``).

    Returns:
        ``(T', J, 3)`` float64, ``T' = floor((times_s[-1] - times_s[0]) · fps / warp) + 1``.
    """
    p = np.asarray(positions_m, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if p.ndim != 3 or p.shape[-1] != 3 or t.shape != (p.shape[0],):
        raise ValueError(f"positions_m must be (T, J, 3) and times_s (T,), got {p.shape}, {t.shape}")
    if not (fps > 0 and warp > 0):
        raise ValueError(f"fps and warp must be > 0, got {fps}, {warp}")
    if p.shape[0] < 2 or not np.all(np.diff(t) > 0):
        raise ValueError("times_s must be strictly increasing with at least two frames")
    count = int(np.floor((t[-1] - t[0]) * fps / warp + 1e-9)) + 1
    query = t[0] + np.arange(count) * warp / fps
    flat = p.reshape(p.shape[0], -1)
    out = np.stack([np.interp(query, t, flat[:, k]) for k in range(flat.shape[1])], axis=1)
    return out.reshape(count, *p.shape[1:])


def canonicalise(window_m: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """``(F, J, 3)`` -> the same motion with its root starting at ``x = z = 0`` facing ``+z`` (module
    docstring); heights unchanged."""
    w = np.asarray(window_m, dtype=np.float64)
    across = w[0, skeleton.index("left_hip")] - w[0, skeleton.index("right_hip")]
    # facing = across × up with up = +y: (a_x, a_y, a_z) × (0, 1, 0) = (-a_z, 0, a_x)
    facing = np.array([-across[2], 0.0, across[0]])
    norm = np.hypot(facing[0], facing[2])
    if norm < 1e-9:
        raise ValueError("cannot canonicalise: the hips are vertically aligned in the first frame")
    angle = np.arctan2(facing[0], facing[2])  # heading about y, 0 = +z
    c, s = np.cos(-angle), np.sin(-angle)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # R_y(-angle)
    shifted = w - np.array([w[0, 0, 0], 0.0, w[0, 0, 2]])
    return shifted @ rot.T


def mirror(window_m: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """The left-right mirror image ``(F, J, 3)``: ``x -> -x``, left and right joints swapped."""
    w = np.array(window_m, dtype=np.float64)[:, list(skeleton.mirror_permutation())]
    w[..., 0] *= -1
    return w


def slice_windows(positions_m: np.ndarray, times_s: np.ndarray, skeleton: Skeleton, fps: float,
                  frames: int, stride: int, warps: Sequence[float] = (1.0,),
                  mirrored: bool = True) -> np.ndarray:
    """Canonical training windows of one clip, for every warp, each also mirrored when ``mirrored``.

    Args:
        positions_m, times_s: the source clip (see :func:`resample`).
        skeleton: its joints (hips for the facing, left/right names for mirroring).
        fps, frames, stride: output frame rate, window length and step between window starts (frames).
        warps: playback speeds.

    Returns:
        ``(W, frames, J, 3)`` float32 (``W = 0`` when the clip is too short at every warp).
    """
    if frames < 2 or stride < 1:
        raise ValueError(f"frames must be >= 2 and stride >= 1, got {frames}, {stride}")
    out = []
    for warp in warps:
        clip = resample(positions_m, times_s, fps, warp)
        for start in range(0, clip.shape[0] - frames + 1, stride):
            w = canonicalise(clip[start:start + frames], skeleton)
            out.append(w)
            if mirrored:
                out.append(mirror(w, skeleton))
    j = np.asarray(positions_m).shape[1]
    return np.stack(out).astype(np.float32) if out else np.zeros((0, frames, j, 3), dtype=np.float32)
