"""PNG figures of a run (matplotlib, Agg backend, no display needed).

- :func:`plot_samples`: 2-D samples of each model, valid points in one colour and invalid in another.
- :func:`plot_classifier_maps`: ``P(valid | x_sigma = x)`` of each classifier on a grid, at a few sigma.
- :func:`plot_progress`: infraction rate (with its interval) and held-out ELBO versus Gen-neG iteration,
  with the distilled model and the ablations as horizontal reference lines.

Every function writes its file through a temporary name and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_classifier_maps", "plot_progress", "plot_samples"]

_VALID, _INVALID = "#1f77b4", "#d62728"


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


def plot_samples(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    bounds: tuple[float, float, float, float] | None = None,
    max_points: int = 5000,
) -> Path:
    """Scatter plots of 2-D samples coloured by the oracle's verdict.

    Args:
        path: output PNG.
        panels: ``(title, x (N, 2) float, valid (N,) bool)`` per model.
        bounds: ``(xmin, xmax, ymin, ymax)`` of every panel (data units); None = automatic.
        max_points: points drawn per panel (the first ones).
    """
    if not panels:
        raise ValueError("plot_samples needs at least one panel")
    rows, cols = _grid_shape(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.45})
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, x, valid) in zip(axes.flat, panels):
        x = np.asarray(x)[:max_points]
        valid = np.asarray(valid, dtype=bool)[:max_points]
        if x.ndim != 2 or x.shape[1] != 2 or valid.shape != (x.shape[0],):
            raise ValueError(f"panel {title!r}: need x (N, 2) and valid (N,), got {x.shape} and "
                             f"{valid.shape}")
        ax.scatter(x[valid, 0], x[valid, 1], s=1.5, c=_VALID, linewidths=0, label="valid (oracle)")
        ax.scatter(x[~valid, 0], x[~valid, 1], s=3.0, c=_INVALID, linewidths=0, label="invalid (oracle)")
        ax.set_title(f"{title}\ninvalid {100 * (1 - valid.mean()):.2f}% of {len(valid)}", fontsize=9)
        ax.set_aspect("equal")
        if bounds is not None:
            ax.set_xlim(bounds[0], bounds[1])
            ax.set_ylim(bounds[2], bounds[3])
        ax.set_xlabel("x₁ (data units)", fontsize=7)
        ax.set_ylabel("x₂ (data units)", fontsize=7)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, markerscale=4, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    return _save(fig, path)


def _device_of(model: object) -> torch.device:
    """The device of a module's first parameter or buffer; the CPU for anything else."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def plot_classifier_maps(
    path: str | os.PathLike[str],
    classifiers: Sequence[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]],
    sigmas: Sequence[float],
    bounds: tuple[float, float, float, float],
    *,
    resolution: int = 120,
) -> Path:
    """Heat maps of ``sigmoid(logit(x, sigma))`` over a 2-D grid: one row per classifier, one column per
    noise level.

    Args:
        path: output PNG.
        classifiers: ``(title, classifier)`` with ``classifier(x (B, 2), sigma (B,)) -> logits (B,)``; a
            module's grid and sigmas are put on the device of its parameters (CPU for a plain function).
        sigmas: noise levels (data units), all ``> 0``.
        bounds: ``(xmin, xmax, ymin, ymax)`` of the grid (data units).
        resolution: grid points per axis.
    """
    if not classifiers or not sigmas or any(s <= 0 for s in sigmas):
        raise ValueError(f"need classifiers and positive sigmas, got {len(classifiers)} and {list(sigmas)}")
    xs = np.linspace(bounds[0], bounds[1], resolution)
    ys = np.linspace(bounds[2], bounds[3], resolution)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    rows, cols = len(classifiers), len(sigmas)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    image = None
    for i, (title, classifier) in enumerate(classifiers):
        device = _device_of(classifier)
        grid = points.to(device)
        for j, sigma in enumerate(sigmas):
            with torch.no_grad():
                logits = classifier(grid, torch.full((grid.shape[0],), float(sigma), device=device))
            prob = torch.sigmoid(logits.reshape(grid.shape[0], -1)[:, 0]).cpu().numpy().reshape(gx.shape)
            ax = axes[i, j]
            image = ax.imshow(prob, origin="lower", extent=bounds, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{title}, σ={sigma:g}", fontsize=8)
            ax.set_xlabel("x₁ (data units)", fontsize=6)
            ax.set_ylabel("x₂ (data units)", fontsize=6)
            ax.tick_params(labelsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="P(valid | x_σ)")
    return _save(fig, path)


def plot_progress(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], *,
                  likelihood: str = "elbo", likelihood_label: str = "held-out ELBO (nats)") -> Path:
    """Infraction rate and held-out ELBO versus Gen-neG iteration (0 = baseline).

    Args:
        path: output PNG.
        rows: evaluation records (``genneg.pipeline.report.eval_rows``) with ``group``, ``iteration``,
            ``infraction``, ``infraction_low``, ``infraction_high`` and the ``likelihood`` key.
        likelihood: the record key of the likelihood panel (``"elbo"``, ``"r_elbo"``); likelihood_label:
            its axis label with units.
    """
    chain = sorted((r for r in rows if r.get("group") in ("baseline", "gen_neg")),
                   key=lambda r: r.get("iteration") or 0)
    if not chain:
        raise ValueError("plot_progress needs the baseline or Gen-neG iteration records")
    others = [r for r in rows if r.get("group") in ("ablation", "distilled")]
    it = np.array([r.get("iteration") or 0 for r in chain])
    rate = np.array([r["infraction"] for r in chain]) * 100
    low = np.array([r["infraction_low"] for r in chain]) * 100
    high = np.array([r["infraction_high"] for r in chain]) * 100
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.errorbar(it, rate, yerr=[rate - low, high - rate], marker="o", capsize=3, label="Gen-neG")
    ax1.set_yscale("log")
    ax1.set_xlabel("iteration (0 = baseline)")
    ax1.set_ylabel("infraction rate (%)")
    ax2.plot(it, [r.get(likelihood, np.nan) for r in chain], marker="o", label="Gen-neG")
    ax2.set_xlabel("iteration (0 = baseline)")
    ax2.set_ylabel(likelihood_label)
    for k, r in enumerate(others):
        color = f"C{k + 1}"
        ax1.axhline(100 * r["infraction"], ls="--", color=color, lw=1, label=r["model"])
        value = r.get(likelihood)
        if value is not None and np.isfinite(value):
            ax2.axhline(value, ls="--", color=color, lw=1, label=r["model"])
    for ax in (ax1, ax2):
        ax.set_xticks(it)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
