"""DeepMimic clip conversion through a URDF kinematic tree, windows, and data sets on disk.

The clips and the wheel are written by the tests (the real wheel is used only by the slow test, when
``GENNEG_PYBULLET_CACHE`` names a directory holding it).
"""

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from genneg.data.motion import (
    MOTION_FAMILIES,
    MotionDataset,
    ProceduralConfig,
    canonicalise,
    deepmimic_clips_from_wheel,
    humanoid_from_urdf,
    mirror,
    read_deepmimic_clip,
    resample,
    slice_windows,
    write_deepmimic_dataset,
    write_motion_dataset,
    write_procedural_dataset,
)
from genneg.oracles.motion import GroundPenetrationConfig, GroundPenetrationOracle

# (child, parent, xyz in URDF units (4x metres), type): DeepMimic's humanoid layout
_JOINTS = [
    ("chest", "root", (0, 0.8, 0), "spherical"), ("neck", "chest", (0, 0.8, 0), "spherical"),
    ("right_hip", "root", (0, 0, 0.4), "spherical"), ("right_knee", "right_hip", (0, -1.6, 0), "revolute"),
    ("right_ankle", "right_knee", (0, -1.6, 0), "spherical"),
    ("right_shoulder", "chest", (0, 0.8, 0.6), "spherical"),
    ("right_elbow", "right_shoulder", (0, -1.0, 0), "revolute"),
    ("right_wrist", "right_elbow", (0, -1.0, 0), "fixed"),
    ("left_hip", "root", (0, 0, -0.4), "spherical"), ("left_knee", "left_hip", (0, -1.6, 0), "revolute"),
    ("left_ankle", "left_knee", (0, -1.6, 0), "spherical"),
    ("left_shoulder", "chest", (0, 0.8, -0.6), "spherical"),
    ("left_elbow", "left_shoulder", (0, -1.0, 0), "revolute"),
    ("left_wrist", "left_elbow", (0, -1.0, 0), "fixed"),
]


def _urdf() -> str:
    parts = ['<robot name="humanoid">', '<link name="base"/>', '<link name="root"/>',
             '<joint name="root" type="fixed"><parent link="base"/><child link="root"/>'
             '<origin rpy="0 0 0" xyz="0 0 0"/></joint>']
    for child, parent, xyz, kind in _JOINTS:
        axis = '<axis xyz="0 0 1"/>' if kind == "revolute" else ""
        parts.append(f'<link name="{child}"/><joint name="{child}" type="{kind}"><parent link="{parent}"/>'
                     f'<child link="{child}"/><origin rpy="0 0 0" xyz="{xyz[0]} {xyz[1]} {xyz[2]}"/>{axis}'
                     "</joint>")
    return "\n".join([*parts, "</robot>"]) + "\x00"  # pybullet's file ends in a NUL byte too


def _frame(duration, root, right_knee=0.0, root_quat=(1, 0, 0, 0)):
    ident = [1.0, 0.0, 0.0, 0.0]
    # chest, neck, right hip, knee, ankle, shoulder, elbow, left hip, knee, ankle, shoulder, elbow
    return [duration, *root, *root_quat, *ident, *ident, *ident, right_knee, *ident, *ident, 0.0,
            *ident, 0.0, *ident, *ident, 0.0]


def _clip(frames, loop="none") -> str:
    return json.dumps({"Loop": loop, "Frames": frames})


