"""Procedural human motion: parametric motion families on the 22-joint humanoid, all above the floor.

Each clip is ``frames`` poses at ``fps`` of one humanoid of body height ``H`` (uniform in
``height_range_m``; bone lengths from :data:`~genneg.data.motion.skeleton.ANTHROPOMETRY`). A family sets
the joint angles over time from random parameters (ranges in :func:`_family_angles`):

- ``walk``: a sinusoidal gait (hip flexion ``A sin φ``, knee flexed in swing, feet kept flat), arms
  swinging against the legs, cadence 0.8-1.0 strides/s;
- ``run``: the same, faster (1.3-1.6 strides/s), larger angles, forward lean, short flight phases;
- ``turn``: a walk whose heading turns by 45-180° (either way) over the clip;
- ``jump``: crouch, take-off with the arms swung forward, a ballistic flight of 0.15-0.45 m apex
  (forward 0-0.8 m), landing in a crouch, standing up;
- ``crouch``: a squat of knee angle up to 2.2 rad, held, and back up, arms forward for balance;
- ``wave``: standing with a slight sway, one arm raised and waving.

Contacts (how the root moves): forward kinematics with the root at the origin gives each frame's pose;
the root's height puts the pose's lowest joint at the **contact height** ``toe_height · H`` (a joint centre
of a foot flat on the floor) plus the flight height (run, jump: ``>= 0``); horizontally, the root moves so
that the **stance foot** (the lower foot over each pair of frames) does not move, except in a jump's
flight, where it moves at constant velocity. So every frame is above the floor (the lowest joint is at
least the contact height, about 2 cm) and stance feet do not skate. Clips are canonical: the root starts
at ``x = z = 0`` facing ``+z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .skeleton import (
    ANTHROPOMETRY,
    Skeleton,
    forward_kinematics,
    procedural_skeleton,
    rotation_x,
    rotation_y,
    rotation_z,
)

__all__ = ["MOTION_FAMILIES", "ProceduralConfig", "ProceduralMotions", "generate_procedural_motions"]

MOTION_FAMILIES: tuple[str, ...] = ("walk", "run", "turn", "jump", "crouch", "wave")
GRAVITY_M_S2 = 9.81


@dataclass(frozen=True)
class ProceduralConfig:
    """Procedural clips.

    Attributes:
        fps: frame rate, frames per second.
        frames: frames per clip.
        height_range_m: body height ``H`` drawn uniformly in this range, metres.
        families: motion families drawn (uniformly, in turn) from :data:`MOTION_FAMILIES`.
    """

    fps: float = 20.0
    frames: int = 60
    height_range_m: tuple[float, float] = (1.5, 1.95)
    families: tuple[str, ...] = MOTION_FAMILIES

    def __post_init__(self) -> None:
        if not self.fps > 0 or self.frames < 2:
            raise ValueError(f"ProceduralConfig needs fps > 0 and frames >= 2, got {self.fps}, {self.frames}")
        lo, hi = self.height_range_m
        if not 0 < lo <= hi:
            raise ValueError(f"height_range_m must satisfy 0 < low <= high, got {self.height_range_m}")
        unknown = [f for f in self.families if f not in MOTION_FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {MOTION_FAMILIES}, got {self.families}")
        if "jump" in self.families and self.frames / self.fps < 2.0:
            raise ValueError(f"jump clips need at least 2 s, got {self.frames} frames at {self.fps} fps")


@dataclass(frozen=True)
class ProceduralMotions:
    """Generated clips.

    Attributes:
        positions_m: ``(N, F, J, 3)`` float32 joint positions, metres, y up (floor ``y = 0``).
        family: ``(N,)`` int64 index into :data:`MOTION_FAMILIES`.
        height_m: ``(N,)`` float32 body heights, metres.
        skeleton: the joint names and parents (offsets of a 1.75 m body; each clip is scaled by its height).
    """

    positions_m: np.ndarray
    family: np.ndarray
    height_m: np.ndarray
    skeleton: Skeleton


def generate_procedural_motions(n: int, config: ProceduralConfig, seed: int) -> ProceduralMotions:
    """``n`` clips, families in turn from ``config.families``, parameters from ``seed`` (module docstring).

    Raises:
        ValueError: ``n < 1``.
        RuntimeError: if a generated frame lies below the floor (a bug: contacts are built above it).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    skeleton = procedural_skeleton(1.0)
    family = np.array([MOTION_FAMILIES.index(config.families[i % len(config.families)]) for i in range(n)])
    height = rng.uniform(*config.height_range_m, size=n)
    positions = np.zeros((n, config.frames, skeleton.num_joints, 3), dtype=np.float32)
    for f in np.unique(family):
        rows = np.flatnonzero(family == f)
        positions[rows] = _family_clips(MOTION_FAMILIES[f], height[rows], config, skeleton, rng)
    if float(positions[..., 1].min()) < 0:
        raise RuntimeError("procedural motion below the floor: contact construction failed")
    return ProceduralMotions(positions, family.astype(np.int64), height.astype(np.float32),
                             procedural_skeleton(1.75))


