"""Fused guidance kernels against their PyTorch references (autograd gradients), on every kernel device:
under the interpreter on the CPU, compiled on CUDA (``-m gpu``; see ``conftest.py``).

One test body per kernel; shapes are awkward on purpose (batch 1, 7, 1000: not multiples of the row tile;
data dims 2..64; hidden 16..512 padded to powers of two; mixed hidden sizes and block counts in one
stack; multi-part logits). Noise levels span sigma_min = 0.002 to sigma_max = 80.

Tolerances (float32 everywhere): the kernel sums the same products as PyTorch in another order (row tiles,
64-wide chunks), so agreement is to float32 rounding of the largest terms, ~1e-7 relative; we allow
``REL = 1e-5`` of the output's magnitude (floored at 1), two orders of margin, still far below any real
error (a wrong term or sign is O(1) relative). The guidance term ``σ² ∇ log c`` grows to ~σ at σ = 80,
which is why the tolerance scales with the output.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import genneg.reference.guidance as ref
from genneg.diffusion import EDMPrecond, heun_sample, heun_step, make_sigmas
from genneg.guidance import GuidedDenoiser, TimeClassifier, guidance_gradient
from genneg.guidance.analytic import AnalyticMLPGuidance, build_analytic_guidance
from genneg.guidance.fused import (
    FusedCombineGuidance,
    FusedMLPClassifierGuidance,
    FusedMLPGuidance,
    build_fused_guidance,
    stack_input_gradients,
)
from genneg.kernels import fused_guidance_update as update_kernels
from genneg.kernels import fused_mlp_guidance as mlp_kernels
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
from genneg.profiling import nvtx_enabled, nvtx_range, set_nvtx_enabled

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
REL = 1e-5  # see module docstring


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> None:
    """``max |a - e| <= rel · max(1, max |e|)``: float32 reordering, relative to the output's scale."""
    assert actual.shape == expected.shape
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rel * scale, f"max error {err:.3e} > {rel:.0e} x scale {scale:.3e}"


def _mlp(dim_in: int, dim_out: int, hidden: int, blocks: int, seed: int, emb: int = 16) -> ResidualMLP:
    torch.manual_seed(seed)
    net = ResidualMLP(ResidualMLPConfig(dim_in, dim_out, hidden=hidden, num_blocks=blocks, embedding_dim=emb))
    with torch.no_grad():  # larger weights than the default init: gradients far from zero
        for p in net.parameters():
            p.mul_(1.5)
    return net


def _guided(dim: int, hidden: int | tuple[int, ...], k: int, parts: int = 1, blocks: int | tuple = 2
            ) -> GuidedDenoiser:
    hiddens = hidden if isinstance(hidden, tuple) else (hidden,) * (k + 1)
    nbs = blocks if isinstance(blocks, tuple) else (blocks,) * (k + 1)
    denoiser = EDMPrecond(_mlp(dim, dim, hiddens[0], nbs[0], seed=100), SIGMA_DATA)
    classifiers = [TimeClassifier(_mlp(dim, parts, hiddens[i + 1], nbs[i + 1], seed=i), SIGMA_DATA)
                   for i in range(k)]
    scales = [1.0 + 0.25 * i for i in range(k)]
    return GuidedDenoiser(denoiser, classifiers, scales, backend="triton")


def _stack(guided: GuidedDenoiser, device: torch.device | None = None) -> mlp_kernels.PackedMLPStack:
    """The packed stack of ``guided`` (a copy moved to ``device`` first, when given)."""
    if device is not None:
        guided = copy.deepcopy(guided).to(device)
    fused = build_fused_guidance(guided)
    assert isinstance(fused, FusedMLPGuidance)
    return fused.stack


def _inputs(batch: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), batch)).to(torch.float32)
    x = torch.randn(batch, dim, generator=g) * torch.sqrt(sigma[:, None] ** 2 + SIGMA_DATA**2)
    return x, sigma


