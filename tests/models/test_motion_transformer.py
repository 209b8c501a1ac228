"""Motion transformer: shapes of every head over awkward sizes, conditioning, errors, and that it learns."""

import pytest
import torch

from genneg.diffusion.ddpm import DDPMConfig, DDPMSchedule, ddpm_loss
from genneg.guidance import TimeClassifier
from genneg.models.motion_transformer import (
    MotionEpsNet,
    MotionLogitNet,
    MotionTransformer,
    MotionTransformerConfig,
)


def _config(**kw):
    base = {"feature_dim": 45, "max_frames": 40, "width": 32, "heads": 4, "layers": 2, "time_embed_dim": 16}
    return MotionTransformerConfig(**{**base, **kw})


@pytest.mark.parametrize(("head", "shape"),
                         [("eps", (3, 37, 45)), ("frame_logit", (3, 37)), ("clip_logit", (3,))])
def test_heads_shapes_and_time_dependence(head, shape):
    torch.manual_seed(0)
    net = MotionTransformer(_config(head=head))
    if head == "eps":  # zero-initialised output: perturb it so outputs depend on the input
        torch.nn.init.normal_(net.output.weight, std=0.1)
    x = torch.randn(3, 37, 45)
    out = net(x, torch.tensor([0.0, 10.0, 500.0]))
    assert out.shape == shape and torch.isfinite(out).all()
    again = net(x, torch.tensor([1.0, 10.0, 500.0]))
    assert not torch.allclose(out[0], again[0]) and torch.allclose(out[1:], again[1:], atol=1e-6)


def test_eps_head_starts_at_zero_and_batch_rows_are_independent():
    net = MotionTransformer(_config())
    x = torch.randn(4, 20, 45)
    assert torch.equal(net(x, torch.zeros(4)), torch.zeros(4, 20, 45))
    torch.nn.init.normal_(net.output.weight, std=0.1)
    full = net(x, torch.arange(4.0))
    assert torch.allclose(full[2:3], net(x[2:3], torch.tensor([2.0])), atol=1e-5)


def test_family_conditioning():
    torch.manual_seed(1)
    net = MotionTransformer(_config(num_families=6, head="frame_logit"))
    x, t = torch.randn(2, 12, 45), torch.tensor([5.0, 5.0])
    a = net(x, t, torch.tensor([0, 0]))
    b = net(x, t, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([6, 6])))  # no label = index num_families
    with pytest.raises(ValueError, match="family"):
        net(x, t, torch.tensor([0, 7]))


def test_bad_input_raises():
    net = MotionTransformer(_config())
    with pytest.raises(ValueError, match=r"\(B, F <= 40, 45\)"):
        net(torch.randn(2, 41, 45), torch.zeros(2))
    with pytest.raises(ValueError, match="45"):
        net(torch.randn(2, 10, 44), torch.zeros(2))
    with pytest.raises(ValueError, match="time"):
        net(torch.randn(2, 10, 45), torch.zeros(3))
    with pytest.raises(ValueError, match="heads"):
        _config(width=30)
    with pytest.raises(ValueError, match="head="):
        MotionEpsNet(_config(head="frame_logit"))
    with pytest.raises(ValueError, match="logit head"):
        MotionLogitNet(_config())


def test_classifier_in_time_classifier_gives_per_frame_logits_and_input_gradients():
    torch.manual_seed(2)
    clf = TimeClassifier(MotionLogitNet(_config(head="frame_logit")), sigma_data=1.0)
    x = torch.randn(3, 25, 45, requires_grad=True)
    logits = clf(x, torch.tensor([0.01, 1.0, 30.0]))
    assert logits.shape == (3, 25)
    (grad,) = torch.autograd.grad(torch.nn.functional.logsigmoid(logits).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    clip = TimeClassifier(MotionLogitNet(_config(head="clip_logit")), sigma_data=1.0)
    assert clip(x, torch.tensor([0.1, 0.1, 0.1])).shape == (3,)


def test_eps_net_learns_a_fixed_batch():
    """100 Adam steps on 16 clips lower the DDPM loss well below its value at ε = 0 (which is D
    per clip, the ε variance summed over its F·D coordinates)."""
    torch.manual_seed(3)
    schedule = DDPMSchedule(DDPMConfig(num_steps=100))
    model = MotionEpsNet(_config(feature_dim=9, layers=1))
    t = torch.linspace(0, 1, 16)
    x0 = torch.stack([torch.sin(6 * t + k) for k in range(9)], dim=-1)[None].repeat(16, 1, 1)
    x0 = x0 + 0.1 * torch.randn_like(x0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        start = float(ddpm_loss(model, x0, schedule, generator=g))
    for _ in range(100):
        loss = ddpm_loss(model, x0, schedule, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = sum(float(ddpm_loss(model, x0, schedule, generator=g)) for _ in range(10)) / 10
    assert start == pytest.approx(16 * 9, rel=0.15)
    assert end < 0.5 * start, (start, end)