def _u(rng: np.random.Generator, lo: float, hi: float, b: int) -> np.ndarray:
    return rng.uniform(lo, hi, size=(b, 1))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _family_angles(name: str, t: np.ndarray, rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    """Joint angles ``(b, F)`` (radians) and flight heights (metres) of one family at times ``t`` (s).

    Keys: ``hip_l/r`` (flexion), ``knee_l/r`` (flexion), ``plantar_l/r`` (toe down), ``shoulder_l/r``
    (flexion), ``abduct_l/r`` (shoulder abduction), ``elbow_l/r`` (flexion), ``lean`` (trunk forward),
    ``yaw`` (heading), ``sway`` (pelvis roll), ``flight_m`` (root lift), ``flight_mask`` (bool: jump flight),
    ``forward_m`` (horizontal flight distance per frame, metres), ``stance`` (int64: 0 = the left foot
    stands, 1 = the right, -1 = whichever is lower).
    """
    zeros = np.zeros((b, t.shape[0]))
    out = {k: zeros.copy() for k in ("hip_l", "hip_r", "knee_l", "knee_r", "plantar_l", "plantar_r",
                                     "shoulder_l", "shoulder_r", "abduct_l", "abduct_r", "elbow_l",
                                     "elbow_r", "lean", "yaw", "sway", "flight_m", "forward_m")}
    out["flight_mask"] = np.zeros((b, t.shape[0]), dtype=bool)
    out["stance"] = np.full((b, t.shape[0]), -1, dtype=np.int64)
    duration = float(t[-1] - t[0]) + (t[1] - t[0])
    if name in ("walk", "turn", "run"):
        run = name == "run"
        cadence = _u(rng, 1.3, 1.6, b) if run else _u(rng, 0.8, 1.0, b)
        amp = _u(rng, 0.5, 0.7, b) if run else _u(rng, 0.3, 0.45, b)
        knee_amp = _u(rng, 1.3, 1.7, b) if run else _u(rng, 0.8, 1.1, b)
        knee0 = _u(rng, 0.2, 0.35, b) if run else _u(rng, 0.05, 0.15, b)
        phase = 2 * math.pi * cadence * t[None] + _u(rng, 0, 2 * math.pi, b)
        out["stance"] = (np.cos(phase) > 0).astype(np.int64)  # the left foot stands while its hip extends
        for side, shift in (("l", 0.0), ("r", math.pi)):
            ph = phase + shift
            out[f"hip_{side}"] = amp * np.sin(ph)
            out[f"knee_{side}"] = knee0 + knee_amp * np.sqrt(np.maximum(0.0, np.cos(ph)))
            out[f"shoulder_{side}"] = -_u(rng, 0.6, 1.0, b) * amp * np.sin(ph)
            out[f"abduct_{side}"] = np.full_like(ph, 0.1)
            out[f"elbow_{side}"] = np.broadcast_to(_u(rng, 1.2, 1.6, b) if run else _u(rng, 0.2, 0.5, b),
                                                   ph.shape).copy()
        lean = _u(rng, 0.1, 0.2, b) if run else _u(rng, 0.0, 0.06, b)
        out["lean"] = np.broadcast_to(lean, zeros.shape).copy()
        if run:
            out["flight_m"] = _u(rng, 0.03, 0.07, b) * np.maximum(0.0, -np.cos(2 * phase) - 0.2) / 0.8
        if name == "turn":
            total = _u(rng, math.pi / 4, math.pi, b) * rng.choice([-1.0, 1.0], size=(b, 1))
            out["yaw"] = total * _smoothstep(t[None] / duration)
    elif name == "jump":
        height = _u(rng, 0.15, 0.45, b)
        t_flight = 2 * np.sqrt(2 * height / GRAVITY_M_S2)
        start = _u(rng, 0.1, 0.3, b)
        down = _u(rng, 0.35, 0.5, b)
        depth = _u(rng, 0.5, 0.9, b)
        take_off = start + down
        land = take_off + t_flight
        tt = t[None]
        crouch = depth * (_smoothstep((tt - start) / down) * (tt < take_off)
                          + (tt >= land) * (1 - _smoothstep((tt - land - 0.15) / 0.4)))
        air = (tt >= take_off) & (tt < land)
        tau = np.clip(tt - take_off, 0, None)
        out["flight_m"] = np.where(air, 0.5 * GRAVITY_M_S2 * tau * (t_flight - tau), 0.0)
        out["flight_mask"] = air
        frame_dt = t[1] - t[0]
        out["forward_m"] = np.where(air, _u(rng, 0.0, 0.8, b) * frame_dt / t_flight, 0.0)
        tuck = 0.3 * air * np.sin(math.pi * np.clip(tau / t_flight, 0, 1))
        swing = 2.2 * _smoothstep((tt - take_off + 0.15) / 0.2) * (1 - _smoothstep((tt - land) / 0.5))
        for side in ("l", "r"):
            out[f"hip_{side}"] = crouch + tuck
            out[f"knee_{side}"] = 2 * crouch + 2 * tuck
            out[f"shoulder_{side}"] = swing - 0.8 * crouch * (tt < take_off)
            out[f"elbow_{side}"] = np.full_like(tt * crouch, 0.3)
            out[f"abduct_{side}"] = np.full_like(crouch, 0.1)
        out["lean"] = 0.5 * crouch
    elif name == "crouch":
        depth = _u(rng, 0.6, 1.1, b)
        start = _u(rng, 0.1, 0.6, b)
        down = _u(rng, 0.6, 1.0, b)
        hold = _u(rng, 0.2, 0.6, b)
        tt = t[None]
        c = depth * (_smoothstep((tt - start) / down) - _smoothstep((tt - start - down - hold) / down))
        arms = _u(rng, 0.8, 1.4, b)
        for side in ("l", "r"):
            out[f"hip_{side}"] = c
            out[f"knee_{side}"] = 2 * c
            out[f"shoulder_{side}"] = arms * c / depth
            out[f"abduct_{side}"] = np.full_like(c, 0.1)
            out[f"elbow_{side}"] = np.full_like(c, 0.2)
        out["lean"] = 0.45 * c
    elif name == "wave":
        side_up = rng.integers(0, 2, size=b)
        freq = _u(rng, 1.5, 3.0, b)
        raise_t = _u(rng, 0.2, 0.8, b)
        tt = t[None]
        up = _smoothstep((tt - raise_t) / 0.5)
        wave = up * (1.4 + 0.5 * np.sin(2 * math.pi * freq * (tt - raise_t)))
        sway = _u(rng, 0.02, 0.06, b) * np.sin(2 * math.pi * _u(rng, 0.2, 0.5, b) * tt)
        out["sway"] = sway
        for s, side in enumerate(("l", "r")):
            mine = (side_up == s)[:, None]
            out[f"abduct_{side}"] = np.where(mine, 2.4 * up, 0.12)
            out[f"elbow_{side}"] = np.where(mine, wave, 0.15)
            out[f"knee_{side}"] = np.full_like(tt * up, 0.05)
            out[f"hip_{side}"] = np.full_like(tt * up, 0.03)
    else:  # pragma: no cover - ProceduralConfig validates the names
        raise ValueError(f"unknown motion family {name!r}")
    return out


def _family_clips(name: str, height_m: np.ndarray, config: ProceduralConfig, skeleton: Skeleton,
                  rng: np.random.Generator) -> np.ndarray:
    """``(b, F, J, 3)`` float32 clips of one family for bodies of ``height_m`` ``(b,)``."""
    b, frames = height_m.shape[0], config.frames
    t = np.arange(frames) / config.fps
    a = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _family_angles(name, t, rng, b).items()}
    idx = {n: i for i, n in enumerate(skeleton.names)}
    rot = torch.eye(3, dtype=torch.float64).repeat(b, frames, skeleton.num_joints, 1, 1)
    rot[:, :, 0] = rotation_y(a["yaw"]) @ rotation_z(a["sway"])
    rot[:, :, idx["spine"]] = rotation_x(a["lean"])
    for side, s in (("l", "left"), ("r", "right")):
        hip, knee = a[f"hip_{side}"], a[f"knee_{side}"]
        rot[:, :, idx[f"{s}_hip"]] = rotation_x(-hip)
        rot[:, :, idx[f"{s}_knee"]] = rotation_x(knee)
        # foot flat: the ankle undoes the leg's pitch (global foot pitch = -hip + knee + ankle = 0)
        rot[:, :, idx[f"{s}_ankle"]] = rotation_x(hip - knee + a[f"plantar_{side}"])
        sign = 1.0 if side == "l" else -1.0
        rot[:, :, idx[f"{s}_shoulder"]] = rotation_z(sign * a[f"abduct_{side}"]) @ rotation_x(
            -a[f"shoulder_{side}"])
        rot[:, :, idx[f"{s}_elbow"]] = rotation_x(-a[f"elbow_{side}"])
    h = torch.from_numpy(height_m).to(torch.float64)
    offsets = skeleton.offsets()[None, None] * h[:, None, None, None]  # (b, 1, J, 3)
    rel = forward_kinematics(torch.zeros(b, frames, 3, dtype=torch.float64), rot, offsets, skeleton.parents)
    rel = rel.numpy()
    left = [idx["left_ankle"], idx["left_toe"]]
    right = [idx["right_ankle"], idx["right_toe"]]
    foot_y = np.stack([rel[:, :, left, 1].min(-1), rel[:, :, right, 1].min(-1)], axis=-1)  # (b, F, 2)
    foot_xz = np.stack([rel[:, :, left][..., [0, 2]].mean(-2), rel[:, :, right][..., [0, 2]].mean(-2)],
                       axis=2)  # (b, F, 2 feet, 2)
    stance = a["stance"].numpy()[:, 1:]
    stance = np.where(stance >= 0, stance, np.argmin(foot_y[:, 1:] + foot_y[:, :-1], axis=-1))  # (b, F-1)
    moved = np.take_along_axis(foot_xz[:, 1:] - foot_xz[:, :-1], stance[..., None, None], axis=2)[:, :, 0]
    step = -moved  # root displacement keeping the stance foot still
    flight = a["flight_mask"].numpy()[:, 1:]
    heading = a["yaw"].numpy()[:, 1:]
    forward = a["forward_m"].numpy()[:, 1:]
    step = np.where(flight[..., None],
                    np.stack([forward * np.sin(heading), forward * np.cos(heading)], axis=-1), step)
    root_xz = np.concatenate([np.zeros((b, 1, 2)), np.cumsum(step, axis=1)], axis=1)
    contact = ANTHROPOMETRY["toe_height"] * height_m[:, None]
    root_y = contact - rel[..., 1].min(-1) + a["flight_m"].numpy()
    root = np.stack([root_xz[..., 0], root_y, root_xz[..., 1]], axis=-1)
    return (rel + root[:, :, None]).astype(np.float32)