# (K, batch, dim, hidden (denoiser, classifiers...), parts, blocks)
MLP_CASES = [
    (0, 7, 2, 32, 1, 2),
    (1, 1, 2, 32, 1, 2),
    (3, 7, 5, 24, 1, 1),
    (8, 7, 3, 16, 1, 2),
    (1, 1000, 2, 16, 1, 1),
    (1, 7, 64, 64, 1, 2),
    (1, 7, 17, 512, 1, 1),
    (3, 7, 4, (40, 16, 32, 24), 3, (2, 1, 2, 0)),
]


@pytest.mark.parametrize(("k", "batch", "dim", "hidden", "parts", "blocks"), MLP_CASES)
def test_mlp_guided_denoise(device, k, batch, dim, hidden, parts, blocks):
    guided = _guided(dim, hidden, k, parts, blocks)
    stack, k_stack = _stack(guided), _stack(guided, device)  # reference on the CPU, kernel on `device`
    x, sigma = _inputs(batch, dim)
    out = mlp_kernels.mlp_guided_denoise(x.to(device), sigma.to(device), k_stack).cpu()
    twin = ref.mlp_guided_denoise(x, sigma, stack)
    _assert_close(out, twin)
    # the packed twin against the modules themselves (exact autograd of D1's torch path)
    with torch.no_grad():
        torch_path = GuidedDenoiser(guided.denoiser, guided.classifiers, guided.scales, backend="torch")
        modules = torch_path(x, sigma)
    _assert_close(twin, modules)
    # an externally computed D(x; sigma) gives the same D_K
    with torch.no_grad():
        denoised = guided.denoiser(x, sigma)
    got = mlp_kernels.mlp_guided_denoise(x.to(device), sigma.to(device), k_stack,
                                         denoised=denoised.to(device))
    _assert_close(got.cpu(), twin)


# each configuration once, the three kinds of step spread over them (interpreter time)
STEP_CASES = [
    (*MLP_CASES[0], SIGMA_MAX, 40.0),
    (*MLP_CASES[1], 0.5, 0.0),
    (*MLP_CASES[2], 0.01, SIGMA_MIN),
    (*MLP_CASES[3], SIGMA_MAX, 40.0),
    (*MLP_CASES[5], 0.5, 0.0),
    (*MLP_CASES[7], 0.01, SIGMA_MIN),
]


@pytest.mark.parametrize(("k", "batch", "dim", "hidden", "parts", "blocks", "sigma_cur", "sigma_next"),
                         STEP_CASES)
def test_mlp_guided_step(device, k, batch, dim, hidden, parts, blocks, sigma_cur, sigma_next):
    guided = _guided(dim, hidden, k, parts, blocks)
    stack, k_stack = _stack(guided), _stack(guided, device)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1)) * sigma_cur
    for method in ("heun", "euler") if sigma_next > 0 else ("heun",):
        expected = ref.mlp_guided_step(x, sigma_cur, sigma_next, stack, method)
        got = mlp_kernels.mlp_guided_step(x.to(device), sigma_cur, sigma_next, k_stack, method)
        _assert_close(got.cpu(), expected)
    in_place = x.clone().to(device)
    result = mlp_kernels.mlp_guided_step(in_place, sigma_cur, sigma_next, k_stack, out=in_place)
    assert result.data_ptr() == in_place.data_ptr()
    _assert_close(in_place.cpu(), ref.mlp_guided_step(x, sigma_cur, sigma_next, stack))


def test_time_features_match_modules():
    guided = _guided(3, (40, 16, 32), 2, blocks=(2, 1, 2))
    stack = _stack(guided)
    sigma = torch.tensor([SIGMA_MIN, 1.0, SIGMA_MAX])
    tb = stack.time_features(sigma)
    nets = [guided.denoiser.net] + [c.net for c in guided.classifiers]
    for i, net in enumerate(nets):
        h = net.config.hidden
        expected = net.time_features(torch.log(sigma) / 4) + net.input_fc.bias
        _assert_close(tb[:, i, :h], expected.detach())
        assert torch.all(tb[:, i, h:] == 0)


