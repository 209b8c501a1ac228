"""Re-export of the checkerboard oracle, so that every oracle is reachable from ``genneg.oracles``."""

from genneg.data.checkerboard import CheckerboardConfig, CheckerboardOracle

__all__ = ["CheckerboardConfig", "CheckerboardOracle"]
