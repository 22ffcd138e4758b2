"""The benchmarks: each module loads its published data layout, predicts, and scores with pure
functions (`make_prediction`, `rejudge`, `score`). `rescore` recomputes any results directory
from its predictions alone."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from eval.benchmarks.common import read_metrics, read_predictions

# benchmark name (metrics.json "benchmark") -> module
BENCHMARKS = {
    "mmvp_vlm": "eval.benchmarks.mmvp_vlm",
    "mmvp": "eval.benchmarks.mmvp",
    "cv_bench": "eval.benchmarks.cv_bench",
    "zeroshot": "eval.benchmarks.zeroshot",
}


# lmms-eval tasks are recorded as "vqa_<task>"; eval.lmms rescores them from stored per-sample scores
LMMS_PREFIX = "vqa_"


def benchmark_module(name: str) -> ModuleType:
    if name.startswith(LMMS_PREFIX):
        return importlib.import_module("eval.lmms")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; rescorable benchmarks: {sorted(BENCHMARKS)} "
                         f"and lmms-eval tasks ({LMMS_PREFIX}<task>)")
    return importlib.import_module(BENCHMARKS[name])


def rescore(results_dir: Path | str, overrides: dict | None = None) -> dict:
    """Metrics recomputed from predictions.jsonl: raw answers re-parsed and rescored under the
    recorded config (with `overrides`, e.g. {"parser": "lmms"}, applied to it)."""
    recorded = read_metrics(results_dir)
    module = benchmark_module(recorded["benchmark"])
    config = {**recorded["config"], **(overrides or {})}
    predictions = [module.rejudge(p, config) for p in read_predictions(results_dir)]
    return module.score(predictions, config)
