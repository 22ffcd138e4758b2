"""General VQA (pope, gqa, scienceqa_img, textvqa_val, mme, and the toy shapes tasks) through
lmms-eval, implemented in `eval.lmms`. lmms-eval loads the data and runs the model in its own
process, so this benchmark replaces `run` as a whole; it writes one results directory per task,
OUT/<task>/, whose metrics.json says `benchmark: vqa_<task>` (all of them are this benchmark's
to rescore). lmms-eval is imported only when a VQA run or rescore needs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.benchmarks.base import (
    DTYPES,
    Benchmark,
    add_model_arguments,
    add_original_tower_argument,
    register_benchmark,
)


@register_benchmark
class VQA(Benchmark):
    name = "vqa"
    help = "general VQA benchmarks through lmms-eval (implemented in eval.lmms)"
    usage = "--model DIR --tasks T1,T2 --data-root DIR"

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
        parser.add_argument("--batch-size", type=int, default=1)
        parser.add_argument("--limit", type=int, default=None,
                            help="first N samples per task (debugging only)")
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--dtype", choices=DTYPES, default="float32")
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
