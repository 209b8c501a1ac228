"""Run by ``torchrun`` from ``test_torchrun.py`` (and in-process for the one-process answer): the
balanced, the shrunk and the imbalanced draws of :mod:`genneg.pipeline.balanced` on a model-free stream
whose batch at row offset ``start`` is seeded from ``start``, at the global batches :data:`BATCHES`;
rank 0 saves what every rank got."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from genneg.io.checkpoint import save_tensors
from genneg.pipeline import distributed
from genneg.pipeline.balanced import draw_balanced, draw_imbalanced


def stream(n: int, start: int) -> torch.Tensor:
    """Rows ``start..start+n-1`` of a fixed stream of 2-D points (the same for every world size)."""
    g = torch.Generator().manual_seed(1000 + start)
    return torch.randn((n, 2), generator=g)


def oracle(x: torch.Tensor) -> torch.Tensor:
    """Valid: outside the disc of radius 0.6 (about 16% invalid for N(0, I) points)."""
    return x.norm(dim=1) > 0.6


# the global batches of the two-process draws: odd, so that a round draws the global batch rounded up
BATCHES = {"balanced": 345, "shrunk": 193, "imbalanced": 255}


def draws(shares: int = 1) -> dict[str, torch.Tensor]:
    """Every draw's tensors and counts, in one dict. The batches are :data:`BATCHES` cut into ``shares``
    (rounded up): one process with ``shares=2`` makes the draws of two processes at the global batches
    (each rank's sampler calls take ``ceil(batch / 2)`` rows)."""
    batch = {name: -(-size // shares) for name, size in BATCHES.items()}
    out: dict[str, torch.Tensor] = {}
    cases = {
        "balanced": draw_balanced(stream, oracle, 1000, batch_size=batch["balanced"], max_draws=20_000,
                                  generator=torch.Generator().manual_seed(5)),
        # 400 negatives need ~2500 draws; 900 draws hold fewer: the shrink policy keeps what they hold
        "shrunk": draw_balanced(stream, oracle, 800, batch_size=batch["shrunk"], max_draws=900, shrink=True),
        "imbalanced": draw_imbalanced(stream, oracle, 1001, batch_size=batch["imbalanced"]),
    }
    for name, data in cases.items():
        out[f"{name}.x"] = data.x
        out[f"{name}.labels"] = data.labels
        out[f"{name}.counts"] = torch.tensor([data.num_drawn, data.num_pos, data.num_neg], dtype=torch.int64)
        out[f"{name}.pi_neg"] = torch.tensor([data.pi_neg], dtype=torch.float64)
    return out


def main(path: str) -> None:
    world = distributed.init_from_env("cpu", timeout_s=120)
    out = draws()
    # every rank holds the whole set: gather each rank's copy and check they agree before writing
    copies = distributed.all_gather_objects(out)
    same = all(torch.equal(c[k], out[k]) for c in copies for k in out)
    out["ranks_agree"] = torch.tensor([same])
    out["world_size"] = torch.tensor([world.world_size])
    if world.is_main:
        save_tensors(Path(path), out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
