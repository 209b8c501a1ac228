"""Ground penetration of human motion (the paper's third experiment; METHOD.md 8 "Motion").

A motion is **invalid** iff some joint at some frame lies below the floor by more than a tolerance:
``floor_height_m - y > tolerance_m`` (y up, metres). A joint exactly on the floor, or below it by at most
the tolerance, is valid. Per-frame verdicts (a frame is valid iff all its joints are) give the paper's
"infraction per step"; a clip is valid iff all its frames are.

Plain tensor arithmetic (a min over joints and a comparison), so the same code runs on CPU and CUDA tensors
and needs no compiled twin. Non-finite input is an error, not a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genneg.data.motion.features import MotionNormalisation

__all__ = ["GroundPenetrationConfig", "GroundPenetrationOracle"]


@dataclass(frozen=True)
class GroundPenetrationConfig:
    """Attributes:
    floor_height_m: height of the floor plane, metres (y up).
    tolerance_m: largest depth below the floor still counted valid, metres (``>= 0``).
    per_frame: ``oracle(x)`` returns ``(n, F)`` per-frame verdicts (frames as the oracle's parts,
        METHOD.md 4 "multi-part samples") instead of ``(n,)``.
    """

    floor_height_m: float = 0.0
    tolerance_m: float = 0.01
    per_frame: bool = True

    def __post_init__(self) -> None:
        if not self.tolerance_m >= 0:
            raise ValueError(f"tolerance_m must be >= 0, got {self.tolerance_m}")


class GroundPenetrationOracle:
    """``oracle(x, **cond) -> (n, F)`` (or ``(n,)``) bool, True = above the floor within the tolerance.

    Args:
        config: floor, tolerance, output shape.
        normalisation: when given, ``x`` is the network's ``(n, F, 3 J)`` standardised features
            (:class:`~genneg.data.motion.features.MotionNormalisation`), decoded to metres here; otherwise
            ``x`` is ``(n, F, J, 3)`` joint positions in metres.
    """

    def __init__(self, config: GroundPenetrationConfig | None = None,
                 normalisation: MotionNormalisation | None = None) -> None:
        self.config = config or GroundPenetrationConfig()
        self.normalisation = normalisation

    def positions(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(n, F, J, 3)`` positions, metres (decoded when the oracle has a normalisation).

        Raises:
            TypeError: ``x`` is not a floating tensor.
            ValueError: wrong shape, or non-finite values (naming the first bad clip and frame).
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"motion oracle needs a floating torch.Tensor, got {type(x).__name__}"
                            + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        if self.normalisation is not None:
            if x.ndim != 3 or x.shape[-1] != self.normalisation.dim:
                raise ValueError(f"features must be (n, F, {self.normalisation.dim}), got {tuple(x.shape)}")
            pos = self.normalisation.decode(x)
        else:
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"positions must be (n, F, J, 3) metres, got {tuple(x.shape)}")
            pos = x
        finite = torch.isfinite(pos).flatten(2).all(dim=-1)
        if not bool(finite.all()):
            clip, frame = (int(v) for v in torch.nonzero(~finite)[0])
            raise ValueError(f"motion has non-finite joint positions (first at clip {clip}, frame {frame})")
        return pos

    def lowest_height_m(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """``(n, F)`` height of each frame's lowest joint above the floor, metres (negative = below)."""
        return self.positions(x)[..., 1].amin(dim=-1) - self.config.floor_height_m

    def frame_verdicts(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """``(n, F)`` bool, True = no joint of the frame is below the floor by more than the tolerance."""
        return -self.lowest_height_m(x) <= self.config.tolerance_m

    def clip_verdicts(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """``(n,)`` bool, True = every frame valid."""
        return self.frame_verdicts(x).all(dim=-1)

    def __call__(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """Per-frame ``(n, F)`` or per-clip ``(n,)`` verdicts (``config.per_frame``); other conditioning
        entries are ignored."""
        return self.frame_verdicts(x) if self.config.per_frame else self.clip_verdicts(x)
