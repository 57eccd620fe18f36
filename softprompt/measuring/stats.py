"""How sure a comparison's numbers are: spread over seeds, and bootstrap intervals over test rows.

The number ``compare`` reports for a method is its test accuracy averaged over seeds. Two things
make it uncertain: training depends on the seed, and the test rows are one sample of the task.
The spread over seeds is the standard deviation (n - 1). The interval is a 95% percentile
bootstrap over test rows of that seed mean: the rows are resampled with replacement, the same
resample for every seed (they were scored on the same rows), 2,000 times (Efron & Tibshirani,
1993; ``scipy.stats.bootstrap``). Why not a t-interval over seeds: with 3 seeds the t quantile is 4.30, so the interval says
more about how few seeds ran than about the method, and it leaves out the test sample, which is
the larger source of error for sets of a few hundred rows. Why not Wilson's interval: it is for
one binomial proportion (one run), not for a mean over seeds; for one run it is close to this one.

Differences between two methods use the same resamples for both (a paired bootstrap, as
Berg-Kirkpatrick et al., 2012, recommend for comparing systems on one test set), so row-level
difficulty shared by the two cancels out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import bootstrap

RESAMPLES = 2000
LEVEL = 0.95


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def interval(correct: Sequence[Sequence[bool]], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the seed-mean accuracy; ``correct[s][i]``: seed s got test row i right.

    Resampling rows for every seed at once is resampling each row's mean over seeds.
    """
    return _percentile_interval(np.asarray(correct, dtype=np.float64).mean(axis=0), resamples, seed)


def difference(
    a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Seed-mean accuracy of ``a`` minus that of ``b`` on the same test rows, and its paired 95% interval."""
    left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"paired rows differ: {left.shape[1]} vs {right.shape[1]}")
    rows = left.mean(axis=0) - right.mean(axis=0)  # the same resample of rows for both: their paired differences
    return float(rows.mean()), *_percentile_interval(rows, resamples, seed)


def _percentile_interval(rows: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """scipy's percentile bootstrap of the mean over rows; a constant (or a single row) is its own interval."""
    if rows.size < 2 or np.all(rows == rows[0]):
        value = float(rows.mean()) if rows.size else float("nan")
        return value, value
    found = bootstrap(
        (rows,), np.mean, n_resamples=resamples, confidence_level=LEVEL, method="percentile", random_state=seed
    ).confidence_interval
    return float(found.low), float(found.high)


Metric = Callable[[np.ndarray], float]  # a metric of a resample of rows, given as an index array


def metric_interval(
    runs: Sequence[Metric], rows: int, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the seed-mean of a corpus metric (BLEU, chrF, token-weighted
    cross-entropy): rows are resampled, each seed's metric recomputed on the resample by its own formula."""
    return _index_interval(lambda idx: statistics.fmean(run(idx) for run in runs), rows, resamples, seed)


def metric_difference(
    a: Sequence[Metric], b: Sequence[Metric], rows: int, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Seed-mean metric of ``a`` minus that of ``b`` on the same rows, and its paired 95% interval."""

    def gap(idx: np.ndarray) -> float:
        return statistics.fmean(run(idx) for run in a) - statistics.fmean(run(idx) for run in b)

    return gap(np.arange(rows)), *_index_interval(gap, rows, resamples, seed)


def _index_interval(statistic: Metric, rows: int, resamples: int, seed: int) -> tuple[float, float]:
    if rows < 2:
        value = statistic(np.arange(rows))
        return value, value
    found = bootstrap(
        (np.arange(rows),),
        statistic,
        vectorized=False,
        n_resamples=resamples,
        confidence_level=LEVEL,
        method="percentile",
        random_state=seed,
    ).confidence_interval
    return float(found.low), float(found.high)
