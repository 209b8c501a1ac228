"""Foot skating, floating, FID and KID on constructed motions and Gaussians."""

import math

import numpy as np
import pytest
import torch

from genneg.data.motion import MotionNormalisation, ProceduralConfig, generate_procedural_motions
from genneg.metrics.motion import (
    MotionEncoderConfig,
    MotionQualityConfig,
    floating_ratio,
    foot_skating_ratio,
    frechet_distance,
    kernel_inception_distance,
    train_motion_encoder,
)

CFG = MotionQualityConfig(fps=20)


def _foot_track(height_m, speed_m_s, frames=21, fps=20.0):
    """One clip, two joints: a 'foot' (joint 0) sliding along x, a 'head' (joint 1) 1.7 m up."""
    pos = torch.zeros(1, frames, 2, 3, dtype=torch.float64)
    pos[0, :, 0, 0] = speed_m_s * torch.arange(frames) / fps
    pos[0, :, 0, 1] = height_m
    pos[0, :, 1, 1] = 1.7
    return pos


@pytest.mark.parametrize(("height", "speed", "expected"), [
    (0.01, 1.0, 1.0), (0.01, 0.0, 0.0), (0.10, 1.0, 0.0), (0.01, 0.4, 0.0), (0.049, 0.6, 1.0)])
def test_skating_on_constructed_tracks(height, speed, expected):
    assert float(foot_skating_ratio(_foot_track(height, speed), [0], CFG)[0]) == expected


def test_skating_counts_frame_pairs():
    pos = _foot_track(0.01, 0.0)
    pos[0, 10:, 0, 0] += 0.1  # one jump of 10 cm between frames 9 and 10: 2 m/s in one pair of 20
    assert float(foot_skating_ratio(pos, [0], CFG)[0]) == pytest.approx(1 / 20)
    pos[0, 9, 0, 1] = 0.2  # foot lifted in frame 9: that pair is not a contact any more
    assert float(foot_skating_ratio(pos, [0], CFG)[0]) == 0.0
    with pytest.raises(ValueError, match="feet"):
        foot_skating_ratio(pos, [5], CFG)


def test_floating_hover_versus_jump():
    frames = 60
    hover = _foot_track(0.3, 0.0, frames)
    assert float(floating_ratio(hover, CFG)[0]) == 1.0
    # a 0.5 s ballistic flight (apex 0.31 m) is a jump, not floating; the same lift held 1.5 s floats
    t = torch.arange(frames) / 20.0
    jump = _foot_track(0.02, 0.0, frames)
    tau = t - 1.0
    jump[0, :, 0, 1] += torch.where((tau > 0) & (tau < 0.5), 0.5 * 9.81 * tau * (0.5 - tau), 0.0)
    assert float(floating_ratio(jump, CFG)[0]) == 0.0
    held = _foot_track(0.02, 0.0, frames)
    held[0, 20:50, 0, 1] = 0.3
    assert float(floating_ratio(held, CFG)[0]) == pytest.approx(30 / 60)


def test_procedural_data_neither_floats_nor_skates_much():
    m = generate_procedural_motions(24, ProceduralConfig(), seed=5)
    pos = torch.from_numpy(m.positions_m)
    assert float(floating_ratio(pos, CFG).max()) == 0.0
    skating = foot_skating_ratio(pos, m.skeleton.feet, CFG)
    assert float(skating.mean()) < 0.15  # the data's own rate (swing feet skimming the floor)


def test_frechet_distance_matches_gaussians():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 40_000
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    mu, s = torch.tensor([1.0, 0.0, -0.5, 0.0], dtype=torch.float64), 2.0
    b = mu + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = float(mu.pow(2).sum()) + d * (1 - s) ** 2  # ||μ||² + Tr(I + s² I - 2 s I)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    with pytest.raises(ValueError, match="features"):
        frechet_distance(a, b[:, :3])


def test_kid_matches_naive_formula_and_orders_distances():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 3, generator=g, dtype=torch.float64)
    b = torch.randn(50, 3, generator=g, dtype=torch.float64) + 0.5
    naive = 0.0
    k = lambda x, y: (float(x @ y) / 3 + 1) ** 3  # noqa: E731
    m = 50
    naive += sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    naive += sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    naive -= 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kernel_inception_distance(a, b, subset_size=50)
    assert mean == pytest.approx(naive, rel=1e-9) and std == 0.0
    big_a = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    same = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    near, _ = kernel_inception_distance(big_a, same, subsets=5, subset_size=1000, generator=g)
    far, _ = kernel_inception_distance(big_a, same + 0.5, subsets=5, subset_size=1000, generator=g)
    assert abs(near) < 0.02 < far


def test_encoder_learns_families_and_fid_sees_a_corruption():
    m = generate_procedural_motions(240, ProceduralConfig(frames=40), seed=2)
    norm = MotionNormalisation.fit(m.positions_m)
    x = norm.encode(torch.from_numpy(m.positions_m).double()).float()
    labels = torch.from_numpy(m.family)
    g = torch.Generator().manual_seed(0)
    config = MotionEncoderConfig(feature_dim=x.shape[-1], num_classes=6, channels=(32, 32, 32), steps=100,
                                 batch_size=64)
    encoder, accuracy = train_motion_encoder(x, labels, config, g)
    assert accuracy > 0.8  # six families are easy to tell apart
    held = generate_procedural_motions(240, ProceduralConfig(frames=40), seed=3)
    xh = norm.encode(torch.from_numpy(held.positions_m).double()).float()
    fx, fh = encoder.embed(x), encoder.embed(xh)
    assert torch.allclose(fx.mean(0), torch.zeros(()), atol=1e-4)  # standardised over the training clips
    # a model that only ever walks (mode collapse) is far from the held-out clips; a fresh draw is not
    walks = encoder.embed(xh[torch.from_numpy(held.family) == 0].repeat(6, 1, 1))
    same, collapsed = frechet_distance(fx, fh), frechet_distance(fx, walks)
    assert math.isfinite(same) and collapsed > 20 * same
    kid_same, kid_collapsed = kernel_inception_distance(fx, fh)[0], kernel_inception_distance(fx, walks)[0]
    assert np.isfinite(kid_same) and kid_collapsed > 10 * abs(kid_same)
