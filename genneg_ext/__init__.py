"""genneg_ext: the compiled traffic oracles (C++, multi-threaded, exact in float64).

Contract (shared by :func:`collisions`, :func:`collision_pairs` and :func:`offroad`):

* A vehicle is a rectangle ``(x, y, length, width, heading)``: centre ``x, y`` in metres, full ``length``
  (m) along the heading, full ``width`` (m) across it, ``heading`` in radians. Boxes come as an array of
  shape ``(S, A, 5)`` (S scenes, A vehicle slots) or ``(A, 5)``, float32 or float64 (other real dtypes are
  converted to float64), as NumPy arrays or CPU torch tensors (read zero-copy, any strides).
* ``valid``: optional bool mask ``(S, A)`` (or ``(A,)``); absent vehicles are ignored (their values are
  never read, so padding with NaN is fine) and reported False.
* Geometry is computed in float64 whatever the input dtype; results are exact for the given numbers up
  to float64 rounding at exact touching. Headings that are float64 multiples of ``fl(pi/2)`` are exact
  quarter turns.
* Bad input raises ``ValueError`` saying what and where (wrong rank or last dimension, NaN/inf with scene
  and vehicle index, length or width <= 0, resolution <= 0, mismatched ``valid`` shape, empty map,
  negative margin or threads); a CUDA tensor or a non-numeric dtype raises ``TypeError``.
* The GIL is released during the work; ``threads=0`` means all cores this process may use.
"""

from genneg_ext._C import __version__
from genneg_ext._traffic import (
    available_cores,
    available_isas,
    collision_pairs,
    collisions,
    offroad,
    offroad_polygons,
    road_from_rings,
)

__all__ = [
    "__version__",
    "available_cores",
    "available_isas",
    "collision_pairs",
    "collisions",
    "offroad",
    "offroad_polygons",
    "road_from_rings",
]
