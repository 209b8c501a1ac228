"""Oracles: the domain expert's verdict on samples, ``oracle(x) -> bool (N,) or (N, P)``, True = valid.

- :class:`Oracle`, :func:`evaluate_oracle`, :func:`sample_verdicts`: the protocol used by the whole package.
- :class:`DrivableMap`: a drivable-area raster (from an array or from polygons).
- :class:`TrafficOracle`: per-vehicle collision and offroad verdicts (C++ on the CPU, Triton on CUDA).
- :class:`CheckerboardOracle`: the toy 2-D oracle.

The compiled extension ``genneg_ext`` is imported only when an oracle first runs on the CPU, so that
``genneg`` imports even before the extension is built.
"""

from genneg.oracles.base import Oracle, evaluate_oracle, sample_verdicts
from genneg.oracles.checkerboard import CheckerboardConfig, CheckerboardOracle
from genneg.oracles.drivable_map import DrivableMap
from genneg.oracles.traffic import TrafficOracle, TrafficVerdicts

__all__ = [
    "CheckerboardConfig",
    "CheckerboardOracle",
    "DrivableMap",
    "Oracle",
    "TrafficOracle",
    "TrafficVerdicts",
    "evaluate_oracle",
    "sample_verdicts",
]
