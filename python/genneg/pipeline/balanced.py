"""Synthetic, balanced, oracle-labelled data from the current model (METHOD.md 2).

:func:`draw_balanced` samples the current (guided) model in batches, labels every sample with the oracle,
and keeps the first ``N/2`` positives and the first ``N/2`` negatives. Every draw is counted, kept or not,
so ``pi_neg = #negatives drawn / #drawn`` is the model's infraction rate (the importance weights of
Eq. 9 need it). When negatives (or positives) are so rare that collecting ``N/2`` of them would need more
than ``max_draws`` samples, it stops early with :class:`InfractionBudgetError` naming the rate and the
budget: the decision uses the 95% Wilson upper bound of the running rate, so it stops as soon as even an
optimistic rate cannot fit the budget, and never on one unlucky batch.

:func:`draw_imbalanced` draws the natural mix instead (the ``imbalanced`` ablation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from genneg.oracles.base import evaluate_oracle

__all__ = ["BalancedDataset", "InfractionBudgetError", "draw_balanced", "draw_imbalanced"]

SampleFn = Callable[[int], torch.Tensor]
PartMaskFn = Callable[[torch.Tensor], torch.Tensor]

_Z95 = 1.959963984540054  # two-sided 95% normal quantile


class InfractionBudgetError(RuntimeError):
    """Collecting ``N/2`` examples of the rare class would exceed the draw budget.

    Attributes:
        rate: estimated rate of the missing class among draws (for negatives: the infraction rate).
        budget: ``max_draws``.
        drawn: samples drawn before stopping.
        needed: estimated total draws needed (from the optimistic upper bound of the rate).
        label: ``"negative"`` or ``"positive"``, the class that could not be collected.
    """

    def __init__(self, rate: float, budget: int, *, drawn: int, needed: float, label: str,
                 rate_upper: float, missing: int) -> None:
        self.rate = rate
        self.budget = budget
        self.drawn = drawn
        self.needed = needed
        self.label = label
        what = "infraction rate" if label == "negative" else "valid rate"
        needed_txt = "unbounded" if math.isinf(needed) else f"about {needed:,.0f}"
        super().__init__(
            f"{what} {rate:.3g} ({round(rate * drawn)} {label}s in {drawn:,} draws, 95% upper bound "
            f"{rate_upper:.3g}): collecting {missing:,} more {label} examples needs {needed_txt} draws in "
            f"total, over the budget max_draws={budget:,}. Raise max_draws, lower the number of examples, "
            "or draw from a proposal model that infracts more (METHOD.md 6)."
        )


@dataclass(frozen=True)
class BalancedDataset:
    """Oracle-labelled samples with the class priors of the model they were drawn from.

    Attributes:
        x: ``(N, *sample_shape)`` float samples.
        labels: ``(N,)`` bool, True = valid (sample label: valid iff every real part is).
        part_labels: ``(N, P)`` bool per-part verdicts, or None for single-part samples.
        pi_pos: estimated ``P(valid)`` under the model, from every draw.
        pi_neg: estimated infraction rate ``1 - pi_pos``.
        num_drawn: samples drawn to build the set (kept or not).
        part_mask: ``(N, P)`` bool, True = a real part (False = padding, ignored by the loss), or None.
        balanced: True when the set holds ``N/2`` of each class, False for the natural mix.
    """

    x: torch.Tensor
    labels: torch.Tensor
    part_labels: torch.Tensor | None
    pi_pos: float
    pi_neg: float
    num_drawn: int
    part_mask: torch.Tensor | None = None
    balanced: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.labels.shape != (n,) or self.labels.dtype != torch.bool:
            raise ValueError(
                f"labels must be bool ({n},), got {self.labels.dtype} {tuple(self.labels.shape)}")
        for name in ("part_labels", "part_mask"):
            value = getattr(self, name)
            if value is not None and (value.ndim != 2 or value.shape[0] != n or value.dtype != torch.bool):
                raise ValueError(f"{name} must be bool ({n}, P), got {value.dtype} {tuple(value.shape)}")
        if self.part_mask is not None and (
            self.part_labels is None or self.part_mask.shape != self.part_labels.shape
        ):
            raise ValueError("part_mask needs part_labels of the same shape")
        if not (0.0 <= self.pi_pos <= 1.0 and 0.0 <= self.pi_neg <= 1.0) or abs(
            self.pi_pos + self.pi_neg - 1.0
        ) > 1e-9:
            raise ValueError(f"need pi_pos + pi_neg = 1 in [0, 1], got {self.pi_pos}, {self.pi_neg}")
        if self.num_drawn < n:
            raise ValueError(f"num_drawn={self.num_drawn} is smaller than the {n} kept samples")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_pos(self) -> int:
        """Number of valid samples kept."""
        return int(self.labels.sum())

    @property
    def num_neg(self) -> int:
        """Number of invalid samples kept."""
        return len(self) - self.num_pos

    def to(self, device: torch.device | str) -> BalancedDataset:
        """The same data on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return BalancedDataset(move(self.x), move(self.labels), move(self.part_labels), self.pi_pos,
                               self.pi_neg, self.num_drawn, move(self.part_mask), self.balanced, self.extra)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` (``*.safetensors`` plus a JSON sidecar with the priors), atomically."""
        from genneg.io.checkpoint import save_checkpoint

        tensors = {"x": self.x, "labels": self.labels}
        if self.part_labels is not None:
            tensors["part_labels"] = self.part_labels
        if self.part_mask is not None:
            tensors["part_mask"] = self.part_mask
        save_checkpoint(path, tensors, {"kind": "balanced_dataset", "pi_pos": self.pi_pos,
                                        "pi_neg": self.pi_neg, "num_drawn": self.num_drawn,
                                        "balanced": self.balanced, "extra": self.extra})

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> BalancedDataset:
        """Read a set written by :meth:`save`."""
        from genneg.io.checkpoint import load_checkpoint

        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "balanced_dataset":
            raise ValueError(f"{path} is not a balanced dataset (kind={meta.get('kind')!r})")
        get = lambda k: tensors[k].to(device) if k in tensors else None  # noqa: E731
        return cls(get("x"), get("labels"), get("part_labels"), float(meta["pi_pos"]), float(meta["pi_neg"]),
                   int(meta["num_drawn"]), get("part_mask"), bool(meta["balanced"]), dict(meta["extra"]))


def _wilson_upper(successes: int, trials: int) -> float:
    """Upper end of the 95% Wilson score interval for a binomial proportion."""
    if trials == 0:
        return 1.0
    p = successes / trials
    z2 = _Z95 * _Z95
    centre = p + z2 / (2 * trials)
    half = _Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return min(1.0, (centre + half) / (1 + z2 / trials))


def _label_batch(
    x: torch.Tensor, oracle: Callable[[Any], Any], part_mask_fn: PartMaskFn | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(sample labels (n,), part labels (n, P) or None, part mask (n, P) or None)`` for one batch."""
    verdicts = evaluate_oracle(oracle, x)
    if verdicts.ndim == 1:
        if part_mask_fn is not None:
            raise ValueError("part_mask_fn given but the oracle returned one verdict per sample")
        return verdicts, None, None
    mask = None
    if part_mask_fn is not None:
        mask = torch.as_tensor(part_mask_fn(x), device=x.device).to(torch.bool)
        if mask.shape != verdicts.shape:
            raise ValueError(
                f"part mask shape {tuple(mask.shape)} != oracle verdicts {tuple(verdicts.shape)}")
    labels = (verdicts | ~mask).all(dim=1) if mask is not None else verdicts.all(dim=1)
    return labels, verdicts, mask


def _draw(sample_fn: SampleFn, n: int) -> torch.Tensor:
    x = sample_fn(n)
    if not isinstance(x, torch.Tensor) or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"sample_fn({n}) must return a tensor with {n} rows, got {shape}")
    return x.detach()


def _cat(chunks: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if not chunks or chunks[0] is None else torch.cat(chunks)  # type: ignore[arg-type]


def draw_balanced(
    sample_fn: SampleFn,
    oracle: Callable[[Any], Any],
    num_total: int,
    *,
    batch_size: int = 10_000,
    max_draws: int | None = None,
    part_mask_fn: PartMaskFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> BalancedDataset:
    """Draw from the model until ``num_total / 2`` valid and ``num_total / 2`` invalid samples are kept.

    Args:
        sample_fn: ``sample_fn(n) -> (n, *sample_shape)`` samples of the current model; it carries its
            own seeded generator, so a seeded ``sample_fn`` gives the same set every time.
        oracle: ``oracle(x) -> bool (n,) or (n, P)``, True = valid; tensors or NumPy (see
            :func:`genneg.oracles.base.evaluate_oracle`).
        num_total: examples to keep, even: ``num_total / 2`` per class.
        batch_size: samples per call of ``sample_fn``.
        max_draws: most samples to draw; default ``100 · num_total``.
        part_mask_fn: ``(n, *sample_shape) -> bool (n, P)``, True = a real part (padding is ignored);
            only for per-part oracles.
        generator: if given, shuffles the kept examples (their order is otherwise positives first).
        progress: show a progress bar.

    Returns:
        a :class:`BalancedDataset` with ``pi_neg`` = negatives among every draw / draws.

    Raises:
        InfractionBudgetError: as soon as the estimated draws needed exceed ``max_draws``.
        ValueError: bad sizes, or ``sample_fn``/``oracle`` returning the wrong shapes.
    """
    if num_total < 2 or num_total % 2:
        raise ValueError(f"num_total must be an even number >= 2, got {num_total}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = 100 * num_total if max_draws is None else int(max_draws)
    if budget < num_total:
        raise ValueError(f"max_draws={budget} is smaller than num_total={num_total}")
    need = num_total // 2
    kept = {True: 0, False: 0}
    chunks: dict[bool, list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]] = {
        True: [], False: []}
    drawn = negatives = 0
    bar = tqdm(total=num_total, disable=not progress, desc="balanced data", unit="sample", leave=False)
    try:
        while kept[True] < need or kept[False] < need:
            n = min(batch_size, budget - drawn)
            x = _draw(sample_fn, n)
            labels, part_labels, mask = _label_batch(x, oracle, part_mask_fn)
            drawn += n
            negatives += int((~labels).sum())
            for cls in (True, False):
                idx = torch.nonzero(labels == cls).flatten()[: need - kept[cls]]
                if idx.numel():
                    chunks[cls].append((x[idx], None if part_labels is None else part_labels[idx],
                                        None if mask is None else mask[idx]))
                    kept[cls] += idx.numel()
                    bar.update(idx.numel())
            bar.set_postfix(infraction=f"{negatives / drawn:.4f}", drawn=drawn)
            _check_budget(drawn, negatives, kept, need, budget)
    finally:
        bar.close()
    parts = chunks[True] + chunks[False]
    x_all = torch.cat([c[0] for c in parts])
    labels_all = torch.cat([torch.ones(need, dtype=torch.bool), torch.zeros(need, dtype=torch.bool)]).to(
        x_all.device)
    part_labels_all = _cat([c[1] for c in parts])
    mask_all = _cat([c[2] for c in parts])
    if generator is not None:
        perm = torch.randperm(num_total, generator=generator).to(x_all.device)
        x_all, labels_all = x_all[perm], labels_all[perm]
        part_labels_all = None if part_labels_all is None else part_labels_all[perm]
        mask_all = None if mask_all is None else mask_all[perm]
    pi_neg = negatives / drawn
    return BalancedDataset(x_all, labels_all, part_labels_all, 1.0 - pi_neg, pi_neg, drawn, mask_all, True)


def _check_budget(drawn: int, negatives: int, kept: dict[bool, int], need: int, budget: int) -> None:
    """Raise when even the optimistic (95% upper) rate of a missing class cannot fit the budget."""
    needed_total = float(drawn)
    worst: tuple[float, bool, float, int] | None = None
    for cls, count in ((False, negatives), (True, drawn - negatives)):
        missing = need - kept[cls]
        if missing <= 0:
            continue
        upper = _wilson_upper(count, drawn)
        more = missing / upper if upper > 0 else math.inf
        if worst is None or drawn + more > needed_total:
            needed_total = drawn + more
            worst = (count / drawn, cls, upper, missing)
    if worst is None:
        return
    if needed_total > budget or drawn >= budget:
        rate, cls, upper, missing = worst
        raise InfractionBudgetError(rate, budget, drawn=drawn, needed=needed_total,
                                    label="positive" if cls else "negative", rate_upper=upper,
                                    missing=missing)


def draw_imbalanced(
    sample_fn: SampleFn,
    oracle: Callable[[Any], Any],
    num_total: int,
    *,
    batch_size: int = 10_000,
    part_mask_fn: PartMaskFn | None = None,
    progress: bool = False,
) -> BalancedDataset:
    """``num_total`` model samples with their natural class mix (the ``imbalanced`` ablation).

    Args and return as :func:`draw_balanced`; ``balanced`` is False and ``pi_neg`` is the fraction of
    invalid samples among the ``num_total`` drawn.

    Raises:
        ValueError: when the draw holds a single class (no classifier can be trained on it).
    """
    if num_total < 2 or batch_size < 1:
        raise ValueError(f"need num_total >= 2 and batch_size >= 1, got {num_total}, {batch_size}")
    xs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    part_labels: list[torch.Tensor | None] = []
    masks: list[torch.Tensor | None] = []
    drawn = 0
    with tqdm(total=num_total, disable=not progress, desc="imbalanced data", unit="sample",
              leave=False) as bar:
        while drawn < num_total:
            n = min(batch_size, num_total - drawn)
            x = _draw(sample_fn, n)
            lab, parts, mask = _label_batch(x, oracle, part_mask_fn)
            xs.append(x)
            labels.append(lab)
            part_labels.append(parts)
            masks.append(mask)
            drawn += n
            bar.update(n)
    labels_all = torch.cat(labels)
    negatives = int((~labels_all).sum())
    if negatives in (0, num_total):
        raise ValueError(f"all {num_total} samples drawn are {'in' if negatives else ''}valid: "
                         "a classifier needs both classes")
    pi_neg = negatives / num_total
    return BalancedDataset(torch.cat(xs), labels_all, _cat(part_labels), 1.0 - pi_neg, pi_neg, num_total,
                           _cat(masks), False)
