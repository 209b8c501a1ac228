"""Balanced oracle-labelled data: exact counts, the infraction-rate estimate, NumPy oracles, the budget,
and the SIS weights of proposal draws (METHOD.md 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genneg.data.checkerboard import CheckerboardConfig, CheckerboardOracle
from genneg.diffusion import log_linear_sigmas
from genneg.pipeline.balanced import (
    BalancedDataset,
    InfractionBudgetError,
    ancestral_trajectories,
    draw_balanced,
    draw_balanced_sis,
    draw_imbalanced,
)
from genneg.pipeline.classifier import sample_weights


def _uniform_source(seed: int, dim: int = 2):
    """``sample_fn`` of U[0, 1]^dim points, counting how many were drawn."""
    g = torch.Generator().manual_seed(seed)
    calls: list[int] = []

    def sample_fn(n: int) -> torch.Tensor:
        calls.append(n)
        return torch.rand(n, dim, generator=g)

    return sample_fn, calls


def _threshold_oracle(rate: float):
    """Invalid iff the first coordinate is below ``rate``: infraction rate exactly ``rate`` on U[0, 1]."""
    return lambda x: x[:, 0] >= rate


def test_exact_counts_and_rate_estimate() -> None:
    rate = 0.3
    sample_fn, calls = _uniform_source(0)
    oracle = _threshold_oracle(rate)
    ds = draw_balanced(sample_fn, oracle, 2000, batch_size=500)
    assert len(ds) == 2000 and ds.num_pos == 1000 and ds.num_neg == 1000 and ds.balanced
    assert torch.equal(ds.labels, oracle(ds.x))  # every kept sample carries its oracle verdict
    assert ds.num_drawn == sum(calls)  # every draw counted, kept or not
    assert ds.pi_pos + ds.pi_neg == pytest.approx(1.0)
    # pi_neg is a binomial proportion over num_drawn draws: within 4 standard errors of the true rate
    assert abs(ds.pi_neg - rate) < 4 * math.sqrt(rate * (1 - rate) / ds.num_drawn)
    # stops as soon as both halves are full: one batch fewer would not have had 1000 negatives
    assert ds.num_drawn - 500 < 1000 / rate + 4 * math.sqrt(1000 * (1 - rate)) / rate


def test_rate_estimate_counts_the_surplus_of_the_last_batch() -> None:
    # one big batch: far more positives than kept, all counted
    sample_fn, _ = _uniform_source(1)
    ds = draw_balanced(sample_fn, _threshold_oracle(0.5), 100, batch_size=20_000, max_draws=50_000)
    assert ds.num_drawn == 20_000
    # the default budget (100 draws per kept example) caps the batch
    assert draw_balanced(sample_fn, _threshold_oracle(0.5), 100, batch_size=20_000).num_drawn == 10_000
    assert abs(ds.pi_neg - 0.5) < 4 * math.sqrt(0.25 / 20_000)


def test_deterministic_from_seeded_sources() -> None:
    a = draw_balanced(_uniform_source(7)[0], _threshold_oracle(0.2), 300, batch_size=128,
                      generator=torch.Generator().manual_seed(3))
    b = draw_balanced(_uniform_source(7)[0], _threshold_oracle(0.2), 300, batch_size=128,
                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels) and a.pi_neg == b.pi_neg
    assert not a.labels[:150].all()  # the generator shuffles the classes together


def test_user_written_numpy_oracle() -> None:
    def in_disc(points: np.ndarray) -> np.ndarray:
        """A plain NumPy oracle: valid inside the disc of radius 0.5 around (0.5, 0.5)."""
        points = np.asarray(points, dtype=np.float64)
        return np.hypot(points[:, 0] - 0.5, points[:, 1] - 0.5) < 0.5

    def in_disc_list(points) -> list[bool]:
        """Pure Python, returning a list."""
        return [bool((p[0] - 0.5) ** 2 + (p[1] - 0.5) ** 2 < 0.25) for p in np.asarray(points).tolist()]

    for oracle in (in_disc, in_disc_list):
        ds = draw_balanced(_uniform_source(2)[0], oracle, 400, batch_size=1000)
        expected = torch.from_numpy(in_disc(ds.x.numpy()))
        assert torch.equal(ds.labels, expected) and ds.num_pos == ds.num_neg == 200
        assert abs(ds.pi_neg - (1 - math.pi / 4)) < 4 * math.sqrt(0.2 / ds.num_drawn)


def test_checkerboard_oracle_on_uniform_points() -> None:
    g = torch.Generator().manual_seed(4)
    oracle = CheckerboardOracle(CheckerboardConfig())
    ds = draw_balanced(lambda n: torch.rand(n, 2, generator=g) * 4 - 2, oracle, 1000, batch_size=700)
    assert abs(ds.pi_neg - 0.5) < 4 * math.sqrt(0.25 / ds.num_drawn)
    assert torch.equal(ds.labels, oracle(ds.x))


def test_budget_error_is_raised_early_with_rate_and_budget() -> None:
    sample_fn, calls = _uniform_source(5)
    with pytest.raises(InfractionBudgetError) as info:
        draw_balanced(sample_fn, _threshold_oracle(0.002), 2000, batch_size=1000, max_draws=100_000)
    err = info.value
    # needs ~1000 / 0.002 = 500k draws: known to be hopeless long before the 100k budget is spent
    assert err.drawn == sum(calls) and err.drawn <= 20_000
    assert err.budget == 100_000 and err.label == "negative" and err.needed > 100_000
    assert 0 < err.rate < 0.01
    message = str(err)
    assert "infraction rate" in message and "max_draws=100,000" in message and f"{err.rate:.3g}" in message


def test_budget_error_when_no_negatives_ever_appear() -> None:
    sample_fn, _ = _uniform_source(6)
    with pytest.raises(InfractionBudgetError, match="infraction rate 0 ") as info:
        draw_balanced(sample_fn, lambda x: torch.ones(x.shape[0], dtype=torch.bool), 1000, batch_size=5000,
                      max_draws=50_000)
    assert info.value.drawn < 50_000 and math.isfinite(info.value.needed)


def test_budget_error_for_missing_positives() -> None:
    with pytest.raises(InfractionBudgetError, match="valid rate") as info:
        draw_balanced(_uniform_source(8)[0], _threshold_oracle(0.999), 1000, batch_size=1000,
                      max_draws=20_000)
    assert info.value.label == "positive"


def test_rate_near_the_budget_still_succeeds() -> None:
    # needs ~10k draws on average; a 20k budget must not be refused on the early, noisy estimate
    ds = draw_balanced(_uniform_source(9)[0], _threshold_oracle(0.05), 1000, batch_size=1000,
                       max_draws=20_000)
    assert ds.num_neg == 500


def test_multi_part_labels_and_padding_mask() -> None:
    g = torch.Generator().manual_seed(10)

    def scenes(n: int) -> torch.Tensor:
        return torch.rand(n, 3, generator=g)  # 3 "parts" with one coordinate each

    def part_oracle(x: torch.Tensor) -> torch.Tensor:
        return x >= 0.2  # per-part verdicts (n, 3)

    def mask_fn(x: torch.Tensor) -> torch.Tensor:
        m = torch.ones_like(x, dtype=torch.bool)
        m[:, 2] = False  # slot 2 is padding: its verdict never makes a scene invalid
        return m

    ds = draw_balanced(scenes, part_oracle, 600, batch_size=256, part_mask_fn=mask_fn)
    assert ds.part_labels is not None and ds.part_labels.shape == (600, 3)
    assert torch.equal(ds.part_labels, part_oracle(ds.x))
    assert torch.equal(ds.labels, ds.part_labels[:, :2].all(dim=1))
    assert ds.part_mask is not None and not ds.part_mask[:, 2].any()
    rate = 1 - 0.8**2  # a scene is invalid when either real part is
    assert abs(ds.pi_neg - rate) < 4 * math.sqrt(rate * (1 - rate) / ds.num_drawn)


def test_save_and_load_round_trip(tmp_path) -> None:
    ds = draw_balanced(lambda n: torch.rand(n, 3, generator=torch.Generator().manual_seed(n)),
                       lambda x: x >= 0.3, 100, batch_size=150)
    ds.save(tmp_path / "data.safetensors")
    back = BalancedDataset.load(tmp_path / "data.safetensors")
    assert torch.equal(back.x, ds.x) and torch.equal(back.labels, ds.labels)
    assert back.part_labels is not None and torch.equal(back.part_labels, ds.part_labels)
    assert (back.pi_neg, back.num_drawn, back.balanced) == (ds.pi_neg, ds.num_drawn, ds.balanced)


def test_imbalanced_draw_keeps_the_natural_mix() -> None:
    sample_fn, calls = _uniform_source(11)
    ds = draw_imbalanced(sample_fn, _threshold_oracle(0.1), 5000, batch_size=2000)
    assert calls == [2000, 2000, 1000] and len(ds) == 5000 and not ds.balanced
    assert ds.pi_neg == ds.num_neg / 5000 and abs(ds.pi_neg - 0.1) < 4 * math.sqrt(0.09 / 5000)


def test_bad_inputs() -> None:
    sample_fn, _ = _uniform_source(12)
    with pytest.raises(ValueError, match="even"):
        draw_balanced(sample_fn, _threshold_oracle(0.5), 101)
    with pytest.raises(ValueError, match="max_draws"):
        draw_balanced(sample_fn, _threshold_oracle(0.5), 100, max_draws=50)
    with pytest.raises(ValueError, match="rows"):
        draw_balanced(lambda n: torch.rand(n + 1, 2), _threshold_oracle(0.5), 100)
    with pytest.raises(ValueError, match="oracle returned"):
        draw_balanced(sample_fn, lambda x: torch.ones(3, dtype=torch.bool), 100)
    with pytest.raises(ValueError, match="labels must be bool"):
        BalancedDataset(torch.zeros(3, 2), torch.zeros(3), None, 0.5, 0.5, 3)
    with pytest.raises(ValueError, match="pi_pos"):
        BalancedDataset(torch.zeros(2, 2), torch.tensor([True, False]), None, 0.5, 0.6, 3)


class _GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of 1-D ``N(mean, std²)`` data: ``D = mean + std² / (std² + sigma²) (x - mean)``."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.mean + (self.std**2 / (self.std**2 + sigma**2))[:, None] * (x - self.mean)


def test_sis_weights_turn_proposal_draws_into_target_estimates(tmp_path) -> None:
    target, proposal = _GaussianDenoiser(0.0, 0.5), _GaussianDenoiser(0.3, 0.6)  # proposal infracts more
    sigmas = log_linear_sigmas(40, 0.01, 10.0)
    oracle = lambda x: x[:, 0] <= 0.6  # noqa: E731
    g = torch.Generator().manual_seed(0)
    # the target's own stochastic sampler: identical proposal gives zero log weights
    x_t, log_w = ancestral_trajectories(target, target, torch.randn(40_000, 1, generator=g) * 10.0, sigmas,
                                        generator=g)
    assert torch.equal(log_w, torch.zeros_like(log_w))
    invalid_t = ~oracle(x_t)
    rate_t = float(invalid_t.float().mean())
    neg_mean_t = float(x_t[invalid_t, 0].mean())

    ds = draw_balanced_sis(target, proposal, oracle, 20_000, sample_shape=(1,), sigmas=sigmas,
                           batch_size=20_000, generator=g)
    assert ds.num_pos == ds.num_neg == 10_000 and ds.example_weights is not None
    neg = ~ds.labels
    w = ds.example_weights
    torch.testing.assert_close(w[neg].mean(), torch.tensor(1.0))  # self-normalised within each class
    torch.testing.assert_close(w[~neg].mean(), torch.tensor(1.0))
    assert ds.extra["proposal_pi_neg"] > 2 * rate_t  # the proposal really is a different model
    # measured: ESS ~8k per class, so the weighted rate and conditional mean have standard errors of
    # ~0.003 and ~0.005; the unweighted proposal values are off by 0.19 and 0.15
    assert abs(ds.pi_neg - rate_t) < 0.015
    assert abs(float((w[neg] * ds.x[neg, 0]).mean()) - neg_mean_t) < 0.03
    assert abs(float(ds.x[neg, 0].mean()) - neg_mean_t) > 0.1
    assert ds.extra["ess_neg"] > 2000 and ds.extra["ess_pos"] > 2000
    # the Eq. 9 weight of an example is 2 pi_y times its trajectory weight
    expected = torch.where(ds.labels, 2 * ds.pi_pos, 2 * ds.pi_neg).float() * w
    torch.testing.assert_close(sample_weights(ds, "gen_neg"), expected)
    torch.testing.assert_close(sample_weights(ds, "no_is"), w)
    ds.save(tmp_path / "sis.safetensors")
    back = BalancedDataset.load(tmp_path / "sis.safetensors")
    assert back.example_weights is not None and torch.equal(back.example_weights, w)
    assert back.extra == ds.extra
