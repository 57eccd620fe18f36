"""How sure a comparison's numbers are: spread over seeds, and bootstrap intervals over test rows.

The number ``compare`` reports for a method is its test accuracy averaged over seeds. Two things
make it uncertain: training depends on the seed, and the test rows are one sample of the task.
The spread over seeds is the standard deviation (n - 1). The interval is a 95% percentile
bootstrap over test rows of that seed mean: the rows are resampled with replacement, the same
resample for every seed (they were scored on the same rows), 2,000 times (Efron & Tibshirani,
1993). Why not a t-interval over seeds: with 3 seeds the t quantile is 4.30, so the interval says
more about how few seeds ran than about the method, and it leaves out the test sample, which is
the larger source of error for sets of a few hundred rows. Why not Wilson's interval: it is for
one binomial proportion (one run), not for a mean over seeds; for one run it is close to this one.

Differences between two methods use the same resamples for both (a paired bootstrap, as
Berg-Kirkpatrick et al., 2012, recommend for comparing systems on one test set), so row-level
difficulty shared by the two cancels out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

RESAMPLES = 2000
LEVEL = 0.95
CHUNK = 250  # resamples at once: bounds the [seeds, chunk, rows] buffer


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def interval(correct: Sequence[Sequence[bool]], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the seed-mean accuracy; ``correct[s][i]``: seed s got test row i right."""
    return _percentiles(_resampled(torch.tensor(correct, dtype=torch.float32), resamples, seed))


def difference(
    a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Seed-mean accuracy of ``a`` minus that of ``b`` on the same test rows, and its paired 95% interval."""
    left, right = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"paired rows differ: {left.shape[1]} vs {right.shape[1]}")
    observed = float(left.mean(1).mean() - right.mean(1).mean())
    low, high = _percentiles(_resampled(left, resamples, seed) - _resampled(right, resamples, seed))
    return observed, low, high


def _resampled(correct: torch.Tensor, resamples: int, seed: int) -> torch.Tensor:
    """[resamples] seed-mean accuracies over row resamples drawn by ``seed`` (the same draws for the same seed)."""
    rows = correct.shape[1]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, resamples, CHUNK):
        index = torch.randint(rows, (min(CHUNK, resamples - start), rows), generator=generator)  # [R, N]
        out.append(correct[:, index].mean(dim=2).mean(dim=0))  # [S, R, N] -> [R]
    return torch.cat(out)


def _percentiles(values: torch.Tensor) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2
    low, high = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(low), float(high) if not math.isnan(high) else float("nan")
