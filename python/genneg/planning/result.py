"""What one planning call returns: the chosen sample, every sample with its verdict, and where time went.

A call never raises because no valid sample was found: it returns ``ok=False`` with the reason
(``"deadline"``, ``"max_rounds"`` or ``"non_finite"``). Bad input (shapes, NaN, a map that is not the
oracle's) raises ``ValueError`` before any work is done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = ["REASONS", "SampleResult", "StageTimes"]

REASONS = ("", "deadline", "max_rounds", "non_finite")
"""Values of :attr:`SampleResult.reason`: ``""`` when ok, else why no valid sample was returned."""


@dataclass(frozen=True)
class StageTimes:
    """Wall-clock milliseconds of one call, by stage.

    Attributes:
        model_ms: the base network(s) and the sampler's update arithmetic.
        guidance_ms: classifier-guidance gradients. When the stages cannot be told apart (a fused guided
            step, a guided ε-model, a time-independent classifier stack, or a CUDA graph replay) the whole
            guided step is counted here and ``split`` is False.
        oracle_ms: the oracle's verdicts.
        total_ms: the whole call, from entry to return (includes input checks and bookkeeping).
        split: whether ``model_ms`` and ``guidance_ms`` were measured separately.
    """

    model_ms: float = 0.0
    guidance_ms: float = 0.0
    oracle_ms: float = 0.0
    total_ms: float = 0.0
    split: bool = True

    @property
    def sampling_ms(self) -> float:
        """``model_ms + guidance_ms``: the time spent drawing samples."""
        return self.model_ms + self.guidance_ms


@dataclass(frozen=True)
class SampleResult:
    """The answer of :class:`genneg.planning.FastSampler` to one call.

    Attributes:
        ok: True when at least one sample the oracle accepts was found.
        reason: ``""`` when ok; ``"deadline"`` (the next step would have started after the deadline) or
            ``"max_rounds"`` (every round's samples were rejected), ``"non_finite"`` (every round's samples
            were rejected and some were NaN/inf: the model, not the draw, is at fault).
        sample: ``(*sample_shape)`` the chosen valid sample (the first valid one drawn), or None.
        best: ``(k, *sample_shape)`` the ``k`` best samples, valid ones first (in drawing order), then
            invalid ones by decreasing fraction of valid parts; fewer than ``k`` rows when fewer samples
            were drawn.
        best_valid: ``(k,)`` bool, the verdicts of ``best``.
        samples: ``(rounds * N, *sample_shape)`` every sample of the finished rounds, in drawing order.
        verdicts: ``(rounds * N,)`` bool, or ``(rounds * N, P)`` per part, True = valid.
        rounds: rounds finished (a round = ``N`` parallel samples and one oracle call).
        num_parallel: ``N``, samples per round.
        seed: the seed the call's generator was reseeded with (a call is a function of it).
        times: :class:`StageTimes`.

    ``samples`` and ``verdicts`` are views of the sampler's buffers when it was built with
    ``copy_samples=False``: they are then overwritten by its next call (``sample`` and ``best`` are
    always copies). :meth:`detached` returns a result that owns all its tensors.
    """

    ok: bool
    reason: str
    sample: torch.Tensor | None
    best: torch.Tensor
    best_valid: torch.Tensor
    samples: torch.Tensor
    verdicts: torch.Tensor
    rounds: int
    num_parallel: int
    seed: int
    times: StageTimes

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {self.reason!r}")
        if self.ok != (self.reason == ""):
            raise ValueError(f"ok={self.ok} contradicts reason={self.reason!r}")

    @property
    def num_samples(self) -> int:
        """Samples drawn and judged: ``rounds * num_parallel``."""
        return int(self.samples.shape[0])

    @property
    def sample_valid(self) -> torch.Tensor:
        """``(rounds * N,)`` bool, one verdict per sample (all parts valid)."""
        return self.verdicts if self.verdicts.ndim == 1 else self.verdicts.all(dim=1)

    @property
    def valid_fraction(self) -> float:
        """Fraction of drawn samples that are valid (NaN when none was drawn)."""
        n = self.num_samples
        return float(self.sample_valid.sum()) / n if n else math.nan

    def detached(self) -> SampleResult:
        """The same result with every tensor cloned (safe to keep across calls of the sampler)."""
        return replace(self, samples=self.samples.clone(), verdicts=self.verdicts.clone())
