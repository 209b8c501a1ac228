"""FastSampler: same samples as the library samplers, no allocation growth, deadlines, rounds, N(r, p),
threads, bad input."""

from __future__ import annotations

import copy
import gc
import math
import threading
import time

import pytest
import torch
from torch import nn

from genneg.diffusion import EpsDenoiser, euler_ancestral_sample, heun_sample, make_sigmas
from genneg.guidance import GuidedDenoiser
from genneg.planning.fast_sampler import FastSampler, SamplerConfig, parallel_samples_for, success_probability
from genneg.planning.inpainting import fix_coordinates
from genneg.planning.result import SampleResult


def _edm(model: nn.Module, oracle, **kw) -> FastSampler:
    cfg = {"num_parallel": 16, "num_steps": 6, "fast_paths": False, **kw}
    return FastSampler(model, oracle, sample_shape=(2,), config=SamplerConfig(**cfg))


def _ddpm(model: nn.Module, schedule, oracle, **kw) -> FastSampler:
    cfg = {"num_parallel": 16, "num_steps": 8, **kw}
    return FastSampler(model, oracle, sample_shape=(2,), config=SamplerConfig(**cfg), ddpm_schedule=schedule)


def _noise(seed: int, n: int = 16) -> torch.Tensor:
    return torch.randn((n, 2), generator=torch.Generator().manual_seed(seed))


# --- same samples as the library's samplers (bit for bit) --------------------------------------------------


def test_edm_equals_heun_sample(denoiser, oracle) -> None:
    sampler = _edm(denoiser, oracle)
    result = sampler(seed=11)
    sigmas = make_sigmas("log_linear", 6, 0.002, 80.0)
    expected = heun_sample(denoiser, _noise(11) * float(sigmas[0]), sigmas)
    assert torch.equal(result.samples, expected)
    assert sampler.mode == "plain"


def test_guided_split_equals_guided_denoiser(guided, oracle) -> None:
    sampler = _edm(guided, oracle)
    assert sampler.mode == "split"
    result = sampler(seed=4)
    sigmas = make_sigmas("log_linear", 6, 0.002, 80.0)
    expected = heun_sample(guided, _noise(4) * float(sigmas[0]), sigmas)
    assert torch.equal(result.samples, expected)
    assert result.times.split and result.times.guidance_ms > 0 and result.times.model_ms > 0
    # works inside a caller's inference_mode too (buffers and guidance leave it locally)
    with torch.inference_mode():
        again = sampler(seed=4)
    assert torch.equal(again.samples, expected)


def test_ddpm_equals_ancestral_sample(eps_model, schedule, oracle) -> None:
    """On a DDPM's levels FastSampler is the library's Euler-ancestral sampler of the EpsDenoiser."""
    result = _ddpm(eps_model, schedule, oracle)(seed=7)
    g = torch.Generator().manual_seed(7)
    sigmas = schedule.sampling_sigmas(8)
    x_T = torch.randn((16, 2), generator=g) * math.sqrt(1 + float(sigmas[0]) ** 2)
    expected = euler_ancestral_sample(EpsDenoiser(eps_model, schedule), x_T, sigmas, generator=g)
    assert torch.equal(result.samples, expected)


@pytest.mark.parametrize("case", ["edm", "guided", "ddpm", "edm_cond", "ddpm_cond"])
def test_preallocated_equals_fresh_buffers(case, denoiser, guided, eps_model, schedule, oracle) -> None:
    cond = fix_coordinates((2,), 0, 0.25) if case.endswith("cond") else None

    def build(preallocate: bool) -> FastSampler:
        cfg = SamplerConfig(num_parallel=16, num_steps=5, max_rounds=2, fast_paths=case != "guided")
        if case.startswith("ddpm"):
            return FastSampler(
                eps_model,
                oracle,
                sample_shape=(2,),
                config=cfg,
                ddpm_schedule=schedule,
                preallocate=preallocate,
            )
        model = guided if case == "guided" else denoiser
        return FastSampler(model, oracle, sample_shape=(2,), config=cfg, preallocate=preallocate)

    fast, fresh = build(True), build(False)
    for seed in (0, 1, 2):  # several calls: reused buffers carry nothing from one call to the next
        a, b = fast(cond, seed=seed), fresh(cond, seed=seed)
        assert torch.equal(a.samples, b.samples) and torch.equal(a.verdicts, b.verdicts)
        assert a.rounds == b.rounds and a.ok == b.ok


