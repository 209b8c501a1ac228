"""N(r, p): the number of parallel draws for one valid sample, and its reduction."""

import math

import pytest

from genneg.metrics import num_parallel_samples, reduction


def test_known_values() -> None:
    assert num_parallel_samples(0.5, 0.99999) == 17  # log(1e-5)/log(0.5) = 16.61
    assert num_parallel_samples(0.1, 0.999) == 3  # exactly 3 in real arithmetic: no rounding up to 4
    assert num_parallel_samples(0.01, 0.9999) == 2
    assert num_parallel_samples(0.0, 0.99999) == 1
    assert num_parallel_samples(0.19, 0.99999) == math.ceil(math.log(1e-5) / math.log(0.19))


@pytest.mark.parametrize("r", [1e-6, 0.003, 0.05, 0.19, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("p", [0.5, 0.99, 0.99999])
def test_is_smallest_sufficient_count(r: float, p: float) -> None:
    n = num_parallel_samples(r, p)
    assert n >= 1
    assert 1 - r**n >= p - 1e-12  # n draws suffice ...
    if n > 1:
        assert 1 - r ** (n - 1) < p  # ... and n - 1 do not


def test_monotone_in_rate() -> None:
    counts = [num_parallel_samples(r, 0.99999) for r in (0.01, 0.05, 0.1, 0.2, 0.4)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_reduction() -> None:
    assert reduction(9, 17) == pytest.approx(1 - 9 / 17)
    assert reduction(17, 17) == 0.0
    assert reduction(20, 10) == pytest.approx(-1.0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="infraction rate"):
        num_parallel_samples(1.0, 0.9)
    with pytest.raises(ValueError, match="success probability"):
        num_parallel_samples(0.1, 1.0)
    with pytest.raises(ValueError, match="positive"):
        reduction(0, 5)
