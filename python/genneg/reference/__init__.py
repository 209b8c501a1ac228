"""Pure-PyTorch twins of every fast op: the references that C++ and Triton implementations are tested
against, and the fallback where those cannot run. Readable first, vectorised second.

Modules:
    traffic_oracle: ``collisions`` and ``offroad`` (vehicle boxes vs each other and vs a drivable raster).
"""

from genneg.reference import traffic_oracle

__all__ = ["traffic_oracle"]
