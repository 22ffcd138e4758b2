"""The shapes world: a CPU-sized domain where every stage of the toolkit means something.

    python -m world build --root WORLD [--seed K] [--preset world]   the world's data and seed-K models
                                                   (world | world-quick | world-smoke)
    python -m world probe --vision-tower DIR --output FILE.json      probes, pair cosine, zero-shot
    python -m world study --out DIR [--seeds N] [--preset study]     every method and control, then the report
                                                   (study: the full study | study-quick: ~20 min a seed | study-smoke)
    python -m world report --out DIR                                  (re)write DIR/report from finished runs
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from llava_plugin.cli import add_launcher_flags, guarded, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="train the world's models and write its data (reuses finished parts)")
    p.add_argument("--root", required=True, type=Path, help="world directory (data/ and seed-K/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models (CLIP, VAE, generators, LM)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the shared data and benchmarks")
    p.add_argument("--preset", default="world", help="world spec preset (world/configs): world | world-quick | world-smoke")
    p.add_argument("--jobs", type=int, default=2, help="parts trained in parallel (one CPU thread each)")
    p = sub.add_parser("probe", help="linear probes, pair cosine and zero-shot of a tower on world scenes")
    p.add_argument("--vision-tower", required=True, help="a CLIPModel dir (the world CLIP or an enhance export)")
    p.add_argument("--output", required=True, type=Path, help="JSON file to write")
    p.add_argument("--n-train", type=int, default=2000, help="scenes the probes are fit on")
    p.add_argument("--n-test", type=int, default=1000, help="held-out scenes the probes and zero-shot are scored on")
    p.add_argument("--n-pairs", type=int, default=300, help="one-attribute pairs per attribute (pair cosine)")
    p = sub.add_parser("sensitivity", help="per attribute: how much a world generator's loss rises when its "
                                           "condition has that attribute wrong")
    p.add_argument("--zoo", required=True, type=Path, help="a world seed directory (WORLD/seed-K)")
    p.add_argument("--output", required=True, type=Path, help="JSON file to write")
    p.add_argument("--n", type=int, default=128, help="scenes per attribute")
    p = sub.add_parser("reading", help="does the world LM answer questions about a scene described in words "
                                       "where the image would be (the ceiling of LLaVA on it)?")
    p.add_argument("--zoo", required=True, type=Path, help="a world seed directory (WORLD/seed-K)")
    p.add_argument("--output", required=True, type=Path, help="JSON file to write")
    p.add_argument("--n", type=int, default=40, help="questions per format and attribute")
    p = sub.add_parser("study", help="build the world, run every method and control over seeds, write the report")
    p.add_argument("--out", required=True, type=Path, help="study directory")
    p.add_argument("--preset", default="study", help="study recipe (world/configs): study (the full study; bash scripts/pipeline.sh --preset "
                        "world-full) | study-quick (--preset world) | study-smoke")
    p.add_argument("--seeds", type=int, default=None,
                   help="how many seeds: the recipe's first N (seeds after its last one if N is larger)")
    p.add_argument("--jobs", type=int, default=2, help="jobs run in parallel (one CPU thread each)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set downstream=[] for the tower-level study alone "
                        "(repeatable; the values that ran are in OUT/study.json)")
    p = sub.add_parser("report", help="write OUT/report/world.md and plots from a study's finished runs")
    p.add_argument("--out", required=True, type=Path, help="study directory")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return guarded(lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    if args.command == "build":
        from world.build import build_world, load_spec

        start = time.perf_counter()
        world = build_world(args.root, seed=args.seed, spec=load_spec(args.preset), jobs=args.jobs,
                            data_seed=args.data_seed)
        print(f"world seed {args.seed} ready in {time.perf_counter() - start:.0f}s: --zoo {world.zoo}")
        return 0
    if args.command == "probe":
        from world.probe import ProbeSets, tower_report

        result = tower_report(args.vision_tower, ProbeSets(n_train=args.n_train, n_test=args.n_test,
                                                           n_pairs=args.n_pairs))
        _write_json(args.output, result)
        print(json.dumps({k: result[k] for k in ("probe", "zero_shot")}))
        return 0
    if args.command == "sensitivity":
        from world.sensitivity import generator_sensitivity

        zoo = json.loads((args.zoo / "zoo.json").read_text())
        result = generator_sensitivity(Path(zoo["sd21"]), Path(zoo["unclip"]), Path(zoo["clip"]), n=args.n)
        _write_json(args.output, result)
        print(json.dumps(result))
        return 0
    if args.command == "reading":
        from world.language import reading_check

        zoo = json.loads((args.zoo / "zoo.json").read_text())
        result = reading_check(Path(zoo["llm"]), n=args.n, data=zoo["data"])
        _write_json(args.output, result)
        print(json.dumps({mode: result[mode] for mode in ("described", "blind")}))
        return 0
    if args.command == "study":
        from llava_plugin.config import parse_overrides
        from world.report import write_report
        from world.study import load_study, run_study

        cfg = load_study(args.preset, parse_overrides(args.set))
        if args.seeds:
            more = range(max(cfg.seeds) + 1, max(cfg.seeds) + 1 + args.seeds)
            cfg.seeds = [*cfg.seeds, *more][: args.seeds]
        start = time.perf_counter()
        status = run_study(cfg, args.out, parallel=args.jobs, after_seed=lambda seed: write_report(args.out))
        failed = sorted(k for k, v in status.items() if v == "failed")
        report = write_report(args.out)
        print(f"world study: {len(status)} jobs in {time.perf_counter() - start:.0f}s; report: {report}")
        if failed:
            print(f"world study: {len(failed)} job(s) failed: {', '.join(failed)} (logs in {args.out / 'logs'})",
                  file=sys.stderr)
            return 1
        return 0
    if args.command == "report":
        from world.report import write_report

        print(write_report(args.out))
        return 0
    raise AssertionError(args.command)


def _write_json(path: Path, obj) -> None:
    """Atomically: a job's output file is also its `done` marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".incomplete-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.rename(path)


if __name__ == "__main__":
    sys.exit(run_cli(main))