def test_urdf_tree_and_hand_computed_poses():
    humanoid = humanoid_from_urdf(_urdf())
    sk = humanoid.skeleton
    assert sk.names[0] == "root" and sk.num_joints == 15
    assert sk.parents[sk.index("right_ankle")] == sk.index("right_knee")
    assert humanoid.kinds[sk.index("right_knee")] == "revolute"
    # standing: hip-knee 0.4 m, knee-ankle 0.4 m (URDF units x 0.25); root 0.85 m up
    clip = read_deepmimic_clip(_clip([_frame(0.1, (0, 0.85, 0)), _frame(0.0, (0, 0.85, 0), -math.pi / 2)]),
                               humanoid)
    p = clip.positions_m
    i = sk.index
    np.testing.assert_allclose(p[0, i("right_ankle")], [-0.1, 0.05, 0.0], atol=1e-12)  # right is -x
    np.testing.assert_allclose(p[0, i("left_ankle")], [0.1, 0.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(p[0, i("neck")], [0.0, 1.25, 0.0], atol=1e-12)
    # shoulder at 1.25 m, then two 0.25 m bones down
    np.testing.assert_allclose(p[0, i("right_wrist")], [-0.15, 1.25 - 0.5, 0.0], atol=1e-12)
    # the right knee flexed by -90° about z: the shank points backwards (-z in our frame)
    np.testing.assert_allclose(p[1, i("right_ankle")], [-0.1, 0.45, -0.4], atol=1e-12)
    np.testing.assert_allclose(clip.times_s, [0.0, 0.1])


def test_root_rotation_and_wrap_repetition():
    humanoid = humanoid_from_urdf(_urdf())
    sk = humanoid.skeleton
    yaw = (math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0)  # 90° about y
    clip = read_deepmimic_clip(_clip([_frame(0.5, (0, 0.85, 0), root_quat=yaw),
                                      _frame(0.0, (1.0, 0.85, 0), root_quat=yaw)]), humanoid)
    across = clip.positions_m[0, sk.index("left_hip")] - clip.positions_m[0, sk.index("right_hip")]
    np.testing.assert_allclose(across, [0, 0, -0.2], atol=1e-12)  # turned left by 90°: left is now -z
    looped = read_deepmimic_clip(_clip([_frame(0.5, (0, 0.85, 0)), _frame(0.0, (1.0, 0.85, 0))], "wrap"),
                                 humanoid, min_wrap_duration_s=2.0)
    assert looped.positions_m.shape[0] == 5  # 4 cycles of one frame plus the closing frame
    np.testing.assert_allclose(looped.times_s, [0, 0.5, 1.0, 1.5, 2.0])
    # DeepMimic's +x is our +z
    np.testing.assert_allclose(looped.positions_m[:, 0, 2], [0, 1, 2, 3, 4], atol=1e-12)


def test_bad_clips_raise():
    humanoid = humanoid_from_urdf(_urdf())
    with pytest.raises(ValueError, match="frames must be"):
        read_deepmimic_clip(_clip([[0.1, 0, 1, 0]] * 3), humanoid)
    bad = [_frame(0.1, (0, 0.85, 0)), _frame(0.0, (0, float("nan"), 0))]
    with pytest.raises(ValueError, match="frame 1"):
        read_deepmimic_clip(json.dumps({"Frames": bad}), humanoid)
    with pytest.raises(ValueError, match="base link"):
        humanoid_from_urdf('<robot><joint name="a" type="fixed"><parent link="x"/><child link="y"/></joint>'
                           '<joint name="b" type="fixed"><parent link="z"/><child link="w"/></joint></robot>')


def _walk_clip(seconds=4.0, fps=30.0):
    """A clip in DeepMimic format: the body glides forward at 1 m/s, its right knee bending."""
    t = np.arange(0, seconds, 1 / fps)
    return [_frame(1 / fps, (float(x), 0.85 + 0.02 * math.sin(3 * x), 0.0), -0.5 - 0.5 * math.sin(4 * x))
            for x in t]


def test_windows_are_canonical_mirrored_and_valid(tmp_path: Path):
    wheel = tmp_path / "pybullet-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pybullet_data/humanoid/humanoid.urdf", _urdf())
        z.writestr("pybullet_data/data/motions/humanoid3d_glide.txt", _clip(_walk_clip()))
        z.writestr("pybullet_data/data/motions/humanoid3d_sink.txt",  # goes 5 cm through the floor
                   _clip([_frame(1 / 30, (0.0, 0.85 - 0.1 * k / 90, 0.0)) for k in range(91)]))
    clips = deepmimic_clips_from_wheel(wheel)
    assert [c.name for c in clips] == ["humanoid3d_glide", "humanoid3d_sink"]
    sk = humanoid_from_urdf(_urdf()).skeleton
    w = slice_windows(clips[0].positions_m, clips[0].times_s, sk, fps=20, frames=40, stride=10,
                      warps=(0.9, 1.0, 1.1))
    assert w.shape[1:] == (40, 15, 3) and len(w) % 2 == 0 and len(w) > 6
    np.testing.assert_allclose(w[:, 0, 0, [0, 2]], 0, atol=1e-5)  # root starts at the origin
    across = w[:, 0, sk.index("left_hip")] - w[:, 0, sk.index("right_hip")]
    assert np.all(across[:, 0] > 0) and np.allclose(across[:, 2], 0, atol=1e-5)  # facing +z, left +x
    assert np.all(w[:, -1, 0, 2] > 0.5)  # moves forward
    np.testing.assert_allclose(w[1::2], np.stack([mirror(x, sk) for x in w[0::2]]), atol=1e-5)
    # mirrored: the right knee bends in the original, the left in the mirror
    knee_r, knee_l = sk.index("right_knee"), sk.index("left_knee")
    np.testing.assert_allclose(w[0, :, knee_r], w[1, :, knee_l] * np.array([-1, 1, 1]), atol=1e-5)
    out = write_deepmimic_dataset(tmp_path / "dm", wheel, fps=20, frames=40, stride=10)
    ds = MotionDataset(out)
    oracle = GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.01))
    assert len(ds) > 0 and bool(oracle.clip_verdicts(torch.from_numpy(np.array(ds.positions))).all())
    counts = ds.meta["extra"]["clips"]
    assert counts["humanoid3d_sink"]["dropped"] > 0 and counts["humanoid3d_glide"]["dropped"] == 0
    assert ds.family_names == ("humanoid3d_glide", "humanoid3d_sink")
    assert ds[0]["positions"].shape == (40, 15, 3)


