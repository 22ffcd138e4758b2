"""Uncertainty of a measured number and of the difference between two: small, general helpers
(numpy only) for `python -m eval compare` and any other report.

- Bootstrap (`bootstrap_ci`): a benchmark number is a statistic of a finite set of scored units
  (questions, pairs, images). Redrawing the units with replacement and recomputing the statistic
  shows how far the number would move on another draw of as many units; the percentile interval
  needs no formula per metric (pair accuracy, F1, a mean of category accuracies all work), only
  the statistic itself.
- Paired (`paired_bootstrap_delta`, `paired_difference`): two runs of a benchmark answer the same
  questions (two methods trained on the same seeds), so their outcomes are correlated: a hard
  question is hard for both. Redrawing the same units for both runs and differencing per redraw
  cancels what they share; two separate intervals would overstate the noise of a difference.
- Stratified (`strata=`): a headline that averages groups (CV-Bench's mean of sources,
  MMVP-VLM's mean of categories) is redrawn within each group, so every group keeps its size and
  the interval is of that headline, not of a pooled accuracy.
- `mean_se` / `paired_difference`: a few independent repeats (e.g. seeds), reported as
  mean +- standard error (sample standard deviation / sqrt(n)).

Every redraw comes from `numpy.random.default_rng(seed)`: the same inputs and seed give the same
interval, so reports are reproducible and diffable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llava_plugin.errors import GenfeedbackError

RESAMPLES = 2000
LEVEL = 0.95


class StatsError(GenfeedbackError, ValueError):
    """Inputs a statistic cannot be computed from (empty, mismatched lengths)."""


@dataclass(frozen=True)
class Interval:
    """A statistic on all units (`value`, or a difference for the paired helpers), its
    `level` interval [`low`, `high`], and the number of units `n` it was computed from."""

    value: float
    low: float
    high: float
    n: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def resample_indices(n: int, *, strata: Sequence[Hashable] | None = None, resamples: int = RESAMPLES,
                     seed: int = 0) -> np.ndarray:
    """(resamples, n) indices into n units, drawn with replacement; with `strata` (one key per
    unit), each stratum's units are drawn from that stratum only, so its size is kept. The draws
    depend only on (n, strata, resamples, seed): two runs redrawn with them are paired."""
    if n < 1:
        raise StatsError("cannot resample 0 units")
    if resamples < 1:
        raise StatsError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    if len(strata) != n:
        raise StatsError(f"{len(strata)} strata for {n} units; give one stratum per unit")
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    out = np.empty((resamples, n), dtype=np.int64)
    start = 0
    for members in groups.values():
        members_arr = np.asarray(members)
        out[:, start : start + len(members)] = members_arr[rng.integers(0, len(members), size=(resamples, len(members)))]
        start += len(members)
    return out


def percentile_interval(samples: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` range of bootstrap samples (the percentile bootstrap interval)."""
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level}")
    values = np.asarray(samples, dtype=float)
    if values.size == 0 or np.isnan(values).any():
        raise StatsError("bootstrap samples are empty or hold NaN: the statistic is undefined on a redraw")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _statistic_samples(units: Sequence[Any], statistic: Callable[[list], float] | None,
                       indices: np.ndarray) -> np.ndarray:
    if statistic is None:  # the mean of numbers: vectorized
        return np.asarray(units, dtype=float)[indices].mean(axis=1)
    return np.array([statistic([units[i] for i in row]) for row in indices], dtype=float)


def _value(units: Sequence[Any], statistic: Callable[[list], float] | None) -> float:
    return float(np.mean(np.asarray(units, dtype=float))) if statistic is None else float(statistic(list(units)))


def bootstrap_ci(units: Sequence[Any], statistic: Callable[[list], float] | None = None, *,
                 strata: Sequence[Hashable] | None = None, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> Interval:
    """`statistic` (a function of a list of units; default: the mean of numbers, e.g. 0/1
    correctness) on all units, with its percentile bootstrap interval over `resamples` redraws."""
    indices = resample_indices(len(units), strata=strata, resamples=resamples, seed=seed)
    low, high = percentile_interval(_statistic_samples(units, statistic, indices), level)
    return Interval(_value(units, statistic), low, high, len(units))


def paired_bootstrap_delta(a: Sequence[Any], b: Sequence[Any], statistic: Callable[[list], float] | None = None,
                           *, strata: Sequence[Hashable] | None = None, resamples: int = RESAMPLES,
                           seed: int = 0, level: float = LEVEL) -> Interval:
    """statistic(a) - statistic(b) where a[i] and b[i] are the same unit (question, pair) in two
    runs, with the interval of the difference when both runs are redrawn with the same indices."""
    if len(a) != len(b):
        raise StatsError(f"paired units need equal lengths, got {len(a)} and {len(b)}; align them by unit first")
    indices = resample_indices(len(a), strata=strata, resamples=resamples, seed=seed)
    samples = _statistic_samples(a, statistic, indices) - _statistic_samples(b, statistic, indices)
    low, high = percentile_interval(samples, level)
    return Interval(_value(a, statistic) - _value(b, statistic), low, high, len(a))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) of independent repeats; the SE is NaN for one value
    (a single repeat says nothing about its spread)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise StatsError("mean_se of no values")
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """(mean of a[i] - b[i], its standard error, n) for repeats paired by index (the same seed
    or unit for both): the SE of the differences, smaller than that of either side when they
    move together."""
    if len(a) != len(b):
        raise StatsError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, se = mean_se(diff)
    return mean, se, int(diff.size)
