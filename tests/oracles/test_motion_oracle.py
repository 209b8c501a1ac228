"""Ground-penetration oracle on constructed motions, one test body over every device."""

import pytest
import torch

from genneg.data.motion.features import MotionNormalisation
from genneg.oracles.motion import GroundPenetrationConfig, GroundPenetrationOracle

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="no CUDA device"))]


def _standing(n=3, frames=10, joints=5, dtype=torch.float32, device="cpu"):
    """Clips whose lowest joint (joint 0) is 0.05 m above the floor, the others higher."""
    y = 0.05 + 0.3 * torch.arange(joints, dtype=dtype)
    pos = torch.zeros(n, frames, joints, 3, dtype=dtype)
    pos[..., 1] = y
    pos[..., 0] = torch.linspace(-1, 1, frames, dtype=dtype)[None, :, None]
    return pos.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_joint_one_frame_below_the_floor(device, dtype):
    pos = _standing(dtype=dtype, device=device)
    pos[1, 4, 3, 1] = -0.001  # 1 mm below the floor, one joint, one frame, clip 1
    strict = GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.0))
    frames = strict(pos)
    assert frames.shape == (3, 10) and frames.device == pos.device and frames.dtype == torch.bool
    expected = torch.ones(3, 10, dtype=torch.bool, device=device)
    expected[1, 4] = False
    assert torch.equal(frames, expected)
    assert strict.clip_verdicts(pos).tolist() == [True, False, True]
    assert torch.allclose(strict.lowest_height_m(pos)[1, 4], torch.tensor(-0.001, dtype=dtype, device=device))
    # within a 1 cm tolerance the same clip is valid; 11 mm below is not
    tolerant = GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.01, per_frame=False))
    assert tolerant(pos).tolist() == [True, True, True]
    pos[1, 4, 3, 1] = -0.011
    assert tolerant(pos).tolist() == [True, False, True]


@pytest.mark.parametrize("device", DEVICES)
def test_exactly_on_the_floor_is_valid(device):
    pos = _standing(device=device)
    pos[:, :, 0, 1] = 0.0
    assert bool(GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.0))(pos).all())
    raised = GroundPenetrationOracle(GroundPenetrationConfig(floor_height_m=0.5, tolerance_m=0.0))
    assert not bool(raised.clip_verdicts(pos).any())  # a raised floor: every clip has joints below it


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_frames_raise(device):
    pos = _standing(device=device)
    pos[2, 7, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="clip 2, frame 7"):
        GroundPenetrationOracle()(pos)
    pos[2, 7, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        GroundPenetrationOracle()(pos)


@pytest.mark.parametrize("device", DEVICES)
def test_normalised_features_are_decoded(device):
    pos = _standing(device=device).double()
    pos[0, 2, 0, 1] = -0.02
    norm = MotionNormalisation.fit(pos.cpu().numpy() + torch.randn(pos.shape, dtype=torch.float64).numpy())
    feats = norm.encode(pos)
    oracle = GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.01), normalisation=norm)
    assert torch.equal(oracle(feats), GroundPenetrationOracle(GroundPenetrationConfig(tolerance_m=0.01))(pos))
    assert not bool(oracle(feats)[0, 2]) and bool(oracle(feats)[0, 3])


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(n, F, J, 3\)"):
        GroundPenetrationOracle()(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        GroundPenetrationOracle()(torch.zeros(2, 3, 4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="tolerance_m"):
        GroundPenetrationConfig(tolerance_m=-0.01)
