"""Conditioned samples through the generic stages: guidance, balanced data, classifier, distillation.

The convention (``genneg.guidance.guided``): per-sample conditioning tensors travel as ``**cond`` into every
model, classifier and oracle call; ``part_mask_key`` names the ``(B, P)`` mask of real parts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genneg.diffusion.ddpm import DDPMConfig, DDPMSchedule, EpsDenoiser
from genneg.diffusion.edm import EDMConfig
from genneg.guidance import GuidedDenoiser, TimeClassifier, guidance_gradient
from genneg.pipeline.balanced import BalancedDataset, draw_balanced, draw_imbalanced
from genneg.pipeline.classifier import ClassifierConfig, train_classifier
from genneg.pipeline.distill import DistillConfig, distillation_loss, train_distilled

SCHEDULE = DDPMSchedule(DDPMConfig(num_steps=50))


class PartLogits(nn.Module):
    """``F(x_in (B, P, 2), c_noise, *, shift (B,), valid (B, P)) -> (B, P)``: every part, padding too,
    gets a logit that depends on ``x`` (so a missing mask would show)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.5, -0.5]))

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, *, shift: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        return x_in @ self.w + shift[:, None] + 0.1 * c_noise[:, None]


class ShiftEps(nn.Module):
    """``eps(x_t, t, *, shift, valid) = 0.5 x_t + shift``."""

    parameterisation = "eps"

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, shift: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        return 0.5 * x_t + shift[:, None, None]


def _cond(b: int, p: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    valid = torch.rand(b, p, generator=g) < 0.6
    valid[:, 0] = True
    return {"shift": torch.randn(b, generator=g), "valid": valid}


def test_guided_ddpm_model_passes_cond_and_masks_padding() -> None:
    """A DDPM ε-network guided through its EpsDenoiser gets ``cond`` by keyword, and its ε_K is DDPM's."""
    b = 5
    cond = _cond(b)
    x_t = torch.randn(b, 3, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 10, 20, 30, 49])
    classifier = TimeClassifier(PartLogits(), sigma_data=1.0)
    guided = GuidedDenoiser(EpsDenoiser(ShiftEps(), SCHEDULE), [classifier], [0.7], part_mask_key="valid")
    ab = SCHEDULE.alphas_cumprod[t].to(torch.float32)
    sigma = ((1 - ab) / ab).sqrt()
    x_ve = x_t / ab.sqrt()[:, None, None]

    def eps_k(model: GuidedDenoiser) -> torch.Tensor:
        return (x_ve - model(x_ve, sigma, **cond)) / sigma[:, None, None]

    out = eps_k(guided)
    # by hand: sigma_t and the VE input, then the masked sum of log-probabilities
    xg = x_t.clone().requires_grad_(True)
    logits = classifier(xg / ab.sqrt()[:, None, None], sigma, **cond)
    total = (nn.functional.logsigmoid(logits) * cond["valid"]).sum()
    (grad,) = torch.autograd.grad(total, xg)
    expected = ShiftEps()(x_t, t, **cond) - 0.7 * (1 - ab).sqrt()[:, None, None] * grad
    # float32, x_VE up to ~50 at t = 49: (x - D) / σ loses ~6 bits to cancellation
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    unmasked = eps_k(GuidedDenoiser(EpsDenoiser(ShiftEps(), SCHEDULE), [classifier], [0.7]))
    assert not torch.allclose(unmasked, out)  # padding logits depend on x: the mask matters
    with pytest.raises(ValueError, match="part_mask_key"):
        eps_k(GuidedDenoiser(EpsDenoiser(ShiftEps(), SCHEDULE), [classifier], part_mask_key="present"))


def test_guided_denoiser_and_gradient_with_cond() -> None:
    b = 4
    cond = _cond(b)
    x = torch.randn(b, 3, 2, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0])

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, *, shift: torch.Tensor, valid: torch.Tensor):
        return x / (1 + sigma[:, None, None] ** 2) + shift[:, None, None]

    classifier = TimeClassifier(PartLogits(), sigma_data=0.5)
    guided = GuidedDenoiser(denoiser, [classifier], part_mask_key="valid")
    grad = guidance_gradient([classifier], x, sigma, cond=cond, part_mask_key="valid")
    torch.testing.assert_close(guided(x, sigma, **cond), denoiser(x, sigma, **cond)
                               + sigma[:, None, None] ** 2 * grad)
    # padding parts add nothing: zero the padding logits' weights by hand and compare
    xg = x.clone().requires_grad_(True)
    lp = nn.functional.logsigmoid(classifier(xg, sigma, **cond)) * cond["valid"]
    torch.testing.assert_close(grad, torch.autograd.grad(lp.sum(), xg)[0])


