"""Forward kinematics against hand-computed poses; procedural clips are valid and sensible."""

import math

import numpy as np
import pytest
import torch

from genneg.data.motion import (
    ANTHROPOMETRY,
    MOTION_FAMILIES,
    ProceduralConfig,
    forward_kinematics,
    generate_procedural_motions,
    procedural_skeleton,
    quaternion_matrix,
    rotation_x,
    rotation_y,
)
from genneg.oracles.motion import GroundPenetrationConfig, GroundPenetrationOracle


def _rest(skeleton, height=1.0):
    j = skeleton.num_joints
    rot = torch.eye(3, dtype=torch.float64).repeat(j, 1, 1)
    offsets = skeleton.offsets()
    return rot, offsets, forward_kinematics(offsets[0], rot, offsets, skeleton.parents)


def test_rest_pose_heights_match_the_anthropometric_table():
    h = 1.8
    sk = procedural_skeleton(h)
    _, _, pos = _rest(sk)
    y = {n: float(pos[i, 1]) for i, n in enumerate(sk.names)}
    for joint, key in (("left_knee", "knee_height"), ("right_ankle", "ankle_height"),
                       ("left_shoulder", "shoulder_height"), ("right_elbow", "elbow_height"),
                       ("left_wrist", "wrist_height"), ("left_hip", "hip_height"), ("head", "eye_height"),
                       ("left_toe", "toe_height")):
        assert y[joint] == pytest.approx(ANTHROPOMETRY[key] * h, abs=1e-12), joint
    x = {n: float(pos[i, 0]) for i, n in enumerate(sk.names)}
    assert x["left_shoulder"] - x["right_shoulder"] == pytest.approx(ANTHROPOMETRY["shoulder_width"] * h)
    assert x["left_hip"] > 0 > x["right_hip"]  # left is +x when facing +z


def test_hand_computed_poses():
    sk = procedural_skeleton(1.0)
    rot, offsets, rest = _rest(sk)
    hip, knee, ankle = sk.index("left_hip"), sk.index("left_knee"), sk.index("left_ankle")
    thigh = ANTHROPOMETRY["hip_height"] - ANTHROPOMETRY["knee_height"]
    shank = ANTHROPOMETRY["knee_height"] - ANTHROPOMETRY["ankle_height"]
    # hip flexed 90° (R_x(-pi/2)): the thigh points forward (+z), the knee at hip height
    r = rot.clone()
    r[hip] = rotation_x(-math.pi / 2)
    pos = forward_kinematics(offsets[0], r, offsets, sk.parents)
    np.testing.assert_allclose(pos[knee].numpy(), rest[hip].numpy() + np.array([0, 0, thigh]), atol=1e-12)
    expected = rest[hip].numpy() + np.array([0, 0, thigh + shank])
    np.testing.assert_allclose(pos[ankle].numpy(), expected, atol=1e-12)
    # and the knee flexed 90° (R_x(pi/2) in the thigh's frame): the shank hangs straight down again
    r[knee] = rotation_x(math.pi / 2)
    pos = forward_kinematics(offsets[0], r, offsets, sk.parents)
    expected = rest[hip].numpy() + np.array([0, -shank, thigh])
    np.testing.assert_allclose(pos[ankle].numpy(), expected, atol=1e-12)
    # the root turned by 90° about y: every joint rotates about the root (z -> x)
    r = rot.clone()
    r[0] = rotation_y(math.pi / 2)
    root = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    pos = forward_kinematics(root, r, offsets, sk.parents)
    rel = (rest - rest[0]).numpy()
    expected = np.stack([rel[:, 2], rel[:, 1], -rel[:, 0]], axis=1) + root.numpy()
    np.testing.assert_allclose(pos.numpy(), expected, atol=1e-12)


