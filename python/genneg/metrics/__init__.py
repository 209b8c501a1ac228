"""Metrics: infraction rate, ELBO / r-ELBO, exact PF-ODE likelihood, MMD, parallel-sample counts, and the
motion metrics (foot skating, floating, FID / KID in a motion encoder's features:
:mod:`genneg.metrics.motion`)."""

from genneg.metrics.elbo import ELBOTerms, elbo, elbo_terms, r_elbo
from genneg.metrics.gaussian import gaussian_denoiser, gaussian_elbo, gaussian_eps, gaussian_log_density
from genneg.metrics.infraction import RateEstimate, infraction_rate, wilson_interval
from genneg.metrics.likelihood import denoiser_divergence, pf_ode_log_likelihood
from genneg.metrics.mmd import DEFAULT_BANDWIDTHS, mmd
from genneg.metrics.parallel import num_parallel_samples, reduction

__all__ = [
    "DEFAULT_BANDWIDTHS",
    "ELBOTerms",
    "RateEstimate",
    "denoiser_divergence",
    "elbo",
    "elbo_terms",
    "gaussian_denoiser",
    "gaussian_elbo",
    "gaussian_eps",
    "gaussian_log_density",
    "infraction_rate",
    "mmd",
    "num_parallel_samples",
    "pf_ode_log_likelihood",
    "r_elbo",
    "reduction",
    "wilson_interval",
]
