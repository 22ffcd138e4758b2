"""python -m eval SUBCOMMAND ...

One subcommand per benchmark registered in eval/benchmarks/ (each module there adds its own;
see eval/benchmarks/base.py), and three tools:

    rescore     recompute metrics.json from predictions.jsonl      RESULTS_DIR
    compare     tables with intervals + bar chart over runs        RUN_DIR ... --output DIR
    benchmarks  list the registered benchmarks                     [--names]

Every benchmark writes predictions.jsonl and metrics.json to --output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.benchmarks.base import BENCHMARKS, resolve_device
from llava_plugin.cli import add_launcher_flags, guarded, run_cli

TOOLS = {  # command: (help, usage)
    "rescore": ("recompute metrics from predictions.jsonl and check metrics.json", "RESULTS_DIR"),
    "compare": ("headline metrics with bootstrap intervals and paired deltas: tables, JSON, bar chart",
                "RUN_DIR ... --output DIR"),
    "benchmarks": ("list the registered benchmarks: subcommand, metrics name, flags, what it is",
                   "[--names]"),
}


def overview() -> str:
    """The subcommand table of `python -m eval --help`: the registry's benchmarks, then the tools."""
    rows = [(b.command, b.help, b.usage) for b in BENCHMARKS.values()]
    rows += [(command, text, usage) for command, (text, usage) in TOOLS.items()]
    width = max(len(command) for command, _, _ in rows)
    lines = [f"    {command:<{width}}  {usage}" for command, _, usage in rows]
    return "\n".join(lines) + "\n\nEvery benchmark writes predictions.jsonl and metrics.json to --output."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description=overview(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_launcher_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for benchmark in BENCHMARKS.values():
        if benchmark.command in TOOLS:
            raise ValueError(f"benchmark {benchmark.name!r}: its command {benchmark.command!r} is a tool of "
                             f"python -m eval ({sorted(TOOLS)}); set another `command`")
        p = sub.add_parser(benchmark.command, help=benchmark.help)
        benchmark.add_arguments(p)
        p.set_defaults(benchmark=benchmark)

    p = sub.add_parser("rescore", help=TOOLS["rescore"][0])
    p.add_argument("results", type=Path, help="a results directory written by this CLI")
    p.add_argument(
        "--parser", default=None,
        help="re-parse the raw answers with another parser of the benchmark (cv_bench: cambrian, lmms; "
        "mmvp: strict, lmms, cambrian) and print the metrics; metrics.json is neither checked nor changed",
    )

    p = sub.add_parser("compare", help=TOOLS["compare"][0])
    p.add_argument(
        "runs", nargs="+", type=Path, help="run directories (the first is the baseline for deltas)"
    )
    p.add_argument("--output", required=True, type=Path,
                   help="where compare.md, compare.json and compare.png go")
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap redraws of the scored units per interval (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the redraws (same seed, same intervals)")

    p = sub.add_parser("benchmarks", help=TOOLS["benchmarks"][0])
    p.add_argument("--names", action="store_true", help="only the subcommands, one per line (for scripts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: _dispatch(args), debug=args.debug)


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "benchmark", None) is not None:
        resolve_device(args)
        return args.benchmark.run(args)
    if args.command == "rescore":
        return _rescore(args.results, args.parser)
    if args.command == "compare":
        import warnings

        from eval.report import CompareWarning, compare

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CompareWarning)
            text = compare(args.runs, args.output, resamples=args.resamples, seed=args.seed)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        print(text, end="")
        return 0
    if args.command == "benchmarks":
        for b in BENCHMARKS.values():
            print(b.command if args.names else f"{b.command:<12} {b.name:<12} {b.usage:<44} {b.help}")
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")


def _rescore(results: Path, parser: str | None) -> int:
    from eval.benchmarks import rescore
    from eval.benchmarks.common import read_metrics
    from llava_plugin.errors import GenfeedbackError

    recorded = read_metrics(results)
    if parser is not None:
        if isinstance(recorded.get("config"), dict) and "parser" not in recorded["config"]:
            raise GenfeedbackError(f"{results}: --parser applies to benchmarks with several answer parsers "
                                   f"(cv_bench, mmvp); {recorded.get('benchmark')!r} has none")
        print(json.dumps(rescore(results, {"parser": parser}), indent=2))
        return 0
    recomputed = rescore(results)
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
    sys.exit(run_cli(main))