def test_quaternion_matrix_matches_axis_rotations():
    a = 0.7
    q = torch.tensor([math.cos(a / 2), math.sin(a / 2), 0.0, 0.0], dtype=torch.float64)
    np.testing.assert_allclose(quaternion_matrix(q).numpy(), rotation_x(a).numpy(), atol=1e-12)
    q = torch.tensor([math.cos(a / 2), 0.0, math.sin(a / 2), 0.0], dtype=torch.float64)
    np.testing.assert_allclose(quaternion_matrix(q).numpy(), rotation_y(a).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="zero quaternion"):
        quaternion_matrix(torch.zeros(4))


def test_forward_kinematics_rejects_bad_shapes():
    sk = procedural_skeleton()
    rot, offsets, _ = _rest(sk)
    with pytest.raises(ValueError, match="rotations"):
        forward_kinematics(offsets[0], rot[:-1], offsets, sk.parents)
    with pytest.raises(ValueError, match="parents"):
        forward_kinematics(offsets[0], rot, offsets, (0, *sk.parents[1:]))
    with pytest.raises(ValueError, match="height_m"):
        procedural_skeleton(-1.0)


def test_every_procedural_clip_is_valid_and_the_families_behave():
    config = ProceduralConfig(fps=20, frames=60)
    m = generate_procedural_motions(12 * len(MOTION_FAMILIES), config, seed=3)
    assert m.positions_m.shape == (72, 60, 22, 3) and m.positions_m.dtype == np.float32
    oracle = GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.0))
    assert bool(oracle.clip_verdicts(torch.from_numpy(m.positions_m)).all())
    lowest = m.positions_m[..., 1].min(-1)  # (N, F)
    contact = ANTHROPOMETRY["toe_height"] * m.height_m[:, None]
    assert np.all(lowest >= contact - 1e-5)  # never below a foot's contact height
    travel = np.linalg.norm(m.positions_m[:, -1, 0, [0, 2]] - m.positions_m[:, 0, 0, [0, 2]], axis=-1)
    speed = travel / (config.frames / config.fps)
    fam = np.array(MOTION_FAMILIES)[m.family]
    assert 0.6 < np.median(speed[fam == "walk"]) < 1.8  # m/s, human walking
    assert np.median(speed[fam == "run"]) > 1.5 * np.median(speed[fam == "walk"])
    assert np.all(speed[fam == "crouch"] < 0.05) and np.all(speed[fam == "wave"] < 0.1)
    assert np.all(m.positions_m[fam == "jump", :, 0, 1].max(-1)
                  > m.positions_m[fam == "jump", :1, 0, 1].max(-1) + 0.1)  # the pelvis leaves the ground
    np.testing.assert_allclose(m.positions_m[:, 0, 0, [0, 2]], 0, atol=1e-6)  # canonical start
    again = generate_procedural_motions(12 * len(MOTION_FAMILIES), config, seed=3)
    np.testing.assert_array_equal(again.positions_m, m.positions_m)


def test_stance_feet_do_not_skate_in_walks():
    config = ProceduralConfig(families=("walk",))
    m = generate_procedural_motions(8, config, seed=0)
    sk = m.skeleton
    toe = m.positions_m[:, :, [sk.index("left_toe"), sk.index("right_toe")]]  # (N, F, 2, 3)
    contact = (ANTHROPOMETRY["toe_height"] * m.height_m)[:, None, None]
    on_floor = (np.abs(toe[:, 1:, :, 1] - contact) < 1e-4) & (np.abs(toe[:, :-1, :, 1] - contact) < 1e-4)
    step = np.linalg.norm(np.diff(toe[..., [0, 2]], axis=1), axis=-1)
    assert on_floor.mean() > 0.3
    assert np.median(step[on_floor]) < 1e-4  # metres per frame: the planted foot stays put


def test_config_errors():
    with pytest.raises(ValueError, match="families"):
        ProceduralConfig(families=("swim",))
    with pytest.raises(ValueError, match="jump"):
        ProceduralConfig(frames=20, fps=20)
