"""Training the time-dependent classifier with importance weights (METHOD.md 3, Eq. 9).

The balanced set has class priors 1/2, 1/2 but the Bayes-optimal classifier for guidance must use the
model's priors ``pi_pos = 1 - r``, ``pi_neg = r``. Each example therefore gets the weight
``w(y) = pi_y / (1/2)`` and the loss is::

    L = (1/N) Σ_i w(y_i) E_sigma E_eps [ -y_i log c(x0_i + sigma eps, sigma)
                                         - (1 - y_i) log(1 - c(x0_i + sigma eps, sigma)) ]

computed from logits with ``logsigmoid`` (``log c = logsigmoid(l)``, ``log(1 - c) = logsigmoid(-l)``),
sigma drawn log-uniformly on ``[sigma_min, sigma_max]`` as in the baseline's training. Multi-part samples
(traffic) have one logit and one label per part; padded parts are masked; the weight stays per sample.
Conditioned samples are classified with their conditioning: ``c(x, sigma, **dataset.cond_rows(idx))``.

Modes (``ClassifierConfig.mode``):

- ``gen_neg``: the method (balanced data, weights ``2 pi_y``);
- ``imbalanced``: the natural mix of :func:`genneg.pipeline.balanced.draw_imbalanced`, weights 1;
- ``no_is``: balanced data, weights 1 (biased towards the balanced prior);
- ``time_independent``: trained on clean ``x0`` only (sigma unused), weights ``2 pi_y``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from genneg.diffusion.denoiser import broadcast_to_sample
from genneg.diffusion.edm import EDMConfig
from genneg.pipeline.balanced import BalancedDataset
from genneg.pipeline.distributed import ddp, global_mean_losses, shard_rows, world
from genneg.pipeline.optim import ema_update, optimizer_step, set_learning_rate

__all__ = [
    "ClassifierConfig",
    "classifier_loss",
    "importance_weights",
    "sample_weights",
    "train_classifier",
]

ClassifierMode = Literal["gen_neg", "imbalanced", "no_is", "time_independent"]
_MODES = ("gen_neg", "imbalanced", "no_is", "time_independent")


@dataclass(frozen=True)
class ClassifierConfig:
    """Classifier training.

    Attributes:
        iterations: Adam steps.
        batch_size: examples per step, drawn uniformly with replacement from the set.
        lr: Adam learning rate.
        mode: ``gen_neg`` | ``imbalanced`` | ``no_is`` | ``time_independent`` (module docstring).
        lr_schedule: ``"constant"``, or ``"cosine"`` decay to ``lr_min_fraction · lr`` at ``iterations``.
        lr_min_fraction: final learning rate as a fraction of ``lr`` (cosine schedule).
        warmup: linear warm-up steps.
        weight_decay: Adam L2 penalty.
        grad_clip: max gradient norm (0 = off).
        ema_decay: the classifier ends with an exponential moving average of its weights with this decay
            (:func:`~genneg.pipeline.optim.ema_update`); 0 = the last weights.
    """

    iterations: int = 2000
    batch_size: int = 1024
    lr: float = 1e-3
    mode: ClassifierMode = "gen_neg"
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min_fraction: float = 0.05
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.iterations < 1 or self.batch_size < 1 or self.warmup < 0:
            raise ValueError(f"need iterations >= 1, batch_size >= 1, warmup >= 0, got {self}")
        # Written as the good range, so that NaN fails too (NaN <= 0 is False).
        good = (0 < self.lr < math.inf and 0 <= self.lr_min_fraction <= 1
                and 0 <= self.weight_decay < math.inf and 0 <= self.grad_clip < math.inf)
        if not good:
            raise ValueError(
                f"need finite lr > 0, 0 <= lr_min_fraction <= 1, weight_decay >= 0, grad_clip >= 0: {self}")



def importance_weights(labels: torch.Tensor, pi_pos: float, pi_neg: float) -> torch.Tensor:
    """Per-example weights ``w(y) = pi_y / f_y``, ``f_y`` the fraction of class ``y`` in ``labels``.

    On a balanced set ``f_y = 1/2``, so ``w+ = 2 pi_pos`` and ``w- = 2 pi_neg`` (Eq. 9); on the natural
    mix (``f_y = pi_y``) every weight is 1.

    Args:
        labels: ``(N,)`` bool, True = valid.
        pi_pos, pi_neg: the model's class priors (sum to 1).

    Returns:
        ``(N,)`` float32 on ``labels.device``.
    """
    if labels.ndim != 1 or labels.dtype != torch.bool:
        raise ValueError(f"labels must be bool (N,), got {labels.dtype} {tuple(labels.shape)}")
    if not (0 <= pi_pos <= 1 and 0 <= pi_neg <= 1) or abs(pi_pos + pi_neg - 1) > 1e-6:
        raise ValueError(f"need priors in [0, 1] summing to 1, got pi_pos={pi_pos}, pi_neg={pi_neg}")
    n = labels.shape[0]
    n_pos = int(labels.sum())
    if n_pos in (0, n):
        raise ValueError(f"labels hold a single class ({n_pos} valid of {n}); need both")
    w_pos = pi_pos / (n_pos / n)
    w_neg = pi_neg / ((n - n_pos) / n)
    return torch.where(labels, torch.tensor(w_pos, dtype=torch.float32, device=labels.device),
                       torch.tensor(w_neg, dtype=torch.float32, device=labels.device))


def sample_weights(dataset: BalancedDataset, mode: ClassifierMode) -> torch.Tensor:
    """The loss weights ``(N,)`` float32 of each example for ``mode``.

    ``gen_neg`` and ``time_independent``: the class weights ``pi_y / f_y`` (``2 pi_y`` on balanced sets);
    ``no_is`` and ``imbalanced``: 1. Examples drawn from a proposal (SIS) are further multiplied by their
    ``example_weights`` in every mode: those correct the sampling distribution, not the class prior.

    Raises:
        ValueError: ``imbalanced`` asked for on a balanced set (the ablation needs the natural mix).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "imbalanced" and dataset.balanced:
        raise ValueError("mode='imbalanced' needs the natural mix (draw_imbalanced), got a balanced set")
    if mode in ("imbalanced", "no_is"):
        weights = torch.ones(len(dataset), dtype=torch.float32, device=dataset.labels.device)
    else:
        weights = importance_weights(dataset.labels, dataset.pi_pos, dataset.pi_neg)
    if dataset.example_weights is not None:
        weights = weights * dataset.example_weights.to(weights.device, torch.float32)
    return weights


