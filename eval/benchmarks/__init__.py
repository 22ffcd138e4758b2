"""The benchmarks: one module each, holding its data loader, pure scoring functions
(`make_prediction`, `rejudge`, `score`) and a `Benchmark` subclass registered with
`@register_benchmark` (the contract: base.py). `python -m eval` is built from the registry;
`rescore` recomputes any results directory from its predictions alone."""

from __future__ import annotations

from pathlib import Path

from eval.benchmarks.base import BENCHMARKS, Benchmark, benchmark_for, register_benchmark
from eval.benchmarks.common import METRICS_FILE, read_metrics, read_predictions
from llava_plugin.errors import BadFileError

__all__ = ["BENCHMARKS", "Benchmark", "benchmark_for", "register_benchmark", "rescore"]


def rescore(results_dir: Path | str, overrides: dict | None = None) -> dict:
    """Metrics recomputed from predictions.jsonl: raw answers re-parsed and rescored under the
    recorded config (with `overrides`, e.g. {"parser": "lmms"}, applied to it)."""
    recorded = read_metrics(results_dir)
    missing = [key for key in ("benchmark", "config") if key not in recorded]
    if missing:
        raise BadFileError(f"{Path(results_dir) / METRICS_FILE} has no {missing[0]!r}: it was not written by "
                           f"`python -m eval`, or by a version before rescore existed; rerun the benchmark")
    try:
        benchmark = benchmark_for(recorded["benchmark"])
    except ValueError as err:
        raise BadFileError(f"{Path(results_dir) / METRICS_FILE}: {err}") from None
    config = {**recorded["config"], **(overrides or {})}
    predictions = [benchmark.rejudge(p, config) for p in read_predictions(results_dir)]
    return benchmark.score(predictions, config)