def test_resample_and_canonicalise():
    t = np.array([0.0, 1.0, 2.0])
    p = np.zeros((3, 2, 3))
    p[:, 0, 0] = [0.0, 1.0, 4.0]
    r = resample(p, t, fps=2.0, warp=1.0)
    np.testing.assert_allclose(r[:, 0, 0], [0, 0.5, 1.0, 2.5, 4.0])
    assert resample(p, t, fps=2.0, warp=2.0).shape[0] == 3  # twice as fast: half the frames
    with pytest.raises(ValueError, match="increasing"):
        resample(p, t[::-1], fps=2.0)


def test_procedural_dataset_roundtrip_and_invalid_clips_refused(tmp_path: Path):
    config = ProceduralConfig(frames=40)
    out = write_procedural_dataset(tmp_path / "proc", 13, config, seed=1, chunk_clips=5)
    ds = MotionDataset(out)
    assert len(ds) == 13 and isinstance(ds.positions, np.memmap)
    assert ds.positions.shape == (13, 40, 22, 3) and ds.family_names == MOTION_FAMILIES
    assert float(np.asarray(ds.positions)[..., 1].min()) > 0
    again = write_procedural_dataset(tmp_path / "again", 13, config, seed=1, chunk_clips=5)
    np.testing.assert_array_equal(np.asarray(MotionDataset(again).positions), np.asarray(ds.positions))
    with pytest.raises(ValueError, match="already exists"):
        write_procedural_dataset(out, 13, config, seed=1)
    bad = np.array(ds.positions)
    bad[3, 7, 2, 1] = -0.02
    with pytest.raises(ValueError, match=r"clip 3 has a joint 0\.0200 m below"):
        write_motion_dataset(tmp_path / "bad", bad, np.zeros(13, dtype=np.int64), ["x"], ds.skeleton, 20.0,
                             "test", tolerance_m=0.01)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_every_converted_pybullet_clip_window_is_valid(tmp_path: Path):
    cache = os.environ.get("GENNEG_PYBULLET_CACHE")
    wheels = sorted(Path(cache).glob("pybullet-*.whl")) if cache else []
    if not wheels:
        pytest.skip("set GENNEG_PYBULLET_CACHE to a directory holding the pybullet wheel")
    ds = MotionDataset(write_deepmimic_dataset(tmp_path / "dm", wheels[0]))
    pos = torch.from_numpy(np.array(ds.positions))
    assert len(ds) > 500
    assert bool(GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.01)).clip_verdicts(pos).all())
    walk = ds.family_names.index("humanoid3d_walk")
    speed = (pos[ds.family == walk, -1, 0] - pos[ds.family == walk, 0, 0])[:, [0, 2]].norm(dim=-1) / 3.0
    assert 0.7 < float(speed.median()) < 1.6  # m/s: a walk
    assert canonicalise(np.array(ds.positions[0]), ds.skeleton).shape == (60, 15, 3)


def test_command_writes_a_procedural_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from genneg.data.motion.dataset import main

    assert main(["procedural", "--output", str(tmp_path / "p"), "--clips", "6", "--frames", "40"]) == 0
    assert "6 clips of 40 frames at 20 fps, 22 joints" in capsys.readouterr().out
    assert len(MotionDataset(tmp_path / "p")) == 6
