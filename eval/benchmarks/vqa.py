"""General VQA (pope, gqa, scienceqa_img, textvqa_val, mme, and the toy shapes tasks) through
lmms-eval, implemented in `eval.lmms`. lmms-eval loads the data and runs the model in its own
process, so this benchmark replaces `run` as a whole; it writes one results directory per task,
OUT/<task>/, whose metrics.json says `benchmark: vqa_<task>` (all of them are this benchmark's
to rescore). lmms-eval is imported only when a VQA run or rescore needs it.

A unit of `compare`'s resampling is one sample, unless the task's tasks.yaml entry has `resample`
(MME: an image's two questions form one unit, and the headline sums per-category scores): then
the unit and stratum are fields of the per-sample score dicts lmms-eval logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.benchmarks.base import (
    Benchmark,
    GenerationBenchmark,
    Resampling,
    ResamplingError,
    add_device_arguments,
    add_model_arguments,
    add_original_tower_argument,
    register_benchmark,
)


@register_benchmark
class VQA(Benchmark):
    name = "vqa"
    help = "general VQA benchmarks through lmms-eval (implemented in eval.lmms)"
    usage = "--model DIR --tasks T1,T2 --data-root DIR"
    data_flag = "data-root"

    def metrics_files(self, output: Path, flags: dict) -> list[Path]:
        """One results directory per lmms-eval task, in the order of --tasks."""
        return [Path(output) / task / "metrics.json" for task in str(flags.get("tasks", "")).split(",") if task]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        parser.add_argument(
            "--tasks",
            required=True,
            help="comma-separated task names from eval/tasks/tasks.yaml (pope, gqa, scienceqa_img, "
            "textvqa_val, mme, shapes_vqa, shapes_mc)",
        )
        parser.add_argument("--data-root", required=True, type=Path,
                            help="root of the local dataset copies in hub layout (see eval.lmms)")
        parser.add_argument("--output", required=True, type=Path)
        parser.add_argument("--batch-size", type=int, default=GenerationBenchmark.default_batch_size,
                            help="questions generated together, left-padded as MMVP and CV-Bench are "
                                 f"(default {GenerationBenchmark.default_batch_size}; recorded in metrics.json)")
        parser.add_argument("--limit", type=int, default=None,
                            help="first N samples per task (debugging only)")
        add_device_arguments(parser)
        add_original_tower_argument(parser)

    def run(self, args: argparse.Namespace) -> int:
        from eval.lmms.run import run_vqa  # lmms-eval is heavy: imported only for this subcommand

        return run_vqa(args) or 0

    def owns(self, benchmark: str) -> bool:
        return benchmark.startswith(self.name + "_")  # vqa_<task>

    def rejudge(self, prediction: dict, config: dict) -> dict:
        from eval.lmms.results import rejudge

        return rejudge(prediction, config)

    def score(self, predictions: list[dict], config: dict) -> dict:
        from eval.lmms.results import score

        return score(predictions, config)

    def resampling(self, config: dict) -> Resampling:
        from eval.lmms.tasks import task_specs

        fields = task_specs()[config["vqa_task"]].get("resample")
        if fields is None:
            return Resampling()
        return score_field_resampling(config["vqa_task"], fields["unit"], fields.get("stratum"))

    def headline_n(self, metric: str, predictions: list[dict], config: dict) -> int:
        unit = self.resampling(config).unit
        return len({unit(p) for p in predictions if metric in p["scores"]})


def score_field_resampling(task: str, unit: str, stratum: str | None) -> Resampling:
    """Units (and strata) read from the per-sample score dicts (MME's {"question_id": image,
    "category", "score"}); a redrawn unit gets `<id>#<draw>`, so the task's aggregation, which
    groups by that field, sees a unit drawn twice as two."""

    def field(prediction: dict, name: str):
        for value in prediction["scores"].values():
            if isinstance(value, dict) and name in value:
                return value[name]
        raise ResamplingError(f"vqa_{task} sample {prediction['id']} has no per-sample score with {name!r}, which "
                         "its tasks.yaml `resample` entry names")

    def relabel(prediction: dict, draw: int) -> dict:
        scores = {k: {**v, unit: f"{v[unit]}#{draw}"} if isinstance(v, dict) and unit in v else v
                  for k, v in prediction["scores"].items()}
        return {**prediction, "scores": scores}

    return Resampling(lambda p: field(p, unit), None if stratum is None else (lambda p: field(p, stratum)),
                      relabel)