def test_mlp_kernel_rejects_bad_input():
    stack = _stack(_guided(3, 16, 1))
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        mlp_kernels.mlp_guided_denoise(torch.randn(4, 2), torch.ones(4), stack)
    with pytest.raises(TypeError, match="float32"):
        mlp_kernels.mlp_guided_step(x.double(), 1.0, 0.5, stack)
    with pytest.raises(ValueError, match="sigma_cur > sigma_next"):
        mlp_kernels.mlp_guided_step(x, 0.5, 1.0, stack)
    with pytest.raises(ValueError, match="sigma must have shape"):
        mlp_kernels.mlp_guided_denoise(x, torch.ones(3), stack)
    with pytest.raises(TypeError, match="ResidualMLP"):
        mlp_kernels.pack_mlp_stack(
            nn.Linear(3, 3), [], [], sigma_data_denoiser=0.5, sigma_data_classifier=0.5
        )


# ------------------------------------------------------------------------ combine-and-update kernel


@pytest.mark.parametrize("k", [0, 1, 3, 8])
@pytest.mark.parametrize(("batch", "shape"), [(1, (2,)), (7, (5, 2)), (1000, (3,)), (7, (64,))])
@pytest.mark.parametrize("with_logits", [True, False])
def test_guidance_update(device, k, batch, shape, with_logits):
    """Each update kernel on ``device`` against its CPU twin (``_k`` moves the inputs, ``.cpu()`` back)."""
    g = torch.Generator().manual_seed(k * 100 + batch)
    full = (batch, *shape)
    x, denoised, noise = (torch.randn(full, generator=g) for _ in range(3))
    grads = torch.randn((k, *full), generator=g)
    logits = torch.randn(k, batch, generator=g) * 3 if with_logits else None
    scales = torch.rand(k, generator=g) + 0.5
    sigma = torch.exp(torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), batch))
    args = (grads, logits, scales)

    def _k(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    k_args = tuple(_k(a) for a in args)
    _assert_close(update_kernels.edm_guided_denoise(_k(denoised), *k_args, _k(sigma)).cpu(),
                  ref.edm_guided_denoise(denoised, *args, sigma))
    for s_cur, s_next in [(SIGMA_MAX, 60.0), (0.01, SIGMA_MIN), (0.3, 0.0)]:
        d_kernel, d_ref = torch.empty(full, device=device), torch.empty(full)
        euler = update_kernels.edm_guided_step(_k(x), _k(denoised), *k_args, s_cur, s_next, d_out=d_kernel)
        euler_ref = ref.edm_guided_step(x, denoised, *args, s_cur, s_next, d_out=d_ref)
        _assert_close(euler.cpu(), euler_ref)
        _assert_close(d_kernel.cpu(), d_ref)
        if s_next > 0:
            heun = update_kernels.edm_guided_step(euler, _k(denoised), *k_args, s_cur, s_next, x_prev=_k(x),
                                                  d_prev=d_kernel)
            _assert_close(heun.cpu(), ref.edm_guided_step(euler.cpu(), denoised, *args, s_cur, s_next,
                                                          x_prev=x, d_prev=d_kernel.cpu()))
    for s_cur, s_next in [(157.0, 150.0), (0.02, 0.01), (0.1, 0.0)]:  # Euler-ancestral (DDPM levels)
        got = update_kernels.edm_guided_ancestral_step(_k(x), _k(denoised), *k_args, s_cur, s_next, _k(noise))
        _assert_close(got.cpu(), ref.edm_guided_ancestral_step(x, denoised, *args, s_cur, s_next, noise))


def test_guidance_update_matches_method():
    """The twin is the METHOD.md 4 formula: D_K = D + σ² Σ γ ∇ log c, with ∇ log c = sigmoid(-l) ∇ l."""
    classifiers = [TimeClassifier(_mlp(3, 1, 16, 1, seed=s), SIGMA_DATA) for s in range(3)]
    scales = [1.0, 0.5, 2.0]
    x, sigma = _inputs(7, 3)
    grads, logits = stack_input_gradients(classifiers, x, lambda xg: (xg, sigma))
    denoised = torch.randn(7, 3)
    expected = denoised + sigma[:, None] ** 2 * guidance_gradient(classifiers, x, sigma, scales)
    got = update_kernels.edm_guided_denoise(denoised, grads, logits, torch.tensor(scales), sigma)
    _assert_close(got, expected)


def test_stack_input_gradients_one_backward():
    classifiers = [TimeClassifier(_mlp(3, parts, 16, 1, seed=s), SIGMA_DATA) for s, parts in [(0, 1), (1, 1)]]
    x, sigma = _inputs(7, 3)
    grads, logits = stack_input_gradients(classifiers, x, lambda xg: (xg, sigma))
    assert grads.shape == (2, 7, 3) and logits.shape == (2, 7)
    for k, c in enumerate(classifiers):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(c(xg, sigma).sum(), xg)
        _assert_close(grads[k], g)
    multi = [TimeClassifier(_mlp(3, 4, 16, 1, seed=5), SIGMA_DATA)]
    grads, logits = stack_input_gradients(multi, x, lambda xg: (xg, sigma))
    assert logits is None
    _assert_close(grads[0], guidance_gradient(multi, x, sigma))


def test_update_kernel_rejects_bad_input():
    d = torch.randn(4, 3)
    with pytest.raises(ValueError, match="grads must have shape"):
        update_kernels.edm_guided_denoise(d, torch.randn(2, 4, 2), None, torch.ones(2), torch.ones(4))
    with pytest.raises(ValueError, match="logits must have shape"):
        update_kernels.edm_guided_denoise(
            d, torch.randn(2, 4, 3), torch.randn(2, 3), torch.ones(2), torch.ones(4)
        )
    with pytest.raises(ValueError, match="needs noise"):
        update_kernels.edm_guided_ancestral_step(d, d, torch.randn(0, 4, 3), None, torch.ones(0), 0.7, 0.5,
                                                 None)
    with pytest.raises(ValueError, match="sigma_cur > sigma_next"):
        update_kernels.edm_guided_ancestral_step(d, d, torch.randn(0, 4, 3), None, torch.ones(0), 0.5, 0.7,
                                                 d)
    with pytest.raises(ValueError, match="both x_prev and d_prev"):
        update_kernels.edm_guided_step(d, d, torch.randn(0, 4, 3), None, torch.ones(0), 1.0, 0.5, x_prev=d)


# ------------------------------------------------------------------------------ whole sampling runs


def _sample(guided: GuidedDenoiser, backend: str, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    run = GuidedDenoiser(guided.denoiser, guided.classifiers, guided.scales, backend=backend)
    return heun_sample(run, x.clone(), sigmas)


class Wrapped(nn.Module):
    """A network that is not a ``ResidualMLP`` (so it cannot be packed), computing the same function."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.inner = net

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.inner(x_in, c_noise)


def test_mlp_classifiers_with_unfusable_denoiser(device):
    """Denoiser in PyTorch, MLP classifiers in the kernel: D_K and the Heun step equal the torch path."""
    guided = _guided(3, 24, 2)
    mixed = GuidedDenoiser(EDMPrecond(Wrapped(guided.denoiser.net), SIGMA_DATA), guided.classifiers,
                           guided.scales, backend="triton")
    fused = build_fused_guidance(copy.deepcopy(mixed).to(device))
    assert isinstance(fused, FusedMLPClassifierGuidance) and not fused.stack.has_denoiser
    x, sigma = _inputs(7, 3)
    torch_path = GuidedDenoiser(mixed.denoiser, mixed.classifiers, mixed.scales, backend="torch")
    k_x, k_sigma = x.to(device), sigma.to(device)
    with torch.no_grad():
        _assert_close(fused(k_x, k_sigma).cpu(), torch_path(x, sigma))
        _assert_close(fused.heun_step(k_x, 3.0, 2.0).cpu(), heun_step(torch_path, x, 3.0, 2.0))
    with pytest.raises(ValueError, match="without a denoiser"):
        mlp_kernels.mlp_guided_step(k_x, 3.0, 2.0, fused.stack)


def test_fused_sampling_equals_torch(device):
    """Heun sampling from the same noise: fused one-launch MLP path and combine path (on ``device``) vs
    PyTorch (on the CPU)."""
    guided = _guided(2, 32, 3)
    sigmas = make_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(3)) * SIGMA_MAX
    torch_samples = _sample(guided, "torch", x, sigmas)
    k_guided, k_x = copy.deepcopy(guided).to(device), x.to(device)
    assert isinstance(k_guided._fused(k_x.device), FusedMLPGuidance)
    # 6 Heun steps compound per-step rounding (10x the one-step tolerance); samples are O(1) at the end
    _assert_close(_sample(k_guided, "triton", k_x, sigmas).cpu(), torch_samples, rel=1e-4)

    # classifier networks that are not ResidualMLPs -> the combine-and-update path
    wrapped = GuidedDenoiser(guided.denoiser, [TimeClassifier(Wrapped(c.net), SIGMA_DATA)
                                               for c in guided.classifiers], guided.scales, backend="triton")
    k_wrapped = copy.deepcopy(wrapped).to(device)
    assert isinstance(build_fused_guidance(k_wrapped), FusedCombineGuidance)
    _assert_close(_sample(k_wrapped, "triton", k_x, sigmas).cpu(), torch_samples, rel=1e-4)


def test_fused_ddpm_sampling_equals_torch(device):
    """DDPM's ancestral sampling (Euler-ancestral on the levels of an ε-network's EpsDenoiser) on
    ``device``: the fused guided step vs the PyTorch path there, same noise draws (the noise comes from a
    generator on that device, so both paths run there)."""
    from genneg.diffusion import DDPMConfig, DDPMSchedule, EpsDenoiser, euler_ancestral_sample

    schedule = DDPMSchedule(DDPMConfig(num_steps=50))
    net = _mlp(2, 2, 16, 1, seed=7).to(device)

    def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x_t, t.to(torch.float32) / 50.0)

    # large-network classifiers (not packable MLPs): the combine kernel's fused Euler-ancestral step
    classifiers = [TimeClassifier(Wrapped(_mlp(2, 1, 16, 1, seed=s)), SIGMA_DATA).to(device)
                   for s in range(3)]
    denoiser = EpsDenoiser(eps_model, schedule)
    torch_guided = GuidedDenoiser(denoiser, classifiers, [1.0, 0.5, 2.0], backend="torch")
    fused_guided = GuidedDenoiser(denoiser, classifiers, [1.0, 0.5, 2.0], backend="triton")
    sigmas = schedule.sampling_sigmas(10)
    x_T = schedule.initial_noise((9, 2), generator=torch.Generator().manual_seed(0), num_steps=10).to(device)
    assert torch_guided.ancestral_step is None and fused_guided.ancestral_step is not None
    expected = euler_ancestral_sample(torch_guided, x_T, sigmas,
                                      generator=torch.Generator(device).manual_seed(1))
    got = euler_ancestral_sample(fused_guided, x_T, sigmas, generator=torch.Generator(device).manual_seed(1))
    _assert_close(got.cpu(), expected.cpu(), rel=1e-4)


def test_build_fused_guidance_refuses_time_independent():
    guided = _guided(2, 16, 2)
    guided.classifiers[1].time_dependent = False
    assert build_fused_guidance(guided) is None
    guided.scales = (1.0, 0.0)  # a zero-scale classifier is dropped, so the rest fuses
    assert isinstance(build_fused_guidance(guided), FusedMLPGuidance)


# --------------------------------------------------------------------------- analytic gradient, NVTX


@pytest.mark.parametrize(
    ("k", "parts", "shared_sigma", "batch"),
    [(1, 1, True, 7), (3, 1, False, 7), (8, 2, True, 7), (3, 1, False, 600), (2, 1, True, 600)],
)
def test_analytic_gradient_matches_autograd(k, parts, shared_sigma, batch):
    hiddens, blocks = [16, 40, 24, 16, 16, 32, 16, 16], [1, 2, 0, 1, 2, 1, 1, 2]
    classifiers = [
        TimeClassifier(_mlp(3, parts, hiddens[i], blocks[i], seed=i), SIGMA_DATA) for i in range(k)
    ]
    scales = [1.0 + 0.1 * i for i in range(k)]
    x, sigma = _inputs(batch, 3)  # batch 600: row chunks of 256 plus a ragged one
    if shared_sigma:
        sigma = torch.full((batch,), 0.7)
    analytic = AnalyticMLPGuidance(classifiers, scales)
    _assert_close(analytic.gradient(x, sigma), guidance_gradient(classifiers, x, sigma, scales))
    assert build_analytic_guidance([TimeClassifier(nn.Linear(3, 1), SIGMA_DATA)], [1.0]) is None


def test_nvtx_switch():
    before = nvtx_enabled()
    try:
        set_nvtx_enabled(False)
        assert nvtx_range("a") is nvtx_range("b")  # one shared no-op: free when off
        set_nvtx_enabled(True)
        with nvtx_range("genneg.test"):
            pass
        assert nvtx_range("a") is not nvtx_range("a")
    finally:
        set_nvtx_enabled(before)


_AOT_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import genneg.kernels.fused_mlp_guidance as m
import genneg.kernels.fused_guidance_update as u

def build(fn, types, constexprs, warps):
    names = list(fn.arg_names)
    sig = {n: types.get(n, "constexpr") for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

ptrs = ["x_ptr", "out_ptr", "denoised_ptr", "w_ptr", "tb_ptr", "gamma_ptr", "sigma_ptr", "scratch_ptr"]
ints = ["B", "D", "P", "num_classifiers", "sig_stage_stride", "sig_row_stride", "tb_stage_stride",
        "tb_row_stride"]
types = {**{n: "*fp32" for n in ptrs}, **{n: "i32" for n in ints}, "sd_den": "fp32", "sd_cls": "fp32"}
for mode, den, bb, prec in [(2, True, 32, "tf32"), (0, False, 16, "ieee")]:
    k = build(m._fused_mlp_guidance_kernel, types, dict(MODE=mode, HAS_DENOISER=den, NB=2, HP=256, DP=16,
              PP=16, BB=bb, BH=64, PREC=prec), 8 if bb >= 32 else 4)
    assert k.metadata.shared <= 228 * 1024, k.metadata.shared
types = {n: "*fp32" for n in u._guidance_update_kernel.arg_names if n.endswith("_ptr")}
types.update({n: "i32" for n in ("N", "M", "B", "K")}, **{f"c{i}": "fp32" for i in range(1, 6)})
for mode in range(5):
    build(u._guidance_update_kernel, types, dict(MODE=mode, HAS_LOGITS=True, WRITE_D=mode == 1,
          HAS_AUX=mode == 4, BLOCK=1024), 4)
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """Ahead-of-time compilation to an sm_90 cubin (Triton's bundled ptxas, no GPU needed): catches what
    the interpreter accepts but the compiler does not, and checks shared memory fits an H100 SM."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