def classifier_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    part_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted binary cross-entropy from logits (Eq. 9), averaged over the batch.

    Args:
        logits: ``(B,)``, or ``(B, P)`` one per part.
        labels: bool (or 0/1 float) with the shape of ``logits``, True = valid.
        weights: ``(B,)`` per-sample weights ``w(y_i)``.
        part_mask: ``(B, P)`` bool, True = a real part; masked parts add nothing. Only for ``(B, P)``.

    Returns:
        scalar: ``mean_i w_i · Σ_parts [-y log sigmoid(l) - (1 - y) log sigmoid(-l)]``.
    """
    if labels.shape != logits.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != logits shape {tuple(logits.shape)}")
    if weights.shape != (logits.shape[0],):
        raise ValueError(f"weights must have shape ({logits.shape[0]},), got {tuple(weights.shape)}")
    y = labels.to(logits.dtype)
    nll = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits))
    if logits.ndim == 2:
        if part_mask is not None:
            if part_mask.shape != logits.shape:
                raise ValueError(f"part_mask shape {tuple(part_mask.shape)} != logits {tuple(logits.shape)}")
            nll = nll * part_mask.to(nll.dtype)
        nll = nll.sum(dim=1)
    elif part_mask is not None:
        raise ValueError("part_mask is only meaningful for per-part logits (B, P)")
    return (weights.to(nll.dtype) * nll).mean()


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def train_classifier(
    classifier: nn.Module,
    dataset: BalancedDataset,
    config: ClassifierConfig,
    edm_config: EDMConfig,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    noise_levels: torch.Tensor | None = None,
) -> list[float]:
    """Train ``classifier`` in place with Adam on Eq. 9 (or the ablation ``config.mode`` selects).

    Each step draws ``batch_size`` example indices uniformly (with replacement), one noise level per
    example ``ln sigma ~ U[ln sigma_min, ln sigma_max]`` (``edm_config``), or uniformly from
    ``noise_levels``, and ``eps ~ N(0, I)``, and evaluates the classifier at ``x0 + sigma eps`` (at ``x0``
    in ``time_independent`` mode).

    Data-parallel (:mod:`genneg.pipeline.distributed`): ``batch_size`` is the global batch. Every rank
    draws the whole step's randomness from its copy of ``generator`` (the same on every rank) and
    evaluates its contiguous share of the rows (:func:`~genneg.pipeline.distributed.shard_rows`) through
    ``DistributedDataParallel``; its loss is scaled by ``share · W / batch_size``, so the averaged
    gradient is the gradient of the global batch's mean loss, as in one process (up to the order of
    floating-point sums). The returned losses are the global batch's (all-reduced).

    Args:
        classifier: ``c(x (B, ...), sigma (B,), **cond) -> logits (B,) or (B, P)`` with attribute
            ``time_dependent`` (a :class:`genneg.guidance.TimeClassifier`); its device is used.
        dataset: oracle-labelled samples with the model's priors.
        config: iterations, batch, optimiser, mode.
        edm_config: the noise range (data units) of the baseline's training.
        generator: random source of indices, sigmas and noise (its device is where they are drawn).
        progress: show a progress bar.
        noise_levels: optional ``(L,)`` float noise levels (data units) to draw ``sigma`` from uniformly,
            e.g. a DDPM baseline's ``sigma_t = sqrt((1 - ᾱ_t) / ᾱ_t)`` for ``t = 0..T-1`` (METHOD.md 3:
            ``sigma`` drawn as in the baseline's training, which for DDPM is ``t`` uniform).

    Returns:
        the loss of every step, ``config.iterations`` floats.

    Raises:
        ValueError: mode and classifier disagree on time dependence; per-part logits without part labels.
    """
    time_dependent = bool(getattr(classifier, "time_dependent", True))
    if (config.mode == "time_independent") == time_dependent:
        raise ValueError(
            f"mode={config.mode!r} needs a classifier with time_dependent="
            f"{config.mode != 'time_independent'}, got time_dependent={time_dependent}"
        )
    device = _module_device(classifier)
    weights = sample_weights(dataset, config.mode).to(device)
    data = dataset.to(device)
    targets = data.part_labels if data.part_labels is not None else data.labels
    gen_device = generator.device if generator is not None else torch.device("cpu")
    log_min, log_max = math.log(edm_config.sigma_min), math.log(edm_config.sigma_max)
    if noise_levels is not None:
        noise_levels = torch.as_tensor(noise_levels).to(device=device, dtype=torch.float64).flatten()
        if noise_levels.numel() == 0 or not bool((noise_levels > 0).all()):
            raise ValueError("noise_levels must be a non-empty tensor of positive noise levels")
    n, b = len(data), config.batch_size
    w = world()
    rows = shard_rows(b, w)
    share = (rows.stop - rows.start) * w.world_size / b  # this rank's loss scale (1 for one process)
    model = ddp(classifier)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses = torch.empty(config.iterations, dtype=torch.float32, device=device)
    was_training = classifier.training
    classifier.train()
    ema = copy.deepcopy(classifier).requires_grad_(False) if config.ema_decay > 0 else None
    bar = tqdm(range(config.iterations), disable=not progress, desc=f"classifier ({config.mode})",
               leave=False)
    for step in bar:
        set_learning_rate(optimizer, config.lr, step, config.iterations, config.lr_schedule,
                          config.lr_min_fraction, config.warmup)
        idx = torch.randint(n, (b,), generator=generator, device=gen_device).to(device)
        x0 = data.x[idx]
        if time_dependent:
            if noise_levels is not None:
                pick = torch.randint(noise_levels.numel(), (b,), generator=generator, device=gen_device)
                sigma = noise_levels[pick.to(device)].to(torch.float32)
            else:
                u = torch.rand(b, generator=generator, device=gen_device).to(device)
                sigma = torch.exp(log_min + u * (log_max - log_min))
            eps = torch.randn(x0.shape, generator=generator, device=gen_device).to(device, x0.dtype)
            x = x0 + broadcast_to_sample(sigma.to(x0.dtype), x0) * eps
        else:
            x, sigma = x0, torch.ones(b, device=device)
        idx, x, sigma = idx[rows], x[rows], sigma[rows]
        logits = model(x, sigma, **data.cond_rows(idx))
        if logits.ndim == 2 and data.part_labels is None:
            raise ValueError(f"classifier returned per-part logits {tuple(logits.shape)} but the set has no "
                             "part labels")
        mask = data.part_mask[idx] if data.part_mask is not None else None
        loss = classifier_loss(logits, targets[idx], weights[idx], mask) * share
        optimizer_step(optimizer, loss, classifier.parameters(), config.grad_clip)
        if ema is not None:
            ema_update(ema, classifier, config.ema_decay, step)
        losses[step] = loss.detach()
        if progress and (step % 50 == 0 or step == config.iterations - 1):
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if ema is not None:
        with torch.no_grad():
            for p, p_ema in zip(classifier.parameters(), ema.parameters(), strict=True):
                p.copy_(p_ema)
    classifier.train(was_training)
    return global_mean_losses(losses)
