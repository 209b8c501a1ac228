"""genneg_ext: the compiled traffic oracles (C++, multi-threaded, exact in float64).

Contract (shared by :func:`collisions`, :func:`collision_pairs` and :func:`offroad`):

* A vehicle is a rectangle ``(x, y, length, width, heading)``: centre ``x, y`` in metres, full ``length``
  (m) along the heading, full ``width`` (m) across it, ``heading`` in radians. Boxes come as an array of
  shape ``(S, A, 5)`` (S scenes, A vehicle slots) or ``(A, 5)`` (ONE scene of A vehicles, the meaning
  used throughout the package), float32 or float64 (other real dtypes, float16 and bfloat16 tensors
  included, are converted to float64), as NumPy arrays or CPU torch tensors (read zero-copy, any
  strides, either byte order).
* Valid range of a present box: ``|x|, |y| <= 1e100`` m, ``1e-100 <= length, width <= 1e100`` m,
  ``|heading| <= 1e4`` rad; margin in ``[0, 1e100]`` m; raster origin ``|ox|, |oy| <= 1e100`` m, resolution
  in ``[1e-100, 1e100]`` m (``_C.MAX_ABS_COORDINATE_M`` etc., equal to ``genneg.reference.traffic_oracle``'s).
  Inside it every intermediate is finite and normal; outside it ``ValueError`` is raised.
* ``valid``: optional bool mask ``(S, A)`` (or ``(A,)``); absent vehicles are ignored (their values are
  never read, so padding with NaN is fine) and reported False.
* Geometry is computed in float64 whatever the input dtype; results are exact for the given numbers up
  to float64 rounding at exact touching. Headings that are float64 multiples of ``fl(pi/2)`` are exact
  quarter turns.
* Bad input raises ``ValueError`` saying what and where (wrong rank or last dimension, NaN/inf with scene
  and vehicle index, a value outside the valid range, mismatched ``valid`` shape, empty map, negative
  threads); a CUDA tensor or a non-numeric dtype raises ``TypeError``; a worker thread that cannot be
  started raises ``RuntimeError`` (the threads already started are joined; the module stays usable).
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