@pytest.mark.parametrize("model", ["plain", "guided"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_fast_paths_agree_with_exact_path(model, conditioned, denoiser, guided, oracle) -> None:
    net = guided if model == "guided" else denoiser
    cond = fix_coordinates((2,), 1, 0.3) if conditioned else None
    fast = _edm(net, oracle, fast_paths=True, num_steps=12)
    exact = _edm(net, oracle, fast_paths=False, num_steps=12)
    assert fast.fast_path == ("mlp_plan+analytic_guidance" if model == "guided" else "mlp_plan")
    assert exact.fast_path == "none"
    a, b = fast(cond, seed=9).samples, exact(cond, seed=9).samples
    # float32 rounding of regrouped products, carried through 23 network calls of an ODE solve
    torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    if conditioned:
        assert torch.equal(a[:, 1], b[:, 1])


def test_seed_counter_is_reproducible(denoiser, oracle) -> None:
    s1, s2 = _edm(denoiser, oracle), _edm(denoiser, oracle)
    r1 = [s1().samples for _ in range(3)]
    r2 = [s2().samples for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))
    assert not torch.equal(r1[0], r1[1])


# --- no allocation growth ------------------------------------------------------------------------------


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_no_allocation_growth_over_1000_calls(denoiser, oracle) -> None:
    sampler = _edm(denoiser, oracle, num_parallel=8, num_steps=2)
    cond = fix_coordinates((2,), 1, -0.5)
    sampler.warmup(cond)
    ws = sampler._workspace
    pointers = [ws.x.data_ptr(), ws.noise.data_ptr(), ws.samples.data_ptr()]
    before_tensors, before_rss = _live_tensors(), _rss_bytes()
    for i in range(1000):
        result = sampler(cond if i % 2 else None, seed=i)
    del result
    after_tensors, after_rss = _live_tensors(), _rss_bytes()
    assert sampler._workspace is ws
    assert [ws.x.data_ptr(), ws.noise.data_ptr(), ws.samples.data_ptr()] == pointers
    assert after_tensors == before_tensors
    # RSS: allocator caching makes a few pages come and go; growth per call must not accumulate
    # (a leak of one 8x2 result per call would be >= 1000 tensors, caught above; 4 MB is slack for arenas)
    assert after_rss - before_rss < 4 * 2**20


# --- deadline and rounds --------------------------------------------------------------------------------


class _Slow(nn.Module):
    """Wraps a denoiser and sleeps ``delay_s`` per call (a model of known minimum cost); records the
    start and end of every call (``time.perf_counter`` seconds)."""

    def __init__(self, inner: nn.Module, delay_s: float) -> None:
        super().__init__()
        self.inner, self.delay_s = inner, delay_s
        self.calls: list[tuple[float, float]] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        time.sleep(self.delay_s)
        out = self.inner(x, sigma)
        self.calls.append((start, time.perf_counter()))
        return out


def test_deadline_returns_not_ok_within_one_step(denoiser, oracle) -> None:
    slow = _Slow(denoiser, 0.004)
    deadline_ms = 30.0
    sampler = _edm(slow, oracle, num_steps=40, deadline_ms=deadline_ms)
    entered = time.perf_counter()
    result = sampler(seed=0)
    returned = time.perf_counter()
    assert not result.ok and result.reason == "deadline" and result.sample is None
    assert result.rounds == 0 and result.num_samples == 0
    # A Heun step is two model calls; no step may start after the deadline, and the call returns at most
    # one step (the longest observed, measured on this loaded machine) plus bookkeeping after it.
    deadline = entered + deadline_ms / 1e3
    step_starts = [start for start, _ in slow.calls[::2]]
    assert all(start < deadline for start in step_starts)
    longest_step_s = 2 * max(end - start for start, end in slow.calls)
    assert returned - deadline <= longest_step_s + 0.010
    assert len(slow.calls) < 2 * 40  # it did stop early
    # a per-call deadline of infinity lets the same sampler finish
    done = sampler(seed=0, deadline_ms=math.inf)
    assert done.rounds == 1 and done.reason in ("", "max_rounds")


def test_max_rounds_returns_not_ok(denoiser) -> None:
    def reject_all(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=torch.bool)

    sampler = _edm(denoiser, reject_all, max_rounds=3, k_best=4)
    result = sampler(seed=0)
    assert not result.ok and result.reason == "max_rounds" and result.sample is None
    assert result.rounds == 3 and result.samples.shape == (48, 2) and result.verdicts.shape == (48,)
    assert result.best.shape == (4, 2) and not result.best_valid.any()
    # rounds draw different samples
    assert not torch.equal(result.samples[:16], result.samples[16:32])


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
def test_non_finite_samples_are_never_valid_and_named(solver) -> None:
    def broken(x: torch.Tensor, sigma: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return x * float("nan")

    def accept_all(x: torch.Tensor) -> torch.Tensor:  # an oracle that would let NaN through
        return torch.ones(x.shape[0], dtype=torch.bool)

    sampler = FastSampler(broken, accept_all, sample_shape=(2,),
                          config=SamplerConfig(num_steps=4, num_parallel=8, solver=solver, max_rounds=2))
    result = sampler(seed=0)
    assert not result.ok and result.reason == "non_finite" and result.sample is None
    assert not result.verdicts.any() and result.rounds == 2


def test_chosen_sample_is_first_valid_and_best_ranks_valid_first(denoiser) -> None:
    def right_half(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] > 0

    sampler = _edm(denoiser, right_half, k_best=5, max_rounds=4)
    result = sampler(seed=3)
    assert result.ok and result.reason == ""
    valid = result.sample_valid
    first = int(torch.nonzero(valid)[0])
    assert torch.equal(result.sample, result.samples[first])
    n_valid = int(valid.sum())
    assert result.best_valid[: min(5, n_valid)].all()
    assert torch.equal(result.best[0], result.samples[first])


def test_stops_at_first_round_with_a_valid_sample(denoiser) -> None:
    calls = []

    def second_round_valid(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full((x.shape[0],), len(calls) >= 2)

    result = _edm(denoiser, second_round_valid, max_rounds=5)(seed=0)
    assert result.ok and result.rounds == 2 and len(calls) == 2


# --- N(r, p) ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.0, 0.003, 0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("p", [0.9, 0.99, 0.99999])
def test_parallel_samples_formula(r: float, p: float) -> None:
    n = parallel_samples_for(p, r)
    if r == 0.0:
        assert n == 1
        return
    assert n == max(1, math.ceil(math.log(1 - p) / math.log(r) - 1e-9))
    assert success_probability(n, r) >= p - 1e-12
    if n > 1:
        assert success_probability(n - 1, r) < p
    cfg = SamplerConfig(p=p, infraction_rate=r)
    assert cfg.resolved_num_parallel() == n


def test_p_drives_num_parallel(denoiser, oracle) -> None:
    sampler = FastSampler(
        denoiser, oracle, sample_shape=(2,), config=SamplerConfig(p=0.99999, infraction_rate=0.3, num_steps=3)
    )
    assert sampler.num_parallel == math.ceil(math.log(1e-5) / math.log(0.3)) == 10
    assert sampler(seed=0).samples.shape[0] == 10


# --- threads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_two_threads_get_correct_results(shared: bool, guided, oracle) -> None:
    sampler = _edm(guided, oracle, num_steps=4)
    seeds = {0: [1, 2, 3, 4], 1: [5, 6, 7, 8]}
    expected = {s: sampler(seed=s).samples for ss in seeds.values() for s in ss}
    got: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(k: int) -> None:
        own = sampler if shared else sampler.clone()
        try:
            barrier.wait()
            for s in seeds[k]:
                got[s] = own(seed=s).samples
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(got[s], expected[s]) for s in expected)


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_raises_value_error(denoiser, oracle) -> None:
    sampler = _edm(denoiser, oracle)
    with pytest.raises(ValueError, match="shape"):
        sampler(fix_coordinates((3,), 0, 0.0))
    nan = fix_coordinates((2,), 0, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        sampler(nan)
    with pytest.raises(ValueError, match="deadline_ms"):
        sampler(deadline_ms=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        SamplerConfig()
    with pytest.raises(ValueError, match="infraction_rate"):
        SamplerConfig(p=0.99)
    with pytest.raises(ValueError, match="max_parallel"):
        FastSampler(
            denoiser,
            oracle,
            sample_shape=(2,),
            config=SamplerConfig(p=0.999999, infraction_rate=0.999, max_parallel=1000),
        )
    with pytest.raises(ValueError, match="sample_shape"):
        FastSampler(denoiser, oracle, sample_shape=(), config=SamplerConfig(num_parallel=2))


def test_result_is_consistent(denoiser, oracle) -> None:
    result = _edm(denoiser, oracle, max_rounds=2)(seed=0)
    assert isinstance(result, SampleResult)
    assert result.num_parallel == 16 and result.num_samples == 16 * result.rounds
    assert result.times.total_ms >= result.times.sampling_ms + result.times.oracle_ms
    kept = result.detached()
    assert torch.equal(kept.samples, result.samples) and kept.samples.data_ptr() != result.samples.data_ptr()
    with pytest.raises(ValueError):
        SampleResult(
            ok=True,
            reason="deadline",
            sample=None,
            best=result.best,
            best_valid=result.best_valid,
            samples=result.samples,
            verdicts=result.verdicts,
            rounds=1,
            num_parallel=16,
            seed=0,
            times=result.times,
        )


# --- CUDA graphs (skipped without a GPU) -----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("kind", ["edm", "ddpm", "edm-fused"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_cuda_graph_round(kind, conditioned, denoiser, guided, eps_model, schedule, oracle) -> None:
    """A round replayed as a CUDA graph equals the same round run eagerly; replays allocate nothing.
    ``edm-fused``: the guided model with the fused Triton step (``mode == "fused"``) inside the graph."""
    from genneg.kernels._backend import has_triton, interpreter_enabled

    if kind == "edm-fused" and not (has_triton() and not interpreter_enabled()):
        pytest.skip("the fused step needs triton and TRITON_INTERPRET=0")
    device = torch.device("cuda")
    cond = fix_coordinates((2,), 0, 0.75) if conditioned else None

    def build(graphs: bool) -> FastSampler:
        cfg = SamplerConfig(num_parallel=64, num_steps=8, cuda_graphs=graphs)
        if kind == "edm":
            return FastSampler(copy.deepcopy(denoiser).to(device), oracle, sample_shape=(2,), config=cfg)
        if kind == "edm-fused":
            g = copy.deepcopy(guided).to(device)
            model = GuidedDenoiser(g.denoiser, list(g.classifiers), g.scales, backend="triton")
            return FastSampler(model, oracle, sample_shape=(2,), config=cfg)
        return FastSampler(
            copy.deepcopy(eps_model).to(device), oracle, sample_shape=(2,), config=cfg, ddpm_schedule=schedule
        )

    graphed, eager = build(True), build(False)
    assert graphed.uses_cuda_graphs and not eager.uses_cuda_graphs
    if kind == "edm-fused":
        assert graphed.mode == eager.mode == "fused"
    a = graphed(cond, seed=3)
    assert all(entry is not None for entry in graphed._graphs.values())
    if conditioned:
        assert torch.all(a.samples[:, 0] == cond.values[0])
    if kind != "ddpm":  # same noise draws, same kernels: equal up to float32 rounding of fused kernels
        torch.testing.assert_close(a.samples, eager(cond, seed=3).samples, atol=1e-5, rtol=1e-5)
    # replays allocate nothing
    graphed(cond, seed=4)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for seed in range(50):
        graphed(cond, seed=seed)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


def test_warmup_and_seeded_calls_do_not_shift_the_seed_counter(denoiser, oracle) -> None:
    plain, busy = _edm(denoiser, oracle), _edm(denoiser, oracle)
    busy.warmup()
    busy(seed=123)
    assert torch.equal(plain().samples, busy().samples)
    assert busy(seed=busy.seed + 1).seed == busy.seed + 1
