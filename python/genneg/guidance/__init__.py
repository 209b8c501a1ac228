"""Classifier guidance: time-dependent classifiers and the guided (stacked) denoiser.

``genneg.guidance.fused`` (Triton fast path) and ``genneg.guidance.analytic`` are imported on demand,
never here, so that importing this package does not touch Triton.
"""

from genneg.guidance.classifier import TimeClassifier
from genneg.guidance.guided import GuidedDenoiser, guidance_gradient, posterior_variance

__all__ = ["GuidedDenoiser", "TimeClassifier", "guidance_gradient", "posterior_variance"]
