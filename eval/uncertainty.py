"""A results directory's headline under redraws of its scored units: what `compare`'s intervals
and paired deltas are computed from.

Each redraw is scored by the benchmark's own `score` (looked up in the registry), so an interval
is of exactly the number metrics.json holds and no scoring rule is written twice. The
benchmark's `resampling(config)` says what a unit is (a prediction, an MMVP pair, an MME image)
and which groups its headline averages (redrawn within each group, eval/benchmarks/base.py);
eval/stats.py draws the indices. The draws depend only on the unit count, the strata and the
seed, so two runs redrawn over the same unit keys are paired.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from eval import stats
from eval.benchmarks.base import Benchmark, Resampling, ResamplingError


@dataclass
class Units:
    """A results directory's predictions grouped into the units its headline scores."""

    source: str  # the results directory, for messages
    benchmark: Benchmark
    config: dict
    resampling: Resampling
    members: dict[Hashable, list[dict]]  # unit key -> its predictions, in file order
    strata: dict[Hashable, Hashable] | None  # unit key -> the group its headline averages over
    _samples: dict = field(default_factory=dict, repr=False)

    @property
    def keys(self) -> list[Hashable]:
        return list(self.members)

    def predictions(self, keys: Sequence[Hashable]) -> list[dict]:
        return [p for key in keys for p in self.members[key]]

    def headline(self, keys: Sequence[Hashable]) -> dict[str, float | None]:
        """The headline scored on the units `keys` (all of them: metrics.json's headline)."""
        return self.benchmark.score(self.predictions(keys), self.config)["headline"]

    def n(self, metric: str, keys: Sequence[Hashable]) -> int:
        return self.benchmark.headline_n(metric, self.predictions(keys), self.config)

    def samples(self, keys: Sequence[Hashable], *, resamples: int, seed: int) -> dict[str, np.ndarray]:
        """{metric: (resamples,) headline values} over redraws of the units `keys`, for every metric
        defined on all of them; memoized (a run's own interval and its paired deltas share draws)."""
        memo = (tuple(keys), resamples, seed)
        if memo not in self._samples:
            self._samples[memo] = self._draw(list(keys), resamples, seed)
        return self._samples[memo]

    def _draw(self, keys: list[Hashable], resamples: int, seed: int) -> dict[str, np.ndarray]:
        strata = None if self.strata is None else [self.strata[k] for k in keys]
        indices = stats.resample_indices(len(keys), strata=strata, resamples=resamples, seed=seed)
        metrics = [m for m, v in self.headline(keys).items() if v is not None]
        out = {m: np.empty(resamples) for m in metrics}
        relabel = self.resampling.relabel
        for r, row in enumerate(indices):
            redraw = [relabel(p, draw) if relabel else p
                      for draw, i in enumerate(row) for p in self.members[keys[i]]]
            headline = self.benchmark.score(redraw, self.config)["headline"]
            for m in metrics:
                if headline.get(m) is None:
                    raise ResamplingError(f"{self.source}: {m} is undefined on a redraw of its units; "
                                          f"{type(self.benchmark).__name__}.resampling must stratify by the "
                                          "groups it averages")
                out[m][r] = headline[m]
        return out


def group_units(source: str, benchmark: Benchmark, predictions: list[dict], config: dict) -> Units:
    """The predictions of one results directory as the benchmark's units (and their strata)."""
    resampling = benchmark.resampling(config)
    members: dict[Hashable, list[dict]] = {}
    for p in predictions:
        members.setdefault(resampling.unit(p), []).append(p)
    strata = None
    if resampling.stratum is not None:
        strata = {}
        for key, unit in members.items():
            groups = {resampling.stratum(p) for p in unit}
            if len(groups) != 1:
                raise ResamplingError(f"{source}: unit {key!r} spans the groups {sorted(map(str, groups))}; "
                                      "a unit must lie in one group")
            strata[key] = groups.pop()
    return Units(source, benchmark, config, resampling, members, strata)


def shared_keys(reference: Units, other: Units) -> list[Hashable]:
    """The unit keys both runs scored, in the reference's order; each must lie in the same group in
    both (else the two are not the same benchmark data)."""
    keys = [k for k in reference.members if k in other.members]
    if reference.strata is not None and other.strata is not None:
        moved = [k for k in keys if reference.strata[k] != other.strata[k]]
        if moved:
            k = moved[0]
            raise ResamplingError(f"unit {k!r} is in group {reference.strata[k]!r} in {reference.source} but "
                                  f"{other.strata[k]!r} in {other.source}: not the same benchmark data")
    return keys
