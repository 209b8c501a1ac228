"""One test body over every model form: EDM denoiser and DDPM ε-network (through its EpsDenoiser); plain,
guided (a stacked GuidedDenoiser) and distilled (trained here with Eq. 12); without and with a per-sample
conditioning dict ``cond`` passed by keyword to every model and classifier.

For each form: the library sampler (Heun on the PF-ODE for EDM, Euler-ancestral on the DDPM levels),
inpainting (the fixed part kept exactly, FastSampler equal to the reference sampler), FastSampler
(identical with and without preallocation, a deadline, two threads), and one conditioned oracle
``oracle(x, **cond)`` serving both the pipeline's balanced draw and FastSampler."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from torch import nn

from genneg.data.checkerboard import CheckerboardOracle
from genneg.diffusion import (
    DDPMConfig,
    DDPMSchedule,
    EDMConfig,
    EDMPrecond,
    as_denoiser,
    euler_ancestral_sample,
    heun_sample,
    make_sigmas,
)
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
from genneg.oracles import evaluate_oracle, sample_verdicts
from genneg.pipeline.balanced import draw_balanced
from genneg.pipeline.distill import DistillConfig, train_distilled
from genneg.planning.fast_sampler import FastSampler, SamplerConfig
from genneg.planning.inpainting import fix_coordinates, inpaint_ancestral_sample, inpaint_heun_sample

SCHEDULE = DDPMSchedule(DDPMConfig(num_steps=40))
EDM = EDMConfig(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
STEPS = 5


def _mlp(dim_out: int, seed: int) -> ResidualMLP:
    torch.manual_seed(seed)
    cfg = ResidualMLPConfig(dim_in=2, dim_out=dim_out, hidden=32, num_blocks=1, embedding_dim=16)
    return ResidualMLP(cfg)


class CondNet(nn.Module):
    """``F(x, time, **cond)``: a residual MLP plus, when conditioned, ``shift`` (B,) times a learned
    direction (so the conditioning changes every output)."""

    def __init__(self, dim_out: int, seed: int, conditioned: bool) -> None:
        super().__init__()
        self.net = _mlp(dim_out, seed)
        self.conditioned = conditioned
        self.direction = nn.Parameter(torch.linspace(0.5, 1.0, dim_out))

    def forward(self, x: torch.Tensor, time: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        out = self.net(x, time)
        if self.conditioned:
            out = out + cond["shift"][:, None] * self.direction
        elif cond:
            raise TypeError(f"an unconditioned network got cond {sorted(cond)}")
        return out


class EpsNet(nn.Module):
    """A DDPM ε-network ``eps(x_t, t, **cond)``."""

    parameterisation = "eps"

    def __init__(self, seed: int, conditioned: bool) -> None:
        super().__init__()
        self.inner = CondNet(2, seed, conditioned)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.inner(x_t, t.to(x_t.dtype) / SCHEDULE.num_steps, **cond)


FAMILIES = ("edm", "ddpm")
KINDS = ("plain", "guided", "distilled")


def _base(family: str, conditioned: bool, seed: int = 0) -> nn.Module:
    if family == "edm":
        return EDMPrecond(CondNet(2, seed, conditioned), EDM.sigma_data).eval()
    return EpsNet(seed, conditioned).eval()


_CACHE: dict[tuple[str, str, bool], nn.Module] = {}


def build_model(family: str, kind: str, conditioned: bool) -> nn.Module:
    """The model of one form (built once per test session: distillation trains a few steps)."""
    key = (family, kind, conditioned)
    if key in _CACHE:
        return _CACHE[key]
    base = _base(family, conditioned)
    denoiser = as_denoiser(base, SCHEDULE)
    classifiers = [TimeClassifier(CondNet(1, 10 + k, conditioned), EDM.sigma_data).eval() for k in range(2)]
    guided = GuidedDenoiser(denoiser, classifiers, [1.0, 0.5]).eval()
    if kind == "plain":
        model: nn.Module = base
    elif kind == "guided":
        model = guided
    else:
        student = copy.deepcopy(base)
        g = torch.Generator().manual_seed(3)
        x0 = torch.rand(256, 2, generator=g) * 4 - 2
        cond = {"shift": torch.randn(256, generator=g)} if conditioned else None
        noise = SCHEDULE if family == "ddpm" else EDM
        train_distilled(student, guided, x0, DistillConfig(iterations=20, batch_size=64, lr=1e-3), noise,
                        generator=g, cond=cond)
        model = student.eval()
    _CACHE[key] = model
    return model


def _cond(n: int, conditioned: bool, value: float = 0.8) -> dict[str, torch.Tensor] | None:
    return {"shift": torch.full((n,), value)} if conditioned else None


def _sigmas(family: str) -> torch.Tensor:
    if family == "ddpm":
        return SCHEDULE.sampling_sigmas(STEPS)
    return make_sigmas("log_linear", STEPS, EDM.sigma_min, EDM.sigma_max)


def _start_scale(family: str) -> float:
    s0 = float(_sigmas(family)[0])
    return math.sqrt(1 + s0 * s0) if family == "ddpm" else s0


def _library_sample(model: nn.Module, family: str, noise: torch.Tensor, cond: dict | None,
                    seed: int) -> torch.Tensor:
    denoiser = as_denoiser(model, SCHEDULE)
    x = noise * _start_scale(family)
    if family == "ddpm":
        return euler_ancestral_sample(denoiser, x, _sigmas(family), cond=cond,
                                      generator=torch.Generator().manual_seed(seed))
    return heun_sample(denoiser, x, _sigmas(family), cond=cond)


def shifted_half_plane(x: torch.Tensor, *, shift: torch.Tensor | None = None) -> torch.Tensor:
    """A conditioned oracle, ``oracle(x, **cond)``: valid iff ``x[:, 0] > shift`` (``shift`` ``(N,)``, the
    models' conditioning entry; 0 without it). About half of a random model's samples pass."""
    return x[:, 0] > (0.0 if shift is None else shift)


def _fast(model: nn.Module, family: str, **kw) -> FastSampler:
    cfg = {"num_parallel": 12, "num_steps": STEPS, "fast_paths": False, **kw}
    return FastSampler(model, shifted_half_plane, sample_shape=(2,), config=SamplerConfig(**cfg),
                       ddpm_schedule=SCHEDULE if family == "ddpm" else None)


FORMS = [(f, k, c) for f in FAMILIES for k in KINDS for c in (False, True)]
IDS = [f"{f}-{k}-{'cond' if c else 'nocond'}" for f, k, c in FORMS]


@pytest.mark.parametrize(("family", "kind", "conditioned"), FORMS, ids=IDS)
def test_library_sampler(family: str, kind: str, conditioned: bool) -> None:
    model = build_model(family, kind, conditioned)
    noise = torch.randn(12, 2, generator=torch.Generator().manual_seed(1))
    a = _library_sample(model, family, noise, _cond(12, conditioned), seed=2)
    b = _library_sample(model, family, noise, _cond(12, conditioned), seed=2)
    assert a.shape == (12, 2) and bool(torch.isfinite(a).all()) and torch.equal(a, b)
    if conditioned:  # the conditioning reaches the model (and the classifiers)
        other = _library_sample(model, family, noise, _cond(12, True, value=-0.8), seed=2)
        assert not torch.allclose(a, other)
    # FastSampler without a fixed part is the library sampler, bit for bit (its generator draws the
    # initial noise, then the ancestral noise)
    empty = fix_coordinates((2,), 0, 0.0)
    empty = type(empty)(empty.values, torch.zeros_like(empty.mask), cond=_cond(1, conditioned) or {})
    result = _fast(model, family)(empty, seed=5)
    g = torch.Generator().manual_seed(5)
    start = torch.randn(12, 2, generator=g) * _start_scale(family)
    denoiser = as_denoiser(model, SCHEDULE)
    if family == "edm":
        expected = heun_sample(denoiser, start, _sigmas(family), cond=_cond(12, conditioned))
    else:
        expected = euler_ancestral_sample(denoiser, start, _sigmas(family), cond=_cond(12, conditioned),
                                          generator=g)
    assert torch.equal(result.samples, expected)


@pytest.mark.parametrize(("family", "kind", "conditioned"), FORMS, ids=IDS)
def test_inpainting_keeps_the_fixed_part(family: str, kind: str, conditioned: bool) -> None:
    model = build_model(family, kind, conditioned)
    value = -1.37  # not exact in float32: the stored float32 value must come back
    condition = fix_coordinates((2,), 1, value, cond=_cond(1, conditioned))
    result = _fast(model, family)(condition, seed=7)
    fixed = result.samples[:, 1]
    assert torch.equal(fixed, torch.full_like(fixed, condition.values[1].item()))
    assert float(result.samples[:, 0].std()) > 0.01  # the free coordinate is sampled
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(12, 2, generator=g)
    denoiser = as_denoiser(model, SCHEDULE)
    if family == "ddpm":
        expected = inpaint_ancestral_sample(denoiser, noise, _sigmas(family), condition,
                                            start_scale=_start_scale(family), generator=g)
    else:
        expected = inpaint_heun_sample(denoiser, noise, _sigmas(family), condition)
    assert torch.equal(result.samples, expected)


@pytest.mark.parametrize(("family", "kind", "conditioned"), FORMS, ids=IDS)
def test_fast_sampler_buffers_deadline_threads(family: str, kind: str, conditioned: bool) -> None:
    model = build_model(family, kind, conditioned)
    condition = fix_coordinates((2,), 0, 0.3, cond=_cond(1, conditioned))
    pre, fresh = _fast(model, family, max_rounds=2), _fast(model, family, max_rounds=2)
    fresh = FastSampler(model, shifted_half_plane, sample_shape=(2,), config=pre.config,
                        ddpm_schedule=pre.ddpm_schedule, preallocate=False)
    for seed in (0, 1):
        a, b = pre(condition, seed=seed), fresh(condition, seed=seed)
        assert torch.equal(a.samples, b.samples) and torch.equal(a.verdicts, b.verdicts)
    # a deadline already past: not ok, nothing sampled
    late = pre(condition, seed=0, deadline_ms=1e-6)
    assert not late.ok and late.reason == "deadline" and late.rounds == 0
    # two threads on one sampler (served one after the other) and on clones: each result is right
    expected = {seed: pre(condition, seed=seed).samples for seed in (3, 4)}
    for shared in (True, False):
        got: dict[int, torch.Tensor] = {}

        def work(seed: int, sampler: FastSampler, out: dict[int, torch.Tensor] = got) -> None:
            out[seed] = sampler(condition, seed=seed).samples

        threads = [threading.Thread(target=work, args=(s, pre if shared else pre.clone())) for s in (3, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for seed in (3, 4):
            assert torch.equal(got[seed], expected[seed]), (shared, seed)


COND_FORMS = [form for form in FORMS if form[2]]


@pytest.mark.parametrize(("family", "kind", "conditioned"), COND_FORMS,
                         ids=[i for i, f in zip(IDS, FORMS) if f[2]])
def test_one_conditioned_oracle_for_pipeline_and_planner(family: str, kind: str, conditioned: bool) -> None:
    """The same ``oracle(x, **cond)`` function labels the pipeline's balanced draw and judges FastSampler's
    samples, each called with the dict the model got; their verdicts agree row for row."""
    model = build_model(family, kind, conditioned)
    sampler = _fast(model, family)
    shift = 1.0
    condition = fix_coordinates((2,), 0, 0.0, cond=_cond(1, True, value=shift))
    condition = type(condition)(condition.values, torch.zeros_like(condition.mask), cond=condition.cond)
    planner: list[tuple[torch.Tensor, torch.Tensor]] = []

    def sample_fn(n: int, start: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        result = sampler(condition, seed=start)
        planner.append((result.samples, result.verdicts))
        return result.samples, _cond(n, True, value=shift)

    data = draw_balanced(sample_fn, shifted_half_plane, 2, batch_size=12, max_draws=12 * 40)
    samples, verdicts = (torch.cat(parts) for parts in zip(*planner))
    assert data.num_drawn == samples.shape[0]
    # the pipeline's count of negatives is the planner's, over the same samples
    assert round(data.pi_neg * data.num_drawn) == int((~sample_verdicts(verdicts)).sum())
    assert torch.equal(data.cond["shift"], torch.full((2,), shift))
    assert torch.equal(data.labels, sample_verdicts(evaluate_oracle(shifted_half_plane, data.x, data.cond)))
    # the planner passed the conditioning to the oracle: its verdicts are those at x - shift, not at x
    assert torch.equal(verdicts, samples[:, 0] > shift)
    assert not torch.equal(verdicts, samples[:, 0] > 0.0)


def test_oracle_without_the_conditioning_keywords_is_named() -> None:
    """A plain ``oracle(x)`` with a conditioned model fails with the keys it was given."""
    model = build_model("edm", "plain", True)
    sampler = FastSampler(model, CheckerboardOracle(), sample_shape=(2,),
                          config=SamplerConfig(num_parallel=4, num_steps=2, fast_paths=False))
    condition = fix_coordinates((2,), 0, 0.3, cond=_cond(1, True))
    with pytest.raises(TypeError, match="shift"):
        sampler(condition, seed=0)
