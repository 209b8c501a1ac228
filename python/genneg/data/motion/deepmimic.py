"""The DeepMimic humanoid motion clips of the ``pybullet`` wheel, as joint positions.

Provenance and licence. The ``pybullet`` wheel on PyPI (``pybullet==3.2.7``, licence zlib, inspected
2026-11) ships ``pybullet_data/data/motions/humanoid3d_*.txt``: the motion clips of DeepMimic (Peng et al.,
"DeepMimic: Example-Guided Deep Reinforcement Learning of Physics-Based Character Skills", SIGGRAPH 2018;
github.com/xbpeng/DeepMimic, MIT licence), retargeted motion-capture clips (walk, run, jump, kick, punch,
spin, dance, cartwheel, backflip, crawl, roll, get-up, ...), and the humanoid they drive,
``pybullet_data/humanoid/humanoid.urdf``. The wheel is fetched with ``pip download`` into a cache
directory on the user's explicit command and read as a zip; pybullet is never imported and nothing is
downloaded at run time. We redistribute none of it.

Clip format (JSON; the layout of ``pybullet_envs/deep_mimic/env/humanoid_pose_interpolator.py``):
``{"Loop": "wrap" | "none", "Frames": [[duration_s, root xyz (3), root quaternion w x y z (4),
chest (4), neck (4), right_hip (4), right_knee (1), right_ankle (4), right_shoulder (4), right_elbow (1),
left_hip (4), left_knee (1), left_ankle (4), left_shoulder (4), left_elbow (1)], ...]}`` (44 numbers per
frame). Spherical joints are local quaternions; knees and elbows are revolute angles (radians) about the
URDF joint axis; wrists are fixed.

The humanoid: joints, parents and offsets are read from the URDF (``<joint>``: parent link, child link,
``origin xyz``, ``axis``). The URDF is modelled 4× large: pybullet's DeepMimic environment loads it with
``globalScaling=0.25`` (``humanoid_stable_pd.py``), which puts the clips' root positions (metres) on the
scaled body, so offsets are multiplied by :data:`URDF_SCALE`. DeepMimic's frame is y up with the body facing
``+x``; positions are turned by -90° about ``y`` into the package's frame (facing ``+z``, left ``+x``).

``wrap`` clips are single cycles: they are repeated until they last ``min_wrap_duration_s`` (at least
twice), the root's horizontal displacement over a cycle accumulated, each cycle's last frame (the next
cycle's first) dropped. Heading changes over a cycle are not accumulated (the cycles of the shipped clips
turn little; ``spin`` turns within its cycle).

Some clips touch the floor with knees, elbows or wrists (``crawl``, ``roll``, ``get-up``), and their joint
centres then dip a few centimetres below it (retargeting); :func:`slice_windows` keeps them, and the
data-set writer drops windows the oracle rejects and reports how many.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .skeleton import Skeleton, axis_angle_matrix, forward_kinematics, quaternion_matrix, rotation_y

__all__ = [
    "DEEPMIMIC_JOINTS",
    "PYBULLET_VERSION",
    "URDF_SCALE",
    "DeepMimicClip",
    "UrdfHumanoid",
    "deepmimic_clips_from_wheel",
    "deepmimic_humanoid_from_wheel",
    "download_pybullet_wheel",
    "humanoid_from_urdf",
    "read_deepmimic_clip",
]

PYBULLET_VERSION = "3.2.7"
URDF_SCALE = 0.25
URDF_PATH = "pybullet_data/humanoid/humanoid.urdf"
MOTIONS_PREFIX = "pybullet_data/data/motions/"
DEEPMIMIC_JOINTS: tuple[tuple[str, int], ...] = (
    ("root", 4), ("chest", 4), ("neck", 4), ("right_hip", 4), ("right_knee", 1), ("right_ankle", 4),
    ("right_shoulder", 4), ("right_elbow", 1), ("left_hip", 4), ("left_knee", 1), ("left_ankle", 4),
    ("left_shoulder", 4), ("left_elbow", 1),
)
"""Joints of a DeepMimic frame after ``duration, root xyz``, with their number of values (4 = quaternion
``w x y z``, 1 = revolute angle)."""
_FRAME_WIDTH = 1 + 3 + sum(k for _, k in DEEPMIMIC_JOINTS)


@dataclass(frozen=True)
class UrdfHumanoid:
    """A humanoid read from a URDF.

    Attributes:
        skeleton: joints (named like the URDF's child links; the base link's child is the root), parents,
            offsets in metres (URDF ``origin xyz`` times the scale), feet (the ankles).
        kinds: per joint ``"spherical"``, ``"revolute"`` or ``"fixed"`` (the root: ``"floating"``).
        axes: ``(J, 3)`` revolute axes (zero for other joints).
    """

    skeleton: Skeleton
    kinds: tuple[str, ...]
    axes: tuple[tuple[float, float, float], ...]


def humanoid_from_urdf(urdf: str | bytes, scale: float = URDF_SCALE) -> UrdfHumanoid:
    """Parse a URDF's kinematic tree (see module docstring).

    Raises:
        ValueError: the URDF has no joints, more than one root link, or a joint whose parent link is
            not the child of an earlier joint.
    """
    if isinstance(urdf, str):
        urdf = urdf.encode()
    root_el = ET.fromstring(urdf.rstrip(b"\x00\r\n\t "))  # pybullet's file ends in a NUL byte
    joints = root_el.findall("joint")
    if not joints:
        raise ValueError("URDF has no <joint> elements")
    children = {j.find("child").get("link") for j in joints}
    base = [j.find("parent").get("link") for j in joints if j.find("parent").get("link") not in children]
    if len(set(base)) != 1:
        raise ValueError(f"URDF must have one base link, found {sorted(set(base))}")
    names, parents, offsets, kinds, axes = [], [], [], [], []
    for j in joints:
        parent_link, child = j.find("parent").get("link"), j.find("child").get("link")
        origin = j.find("origin")
        xyz_text = origin.get("xyz", "0 0 0") if origin is not None else "0 0 0"
        xyz = [float(v) * scale for v in xyz_text.split()]
        if parent_link == base[0]:
            if names:
                raise ValueError("URDF base link has more than one child joint")
            names.append(child)
            parents.append(-1)
            offsets.append(tuple(xyz))
            kinds.append("floating")
            axes.append((0.0, 0.0, 0.0))
            continue
        if parent_link not in names:
            raise ValueError(f"URDF joint {j.get('name')!r}: parent link {parent_link!r} is not defined "
                             "earlier")
        names.append(child)
        parents.append(names.index(parent_link))
        offsets.append(tuple(xyz))
        kind = j.get("type")
        kinds.append(kind)
        axis = j.find("axis")
        revolute = kind == "revolute" and axis is not None
        axes.append(tuple(float(v) for v in axis.get("xyz").split()) if revolute else (0.0, 0.0, 0.0))
    feet = tuple(names.index(n) for n in ("left_ankle", "right_ankle") if n in names)
    skeleton = Skeleton(tuple(names), tuple(parents), tuple(offsets), feet)
    return UrdfHumanoid(skeleton, tuple(kinds), tuple(axes))


@dataclass(frozen=True)
class DeepMimicClip:
    """A converted clip.

    Attributes:
        name: the clip's file stem (``humanoid3d_walk``).
        positions_m: ``(T, J, 3)`` float64 joint positions, metres, the package's frame.
        times_s: ``(T,)`` frame times, seconds.
        loop: ``"wrap"`` (a cycle, repeated) or ``"none"``.
    """

    name: str
    positions_m: np.ndarray
    times_s: np.ndarray
    loop: str


def read_deepmimic_clip(text: str | bytes, humanoid: UrdfHumanoid, name: str = "clip",
                        min_wrap_duration_s: float = 6.0) -> DeepMimicClip:
    """Convert one DeepMimic clip to joint positions (module docstring).

    Raises:
        ValueError: a frame without 44 numbers, a non-positive frame duration, or non-finite values
            (naming the frame).
    """
    data = json.loads(text)
    frames = np.asarray(data["Frames"], dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != _FRAME_WIDTH or frames.shape[0] < 2:
        raise ValueError(f"{name}: frames must be (T >= 2, {_FRAME_WIDTH}), got {frames.shape}")
    bad = np.flatnonzero(~np.isfinite(frames).all(axis=1))
    if bad.size:
        raise ValueError(f"{name}: non-finite values in frame {int(bad[0])}")
    if np.any(frames[:-1, 0] <= 0):
        raise ValueError(f"{name}: frame {int(np.flatnonzero(frames[:-1, 0] <= 0)[0])} has duration <= 0")
    sk = humanoid.skeleton
    t = frames.shape[0]
    rot = torch.eye(3, dtype=torch.float64).repeat(t, sk.num_joints, 1, 1)
    col = 4
    f = torch.from_numpy(frames)
    for joint, width in DEEPMIMIC_JOINTS:
        i = sk.index(joint)
        if width == 4:
            rot[:, i] = quaternion_matrix(f[:, col:col + 4])
        else:
            axis = torch.tensor(humanoid.axes[i], dtype=torch.float64)
            if humanoid.kinds[i] != "revolute" or float(axis.norm()) == 0:
                raise ValueError(f"{name}: joint {joint!r} has one value but is not revolute in the URDF")
            rot[:, i] = axis_angle_matrix(axis.expand(t, 3), f[:, col])
        col += width
    pos = forward_kinematics(f[:, 1:4], rot, sk.offsets(), sk.parents)
    pos = pos @ rotation_y(-np.pi / 2).T  # DeepMimic faces +x; ours faces +z
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    loop = str(data.get("Loop", "none"))
    positions = pos.numpy()
    repeat_cycles = max(2, int(np.ceil(min_wrap_duration_s / times[-1])))
    if loop == "wrap":
        cycle, cycle_t = positions[:-1], times[:-1]
        shift = positions[-1, 0] - positions[0, 0]
        shift[1] = 0.0
        positions = np.concatenate([cycle + k * shift for k in range(repeat_cycles)]
                                   + [positions[-1:] + (repeat_cycles - 1) * shift])
        times = np.concatenate([cycle_t + k * times[-1] for k in range(repeat_cycles)]
                               + [times[-1:] * repeat_cycles])
    return DeepMimicClip(name, positions, times, loop)


def deepmimic_clips_from_wheel(wheel: str | Path, names: list[str] | None = None,
                               min_wrap_duration_s: float = 6.0) -> list[DeepMimicClip]:
    """Every ``humanoid3d_*.txt`` clip (or ``names``, file stems) of a pybullet wheel, converted.

    Raises:
        ValueError: the wheel lacks the humanoid URDF or a requested clip.
    """
    with zipfile.ZipFile(wheel) as z:
        listing = set(z.namelist())
        if URDF_PATH not in listing:
            raise ValueError(f"{wheel} has no {URDF_PATH}")
        humanoid = humanoid_from_urdf(z.read(URDF_PATH))
        available = sorted(re.sub(r".*/|\.txt$", "", n) for n in listing
                           if n.startswith(MOTIONS_PREFIX + "humanoid3d_") and n.endswith(".txt"))
        wanted = available if names is None else list(names)
        missing = [n for n in wanted if n not in available]
        if missing:
            raise ValueError(f"clips {missing} not in the wheel; available: {available}")
        return [read_deepmimic_clip(z.read(f"{MOTIONS_PREFIX}{n}.txt"), humanoid, n, min_wrap_duration_s)
                for n in wanted]


def deepmimic_humanoid_from_wheel(wheel: str | Path) -> UrdfHumanoid:
    """The humanoid of a pybullet wheel."""
    with zipfile.ZipFile(wheel) as z:
        return humanoid_from_urdf(z.read(URDF_PATH))


def download_pybullet_wheel(cache_dir: str | Path, version: str = PYBULLET_VERSION) -> Path:
    """The pybullet wheel in ``cache_dir``, fetched with ``pip download --no-deps`` when absent.

    Raises:
        RuntimeError: pip could not fetch it (no network, no wheel for this platform).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"pybullet-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"pybullet=={version}", "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache_dir.glob(f"pybullet-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"could not download pybullet=={version} with pip (exit {proc.returncode}):\n"
                           f"{proc.stderr.strip()[-2000:]}")
    return found[0]
