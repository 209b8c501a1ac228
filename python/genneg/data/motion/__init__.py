"""Human motion data (issue 15): a procedural humanoid and the DeepMimic clips, as joint positions.

- :mod:`.skeleton`: kinematic trees, rotations, forward kinematics, the anthropometric humanoid.
- :mod:`.procedural`: parametric motion families (walk, run, turn, jump, crouch, wave), all above the floor.
- :mod:`.deepmimic`: the DeepMimic clips of the ``pybullet`` wheel (fetched with pip, read as a zip),
  converted through the humanoid's URDF kinematic tree.
- :mod:`.windows`: resampling, time warps, mirroring and slicing of long clips into training windows.
- :mod:`.dataset`: motion data sets written once and memory-mapped.

Units: metres, y up, floor ``y = 0``, clips canonical (root starts at ``x = z = 0`` facing ``+z``).
"""

from .dataset import (
    MotionDataset,
    write_deepmimic_dataset,
    write_deepmimic_split,
    write_motion_dataset,
    write_procedural_dataset,
)
from .deepmimic import (
    PYBULLET_VERSION,
    DeepMimicClip,
    UrdfHumanoid,
    deepmimic_clips_from_wheel,
    download_pybullet_wheel,
    humanoid_from_urdf,
    read_deepmimic_clip,
)
from .features import MotionNormalisation
from .procedural import MOTION_FAMILIES, ProceduralConfig, ProceduralMotions, generate_procedural_motions
from .skeleton import (
    ANTHROPOMETRY,
    Skeleton,
    axis_angle_matrix,
    forward_kinematics,
    procedural_skeleton,
    quaternion_matrix,
    rotation_x,
    rotation_y,
    rotation_z,
)
from .windows import canonicalise, mirror, resample, slice_windows

__all__ = [
    "ANTHROPOMETRY",
    "MOTION_FAMILIES",
    "PYBULLET_VERSION",
    "DeepMimicClip",
    "MotionDataset",
    "MotionNormalisation",
    "ProceduralConfig",
    "ProceduralMotions",
    "Skeleton",
    "UrdfHumanoid",
    "axis_angle_matrix",
    "canonicalise",
    "deepmimic_clips_from_wheel",
    "download_pybullet_wheel",
    "forward_kinematics",
    "generate_procedural_motions",
    "humanoid_from_urdf",
    "mirror",
    "procedural_skeleton",
    "quaternion_matrix",
    "read_deepmimic_clip",
    "resample",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "slice_windows",
    "write_deepmimic_dataset",
    "write_deepmimic_split",
    "write_motion_dataset",
    "write_procedural_dataset",
]
