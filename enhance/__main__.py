"""python -m enhance {train,diagnose,bench,presets}: generative-feedback post-training of a tower.

    python -m enhance train --method diva --vision-tower openai/clip-vit-large-patch14 \\
        --generator /models/stable-diffusion-2-1-base --data /data/cc3m/{00000..00331}.tar \\
        --output runs/diva-l14 --preset diva-openai-l14-224 --deepspeed zero2
    deepspeed --num_gpus 8 --module enhance train ...   # or: torchrun --nproc_per_node 8 -m enhance train ...
    python -m enhance diagnose --method un2clip --vision-tower T --generator G --data HELDOUT_DIR
    python -m enhance bench [--zoo DIR]             # tiny-zoo speed/memory table per method
    python -m enhance presets                        # list presets
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from llava_plugin.cli import add_launcher_flags, guarded, run_cli
from llava_plugin.config import ConfigError, deep_merge, parse_overrides


def _common_flags(p: argparse.ArgumentParser) -> None:
    from llava_plugin.registry import SPEC_HELP

    p.add_argument("--method", help="registered method name (sets method.name); list them with "
                   "`python -m enhance presets --methods`")
    p.add_argument("--vision-tower", help=f"tower spec to start from. Accepted forms:{SPEC_HELP}")
    p.add_argument("--generator", help="generator the method loads, frozen (SD-2.1 dir, unCLIP dir, VAE/VQ dir, "
                   "GenHancer stage-1 output dir)")
    p.add_argument("--data", help="images: a folder, a .jsonl list ({'image': path} lines), a .tar shard, a brace "
                   "pattern (dir/{00000..00331}.tar) or a directory of .tar shards")
    p.add_argument("--preset", help="preset name (`python -m enhance presets`) or YAML path, or `paper` "
                   "(<method>-<backbone>) or `toy` (tiny-<method>, with --zoo); default: the method's own preset")
    p.add_argument("--config", help="a YAML file merged over the preset (same keys as a preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set optim.lr=1e-5 --set method.stage=2 (repeatable)")
    p.add_argument("--zoo", help="tiny-zoo directory: resolves `zoo:NAME` values of the tiny-* presets")


def build_parser() -> argparse.ArgumentParser:
    from enhance.config import help_lines

    parser = argparse.ArgumentParser(prog="python -m enhance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="post-train a tower with a method", formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="config fields (set with --set KEY=VALUE or in a preset/--config YAML):\n  "
                           + "\n  ".join(help_lines()))
    _common_flags(train)
    train.add_argument("--output", help="run directory (metrics.jsonl, checkpoints/, vision_tower/)")
    train.add_argument("--deepspeed", help="zero2 | zero3 | path to a DeepSpeed JSON (sets deepspeed.config)")
    train.add_argument("--max-steps", type=int, help="optimizer steps (sets schedule.max_steps; every stage's)")
    train.add_argument("--cache-latents", action="store_true",
                       help="encode every image's generator targets once and read them from disk afterwards "
                            "(sets cache.latents; the log gives the size, a disk too small is refused)")
    train.add_argument("--backbone", help="with --preset paper: the published backbone (default openai-l14-224; "
                       "`python -m enhance presets` lists the <method>-<backbone> presets)")
    train.add_argument("--check", action="store_true", help="resolve and check the run (config, stages, input "
                       "paths), print its stages and exit without training")

    diag = sub.add_parser("diagnose", help="generator loss with the tower's own vs a shuffled condition, per "
                          "timestep band (un2CLIP's label-free check)")
    _common_flags(diag)
    diag.add_argument("--num-images", type=int, default=32, help="held-out images to score (default 32)")
    diag.add_argument("--seed", type=int, default=0, help="fixes the images chosen, noise and timesteps")
    diag.add_argument("--bands", type=int, default=4, help="timestep bands (default 4)")
    diag.add_argument("--batch-size", type=int, default=8, help="images per forward; conditions are shuffled "
                      "within a batch (default 8)")
    diag.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    diag.add_argument("--output", default="diagnosis.json", help="JSON file to write (default diagnosis.json)")

    from enhance.bench import add_arguments as bench_arguments

    bench = sub.add_parser("bench", help="images/s and peak memory per method: plain, latent cache, "
                           "gradient checkpointing")
    bench_arguments(bench)

    presets = sub.add_parser("presets", help="list presets")
    presets.add_argument("--show", metavar="NAME", help="print one preset fully resolved (base chain merged)")
    presets.add_argument("--method", help="list a method's own config fields (the `method:` section)")
    presets.add_argument("--names", action="store_true", help="only the preset names, one per line (for scripts)")
    presets.add_argument("--methods", action="store_true", help="only the registered method names, one per line")
    return parser


def _preset_and_overrides(args) -> tuple[str, dict]:
    from enhance.config import resolve_preset

    flags: dict = {}
    if args.method:
        flags["method"] = {"name": args.method}
    for flag, key in (("vision_tower", "vision_tower"), ("generator", "generator"), ("output", "output_dir")):
        if getattr(args, flag, None):
            flags[key] = getattr(args, flag)
    if args.data:
        flags["data"] = {"source": args.data}
    if getattr(args, "deepspeed", None):
        flags["deepspeed"] = {"config": args.deepspeed}
    if getattr(args, "max_steps", None) is not None:
        flags["schedule"] = {"max_steps": args.max_steps}
    if getattr(args, "cache_latents", False):
        flags["cache"] = {"latents": True}
    preset = resolve_preset(args.method, args.preset, getattr(args, "backbone", None), args.zoo)
    return preset, deep_merge(flags, parse_overrides(args.set))


def run_from_args(args) -> list:
    """[(stage, config)]: every stage the preset runs (GenHancer's presets run stage1 then stage2)."""
    from enhance.config import load_run

    preset, overrides = _preset_and_overrides(args)
    return load_run(preset=preset, config_file=args.config, overrides=overrides, zoo=args.zoo)


def config_from_args(args):
    """The config of a one-stage preset (diagnose, bench and stage-by-stage use)."""
    from enhance.config import PRESET_DIR, STAGES_KEY, load_config, load_yaml_preset

    preset, overrides = _preset_and_overrides(args)
    stages = load_yaml_preset(PRESET_DIR, preset).get(STAGES_KEY)
    if stages:
        raise ConfigError(f"preset {preset!r} runs the stages {list(stages)}; pass one stage's preset "
                          f"({', '.join(stages.values())}) here")
    return load_config(preset=preset, config_file=args.config, overrides=overrides, zoo=args.zoo)


def cmd_train(args) -> int:
    import gc

    from enhance.trainer import EnhanceTrainer
    from llava_plugin import distributed

    stages = run_from_args(args)
    if args.check:
        from enhance.config import check_inputs

        check_inputs(stages)
        for stage, cfg in stages:
            print(f"{stage}: method={cfg.method_name} output={cfg.output_dir} generator={cfg.generator} "
                  f"steps={cfg.schedule.max_steps or 'epochs=' + str(cfg.schedule.epochs)}")
        return 0
    summaries = {}
    for number, (stage, cfg) in enumerate(stages, 1):
        if len(stages) > 1 and distributed.is_main():
            logging.getLogger("enhance").info("stage %d of %d (%s): %s", number, len(stages), stage, cfg.output_dir)
        summaries[stage] = EnhanceTrainer(cfg).fit()
        gc.collect()  # the stage's engine and models go before the next stage loads its own
    summary = dict(summaries[stages[-1][0]])
    if len(stages) > 1:
        summary["stages"] = summaries
    if distributed.is_main():
        print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_diagnose(args) -> int:
    import torch

    from enhance.data import open_source
    from enhance.diagnose import condition_gap, format_table, sample_indices
    from enhance.methods.base import get_method
    from llava_plugin.registry import load_tower

    cfg = config_from_args(args)
    for key, flag in (("vision_tower", "--vision-tower"), ("generator", "--generator")):
        if not getattr(cfg, key):
            raise ConfigError(f"{key} is not set: pass {flag}")
    if not cfg.data.source:
        raise ConfigError("pass --data with held-out images")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    method = get_method(cfg.method_name)(cfg.method_config(), load_tower(cfg.vision_tower), cfg.generator)
    method.to(device)
    source = open_source(cfg.data.source)
    result = condition_gap(method, source, sample_indices(source, args.num_images, args.seed), bands=args.bands,
                           seed=args.seed, device=device, batch_size=args.batch_size)
    result.update(vision_tower=cfg.vision_tower, generator=cfg.generator, data=cfg.data.source)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {args.output}")
    return 0


def cmd_presets(args) -> int:
    import yaml

    from enhance.config import PRESET_DIR, load_yaml_preset, preset_summary, presets

    if args.show:
        print(yaml.safe_dump(load_yaml_preset(PRESET_DIR, args.show), sort_keys=False))
        return 0
    if args.method:
        from enhance.methods.base import get_method
        from llava_plugin.config import help_text

        try:
            cls = get_method(args.method)
        except KeyError as err:
            raise ConfigError(err.args[0]) from err
        print(f"method.name: {args.method}")
        print("\n".join(help_text(cls.config_cls, "method.")))
        return 0
    if args.methods:
        from enhance.methods.base import METHODS

        print("\n".join(METHODS.names()))
        return 0
    for name in presets():
        print(name if args.names else preset_summary(name))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from enhance.bench import main as cmd_bench

    commands = {"train": cmd_train, "diagnose": cmd_diagnose, "bench": cmd_bench, "presets": cmd_presets}
    return guarded(lambda: commands[args.command](args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(run_cli(main))
