"""python -m eval SUBCOMMAND ...

    mmvp-vlm   encoder-level MMVP-VLM (official pairing and scoring)       --vision-tower SPEC --data DIR
    zeroshot   zero-shot classification over a class-per-folder dataset    --vision-tower SPEC --data DIR
    mmvp       MMVP with a LLaVA checkpoint                                 --model DIR --data DIR
    cv-bench   CV-Bench with a LLaVA checkpoint                             --model DIR --data DIR
    vqa        general VQA through lmms-eval (eval.lmms)                    --model DIR --tasks T1,T2 --data-root DIR
    rescore    recompute metrics.json from predictions.jsonl                RESULTS_DIR
    compare    markdown table + grouped bar chart over runs                 RUN_DIR ... --output DIR

Every benchmark writes predictions.jsonl and metrics.json to --output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.benchmarks.common import DatasetLayoutError, write_results
from llava_plugin.registry import TowerSpecError


def _add_common(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument(
        "--data", required=True, type=Path, help="the benchmark's data directory (published layout)"
    )
    p.add_argument(
        "--output", required=True, type=Path, help="results directory (predictions.jsonl, metrics.json)"
    )
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="weights and activations dtype (bfloat16/float16 for large models on GPU)",
    )


def _add_generation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF Llava dir or original LLaVA-1.5 dir")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--vision-tower",
        default=None,
        help="original LLaVA-1.5 checkpoints only: tower spec to load its mm_vision_tower from",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mmvp-vlm", help="MMVP-VLM with a CLIP-style tower and its text encoder")
    p.add_argument("--vision-tower", required=True, help="tower spec (see llava_plugin.registry)")
    _add_common(p, batch_size=32)

    p = sub.add_parser("zeroshot", help="zero-shot top-1 over <class>/<image> folders")
    p.add_argument("--vision-tower", required=True, help="tower spec (see llava_plugin.registry)")
    _add_common(p, batch_size=32)

    p = sub.add_parser("mmvp", help="MMVP (150 pairs / 300 questions) with a LLaVA model")
    _add_generation(p)
    _add_common(p, batch_size=8)
    p.add_argument(
        "--prompt-style",
        choices=("llava", "original"),
        default="llava",
        help="llava: '{q}\\nA. ..\\nB. ..\\nAnswer with the option's letter...' (default); "
        "original: the MMVP script's '{q} (a) .. (b) ..'",
    )
    p.add_argument(
        "--fix-label-swap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="correct the swapped labels of questions 99/100 and 279/280 of the original release "
        "(default: on; use --no-fix-label-swap for an already corrected file or to reproduce "
        "numbers graded on the original labels)",
    )

    p = sub.add_parser("cv-bench", help="CV-Bench (2D/3D) with a LLaVA model")
    _add_generation(p)
    _add_common(p, batch_size=8)
    p.add_argument(
        "--parser",
        choices=("cambrian", "lmms"),
        default="cambrian",
        help="answer parser: cambrian (official scorer, default) or lmms (lmms-eval's start-of-text regex)",
    )
    p.add_argument(
        "--prompt-suffix",
        default=None,
        help="text appended to each row's prompt after a newline (default: LLaVA's "
        '"Answer with the option\'s letter from the given choices directly.", as Cambrian-1 does; '
        '"" for the bare prompt)',
    )

    p = sub.add_parser("vqa", help="general VQA benchmarks through lmms-eval (implemented in eval.lmms)")
    p.add_argument("--model", required=True, help="HF Llava dir or original LLaVA-1.5 dir")
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated task names from eval/tasks/tasks.yaml (pope, gqa, scienceqa_img, textvqa_val, mme, "
        "shapes_vqa, shapes_mc)",
    )
    p.add_argument(
        "--data-root",
        required=True,
        type=Path,
        help="root of the local dataset copies in hub layout (see eval.lmms)",
    )
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N samples per task (debugging only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument(
        "--vision-tower",
        default=None,
        help="original LLaVA-1.5 checkpoints only: tower spec to load its mm_vision_tower from",
    )

    p = sub.add_parser("rescore", help="recompute metrics from predictions.jsonl and check metrics.json")
    p.add_argument("results", type=Path, help="a results directory written by this CLI")
    p.add_argument(
        "--parser", default=None, help="rescore CV-Bench with another parser (prints, does not check)"
    )

    p = sub.add_parser("compare", help="markdown table + grouped bar chart of headline metrics")
    p.add_argument(
        "runs", nargs="+", type=Path, help="run directories (the first is the baseline for deltas)"
    )
    p.add_argument("--output", required=True, type=Path, help="where compare.md and compare.png go")
    return parser


def _finish(output: Path, predictions: list[dict], metrics: dict) -> None:
    write_results(output, predictions, metrics)
    print(
        json.dumps(
            {
                "benchmark": metrics["benchmark"],
                "headline": metrics["headline"],
                "missing_images": metrics["missing_images"]["count"],
                "unparseable": metrics["unparseable"]["count"],
                "output": str(output),
            },
            indent=2,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (DatasetLayoutError, TowerSpecError) as err:  # a wrong --data/--vision-tower is a usage error
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "mmvp-vlm":
        from eval.benchmarks import mmvp_vlm

        _finish(
            args.output, *mmvp_vlm.run(args.vision_tower, args.data, args.batch_size, args.device, args.dtype)
        )
    elif args.command == "zeroshot":
        from eval.benchmarks import zeroshot

        _finish(
            args.output, *zeroshot.run(args.vision_tower, args.data, args.batch_size, args.device, args.dtype)
        )
    elif args.command == "mmvp":
        from eval.benchmarks import mmvp

        _finish(
            args.output,
            *mmvp.run(
                args.model,
                args.data,
                prompt_style=args.prompt_style,
                fix_label_swap=args.fix_label_swap,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                device=args.device,
                dtype=args.dtype,
                vision_tower=args.vision_tower,
            ),
        )
    elif args.command == "cv-bench":
        from eval.benchmarks import cv_bench

        suffix = cv_bench.PROMPT_SUFFIX if args.prompt_suffix is None else args.prompt_suffix
        _finish(
            args.output,
            *cv_bench.run(
                args.model,
                args.data,
                parser=args.parser,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                device=args.device,
                dtype=args.dtype,
                vision_tower=args.vision_tower,
                prompt_suffix=suffix,
            ),
        )
    elif args.command == "vqa":
        from eval.lmms import run_vqa  # lmms-eval is heavy: imported only for this subcommand

        return run_vqa(args) or 0
    elif args.command == "rescore":
        return _rescore(args.results, args.parser)
    elif args.command == "compare":
        from eval.report import compare

        print(compare(args.runs, args.output), end="")
    return 0


def _rescore(results: Path, parser: str | None) -> int:
    from eval.benchmarks import rescore
    from eval.benchmarks.common import read_metrics

    if parser is not None:
        print(json.dumps(rescore(results, {"parser": parser}), indent=2))
        return 0
    recomputed = rescore(results)
    recorded = read_metrics(results)
    if recomputed == recorded:
        print(f"{results}: metrics.json reproduced from predictions.jsonl ({recorded['benchmark']})")
        return 0
    differing = sorted(k for k in recorded.keys() | recomputed.keys() if recorded.get(k) != recomputed.get(k))
    for key in differing:
        print(
            f"{key}: recorded {json.dumps(recorded.get(key))[:200]} != recomputed "
            f"{json.dumps(recomputed.get(key))[:200]}",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