def _sample_fn(seed: int):
    g = torch.Generator().manual_seed(seed)
    counter = {"next": 0}

    def sample_fn(n: int):
        ids = torch.arange(counter["next"], counter["next"] + n)
        counter["next"] += n
        x = torch.randn(n, 2, generator=g) + ids[:, None].to(torch.float32)
        return x, {"id": ids, "valid": torch.ones(n, 2, dtype=torch.bool)}

    return sample_fn


def _parity_oracle(x: torch.Tensor, *, id: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-part verdicts: part 0 of odd ids is invalid; ids must match the samples (x ~ id + noise)."""
    assert bool(((x[:, 0] - id.to(torch.float32)).abs() < 6).all())
    out = torch.ones(x.shape[0], 2, dtype=torch.bool)
    out[:, 0] = id % 2 == 0
    return out


def test_balanced_data_keeps_cond_aligned(tmp_path) -> None:
    data = draw_balanced(_sample_fn(0), _parity_oracle, 20, batch_size=7,
                         part_mask_fn=lambda x, *, id, valid: valid,
                         generator=torch.Generator().manual_seed(1))
    assert data.cond is not None and set(data.cond) == {"id", "valid"}
    assert torch.equal(data.labels, data.cond["id"] % 2 == 0)
    assert torch.allclose(data.x[:, 0].round(), data.cond["id"].to(torch.float32), atol=5)
    assert data.pi_neg == pytest.approx(0.5, abs=0.1)
    data.save(tmp_path / "set.safetensors")
    back = BalancedDataset.load(tmp_path / "set.safetensors")
    assert back.cond is not None and all(torch.equal(back.cond[k], data.cond[k]) for k in data.cond)
    rows = data.cond_rows(torch.tensor([3, 1]))
    assert torch.equal(rows["id"], data.cond["id"][[3, 1]])
    mix = draw_imbalanced(_sample_fn(1), _parity_oracle, 9, batch_size=4)
    assert torch.equal(mix.labels, mix.cond["id"] % 2 == 0) and mix.cond["id"].tolist() == list(range(9))
    with pytest.raises(ValueError, match="cond"):
        BalancedDataset(data.x, data.labels, None, 0.5, 0.5, 20, cond={"id": data.cond["id"][:3]})


def test_classifier_trains_on_its_conditioning() -> None:
    # the label is carried by the conditioning alone: only a classifier that sees cond can learn it
    n = 64
    z = torch.randn(n, generator=torch.Generator().manual_seed(3))
    labels = z > 0
    data = BalancedDataset(torch.zeros(n, 2), labels, None, 0.5, 0.5, n, cond={"z": z})

    class CondLogit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.zeros(()))

        def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, *, z: torch.Tensor) -> torch.Tensor:
            return self.a * z

    classifier = TimeClassifier(CondLogit(), sigma_data=1.0)
    losses = train_classifier(classifier, data, ClassifierConfig(iterations=60, batch_size=32, lr=0.1),
                              EDMConfig(sigma_min=0.01, sigma_max=10.0, sigma_data=1.0),
                              generator=torch.Generator().manual_seed(4))
    assert float(classifier.net.a.detach()) > 1.0 and losses[-1] < losses[0]


def test_eps_distillation_with_cond() -> None:
    cond = _cond(32)
    x0 = torch.randn(32, 3, 2, generator=torch.Generator().manual_seed(5))
    teacher = GuidedDenoiser(EpsDenoiser(ShiftEps(), SCHEDULE), [TimeClassifier(PartLogits(), 1.0)],
                             part_mask_key="valid")
    same = GuidedDenoiser(EpsDenoiser(ShiftEps(), SCHEDULE))
    assert float(distillation_loss(EpsDenoiser(ShiftEps(), SCHEDULE), same, x0, SCHEDULE, cond=cond,
                                   generator=torch.Generator().manual_seed(0))) == 0.0

    class Student(nn.Module):
        parameterisation = "eps"

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.5))
            self.bias = nn.Parameter(torch.zeros(2))

        def forward(self, x_t, t, *, shift, valid):
            return self.scale * x_t + shift[:, None, None] + self.bias

    student = Student()
    before = float(distillation_loss(EpsDenoiser(student, SCHEDULE), teacher, x0, SCHEDULE, cond=cond,
                                     generator=torch.Generator().manual_seed(0)).detach())
    train_distilled(student, teacher, x0, DistillConfig(iterations=80, batch_size=32, lr=0.05), SCHEDULE,
                    generator=torch.Generator().manual_seed(6), cond=cond)
    after = float(distillation_loss(EpsDenoiser(student, SCHEDULE), teacher, x0, SCHEDULE, cond=cond,
                                    generator=torch.Generator().manual_seed(0)).detach())
    assert after < before
    with pytest.raises(ValueError, match="rows"):
        train_distilled(Student(), teacher, x0, DistillConfig(iterations=1), SCHEDULE,
                        cond={"shift": cond["shift"][:3], "valid": cond["valid"][:3]})
