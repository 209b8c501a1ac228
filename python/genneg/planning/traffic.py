"""Traffic-scene conditioning for planners: fix the map, the ego and the vehicles it sees; sample the rest.

A scene sample is ``(A, 7)`` normalised tokens (:mod:`genneg.data.traffic.tokens`) in the frame of a
scene window (centre ``centre_m``, half-size ``norm.position_scale_m``). A planner knows:

- the **map**: the drivable raster, given to the network and the classifiers as a crop of the window
  (the ``map_raster`` entry of the conditioning) and to the oracle in full;
- the **window**: its centre (the ``centre_m`` entry), where the oracle places the decoded boxes;
- the **ego and the seen vehicles**: their tokens are fixed by inpainting;
- how many **vehicle slots** to fill: slots marked present but not known are sampled; absent slots are
  fixed to the padding token (all zeros) so that they stay exactly zero.

:func:`scene_condition` builds the :class:`~genneg.planning.inpainting.InpaintCondition`;
:class:`SceneTokenOracle` decodes sampled tokens to world-frame boxes (as
:func:`genneg.data.traffic.tokens.tokens_to_scenes`) and runs the
:class:`~genneg.oracles.TrafficOracle` on them, refusing a condition whose map is not the oracle's.
The condition's ``cond`` (``valid``, ``map_raster``, ``centre_m``, ``map_index``) has the entries of the
pipeline's own conditioning dict (``genneg.data.traffic.SceneSet.contexts``): every model of a traffic
run, plain, guided or distilled, takes it by keyword, ``model(x, sigma, **cond)``, and so does every
oracle, ``oracle(x, **cond)``: :class:`SceneTokenOracle` reads ``valid`` and ``centre_m``, and a run's own
:class:`~genneg.data.traffic.scene_set.TrafficTokenOracle` (``TrafficTask.oracle``) works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from genneg.data.traffic.tokens import TOKEN_DIM, TokenNormalisation, crop_maps
from genneg.oracles.drivable_map import DrivableMap
from genneg.oracles.traffic import TrafficOracle
from genneg.planning.inpainting import InpaintCondition

__all__ = ["SceneFrame", "SceneTokenOracle", "decode_tokens", "scene_condition"]


@dataclass(frozen=True)
class SceneFrame:
    """What a scene condition was built for, checked against the oracle before sampling
    (:meth:`SceneTokenOracle.check_condition`); the window's centre and present slots are in ``cond``.

    Attributes:
        drivable_map: the map the planner is on (must be the oracle's).
        norm: token normalisation constants (must be the oracle's).
    """

    drivable_map: DrivableMap = field(repr=False)
    norm: TokenNormalisation = field(default_factory=TokenNormalisation)


def decode_tokens(
    tokens: torch.Tensor,
    centre_m: tuple[float, float] | torch.Tensor,
    norm: TokenNormalisation,
    min_size_m: float = 0.1,
) -> torch.Tensor:
    """Tokens ``(N, A, 7)`` -> world-frame boxes ``(N, A, 5)`` float32 (x m, y m, length m, width m,
    heading rad), in float64 then rounded, exactly as :func:`~genneg.data.traffic.tokens_to_scenes`.

    ``centre_m``: the window centre(s), metres: ``(x, y)``, or a ``(N, 2)`` / ``(1, 2)`` tensor (one per
    sample, as in ``cond["centre_m"]``)."""
    if tokens.ndim != 3 or tokens.shape[-1] != TOKEN_DIM:
        raise ValueError(f"tokens must have shape (N, A, {TOKEN_DIM}), got {tuple(tokens.shape)}")
    t = tokens.to(torch.float64)
    centre = torch.as_tensor(centre_m, dtype=torch.float64).to(t.device).reshape(-1, 2)
    if centre.shape[0] not in (1, t.shape[0]):
        raise ValueError(f"centre_m must be (x, y), (1, 2) or ({t.shape[0]}, 2), got {tuple(centre.shape)}")
    cx, cy = centre[:, 0:1], centre[:, 1:2]
    boxes = torch.stack(
        [
            t[..., 0] * norm.position_scale_m + cx,
            t[..., 1] * norm.position_scale_m + cy,
            torch.clamp(t[..., 4] * norm.length_std_m + norm.length_mean_m, min=min_size_m),
            torch.clamp(t[..., 5] * norm.width_std_m + norm.width_mean_m, min=min_size_m),
            torch.atan2(t[..., 3], t[..., 2]),
        ],
        dim=-1,
    )
    return boxes.to(torch.float32)


def _same_map(a: DrivableMap, b: DrivableMap) -> bool:
    if a is b:
        return True
    return (
        a.shape == b.shape
        and a.origin_m == b.origin_m
        and a.resolution_m == b.resolution_m
        and bool(np.array_equal(a.drivable, b.drivable))
    )


class SceneTokenOracle:
    """Per-vehicle verdicts of sampled scene tokens on the planner's map, called like every oracle of the
    package with the condition's ``cond`` by keyword: ``oracle(tokens (N, A, 7), *, valid (N, A) bool,
    centre_m (N, 2) metres, **other) -> (N, A)`` bool (True = valid; absent slots are valid; other entries,
    ``map_raster`` and ``map_index``, are ignored). The call signature of the pipeline's
    :class:`~genneg.data.traffic.scene_set.TrafficTokenOracle`, for one map.

    Args:
        oracle: the traffic oracle of the map the planner drives on.
        norm: token normalisation (default :class:`~genneg.data.traffic.TokenNormalisation()`).
        min_size_m: smallest decoded length and width, metres.
    """

    def __init__(self, oracle: TrafficOracle, norm: TokenNormalisation | None = None,
                 min_size_m: float = 0.1) -> None:
        if not isinstance(oracle, TrafficOracle):
            raise TypeError(f"oracle must be a TrafficOracle, got {type(oracle).__name__}")
        self.oracle = oracle
        self.norm = TokenNormalisation() if norm is None else norm
        self.min_size_m = float(min_size_m)

    def check_condition(self, condition: InpaintCondition | None) -> None:
        """Raise ``ValueError`` unless ``condition`` is a scene condition for this oracle: a
        :class:`SceneFrame` on the oracle's map with the oracle's normalisation, and ``cond`` entries
        ``valid`` ``(1 or N, A)`` bool and ``centre_m`` ``(1 or N, 2)``.

        Called by :class:`~genneg.planning.FastSampler` before sampling (so a mismatch costs no samples)."""
        if condition is None:
            raise ValueError("a scene oracle judges samples in a scene window; pass condition= "
                             "(genneg.planning.traffic.scene_condition)")
        frame = condition.frame
        if not isinstance(frame, SceneFrame):
            raise ValueError(f"a scene condition needs a SceneFrame as frame, got {type(frame).__name__}")
        if self.oracle.drivable_map is not None and not _same_map(
            frame.drivable_map, self.oracle.drivable_map
        ):
            raise ValueError("map mismatch: the condition's drivable map is not the oracle's map")
        if frame.norm != self.norm:
            raise ValueError(f"normalisation mismatch: the condition's {frame.norm} is not the oracle's "
                             f"{self.norm}")
        a = condition.values.shape[0]
        valid, centre = condition.cond.get("valid"), condition.cond.get("centre_m")
        if valid is None or valid.dtype != torch.bool or valid.ndim != 2 or valid.shape[1] != a:
            got = "none" if valid is None else f"{valid.dtype} {tuple(valid.shape)}"
            raise ValueError(f"cond['valid'] must be bool of shape (1 or N, {a}), got {got}")
        if centre is None or centre.ndim != 2 or centre.shape[1] != 2:
            got = "none" if centre is None else f"{tuple(centre.shape)}"
            raise ValueError(f"cond['centre_m'] must have shape (1 or N, 2), got {got}")

    def __call__(self, tokens: torch.Tensor, *, valid: torch.Tensor, centre_m: torch.Tensor,
                 **other: torch.Tensor) -> torch.Tensor:
        """``tokens (N, A, 7)`` float, ``valid (N, A)`` bool, ``centre_m (N, 2)`` -> ``(N, A)`` bool."""
        boxes = decode_tokens(tokens, centre_m, self.norm, self.min_size_m)
        present = valid.to(boxes.device).expand(boxes.shape[0], -1)
        return torch.as_tensor(self.oracle(boxes, present))


def scene_condition(
    known_tokens: torch.Tensor,
    known: torch.Tensor,
    valid: torch.Tensor,
    drivable_map: DrivableMap,
    centre_m: tuple[float, float],
    *,
    norm: TokenNormalisation | None = None,
    map_cells: int = 32,
    crop_margin_m: float = 0.0,
    map_index: int = 0,
) -> InpaintCondition:
    """The condition "these vehicles are where they are; fill the other present slots".

    Args:
        known_tokens: ``(A, 7)`` float tokens; rows where ``known`` is True are fixed (the ego, seen
            vehicles), other rows are ignored.
        known: ``(A,)`` bool, fixed slots (must be present).
        valid: ``(A,)`` bool, present slots: known ones and those to sample.
        drivable_map: the map (its crop around ``centre_m`` is the network's map input).
        centre_m: ``(x, y)`` window centre, metres.
        norm: token normalisation (its ``position_scale_m`` is half the window); default
            :class:`~genneg.data.traffic.TokenNormalisation()`.
        map_cells: crop edge in cells (the network's map input is ``(1, 1, map_cells, map_cells)``).
        crop_margin_m: the crop reaches this far beyond the window on every side, metres (as the network
            was trained: ``TrafficDataConfig.crop_margin_m``).
        map_index: the map's index among a run's road maps (``cond["map_index"]``, read by the pipeline's
            ``TrafficTokenOracle``; :class:`SceneTokenOracle` ignores it).

    Returns:
        An :class:`~genneg.planning.inpainting.InpaintCondition` with ``cond = {"valid": (1, A) bool,
        "map_raster": (1, 1, map_cells, map_cells) float32, "centre_m": (1, 2) float64 metres,
        "map_index": (1,) int64}`` (the entries of the pipeline's scene contexts) and a
        :class:`SceneFrame`.
    """
    norm = TokenNormalisation() if norm is None else norm
    known_tokens = torch.as_tensor(known_tokens, dtype=torch.float32)
    if known_tokens.ndim != 2 or known_tokens.shape[1] != TOKEN_DIM:
        raise ValueError(f"known_tokens must have shape (A, {TOKEN_DIM}), got {tuple(known_tokens.shape)}")
    a = known_tokens.shape[0]
    for name, m in (("known", known), ("valid", valid)):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (a,):
            raise ValueError(f"{name} must be a bool tensor of shape ({a},)")
    if bool((known & ~valid).any()):
        raise ValueError(f"known slots must be present; slot {int(torch.nonzero(known & ~valid)[0])} is not")
    if not bool(valid.any()):
        raise ValueError("no present vehicle slot")
    if bool((~torch.isfinite(known_tokens[known])).any()):
        raise ValueError("known_tokens holds NaN or infinite values in a known slot")
    fixed = known | ~valid
    values = torch.where(known[:, None], known_tokens, torch.zeros_like(known_tokens))
    mask = fixed[:, None].expand(a, TOKEN_DIM).clone()
    window_m = 2.0 * norm.position_scale_m
    crop = crop_maps(drivable_map, np.asarray([centre_m], dtype=np.float64), window_m + 2 * crop_margin_m,
                     map_cells)
    map_raster = torch.from_numpy(crop.astype(np.float32)).reshape(1, 1, map_cells, map_cells)
    frame = SceneFrame(drivable_map=drivable_map, norm=norm)
    cond = {
        "valid": valid.clone()[None],
        "map_raster": map_raster,
        "centre_m": torch.tensor([[float(centre_m[0]), float(centre_m[1])]], dtype=torch.float64),
        "map_index": torch.tensor([int(map_index)], dtype=torch.int64),
    }
    return InpaintCondition(values=values, mask=mask, cond=cond, frame=frame)
