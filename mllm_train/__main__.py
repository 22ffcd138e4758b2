"""LLaVA-1.5 training with any vision tower.

    python -m mllm_train pretrain --vision-tower SPEC --llm DIR --data JSON --image-folder DIR --output DIR
    python -m mllm_train finetune --vision-tower SPEC --llm DIR --pretrained-projector PRE/mm_projector.bin \\
        --data JSON --image-folder DIR --output DIR [--lora]
    python -m mllm_train inspect --data JSON --tokenizer DIR --template vicuna_v1
    python -m mllm_train bench --vision-tower SPEC --llm DIR --data JSON --image-folder DIR
    python -m mllm_train import-original LLAVA_DIR OUT [--vision-tower SPEC]

Runs under torchrun / deepspeed launchers (or plainly, as one process). A stage's settings
come from `--preset` (default llava15-7b-<stage>; `--lora` picks the preset's `-lora`
variant), then the flags, then `--set key=value` overrides. Rerunning the same command
resumes from the last complete checkpoint in --output.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from llava_plugin.cli import add_launcher_flags, guarded, run_cli
from llava_plugin.config import ConfigError, deep_merge, parse_overrides
from llava_plugin.registry import SPEC_HELP
from mllm_train import config as config_module

DEFAULT_PRESETS = {"pretrain": "llava15-7b-pretrain", "finetune": "llava15-7b-finetune"}


def _add_train_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESETS[stage],
                        help=f"preset name or YAML path (available: {', '.join(config_module.presets())})")
    parser.add_argument("--vision-tower", help=f"vision tower spec; accepted forms:{SPEC_HELP}")
    parser.add_argument("--llm", help="language model directory or HF id (e.g. lmsys/vicuna-7b-v1.5)")
    parser.add_argument("--data", help="LLaVA JSON/JSONL file")
    parser.add_argument("--image-folder", help="folder the samples' image paths are relative to")
    parser.add_argument("--output", help="output directory (checkpoints, metrics.jsonl, llava/)")
    parser.add_argument("--deepspeed", help="zero2, zero3 or a DeepSpeed JSON path")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end this session after N steps with a checkpoint (rerun to resume)")
    parser.add_argument("--skip-bad-samples", action="store_true",
                        help="drop and count bad samples instead of failing (see data.max_skip_fraction)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set optim.lr=1e-4 (see --help-config)")
    parser.add_argument("--help-config", action="store_true", help="list every config field and exit")
    if stage == "finetune":
        parser.add_argument("--pretrained-projector", help="mm_projector.bin written by pretraining")
        parser.add_argument("--init-from", help="start from a LLaVA checkpoint (HF Llava or original dir)")
        parser.add_argument("--lora", action="store_true", help="LoRA finetuning (the preset's -lora variant)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mllm_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in ("pretrain", "finetune"):
        _add_train_arguments(sub.add_parser(stage, help=f"LLaVA-1.5 {stage}"), stage)
    from mllm_train import inspect as inspect_module

    inspect_module.add_arguments(sub.add_parser("inspect", help="show tokenization and label masks of samples"))
    from mllm_train import bench

    bench.add_arguments(sub.add_parser("bench", help="tokens/s and peak memory, gradient checkpointing and "
                                                     "length grouping on and off"))
    imp = sub.add_parser("import-original", help="convert an original LLaVA-1.5 checkpoint to an HF Llava dir")
    imp.add_argument("source", help="original LLaVA checkpoint dir (config.json with mm_vision_tower)")
    imp.add_argument("output", help="HF Llava directory to write")
    imp.add_argument("--vision-tower", help="where the tower is (overrides the config's mm_vision_tower HF id)")
    return parser


def resolve_preset(args) -> str:
    """The preset; with --lora, its `-lora` variant unless the preset already enables LoRA."""
    preset = args.preset
    if getattr(args, "lora", False) and not config_module.preset_data(preset).get("lora", {}).get("enabled"):
        variant = f"{preset}-lora"
        if variant not in config_module.presets():
            raise ConfigError(f"--lora: preset {preset!r} has no LoRA variant {variant!r} and does not enable LoRA; "
                              f"use a LoRA preset ({[p for p in config_module.presets() if 'lora' in p]}) or "
                              f"--set lora.enabled=true with the LoRA learning rates")
        preset = variant
    return preset


def train_config(args, stage: str):
    flags = {
        "model": {"vision_tower": args.vision_tower, "llm": args.llm,
                  "pretrained_projector": getattr(args, "pretrained_projector", None),
                  "init_from": getattr(args, "init_from", None)},
        "data": {"data_path": args.data, "image_folder": args.image_folder,
                 "skip_bad_samples": True if args.skip_bad_samples else None},
        "output_dir": args.output, "deepspeed": {"config": args.deepspeed},
        "schedule": {"max_steps": args.max_steps},
    }
    preset = resolve_preset(args)
    data = deep_merge(config_module.preset_data(preset), _drop_none(flags))
    data = deep_merge(data, parse_overrides(args.set))
    if data.get("stage", stage) != stage:
        raise ConfigError(f"preset {preset!r} is a {data['stage']!r} preset but the command is {stage!r}")
    data["stage"] = stage
    return config_module.from_dict(config_module.TrainConfig, data)


def _drop_none(tree: dict) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return guarded(lambda: _dispatch(args), debug=args.debug)


def _dispatch(args) -> int:
    if args.command in ("pretrain", "finetune"):
        if args.help_config:
            print("\n".join(config_module.help_lines()))
            return 0
        from llava_plugin import distributed
        from mllm_train.trainer import LlavaTrainer

        trainer = LlavaTrainer(train_config(args, args.command))
        out = trainer.fit(stop_after=args.stop_after)
        if distributed.is_main():
            print(json.dumps({"export": str(out) if out else None, "step": trainer.step,
                              "total_steps": trainer.max_steps}))
        return 0
    if args.command == "inspect":
        from mllm_train import inspect as inspect_module

        return inspect_module.run(args)
    if args.command == "bench":
        from mllm_train import bench

        return bench.run(args)
    if args.command == "import-original":
        from llava_plugin.convert_llava import load_llava
        from llava_plugin.llava import save_llava

        model, processor = load_llava(args.source, vision_tower=args.vision_tower)
        out = save_llava(model, processor, args.output, metadata={"imported_from": args.source,
                                                                  "vision_tower": args.vision_tower})
        print(json.dumps({"export": str(out)}))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(run_cli(main))
