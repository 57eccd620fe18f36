"""Spread over seeds and bootstrap intervals over test rows."""

import random

import pytest

from softprompt.measuring.stats import difference, interval, spread


def _runs(accuracy: float, rows: int, seeds: int, seed: int = 0) -> list[list[bool]]:
    rng = random.Random(seed)
    return [[rng.random() < accuracy for _ in range(rows)] for _ in range(seeds)]


def test_spread():
    assert spread([0.8]) == (0.8, 0.0)
    mean, std = spread([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)


def test_interval_covers_the_mean_and_narrows_with_rows():
    small, large = _runs(0.8, 100, 3), _runs(0.8, 3000, 3)
    for runs in (small, large):
        low, high = interval(runs)
        mean = sum(map(sum, runs)) / (len(runs) * len(runs[0]))
        assert low < mean < high
    (a, b), (c, d) = interval(small), interval(large)
    assert (d - c) < (b - a) / 3  # ~ 1 / sqrt(30) as wide
    # three seeds wrong on unrelated rows: the mean of 9,000 coin flips, +-1.96 sqrt(p (1 - p) / 9000)
    assert (d - c) / 2 == pytest.approx(1.96 * (0.8 * 0.2 / 9000) ** 0.5, rel=0.15)
    assert interval(small) == interval(small)  # seeded


def test_paired_difference():
    runs = _runs(0.7, 500, 2)
    assert difference(runs, runs) == (0.0, 0.0, 0.0)
    better = [[True if i % 10 == 0 else x for i, x in enumerate(r)] for r in runs]
    value, low, high = difference(better, runs)
    assert 0 < low <= value <= high
    with pytest.raises(ValueError, match="paired rows differ"):
        difference(runs, [r[:10] for r in runs])
