"""Synthetic, balanced, oracle-labelled data from the current model (METHOD.md 2).

:func:`draw_balanced` samples the current (guided) model in batches, labels every sample with the oracle,
and keeps the first ``N/2`` positives and the first ``N/2`` negatives. Every draw is counted, kept or not,
so ``pi_neg = #negatives drawn / #drawn`` is the model's infraction rate (the importance weights of
Eq. 9 need it). When negatives (or positives) are so rare that collecting ``N/2`` of them would need more
than ``max_draws`` samples, it stops early with :class:`InfractionBudgetError` naming the rate and the
budget: the decision uses the 95% Wilson upper bound of the running rate, so it stops as soon as even an
optimistic rate cannot fit the budget, and never on one unlucky batch.

:func:`draw_imbalanced` draws the natural mix instead (the ``imbalanced`` ablation).

:func:`draw_balanced_sis` (METHOD.md 6, Appendix D.2) collects the set faster when the current model
rarely infracts: it draws trajectories from a proposal denoiser that infracts more with a stochastic
(Euler-ancestral) sampler and weights each by the ratio of the target's and the proposal's transition
densities (same covariance, different means), self-normalised; the weights flow into the loss of Eq. 9
through ``BalancedDataset.example_weights`` and into the priors ``pi_pos``, ``pi_neg``.

Conditioned samples (traffic scenes: a map crop and the present vehicle slots per scene) come with a
conditioning dict of tensors (leading dimension ``n``): ``sample_fn(n)`` then returns ``(x, cond)``, the
oracle is called as ``oracle(x, **cond)`` and ``part_mask_fn(x, **cond)``, and the kept rows of every
entry travel with the samples in ``BalancedDataset.cond`` (the classifier is trained on them with their
conditioning; see :mod:`genneg.guidance.guided`).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from tqdm.auto import tqdm

from genneg.diffusion.denoiser import Denoiser, expand_sigma
from genneg.io.rundir import stage_seed
from genneg.oracles.base import evaluate_oracle
from genneg.pipeline.distributed import all_gather_objects, map_batches, rank_batch, world

__all__ = [
    "BalancedDataset",
    "InfractionBudgetError",
    "ancestral_trajectories",
    "draw_balanced",
    "draw_balanced_sis",
    "draw_imbalanced",
]

Cond = dict[str, torch.Tensor]
SampleFn = Callable[[int], torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
PartMaskFn = Callable[..., torch.Tensor]

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
        example_weights: ``(N,)`` float32 self-normalised importance weights of examples drawn from a
            proposal (SIS, METHOD.md 6), mean 1 within each class; None = all 1 (drawn from the model).
        extra: JSON-serialisable diagnostics (e.g. SIS effective sample sizes).
        cond: per-sample conditioning tensors, each with leading dimension ``N`` (e.g. traffic:
            ``{"valid": (N, A) bool, "map": (N, 1, C, C) float32, ...}``), or None for unconditioned
            samples.
    """

    x: torch.Tensor
    labels: torch.Tensor
    part_labels: torch.Tensor | None
    pi_pos: float
    pi_neg: float
    num_drawn: int
    part_mask: torch.Tensor | None = None
    balanced: bool = True
    example_weights: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    cond: Cond | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for key, value in (self.cond or {}).items():
            if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != n:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"cond[{key!r}] must be a tensor with {n} rows, got {shape}")
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
        w = self.example_weights
        if w is not None and (w.shape != (n,) or not w.is_floating_point() or not bool((w >= 0).all())):
            raise ValueError(
                f"example_weights must be non-negative float ({n},), got {w.dtype} {tuple(w.shape)}")
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
        cond = None if self.cond is None else {k: v.to(device) for k, v in self.cond.items()}
        return BalancedDataset(move(self.x), move(self.labels), move(self.part_labels), self.pi_pos,
                               self.pi_neg, self.num_drawn, part_mask=move(self.part_mask),
                               balanced=self.balanced, example_weights=move(self.example_weights),
                               extra=self.extra, cond=cond)

    def cond_rows(self, index: torch.Tensor) -> Cond:
        """The conditioning of the examples ``index`` (``(B,)`` int64): ``{name: value[index]}``, empty for
        unconditioned samples."""
        return {} if self.cond is None else {k: v[index] for k, v in self.cond.items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` (``*.safetensors`` plus a JSON sidecar with the priors), atomically."""
        from genneg.io.checkpoint import save_checkpoint

        tensors = {"x": self.x, "labels": self.labels}
        if self.part_labels is not None:
            tensors["part_labels"] = self.part_labels
        if self.part_mask is not None:
            tensors["part_mask"] = self.part_mask
        if self.example_weights is not None:
            tensors["example_weights"] = self.example_weights
        for key, value in (self.cond or {}).items():
            tensors[f"cond.{key}"] = value
        save_checkpoint(path, tensors, {"kind": "balanced_dataset", "pi_pos": self.pi_pos,
                                        "pi_neg": self.pi_neg, "num_drawn": self.num_drawn,
                                        "balanced": self.balanced, "extra": self.extra,
                                        "cond_keys": sorted(self.cond) if self.cond is not None else None})

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> BalancedDataset:
        """Read a set written by :meth:`save`."""
        from genneg.io.checkpoint import load_checkpoint

        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "balanced_dataset":
            raise ValueError(f"{path} is not a balanced dataset (kind={meta.get('kind')!r})")
        get = lambda k: tensors[k].to(device) if k in tensors else None  # noqa: E731
        keys = meta.get("cond_keys")
        cond = None if keys is None else {k: tensors[f"cond.{k}"].to(device) for k in keys}
        return cls(get("x"), get("labels"), get("part_labels"), float(meta["pi_pos"]), float(meta["pi_neg"]),
                   int(meta["num_drawn"]), part_mask=get("part_mask"), balanced=bool(meta["balanced"]),
                   example_weights=get("example_weights"), extra=dict(meta["extra"]), cond=cond)


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
    x: torch.Tensor, oracle: Callable[..., Any], part_mask_fn: PartMaskFn | None, cond: Cond | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(sample labels (n,), part labels (n, P) or None, part mask (n, P) or None)`` for one batch."""
    cond = cond or {}
    verdicts = evaluate_oracle(oracle, x, cond)
    if verdicts.ndim == 1:
        if part_mask_fn is not None:
            raise ValueError("part_mask_fn given but the oracle returned one verdict per sample")
        return verdicts, None, None
    mask = None
    if part_mask_fn is not None:
        mask = torch.as_tensor(part_mask_fn(x, **cond), device=x.device).to(torch.bool)
        if mask.shape != verdicts.shape:
            raise ValueError(
                f"part mask shape {tuple(mask.shape)} != oracle verdicts {tuple(verdicts.shape)}")
    labels = (verdicts | ~mask).all(dim=1) if mask is not None else verdicts.all(dim=1)
    return labels, verdicts, mask


def _row_sampler(sample_fn: SampleFn) -> Callable[[int, int], Any]:
    """``sample_fn`` as ``f(n, start)``: a function of two positional arguments is called with the global
    row offset ``start`` of the batch (so it can seed the batch's randomness from it: any rank can draw
    any batch, the same batch of the same rows on every rank); a function of one is called with ``n``
    alone (one process only: every rank would draw the same samples from its own copy of the
    generator)."""
    try:
        params = inspect.signature(sample_fn).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        by_rows = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):  # builtins without a signature
        by_rows = False
    if by_rows:
        return sample_fn  # type: ignore[return-value]
    if world().world_size > 1:
        raise ValueError("with more than one process sample_fn must take (n, start) and seed each batch from "
                         "start; sample_fn(n) would draw the same samples on every rank")
    return lambda n, start: sample_fn(n)  # type: ignore[call-arg]


def _draw(sample_fn: Callable[[int, int], Any], n: int, start: int) -> tuple[torch.Tensor, Cond | None]:
    """``sample_fn(n, start)`` checked: ``(x (n, ...), cond or None)``."""
    out = sample_fn(n, start)
    x, cond = (out[0], dict(out[1])) if isinstance(out, tuple) else (out, None)
    if not isinstance(x, torch.Tensor) or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"sample_fn({n}) must return a tensor with {n} rows, got {shape}")
    for key, value in (cond or {}).items():
        if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != n:
            raise ValueError(f"sample_fn({n}) returned cond[{key!r}] without {n} rows")
    return x.detach(), cond


def _cat(chunks: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if not chunks or chunks[0] is None else torch.cat(chunks)  # type: ignore[arg-type]


def _cat_cond(chunks: list[Cond | None]) -> Cond | None:
    """Row-wise concatenation of conditioning dicts (None when unconditioned)."""
    if not chunks or chunks[0] is None:
        return None
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}  # type: ignore[index]


def _cond_rows(cond: Cond | None, index: torch.Tensor) -> Cond | None:
    return None if cond is None else {k: v[index] for k, v in cond.items()}


def _to(value: Any, device: torch.device) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v.to(device) for k, v in value.items()}
    return value.to(device)


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
    shrink: bool = False,
) -> BalancedDataset:
    """Draw from the model until ``num_total / 2`` valid and ``num_total / 2`` invalid samples are kept.

    Data-parallel over the ranks of :mod:`genneg.pipeline.distributed` (a single process is the world of
    one): ``batch_size`` is the global batch of a round, each of the ``W`` ranks drawing its share
    ``b = ceil(batch_size / W)`` (:func:`~genneg.pipeline.distributed.rank_batch`; the issue's convention:
    the config's batch is the global batch, and a share small enough for each rank's cache is what makes
    the stage scale). The draws are cut into batches of ``b`` at global row offsets ``0, b, 2b, ...``; in
    each round rank ``r`` draws and labels the ``r``-th next batch, the labels are gathered, and every rank
    walks the round's batches in row order, keeping the first examples of each class and counting every
    draw (Python ints: exact) up to the batch that completes the set; later batches of that round are not
    counted. The kept rows are gathered at the end, positives then negatives in row order. With a
    ``sample_fn(n, start)`` that seeds each batch from ``start``, the same global seed gives the same set,
    counts and ``pi_neg`` for the same world size, and ``W`` processes at ``batch_size`` give exactly those
    of one process at ``b``; every rank returns the whole set.

    Args:
        sample_fn: ``sample_fn(n, start)`` (or, for one process, ``sample_fn(n)``) ``-> (n, *sample_shape)``
            samples of the current model, or ``(x, cond)`` for conditioned samples; ``start`` is the global
            row offset of the batch.
        oracle: ``oracle(x, **cond) -> bool (n,) or (n, P)``, True = valid; tensors or NumPy (see
            :func:`genneg.oracles.base.evaluate_oracle`).
        num_total: examples to keep, even: ``num_total / 2`` per class.
        batch_size: samples per round over every rank (the global batch); each rank's call of
            ``sample_fn`` takes ``ceil(batch_size / W)``.
        max_draws: most samples to draw; default ``100 · num_total``.
        part_mask_fn: ``part_mask_fn(x (n, *sample_shape), **cond) -> bool (n, P)``, True = a real part
            (padding is ignored); only for per-part oracles.
        generator: if given, shuffles the kept examples (their order is otherwise positives first).
        progress: show a progress bar (rank 0).
        shrink: when a class is too rare for the budget, instead of raising, draw exactly ``max_draws``
            samples and keep every example of that class among them and ``N/2`` of the other (the set is
            then smaller; ``extra["shrunk"]`` is True; the loss weights ``pi_y / f_y`` follow the mix).

    Returns:
        a :class:`BalancedDataset` with ``pi_neg`` = negatives among every draw / draws.

    Raises:
        InfractionBudgetError: as soon as the estimated draws needed exceed ``max_draws`` (with
            ``shrink``: only when ``max_draws`` draws hold no example of a class).
        ValueError: bad sizes, or ``sample_fn``/``oracle`` returning the wrong shapes.
    """
    rows = _row_sampler(sample_fn)
    return _collect_balanced(lambda n, start: (*_draw(rows, n, start), None), oracle, num_total,
                             batch_size=batch_size, max_draws=max_draws, part_mask_fn=part_mask_fn,
                             generator=generator, progress=progress, desc="balanced data", shrink=shrink)


def _collect_balanced(
    draw: Callable[[int, int], tuple[torch.Tensor, Cond | None, torch.Tensor | None]],
    oracle: Callable[[Any], Any],
    num_total: int,
    *,
    batch_size: int,
    max_draws: int | None,
    part_mask_fn: PartMaskFn | None,
    generator: torch.Generator | None,
    progress: bool,
    desc: str,
    shrink: bool = False,
) -> BalancedDataset:
    """The loop of :func:`draw_balanced`; ``draw(n, start)`` returns ``(x, cond or None, log_w)``:
    ``log_w`` the ``(n,)`` float64 log importance weights (target over proposal), or None when drawn from
    the model."""
    if num_total < 2 or num_total % 2:
        raise ValueError(f"num_total must be an even number >= 2, got {num_total}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = 100 * num_total if max_draws is None else int(max_draws)
    if budget < num_total:
        raise ValueError(f"max_draws={budget} is smaller than num_total={num_total}")
    w = world()
    share = rank_batch(batch_size, w)  # this rank's part of the round's global batch
    need = num_total // 2
    kept = {True: 0, False: 0}
    # this rank's kept rows: (class, global row offset of the batch, x, log_w, part labels, mask, cond)
    mine: list[tuple[bool, int, torch.Tensor, torch.Tensor, Any, Any, Any]] = []
    log_mass = {True: -math.inf, False: -math.inf}  # log Σ w over every draw of each class
    weighted = False
    drawn = negatives = 0
    shrinking = False
    device: torch.device | None = None

    def complete() -> bool:
        return drawn >= budget if shrinking else (kept[True] >= need and kept[False] >= need)

    bar = tqdm(total=num_total, disable=not progress or not w.is_main, desc=desc, unit="sample", leave=False)
    try:
        while not complete():
            sizes, offset = [], drawn
            for _ in range(w.world_size):
                sizes.append(min(share, budget - offset))
                offset += sizes[-1]
            start = drawn + sum(sizes[: w.rank])
            local: tuple[Any, ...] = (torch.zeros(0, dtype=torch.bool), None)
            if sizes[w.rank] > 0:
                x, cond, log_w = draw(sizes[w.rank], start)
                device = x.device
                labels, part_labels, mask = _label_batch(x, oracle, part_mask_fn, cond)
                local = (labels.cpu(), None if log_w is None else log_w.cpu())
            rounds = all_gather_objects(local)
            for r, (labels_r, log_w_r) in enumerate(rounds):
                n = sizes[r]
                if n == 0 or complete():
                    break
                weighted = log_w_r is not None
                if log_w_r is None:
                    log_w_r = torch.zeros(n, dtype=torch.float64)
                drawn += n
                negatives += int((~labels_r).sum())
                for cls in (True, False):
                    members = labels_r == cls
                    if members.any():
                        log_mass[cls] = float(torch.logaddexp(
                            torch.tensor(log_mass[cls], dtype=torch.float64),
                            torch.logsumexp(log_w_r[members], dim=0)))
                    idx = torch.nonzero(members).flatten()[: need - kept[cls]]
                    if idx.numel():
                        if r == w.rank:
                            on = idx.to(device)
                            mine.append((cls, start, x[on], log_w_r[idx],
                                         None if part_labels is None else part_labels[on],
                                         None if mask is None else mask[on], _cond_rows(cond, on)))
                        kept[cls] += idx.numel()
                        bar.update(idx.numel())
                bar.set_postfix(infraction=f"{negatives / drawn:.4f}", drawn=drawn)
                if not shrinking:
                    try:
                        _check_budget(drawn, negatives, kept, need, budget)
                    except InfractionBudgetError:
                        if not shrink:
                            raise
                        shrinking = True
    finally:
        bar.close()
    if shrinking and min(kept.values()) == 0:
        absent = kept[True] == 0  # the class with no example among max_draws draws
        count = drawn - negatives if absent else negatives
        raise InfractionBudgetError(count / drawn, budget, drawn=drawn, needed=math.inf,
                                    label="positive" if absent else "negative", rate_upper=1.0, missing=need)
    chunks = [c for part in all_gather_objects(mine) for c in part]
    target = device if device is not None else torch.device("cpu")
    chunks = [(c[0], c[1], *(_to(v, target) for v in c[2:])) for c in chunks]
    parts = sorted(chunks, key=lambda c: (not c[0], c[1]))  # positives first, each in row order
    sizes_kept = kept[True], kept[False]
    total = sum(sizes_kept)
    x_all = torch.cat([c[2] for c in parts])
    labels_all = torch.cat([torch.ones(sizes_kept[0], dtype=torch.bool),
                            torch.zeros(sizes_kept[1], dtype=torch.bool)]).to(x_all.device)
    part_labels_all = _cat([c[4] for c in parts])
    mask_all = _cat([c[5] for c in parts])
    cond_all = _cat_cond([c[6] for c in parts])
    weights_all = None
    extra: dict[str, Any] = {"shrunk": True} if shrinking else {}
    if weighted:
        # self-normalised within each class over the kept examples: mean 1 per class
        weights_all = torch.empty(total, dtype=torch.float32, device=x_all.device)
        for cls, rows in ((True, slice(0, sizes_kept[0])), (False, slice(sizes_kept[0], total))):
            lw = torch.cat([c[3] for c in parts if c[0] == cls]).to(torch.float64)
            wts = torch.exp(lw - lw.max())
            weights_all[rows] = (wts * (lw.numel() / wts.sum())).to(torch.float32)
            extra[f"ess_{'pos' if cls else 'neg'}"] = float(wts.sum() ** 2 / (wts * wts).sum())
        total_mass = float(torch.logaddexp(torch.tensor(log_mass[True]), torch.tensor(log_mass[False])))
        pi_neg = math.exp(log_mass[False] - total_mass)
        extra["proposal_pi_neg"] = negatives / drawn
    else:
        pi_neg = negatives / drawn
    if generator is not None:
        perm = torch.randperm(total, generator=generator).to(x_all.device)
        x_all, labels_all = x_all[perm], labels_all[perm]
        part_labels_all = None if part_labels_all is None else part_labels_all[perm]
        mask_all = None if mask_all is None else mask_all[perm]
        weights_all = None if weights_all is None else weights_all[perm]
        cond_all = _cond_rows(cond_all, perm)
    return BalancedDataset(x_all, labels_all, part_labels_all, 1.0 - pi_neg, pi_neg, drawn,
                           part_mask=mask_all, balanced=True, example_weights=weights_all, extra=extra,
                           cond=cond_all)


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
    invalid samples among the ``num_total`` drawn. Batches of ``ceil(batch_size / W)`` (``batch_size`` is
    the global batch, as in :func:`draw_balanced`) are drawn and labelled data-parallel
    (:func:`genneg.pipeline.distributed.map_batches`) and gathered in row order.

    Raises:
        ValueError: when the draw holds a single class (no classifier can be trained on it).
    """
    if num_total < 2 or batch_size < 1:
        raise ValueError(f"need num_total >= 2 and batch_size >= 1, got {num_total}, {batch_size}")
    rows = _row_sampler(sample_fn)

    where: list[torch.device] = []

    def one(start: int, n: int) -> tuple[Any, ...]:
        x, cond = _draw(rows, n, start)
        where.append(x.device)
        return (x, *_label_batch(x, oracle, part_mask_fn, cond), cond)

    batches = map_batches(num_total, rank_batch(batch_size), one)
    device = where[0] if where else torch.device("cpu")  # gathered copies come back on the CPU
    batches = [tuple(_to(v, device) for v in b) for b in batches]
    labels_all = torch.cat([b[1] for b in batches])
    negatives = int((~labels_all).sum())
    if negatives in (0, num_total):
        raise ValueError(f"all {num_total} samples drawn are {'in' if negatives else ''}valid: "
                         "a classifier needs both classes")
    pi_neg = negatives / num_total
    return BalancedDataset(torch.cat([b[0] for b in batches]), labels_all, _cat([b[2] for b in batches]),
                           1.0 - pi_neg, pi_neg, num_total, part_mask=_cat([b[3] for b in batches]),
                           balanced=False, cond=_cat_cond([b[4] for b in batches]))


def ancestral_trajectories(
    target: Denoiser,
    proposal: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample with the proposal's Euler-ancestral sampler and weight each trajectory towards the target.

    Step ``j`` (``sigma_j -> sigma_{j+1}``, variance ``v_j = sigma_j² - sigma_{j+1}²``) of the
    variance-exploding reverse SDE::

        x_{j+1} = mu(x_j) + sqrt(v_j) z,   mu(x) = x + v_j / sigma_j² · (D(x; sigma_j) - x)

    with ``D`` the proposal; the log weight adds
    ``log N(x_{j+1}; mu_target(x_j), v_j I) - log N(x_{j+1}; mu_proposal(x_j), v_j I)``. The last step,
    to ``sigma = 0``, is Gaussian too (variance ``sigma_min²``), so every transition is weighted.

    Args:
        target, proposal: denoisers ``D(x (B, ...), sigma (B,))`` (guided ones included).
        x: ``(B, *shape)`` float initial noise ``sigmas[0] · N(0, I)``.
        sigmas: ``(n+1,)`` decreasing schedule ending in 0 (``genneg.diffusion.schedules``).
        generator: random source of the step noise (its device is where it is drawn).

    Returns:
        ``(x0 (B, *shape), log_weights (B,) float64)``.
    """
    levels = [float(v) for v in sigmas]
    if len(levels) < 2 or levels[-1] != 0.0 or any(a <= b for a, b in pairwise(levels)):
        raise ValueError("sigmas must be strictly decreasing and end in 0")
    gen_device = generator.device if generator is not None else x.device
    log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for cur, nxt in pairwise(levels):
            sigma = expand_sigma(cur, x)
            var = cur * cur - nxt * nxt
            step = var / (cur * cur)
            mu_p = x + step * (proposal(x, sigma) - x)
            mu_t = x + step * (target(x, sigma) - x)
            z = torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, x.dtype)
            # log N(x'; mu_t) - log N(x'; mu_p) with x' = mu_p + sqrt(v) z and d = mu_t - mu_p:
            # (||sqrt(v) z||² - ||sqrt(v) z - d||²) / (2 v) = z·d / sqrt(v) - ||d||² / (2 v)
            d = (mu_t - mu_p).to(torch.float64).flatten(1)
            z64 = z.to(torch.float64).flatten(1)
            log_w += (z64 * d).sum(1) / math.sqrt(var) - (d * d).sum(1) / (2 * var)
            x = mu_p + math.sqrt(var) * z
    return x, log_w


def draw_balanced_sis(
    target: Denoiser,
    proposal: Denoiser,
    oracle: Callable[[Any], Any],
    num_total: int,
    *,
    sample_shape: tuple[int, ...],
    sigmas: torch.Tensor,
    batch_size: int = 10_000,
    max_draws: int | None = None,
    part_mask_fn: PartMaskFn | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> BalancedDataset:
    """A balanced set for the ``target`` model, drawn from a ``proposal`` that infracts more (SIS).

    Like :func:`draw_balanced`, but every sample comes from :func:`ancestral_trajectories` and carries
    the trajectory's importance weight. The priors are self-normalised over every draw
    (``pi_neg = Σ_neg w / Σ w``); ``example_weights`` are self-normalised within each class over the kept
    examples, so that the Eq. 9 weight of an example is ``2 pi_y · example_weight``. ``extra`` reports
    the effective sample size of each class (``ess_pos``, ``ess_neg``) and the proposal's own rate.

    Args:
        target: the model whose classifier is trained (e.g. the guided model of this iteration).
        proposal: a model that infracts more (e.g. an earlier iteration).
        oracle, num_total, batch_size, max_draws, part_mask_fn, progress: as :func:`draw_balanced`.
        sample_shape: shape of one sample, e.g. ``(2,)``.
        sigmas: the fixed stochastic-sampler schedule (``(n+1,)``, ending in 0).
        generator: random source of the initial noise, the step noise and the final shuffle.
        device: where samples are drawn.
    """
    gen_device = generator.device if generator is not None else torch.device(device)
    sigma_max = float(sigmas[0])

    base_seed = generator.initial_seed() if generator is not None else torch.initial_seed()

    def draw(n: int, start: int) -> tuple[torch.Tensor, None, torch.Tensor]:
        # each batch's randomness is seeded from its global row offset: any rank can draw any batch
        g = torch.Generator(device=gen_device).manual_seed(stage_seed(base_seed, f"sis/rows{start}"))
        x = torch.randn((n, *sample_shape), generator=g, device=gen_device).to(device) * sigma_max
        x0, log_w = ancestral_trajectories(target, proposal, x, sigmas, generator=g)
        return x0, None, log_w

    return _collect_balanced(draw, oracle, num_total, batch_size=batch_size, max_draws=max_draws,
                             part_mask_fn=part_mask_fn, generator=generator, progress=progress,
                             desc="balanced data (SIS)")
