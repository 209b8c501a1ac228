"""Step schedules fitted for few steps by trajectory matching (oracle-free).

For a given denoiser ``D`` (plain or guided ``D_K``), solver and step count ``K``, choose the ``K`` nonzero
noise levels ``sigma_max = s_0 > s_1 > ... > s_{K-1} >= sigma_min`` (then 0) that minimise the distance
between the ``K``-step solution and a high-step reference solution of the same probability-flow ODE
``dx/dsigma = (x - D(x; sigma)) / sigma`` (METHOD.md 1) from the same initial noise::

    E(s) = mean_b || solve_K(D, x_T^b; s) - solve_ref(D, x_T^b) ||_2 ,    x_T^b = sigma_max eps^b

(data units: the mean Euclidean distance between the two end points, each sample flattened). The
objective is the global trajectory error to a teacher solution, as in GITS (Chen et al. 2024, "On the
Trajectory Regularity of ODE-based Diffusion Sampling", ICML: the time steps chosen to minimise the
distance to the teacher trajectory) and "Optimal Stepsize for Diffusion Sampling" (Zhu et al. 2025);
it is minimised by coordinate search over the knots, each knot moved in ``log sigma`` between its
neighbours while the others stay fixed, sweep after sweep, as in the iterative refinement of "Align Your
Steps" (Sabour, Fidler and Kreis 2024, ICML; their objective is a KL upper bound, ours the teacher
distance). The fitting noise ``eps`` is drawn once from a seed (common random numbers), so the objective
is deterministic and a move is kept only when it lowers it: the fitted schedule's error on the fitting
noise is never above that of the schedule it starts from. No oracle enters the fit.

The result is a plain ``(K+1,)`` float64 sigma tensor (``FittedSchedule.sigmas``) that every sampler of
:mod:`genneg.diffusion.samplers` and ``genneg.planning.SamplerConfig(sigmas=...)`` accept; it is saved as
JSON with :meth:`FittedSchedule.save` (written to a temporary name and renamed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genneg.diffusion.denoiser import Denoiser
from genneg.diffusion.samplers import SAMPLERS, Cond, get_sampler
from genneg.diffusion.schedules import check_sigmas, make_sigmas

__all__ = [
    "FittedSchedule",
    "ScheduleFitConfig",
    "fit_schedule",
    "fitting_noise",
    "reference_solution",
    "trajectory_error",
]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class ScheduleFitConfig:
    """Options of :func:`fit_schedule`.

    Attributes:
        num_samples: fitting draws of the initial noise (the batch of every solve).
        seed: seed of the fitting noise (use one the evaluation never uses).
        reference_solver: solver of the reference solution (a key of ``genneg.diffusion.SAMPLERS``).
        reference_steps: its number of nonzero levels, on the ``initial`` schedule family from
            ``sigma_max`` to ``sigma_min``.
        sweeps: at most this many passes over the knots.
        evaluations_per_knot: objective evaluations of the golden-section search of one knot in one pass.
        tolerance: stop when a pass lowers the error by less than this fraction of it.
        free_last_level: let the last nonzero level rise above ``sigma_min`` (the step to 0 is then
            ``x0 = D(x; s_{K-1})``, so no call is spent at a level where ``D(x) ~ x``); False keeps it at
            ``sigma_min``.
        margin: smallest gap between neighbouring knots, in ``log sigma``.
    """

    num_samples: int = 1000
    seed: int = 0
    reference_solver: str = "heun"
    reference_steps: int = 128
    sweeps: int = 4
    evaluations_per_knot: int = 10
    tolerance: float = 1e-3
    free_last_level: bool = True
    margin: float = 1e-3

    def __post_init__(self) -> None:
        if (self.num_samples < 1 or self.reference_steps < 2 or self.sweeps < 1
                or self.evaluations_per_knot < 2):
            raise ValueError(
                "num_samples, reference_steps, sweeps and evaluations_per_knot must be >= 1, 2, 1, 2; got "
                f"{self.num_samples}, {self.reference_steps}, {self.sweeps}, {self.evaluations_per_knot}")
        if self.reference_solver not in SAMPLERS:
            raise ValueError(f"unknown reference solver {self.reference_solver!r}; choose from "
                             f"{sorted(SAMPLERS)}")
        if not (self.tolerance >= 0 and self.margin > 0):
            raise ValueError(f"need tolerance >= 0 and margin > 0, got {self.tolerance}, {self.margin}")


@dataclass(frozen=True)
class FittedSchedule:
    """A fitted schedule and how it was found.

    Attributes:
        sigmas: ``(K+1,)`` float64, strictly decreasing, ``sigmas[0] = sigma_max``, ending in 0.
        initial_sigmas: the schedule the fit started from (same shape): the ``initial`` family with its
            end levels set to ``sigma_max`` and ``sigma_min`` exactly.
        error: trajectory error of ``sigmas`` on the fitting noise (data units, :func:`trajectory_error`).
        initial_error: that of ``initial_sigmas``.
        solver: the solver it was fitted for.
        initial: the schedule family it started from (``log_linear`` or ``karras``).
        rho: Karras ``rho`` of the initial schedule.
        evaluations: objective evaluations (solves of ``num_samples`` draws) spent.
        seconds: wall time of the fit, reference included.
        config: the :class:`ScheduleFitConfig`.
    """

    sigmas: torch.Tensor
    initial_sigmas: torch.Tensor
    error: float
    initial_error: float
    solver: str
    initial: str
    rho: float
    evaluations: int
    seconds: float
    config: ScheduleFitConfig

    @property
    def num_steps(self) -> int:
        """``K``, the nonzero levels."""
        return self.sigmas.numel() - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tensors as lists of float)."""
        return {"sigmas": self.sigmas.tolist(), "initial_sigmas": self.initial_sigmas.tolist(),
                "error": self.error, "initial_error": self.initial_error, "solver": self.solver,
                "num_steps": self.num_steps, "initial": self.initial, "rho": self.rho,
                "evaluations": self.evaluations, "seconds": self.seconds,
                "config": dataclasses.asdict(self.config),
                "method": "trajectory matching to a high-step reference (genneg.diffusion.fitted_schedule)"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FittedSchedule:
        """Inverse of :meth:`to_dict`; ``ValueError`` for a schedule that is not strictly decreasing to 0."""
        sigmas = torch.tensor(data["sigmas"], dtype=torch.float64)
        _check_schedule(sigmas)
        return cls(sigmas=sigmas, initial_sigmas=torch.tensor(data["initial_sigmas"], dtype=torch.float64),
                   error=float(data["error"]), initial_error=float(data["initial_error"]),
                   solver=str(data["solver"]), initial=str(data["initial"]), rho=float(data["rho"]),
                   evaluations=int(data["evaluations"]), seconds=float(data["seconds"]),
                   config=ScheduleFitConfig(**data["config"]))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (temporary name, then renamed); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FittedSchedule:
        """Read a schedule written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _check_schedule(sigmas: torch.Tensor) -> None:
    check_sigmas(sigmas)


def trajectory_error(denoiser: Denoiser, solver: str, sigmas: torch.Tensor, noise: torch.Tensor,
                     reference: torch.Tensor, *, cond: Cond | None = None,
                     mask: torch.Tensor | None = None) -> float:
    """Mean Euclidean distance between the ``solver`` solution along ``sigmas`` and ``reference``.

    Args:
        denoiser: ``D(x, sigma, **cond)`` (plain or guided).
        solver: a key of ``genneg.diffusion.SAMPLERS``.
        sigmas: ``(K+1,)`` strictly decreasing, ending in 0.
        noise: ``(B, *shape)`` standard normal draws; the solve starts at ``sigmas[0] * noise``.
        reference: ``(B, *shape)`` the reference end points from the same noise.
        cond: per-sample conditioning (leading dimension ``B``).
        mask: bool, broadcastable to ``(B, *shape)``: the entries that count (e.g. real vehicles of a
            scene, not its padding slots), or None for all.

    Returns:
        ``mean_b ||x_K^b - reference^b||_2`` over the masked entries (data units; each sample flattened).

    Raises:
        ValueError: a bad schedule or mismatched shapes; an unknown solver (:func:`get_sampler`).
    """
    _check_schedule(sigmas)
    if noise.shape != reference.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and reference {tuple(reference.shape)} differ in shape")
    x = get_sampler(solver)(denoiser, noise * float(sigmas[0]), sigmas, cond=cond)
    difference = x - reference
    if mask is not None:
        difference = torch.where(mask, difference, torch.zeros_like(difference))
    return float(difference.flatten(1).norm(dim=1).mean())


def fitting_noise(config: ScheduleFitConfig, sample_shape: tuple[int, ...], *,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(config.num_samples, *sample_shape)`` standard normal draws from ``config.seed``: the fit's noise."""
    g = torch.Generator(device=device).manual_seed(config.seed)
    return torch.randn((config.num_samples, *sample_shape), generator=g, device=device, dtype=dtype)


def reference_solution(denoiser: Denoiser, config: ScheduleFitConfig, sample_shape: tuple[int, ...], *,
                       sigma_min: float, sigma_max: float, initial: str = "log_linear", rho: float = 7.0,
                       cond: Cond | None = None, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference end points of :func:`fit_schedule` (``config.reference_solver`` on
    ``config.reference_steps`` levels of the ``initial`` family from :func:`fitting_noise`), to share
    between fits of one denoiser (other solvers and step counts): ``(config.num_samples, *sample_shape)``."""
    noise = fitting_noise(config, sample_shape, device=device, dtype=dtype)
    sigmas = make_sigmas(initial, config.reference_steps, sigma_min, sigma_max, rho)
    return get_sampler(config.reference_solver)(denoiser, noise * sigma_max, sigmas, cond=cond)


def fit_schedule(
    denoiser: Denoiser,
    solver: str,
    num_steps: int,
    *,
    sample_shape: tuple[int, ...],
    sigma_min: float,
    sigma_max: float,
    initial: str = "log_linear",
    rho: float = 7.0,
    config: ScheduleFitConfig | None = None,
    cond: Cond | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    reference: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> FittedSchedule:
    """Fit ``num_steps`` noise levels for ``solver`` and ``denoiser`` by trajectory matching (module
    docstring), starting from ``make_sigmas(initial, num_steps, sigma_min, sigma_max, rho)``.

    Args:
        denoiser: ``D(x, sigma, **cond) -> x0_hat`` in VE coordinates (a guided ``D_K`` included).
        solver: the solver the schedule is for (a key of ``genneg.diffusion.SAMPLERS``).
        num_steps: ``K``, nonzero levels (>= 1). With ``K = 1`` (``K <= 2`` without ``free_last_level``)
            no level is free and the initial schedule is returned.
        sample_shape: shape of one sample (without the batch).
        sigma_min, sigma_max: the schedule's range (data units); ``sigmas[0] = sigma_max`` always, the last
            nonzero level is ``sigma_min`` (or above it with ``config.free_last_level``).
        initial, rho: the starting schedule family (``log_linear`` or ``karras``) and Karras ``rho``.
        config: :class:`ScheduleFitConfig` (default options when None).
        cond: per-sample conditioning with leading dimension ``config.num_samples`` (e.g. scenes).
        device, dtype: where and in what dtype the solves run.
        reference: ``(config.num_samples, *sample_shape)`` reference end points to reuse (from the same
            noise, i.e. a previous fit with the same seed and reference options), or None to solve them.
        mask: the entries the trajectory error counts (:func:`trajectory_error`), or None for all.

    Returns:
        :class:`FittedSchedule` (``sigmas`` float64 on the CPU).

    Raises:
        ValueError: ``num_steps < 1``, a bad range or schedule family, an unknown solver, a
            ``reference`` of the wrong shape or not finite, a ``mask`` that is not bool or does not
            broadcast, or a denoiser whose solution is not finite.
    """
    config = config or ScheduleFitConfig()
    get_sampler(solver)
    initial_sigmas = make_sigmas(initial, num_steps, sigma_min, sigma_max, rho)
    initial_sigmas[0] = sigma_max  # exactly (exp(log(sigma_max)) may differ in the last bit)
    if num_steps > 1:
        initial_sigmas[-2] = sigma_min
    started = time.perf_counter()
    noise = fitting_noise(config, sample_shape, device=device, dtype=dtype)
    if reference is None:
        reference = reference_solution(denoiser, config, sample_shape, sigma_min=sigma_min,
                                       sigma_max=sigma_max, initial=initial, rho=rho, cond=cond,
                                       device=device, dtype=dtype)
    elif reference.shape != noise.shape:
        raise ValueError(f"reference has shape {tuple(reference.shape)}, expected {tuple(noise.shape)}")
    if not bool(torch.isfinite(reference).all()):
        bad = int((~torch.isfinite(reference)).flatten(1).any(1).sum())
        raise ValueError(f"the reference solution has non-finite values in {bad} of {reference.shape[0]} "
                         "samples: check the denoiser (it must return finite values on this sigma range)")
    if mask is not None and (mask.dtype != torch.bool or not _broadcasts_to(mask.shape, noise.shape)):
        raise ValueError(f"mask must be bool and broadcastable to {tuple(noise.shape)}, got dtype "
                         f"{mask.dtype}, shape {tuple(mask.shape)}")

    evaluations = 0

    def error_of(levels: list[float]) -> float:
        nonlocal evaluations
        evaluations += 1
        return trajectory_error(denoiser, solver, torch.tensor(levels, dtype=torch.float64), noise, reference,
                                cond=cond, mask=mask)

    levels = initial_sigmas.tolist()
    best = initial_error = error_of(levels)
    if not math.isfinite(initial_error):
        raise ValueError(f"the {solver} solution on the initial schedule is not finite (error "
                         f"{initial_error}): check the denoiser on this sigma range")
    last_free = num_steps - 1 if config.free_last_level else num_steps - 2
    knots = list(range(1, last_free + 1))
    for _ in range(config.sweeps if knots else 0):
        start_of_sweep = best
        for i in knots:
            # knot i between its neighbours (the last nonzero level: between sigma_min and its upper one)
            hi = math.log(levels[i - 1]) - config.margin
            lo = (math.log(levels[i + 1]) if levels[i + 1] > 0 else math.log(sigma_min)) + (
                config.margin if levels[i + 1] > 0 else 0.0)
            if hi <= lo:
                continue
            u, value = _golden_search(lambda v, i=i, now=levels: error_of(_with(now, i, math.exp(v))), lo,
                                      hi, config.evaluations_per_knot)
            if value < best:
                levels, best = _with(levels, i, math.exp(u)), value
        if start_of_sweep - best <= config.tolerance * start_of_sweep:
            break
    return FittedSchedule(sigmas=torch.tensor(levels, dtype=torch.float64), initial_sigmas=initial_sigmas,
                          error=best, initial_error=initial_error, solver=solver, initial=initial, rho=rho,
                          evaluations=evaluations, seconds=time.perf_counter() - started, config=config)


def _with(levels: list[float], i: int, value: float) -> list[float]:
    out = list(levels)
    out[i] = value
    return out


def _golden_search(f: Callable[[float], float], lo: float, hi: float, evaluations: int
                   ) -> tuple[float, float]:
    """Golden-section search of ``f`` on ``[lo, hi]`` with ``evaluations`` calls; the best point seen."""
    a, b = lo, hi
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    best = (c, fc) if fc <= fd else (d, fd)
    for _ in range(evaluations - 2):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
            if fc < best[1]:
                best = (c, fc)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
            if fd < best[1]:
                best = (d, fd)
    return best
