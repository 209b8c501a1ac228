"""Kinematic trees of humanoids, rotations, and forward kinematics.

Frame and units (every motion in the package): metres, **y up**, the floor is the plane ``y = 0``; in the
rest pose the body faces ``+z`` and its left side is ``+x`` (right-handed, as SMPL / HumanML3D).

Forward kinematics (Craig, *Introduction to Robotics*, ch. 3; the same recursion as SMPL's):
``G_root = R_root``, ``p_root = root_position``; for every other joint ``j`` with parent ``a``:
``G_j = G_a R_j`` and ``p_j = p_a + G_a o_j``, where ``R_j`` is the joint's local rotation (3×3, in its
parent's frame) and ``o_j`` its rest offset from the parent (metres, in the parent's frame).

The procedural humanoid (:func:`procedural_skeleton`) has the 22 joints of SMPL's body (the joint set of
HumanML3D), with offsets from the anthropometric table :data:`ANTHROPOMETRY` (fractions of body height
``H``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ANTHROPOMETRY",
    "PROCEDURAL_JOINTS",
    "Skeleton",
    "axis_angle_matrix",
    "forward_kinematics",
    "procedural_skeleton",
    "quaternion_matrix",
    "rotation_x",
    "rotation_y",
    "rotation_z",
]

ANTHROPOMETRY: dict[str, float] = {
    # heights above the floor of joint centres in upright stance, fractions of body height H
    # (Drillis & Contini 1966, as tabulated in Winter, "Biomechanics and Motor Control of Human Movement",
    # 4th ed. 2009, Fig. 4.1)
    "shoulder_height": 0.818,
    "elbow_height": 0.630,
    "wrist_height": 0.485,
    "hip_height": 0.530,  # greater trochanter
    "knee_height": 0.285,
    "ankle_height": 0.039,
    "chin_height": 0.870,
    "eye_height": 0.936,
    # widths and lengths, fractions of H (same source)
    "shoulder_width": 0.259,
    "foot_length": 0.152,
    # our choices (not in the table): the joint centres the table does not give
    "hip_joint_half_spacing": 0.050,  # hip joint centres at ±0.05 H (~0.17 m apart at H = 1.75 m)
    "pelvis_above_hip": 0.020,  # pelvis root 0.02 H above the hip joint centres
    "spine_above_pelvis": 0.060,
    "chest_above_spine": 0.080,
    "collar_above_upper_chest": 0.030,
    "collar_half_spacing": 0.030,
    "toe_height": 0.012,  # toe (metatarsophalangeal) joint centre in flat stance (~2 cm at 1.75 m)
    "toe_ahead_of_ankle": 0.100,  # 2/3 of the foot length ahead of the ankle
}
"""Anthropometric table of the procedural humanoid, fractions of body height ``H``."""

PROCEDURAL_JOINTS: tuple[tuple[str, int], ...] = (
    ("pelvis", -1), ("left_hip", 0), ("right_hip", 0), ("spine", 0), ("left_knee", 1), ("right_knee", 2),
    ("chest", 3), ("left_ankle", 4), ("right_ankle", 5), ("upper_chest", 6), ("left_toe", 7),
    ("right_toe", 8), ("neck", 9), ("left_collar", 9), ("right_collar", 9), ("head", 12),
    ("left_shoulder", 13), ("right_shoulder", 14), ("left_elbow", 16), ("right_elbow", 17),
    ("left_wrist", 18), ("right_wrist", 19),
)
"""``(name, parent index)`` of the procedural humanoid's 22 joints (SMPL's body joints, parents first)."""


@dataclass(frozen=True)
class Skeleton:
    """A kinematic tree.

    Attributes:
        names: joint names, parents before children.
        parents: parent index of each joint (-1 for the root, which must be joint 0).
        offsets_m: ``(J, 3)`` rest offsets from the parent, metres, parent frame (the root's is its rest
            position).
        feet: indices of the joints that touch the floor in gait (ankles and toes), left foot first.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets_m: tuple[tuple[float, float, float], ...]
    feet: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.parents) != n or len(self.offsets_m) != n or n < 2:
            raise ValueError(f"Skeleton needs >= 2 joints and one parent and offset per name, got "
                             f"{n} names, {len(self.parents)} parents, {len(self.offsets_m)} offsets")
        if self.parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(self.parents) if j > 0):
            raise ValueError(f"Skeleton parents must be -1 for joint 0 and precede each joint: "
                             f"{self.parents}")
        if any(not 0 <= f < n for f in self.feet):
            raise ValueError(f"Skeleton feet {self.feet} out of range for {n} joints")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Index of joint ``name`` (ValueError naming the joints when absent)."""
        if name not in self.names:
            raise ValueError(f"no joint {name!r}; joints: {self.names}")
        return self.names.index(name)

    def mirror_permutation(self) -> tuple[int, ...]:
        """Joint permutation of the left-right mirror image: ``left_*`` <-> ``right_*``."""
        perm = []
        for name in self.names:
            if name.startswith("left_"):
                perm.append(self.index("right_" + name[5:]))
            elif name.startswith("right_"):
                perm.append(self.index("left_" + name[6:]))
            else:
                perm.append(self.index(name))
        return tuple(perm)

    def offsets(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``(J, 3)`` rest offsets as a tensor."""
        return torch.tensor(self.offsets_m, dtype=dtype)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "parents": list(self.parents),
                "offsets_m": [list(o) for o in self.offsets_m], "feet": list(self.feet)}

    @classmethod
    def from_dict(cls, d: dict) -> Skeleton:
        offsets = tuple(tuple(float(v) for v in o) for o in d["offsets_m"])
        return cls(tuple(d["names"]), tuple(int(p) for p in d["parents"]), offsets,
                   tuple(int(f) for f in d["feet"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def procedural_skeleton(height_m: float = 1.75) -> Skeleton:
    """The 22-joint procedural humanoid of body height ``height_m`` (metres, ``> 0``), offsets from
    :data:`ANTHROPOMETRY`. In the rest pose (all local rotations identity, root at its rest offset) the
    body stands upright facing ``+z``, arms hanging, the toe joints ``toe_height · H`` above the floor."""
    if not (math.isfinite(height_m) and height_m > 0):
        raise ValueError(f"height_m must be a positive finite number, got {height_m}")
    a = {k: v * height_m for k, v in ANTHROPOMETRY.items()}
    pelvis_y = a["hip_height"] + a["pelvis_above_hip"]
    upper_chest_y = pelvis_y + a["spine_above_pelvis"] + 2 * a["chest_above_spine"]
    collar_y = upper_chest_y + a["collar_above_upper_chest"]
    half_shoulder = 0.5 * a["shoulder_width"]
    off = {
        "pelvis": (0.0, pelvis_y, 0.0),
        "left_hip": (a["hip_joint_half_spacing"], -a["pelvis_above_hip"], 0.0),
        "right_hip": (-a["hip_joint_half_spacing"], -a["pelvis_above_hip"], 0.0),
        "spine": (0.0, a["spine_above_pelvis"], 0.0),
        "left_knee": (0.0, a["knee_height"] - a["hip_height"], 0.0),
        "right_knee": (0.0, a["knee_height"] - a["hip_height"], 0.0),
        "chest": (0.0, a["chest_above_spine"], 0.0),
        "left_ankle": (0.0, a["ankle_height"] - a["knee_height"], 0.0),
        "right_ankle": (0.0, a["ankle_height"] - a["knee_height"], 0.0),
        "upper_chest": (0.0, a["chest_above_spine"], 0.0),
        "left_toe": (0.0, a["toe_height"] - a["ankle_height"], a["toe_ahead_of_ankle"]),
        "right_toe": (0.0, a["toe_height"] - a["ankle_height"], a["toe_ahead_of_ankle"]),
        "neck": (0.0, a["chin_height"] - upper_chest_y, 0.0),
        "left_collar": (a["collar_half_spacing"], a["collar_above_upper_chest"], 0.0),
        "right_collar": (-a["collar_half_spacing"], a["collar_above_upper_chest"], 0.0),
        "head": (0.0, a["eye_height"] - a["chin_height"], 0.0),
        "left_shoulder": (half_shoulder - a["collar_half_spacing"], a["shoulder_height"] - collar_y, 0.0),
        "right_shoulder": (a["collar_half_spacing"] - half_shoulder, a["shoulder_height"] - collar_y, 0.0),
        "left_elbow": (0.0, a["elbow_height"] - a["shoulder_height"], 0.0),
        "right_elbow": (0.0, a["elbow_height"] - a["shoulder_height"], 0.0),
        "left_wrist": (0.0, a["wrist_height"] - a["elbow_height"], 0.0),
        "right_wrist": (0.0, a["wrist_height"] - a["elbow_height"], 0.0),
    }
    names = tuple(n for n, _ in PROCEDURAL_JOINTS)
    feet = tuple(names.index(n) for n in ("left_ankle", "left_toe", "right_ankle", "right_toe"))
    return Skeleton(names, tuple(p for _, p in PROCEDURAL_JOINTS), tuple(off[n] for n in names), feet)


# --------------------------------------------------------------------------------------------------
# rotations (right-handed, angles in radians, matrices act on column vectors)


def _as_tensor(angle: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    if isinstance(angle, torch.Tensor):
        return angle if angle.is_floating_point() else angle.to(torch.float64)
    return torch.as_tensor(np.asarray(angle, dtype=np.float64))  # Python and NumPy numbers: float64


def rotation_x(angle: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """``(...)`` angles (rad) -> ``(..., 3, 3)`` rotations about ``x`` (``y`` turns towards ``z``)."""
    a = _as_tensor(angle)
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*a.shape, 3, 3)


def rotation_y(angle: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """``(...)`` angles (rad) -> ``(..., 3, 3)`` rotations about ``y`` (``z`` turns towards ``x``)."""
    a = _as_tensor(angle)
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*a.shape, 3, 3)


def rotation_z(angle: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """``(...)`` angles (rad) -> ``(..., 3, 3)`` rotations about ``z`` (``x`` turns towards ``y``)."""
    a = _as_tensor(angle)
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*a.shape, 3, 3)


def axis_angle_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: ``axis`` ``(..., 3)`` (normalised here), ``angle`` ``(...)`` rad -> ``(..., 3, 3)``."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*x.shape, 3, 3)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` as ``(w, x, y, z)`` (normalised here) -> ``(..., 3, 3)``.

    Raises:
        ValueError: if ``q`` does not end in 4 or holds a zero quaternion.
    """
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions must have shape (..., 4), got {tuple(q.shape)}")
    norm = q.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("quaternion_matrix got a zero quaternion")
    w, x, y, z = (q / norm).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def forward_kinematics(root_position_m: torch.Tensor, rotations: torch.Tensor, offsets_m: torch.Tensor,
                       parents: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Joint positions from a root trajectory and local joint rotations (module docstring).

    Args:
        root_position_m: ``(..., 3)`` float, the root joint's position, metres.
        rotations: ``(..., J, 3, 3)`` float local rotations (joint 0: the root's global orientation).
        offsets_m: ``(J, 3)`` or ``(..., J, 3)`` rest offsets from the parent, metres (the root's is unused).
        parents: ``J`` parent indices, ``-1`` first, each parent before its children.

    Returns:
        ``(..., J, 3)`` joint positions, metres, dtype of ``rotations``.

    Raises:
        ValueError: on disagreeing shapes or a bad parent list.
    """
    j = len(parents)
    if rotations.shape[-3:] != (j, 3, 3):
        raise ValueError(f"rotations must be (..., {j}, 3, 3) for {j} parents, got {tuple(rotations.shape)}")
    if root_position_m.shape != (*rotations.shape[:-3], 3):
        raise ValueError(f"root_position_m {tuple(root_position_m.shape)} must be "
                         f"{(*rotations.shape[:-3], 3)}")
    if offsets_m.shape[-2:] != (j, 3):
        raise ValueError(f"offsets_m must be (..., {j}, 3), got {tuple(offsets_m.shape)}")
    if parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents) if i > 0):
        raise ValueError(f"parents must be -1 first and precede each joint, got {list(parents)}")
    offsets = offsets_m.to(rotations.dtype).to(rotations.device)
    offsets = offsets.expand(*rotations.shape[:-3], j, 3)
    glob = [rotations[..., 0, :, :]]
    pos = [root_position_m.to(rotations.dtype)]
    for i in range(1, j):
        p = parents[i]
        pos.append(pos[p] + (glob[p] @ offsets[..., i, :, None])[..., 0])
        glob.append(glob[p] @ rotations[..., i, :, :])
    return torch.stack(pos, dim=-2)
