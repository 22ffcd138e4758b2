"""python -m genfeedback {run,llava,eval,recipes}: the chain's entry points (scripts/*.sh call these).

    python -m genfeedback run --preset toy                    # enhance -> LLaVA -> eval -> compare
    python -m genfeedback run --preset paper --llm DIR --enhance-data SPEC --sd DIR --flux DIR ... --gpus 8
    python -m genfeedback run --preset world                  # the quick shapes world, 1 seed (world/configs/study-quick.yaml)
    python -m genfeedback run --preset world-full --seeds 3   # the full world study (world/configs/study.yaml)
    python -m genfeedback llava --vision-tower SPEC --llm DIR --output DIR --pretrain-data JSON ...
    python -m genfeedback eval --vision-tower SPEC --model DIR --output DIR --mmvp-data DIR ...

Recipes (genfeedback/configs/*.yaml) say which presets and inputs every job gets; flags set their
fields and `--set KEY=VALUE` any field (`python -m genfeedback recipes --fields`). Rerunning a
command reuses every finished job and resumes the unfinished ones from their checkpoints.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from genfeedback import plan
from genfeedback.config import TOY_ZOO, PipelineConfig, recipe_dict, recipes
from llava_plugin.cli import add_launcher_flags, guarded, run_cli
from llava_plugin.config import ConfigError, deep_merge, from_dict, help_text, parse_overrides
from llava_plugin.jobs import LAUNCHERS, run_jobs

# `run --preset world | world-full`: the shapes-world study (python -m world study) with its own recipe in
# world/configs: the quick tier (one seed in about 20 min on 2 cores) or the full study of the README's table
WORLD = {"world": "study-quick", "world-full": "study"}


def _benchmark_commands() -> list[tuple[str, str]]:
    """(subcommand, its data flag) of every registered benchmark, for the `--<command>-data` flags."""
    from eval.benchmarks.base import BENCHMARKS

    return sorted((b.command, b.data_flag) for b in BENCHMARKS.values())


def _add_launch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=int, help="processes per training stage on this node (default 1)")
    p.add_argument("--hostfile", help="multi-node: a DeepSpeed hostfile (implies --launcher deepspeed)")
    p.add_argument("--launcher", choices=LAUNCHERS, help="multi-process launcher (default torchrun)")


def _add_llava_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm", help="LLaVA's language model (e.g. a local lmsys/vicuna-7b-v1.5)")
    p.add_argument("--pretrain-data", help="LCS-558K-style JSON (blip_laion_cc_sbu_558k.json)")
    p.add_argument("--pretrain-images", help="its image folder")
    p.add_argument("--finetune-data", help="mix665k-style JSON (llava_v1_5_mix665k.json)")
    p.add_argument("--finetune-images", help="the folder its image paths are relative to")


def _add_eval_data(p: argparse.ArgumentParser) -> None:
    for command, flag in _benchmark_commands():
        p.add_argument(f"--{command}-data", metavar="DIR", dest=f"data_{command}",
                       help=f"{command}: its data (sets the benchmark's --{flag})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m genfeedback", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole chain: enhance every method, LLaVA on every tower, eval, compare")
    p.add_argument("--preset", default="toy", help=f"recipe: {' | '.join([*recipes(), *WORLD])} (default toy)")
    p.add_argument("--output", type=Path, help="run directory (default runs/<preset>-pipeline; world: runs/<preset>)")
    p.add_argument("--methods", help="comma-separated subset of the recipe's methods")
    p.add_argument("--enhance-steps", type=int, help="optimizer steps per enhancement stage (default: the recipe's)")
    p.add_argument("--llava-steps", type=int, help="optimizer steps per LLaVA stage (default: the recipe's)")
    p.add_argument("--jobs", type=int, help="jobs side by side (world: default 2; else the recipe's)")
    p.add_argument("--seeds", type=int, help="world only: how many seeds of the study")
    p.add_argument("--vision-tower", help="base tower (default: the recipe's)")
    p.add_argument("--backbone", help="paper: backbone of the <method>-<backbone> enhance presets")
    p.add_argument("--enhance-data", help="images for enhancement (e.g. CC3M shards /data/cc3m/{00000..00331}.tar)")
    p.add_argument("--sd", help="Stable Diffusion 2.1-base dir (DIVA)")
    p.add_argument("--flux", help="FLUX.1-dev dir with its vae/ (GenHancer continuous; only vae/ is read)")
    p.add_argument("--unclip", help="Stable unCLIP 2.1 dir whose image encoder matches the tower (un2CLIP)")
    p.add_argument("--vq", help="VQ tokenizer dir (GenHancer discrete)")
    _add_llava_inputs(p)
    _add_eval_data(p)
    _add_launch(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set llava.lora=true (see `recipes --fields`)")

    p = sub.add_parser("enhance", help="one enhance run under the launcher: python -m enhance train's flags, "
                                        "checked before any process starts", add_help=False)
    _add_launch(p)
    p.add_argument("-h", "--help", action="store_true", help="this help, then enhance train's")

    p = sub.add_parser("llava", help="LLaVA-1.5 on one tower: pretraining (projector) then instruction tuning")
    p.add_argument("--preset", default="paper", help=f"recipe of the LLaVA presets: {' | '.join(recipes())} "
                                                     "(default paper: LLaVA-1.5-7B)")
    p.add_argument("--vision-tower", help="the tower: HF id/dir, open_clip:..., or an enhance RUN/vision_tower")
    p.add_argument("--output", type=Path,
                   help="(required) DIR/pretrain (mm_projector.bin) and DIR/finetune (the HF Llava checkpoint in DIR/finetune/llava)")
    _add_llava_inputs(p)
    p.add_argument("--zoo", help="tiny-zoo directory (resolves the toy recipe's zoo: paths)")
    p.add_argument("--lora", action="store_true", help="instruction-tune with LoRA (the finetune preset's -lora variant)")
    p.add_argument("--stage", choices=("both", *plan.STAGES), default="both",
                   help="both | pretrain | finetune (finetune reuses DIR/pretrain)")
    p.add_argument("--max-steps", type=int, help="cap optimizer steps per stage (smoke runs)")
    p.add_argument("--skip-bad-samples", action="store_true", help="drop and count malformed samples")
    _add_launch(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="mllm_train config override for both stages, e.g. --set optim.lr=1e-4")

    p = sub.add_parser("eval", help="every benchmark that has its data, on a tower and/or a LLaVA checkpoint")
    p.add_argument("--preset", help="recipe whose benchmark data to use (toy: the tiny zoo's, with --zoo)")
    p.add_argument("--zoo", help="tiny-zoo directory (resolves the toy recipe's zoo: paths)")
    p.add_argument("--vision-tower", help="tower for the encoder benchmarks")
    p.add_argument("--model", help="LLaVA checkpoint (HF Llava dir or original LLaVA-1.5 dir) for the others")
    p.add_argument("--output", type=Path, help="(required) results root: one directory per benchmark")
    p.add_argument("--benchmarks", help="comma-separated subset (default: every one with data and a model)")
    p.add_argument("--device", help="every benchmark's --device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", help="every benchmark's --dtype (default: float16 on GPU, float32 on CPU)")
    p.add_argument("--batch-size", type=int, help="every benchmark's --batch-size (default: each benchmark's)")
    _add_eval_data(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a benchmark flag, e.g. --set eval.vqa.tasks=gqa,pope --set eval.mmvp.batch-size=4")

    p = sub.add_parser("recipes", help="list the recipes, or every recipe field with --fields")
    p.add_argument("--fields", action="store_true", help="every field a recipe or --set can give")
    return parser


# ---------------------------------------------------------------- flags -> recipe fields
def _eval_flags(args) -> dict[str, dict[str, str]]:
    given = {}
    for command, flag in _benchmark_commands():
        value = getattr(args, f"data_{command}", None)
        if value:
            given[command] = {flag: value}
    return given


def _llava_flags(args) -> dict[str, Any]:
    return {key: value for key, value in (("pretrain_data", args.pretrain_data),
                                          ("pretrain_images", args.pretrain_images),
                                          ("finetune_data", args.finetune_data),
                                          ("finetune_images", args.finetune_images)) if value}


def _launch_flags(args) -> dict[str, Any]:
    return {key: value for key, value in (("gpus", args.gpus), ("hostfile", args.hostfile),
                                          ("launcher", args.launcher)) if value is not None}


def _common(args, eval_given: dict) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if getattr(args, "vision_tower", None):
        flags["vision_tower"] = args.vision_tower
    if getattr(args, "llm", None):
        flags["llm"] = args.llm
    if eval_given:
        flags["eval"] = eval_given
    return flags


def run_config(args) -> PipelineConfig:
    raw = recipe_dict(args.preset)
    if args.methods:
        chosen = [m for m in args.methods.split(",") if m]
        known = raw.get("methods") or {}
        unknown = [m for m in chosen if m not in known]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r} in --methods (the {args.preset} recipe has "
                              f"{', '.join(known)})")
        raw["methods"] = {m: known[m] for m in chosen}
    flags = _common(args, _eval_flags(args))
    enhance = {k: v for k, v in (("max_steps", args.enhance_steps), ("backbone", args.backbone),
                                 ("data", args.enhance_data)) if v is not None}
    llava = {**_llava_flags(args), **({"max_steps": args.llava_steps} if args.llava_steps is not None else {})}
    generators = {k: v for k, v in (("sd", args.sd), ("flux", args.flux), ("unclip", args.unclip),
                                                  ("vq", args.vq)) if v}
    for key, value in (("enhance", enhance), ("llava", llava), ("generators", generators),
                       ("launch", _launch_flags(args))):
        if value:
            flags[key] = value
    if args.jobs is not None:
        flags["jobs"] = args.jobs
    return from_dict(PipelineConfig, deep_merge(raw, deep_merge(flags, parse_overrides(args.set))))


# ---------------------------------------------------------------- commands
def cmd_run(args) -> int:
    if args.preset in WORLD:
        return _run_world(args)
    cfg = run_config(args)
    out = (args.output or Path("runs") / f"{args.preset}-pipeline").resolve()
    start = time.perf_counter()
    zoo = plan.zoo_dir(cfg, out)
    # the toy zoo is built first (its paths are what the checks look at); nothing else is written
    # before every input has been checked
    if cfg.zoo == TOY_ZOO and run_jobs([plan.zoo_job(out)], out, desc="tiny zoo")["zoo"] == "failed":
        return 1
    cfg = plan.resolve(cfg, zoo)
    plan.check_chain(cfg, out, zoo)
    jobs, _ = plan.plan_chain(cfg, out, zoo)
    status = _run(jobs, out, cfg, "genfeedback run")
    report = out / "report" / "compare.md"
    if report.is_file():
        print(report.read_text())
    print(f"genfeedback run: {len(jobs)} jobs in {time.perf_counter() - start:.0f}s; table {report}, "
          f"plot {report.with_suffix('.png')}", file=sys.stderr)
    return status


def _run(jobs, out: Path, cfg: PipelineConfig, desc: str) -> int:
    status = run_jobs(jobs, out, parallel=cfg.jobs, desc=desc)
    failed = sorted(k for k, v in status.items() if v == "failed")
    skipped = sorted(k for k, v in status.items() if v == "skipped")
    if failed:
        print(f"{desc}: {len(failed)} job(s) failed ({', '.join(failed)}), {len(skipped)} skipped; "
              f"logs in {out / 'logs'}", file=sys.stderr)
        return 1
    return 0


def _run_world(args) -> int:
    ignored = [f for f, v in vars(args).items() if v not in (None, False, [], "world") and f not in
               ("command", "preset", "output", "seeds", "jobs", "debug", "local_rank")]
    recipe = WORLD[args.preset]
    if ignored:
        raise ConfigError(f"--preset {args.preset} takes --output, --seeds and --jobs only (its recipe is "
                          f"world/configs/{recipe}.yaml); got --{ignored[0].replace('_', '-')}")
    argv = plan.python_module("world", "study", "--preset", recipe, "--out",
                              str(args.output or Path("runs") / args.preset), "--jobs", str(args.jobs or 2))
    if args.seeds:
        argv += ["--seeds", str(args.seeds)]
    print("$ " + " ".join(argv), file=sys.stderr)
    return subprocess.call(argv)


def cmd_enhance(args, rest: list[str]) -> int:
    if args.help:
        print("python -m genfeedback enhance [--gpus N] [--hostfile FILE] [--launcher torchrun|deepspeed] "
              "ENHANCE-TRAIN-FLAGS\n\nThe launcher flags, then every flag of `python -m enhance train` (here --preset "
              "defaults to paper: <method>-<backbone>):\n")
        return subprocess.call(plan.python_module("enhance", "train", "--help"))
    from enhance.__main__ import build_parser as enhance_parser

    if not any(a == "--preset" or a.startswith("--preset=") for a in rest):
        rest = ["--preset", "paper", *rest]  # the launcher's default: the published recipe <method>-<backbone>
    train = enhance_parser().parse_args(["train", *rest])  # enhance's own flags, or its usage error
    if not train.output:
        raise ConfigError("--output is required")
    cfg = from_dict(PipelineConfig, {"launch": _launch_flags(args)})
    plan.check_enhance(["train", *rest])
    output = Path(train.output)
    job = plan.Job("enhance", plan.launch_argv("enhance", ["train", *rest], cfg.launch),
                   output / "vision_tower" / "genfeedback.json")
    print("$ " + " ".join(job.argv), file=sys.stderr)
    code = subprocess.call(job.argv)
    if code == 0:
        if not job.done.is_file():
            raise ConfigError(f"training finished but {output / 'vision_tower'} was not written")
        print(f"enhanced tower: {output / 'vision_tower'}", file=sys.stderr)
    return code


def cmd_llava(args) -> int:
    if not args.output:
        raise ConfigError("--output is required")
    overrides: dict[str, Any] = _common(args, {})
    llava = _llava_flags(args)
    for key, value in (("lora", args.lora or None), ("max_steps", args.max_steps),
                       ("skip_bad_samples", args.skip_bad_samples or None)):
        if value is not None:
            llava[key] = value
    llava["set"] = parse_overrides(args.set)
    overrides["llava"] = llava
    if _launch_flags(args):
        overrides["launch"] = _launch_flags(args)
    raw = recipe_dict(args.preset)
    raw.pop("eval", None), raw.pop("methods", None)  # one tower's LLaVA: nothing else of the recipe applies
    cfg = from_dict(PipelineConfig, deep_merge(raw, overrides))
    cfg = plan.resolve(cfg, Path(args.zoo) if args.zoo else None)
    stages = plan.STAGES if args.stage == "both" else (args.stage,)
    if not args.vision_tower:
        raise ConfigError("--vision-tower is required")
    plan.check_llava(cfg, stages, args.vision_tower)
    if stages == ("finetune",) and not (args.output / "pretrain" / "mm_projector.bin").is_file():
        raise ConfigError(f"pretrained projector not found: {args.output / 'pretrain' / 'mm_projector.bin'} "
                          "(run --stage pretrain first)")
    out = args.output.resolve()
    jobs = plan.llava_jobs(cfg, "tower", args.vision_tower, out, [], stages)
    code = _run(jobs, out, cfg, "llava")
    if code == 0 and "finetune" in stages:
        print(f"LLaVA checkpoint: {out / 'finetune' / 'llava'}", file=sys.stderr)
    return code


def cmd_eval(args) -> int:
    if not args.output:
        raise ConfigError("--output is required")
    if not (args.vision_tower or args.model):
        raise ConfigError("give --vision-tower and/or --model")
    given = _eval_flags(args)
    raw = recipe_dict(args.preset) if args.preset else {}
    sets = parse_overrides(args.set)
    # the recipe's benchmark data, then the flags; nothing else of the recipe applies here
    overrides = {"eval": deep_merge(deep_merge(raw.get("eval") or {}, given), sets.get("eval", {}))}
    unknown = sorted(set(sets) - {"eval"})
    if unknown:
        raise ConfigError(f"--set {unknown[0]}...: eval takes benchmark flags only, e.g. --set eval.vqa.tasks=gqa")
    if args.preset and "eval" not in raw:
        raise ConfigError(f"recipe {args.preset!r} names no benchmark data; pass --<benchmark>-data flags")
    common = {k: v for k, v in (("device", args.device), ("dtype", args.dtype), ("batch-size", args.batch_size)) if v}
    overrides["eval"] = {name: {**common, **flags} for name, flags in overrides["eval"].items()}
    cfg = from_dict(PipelineConfig, overrides)
    cfg = plan.resolve(cfg, Path(args.zoo) if args.zoo else None)
    only = [b for b in args.benchmarks.split(",") if b] if args.benchmarks else None
    plan.check_eval(cfg, only)
    if args.model and not (Path(args.model) / "config.json").is_file():
        raise ConfigError(f"LLaVA checkpoint (--model) not found: {args.model}/config.json")
    out = args.output.resolve()
    tower = (args.vision_tower, None) if args.vision_tower else None
    model = (args.model, None) if args.model else None
    jobs = plan.eval_jobs(cfg, out, tower, model, only)
    if only:
        missing = sorted(set(only) - {j.name.rsplit("/", 1)[-1] for j in jobs})
        if missing:
            b = missing[0]
            need = "--vision-tower" if plan.scores_tower(b) else "--model"
            raise ConfigError(f"{b} needs {need} and its data (--{b}-data)")
    if not jobs:
        raise ConfigError("nothing to run: give a model/tower together with benchmark data flags")
    code = _run(jobs, out, PipelineConfig(), "eval")
    if code == 0:
        print(f"results in {out}", file=sys.stderr)
    return code


def cmd_recipes(args) -> int:
    if args.fields:
        print("\n".join(help_text(PipelineConfig)))
    else:
        print("\n".join([*recipes(), *WORLD]))
    return 0


COMMANDS = {"run": cmd_run, "llava": cmd_llava, "eval": cmd_eval, "recipes": cmd_recipes}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "enhance":  # the rest are enhance train's own flags
        return guarded(lambda: cmd_enhance(args, rest), debug=args.debug)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return guarded(lambda: COMMANDS[args.command](args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(run_cli(main))
