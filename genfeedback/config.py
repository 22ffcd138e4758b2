"""The chain's recipe: which towers, which methods, which LLaVA presets, which benchmarks.

A recipe is data (genfeedback/configs/<name>.yaml, `base:` chains allowed); the command line sets
its fields (`--llm DIR` is `llm`, `--set llava.max_steps=1` any field). Values `zoo:NAME` are
paths of the tiny zoo (llava_plugin.toy), resolved once the zoo exists. Every stage keeps its
own recipe in its own presets: this file only says which presets and inputs each job gets.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llava_plugin.config import ConfigError, deep_merge, from_dict, list_presets, load_yaml_preset
from llava_plugin.config import documented as _help
from llava_plugin.jobs import LAUNCHERS, Launch

PRESET_DIR = Path(str(resources.files("genfeedback") / "configs"))
TOY_ZOO = "toy"  # `zoo: toy`: build the tiny zoo into OUT/zoo (or reuse it)


@dataclass
class MethodRun:
    generator: str = _help("The frozen generator: a path (it has a slash), or the name of an entry of "
                           "`generators` (e.g. `sd`, which --sd sets); empty: the method preset's own.", "")
    set: dict[str, Any] = _help("Extra enhance --set values of this method.", factory=dict)


@dataclass
class EnhanceStage:
    preset: str = _help("`paper` (<method>-<backbone>, the published recipe), `toy` (tiny-<method> on the "
                        "tiny zoo) or one preset name for every method.", "paper")
    backbone: str = _help("With preset paper: the backbone of the <method>-<backbone> presets.", "openai-l14-224")
    data: str = _help("Training images (folder, .jsonl list, .tar shards or a brace pattern); empty: the "
                      "preset's.", "")
    max_steps: int = _help("Optimizer steps of every stage; 0: the preset's.", 0)
    set: dict[str, Any] = _help("Extra --set values of every enhance run.", factory=dict)


@dataclass
class LlavaStage:
    pretrain: str = _help("mllm_train preset of pretraining (projector only).", "llava15-7b-pretrain")
    finetune: str = _help("mllm_train preset of instruction tuning (LLM + projector, tower frozen).",
                          "llava15-7b-finetune")
    lora: bool = _help("Instruction-tune with the finetune preset's -lora variant.", False)
    pretrain_data: str = _help("LCS-558K-style JSON.", "")
    pretrain_images: str = _help("Its image folder.", "")
    finetune_data: str = _help("mix665k-style JSON.", "")
    finetune_images: str = _help("The folder its image paths are relative to.", "")
    max_steps: int = _help("Optimizer steps per stage; 0: the full epoch of the preset.", 0)
    skip_bad_samples: bool = _help("Drop and count malformed samples instead of failing.", False)
    set: dict[str, Any] = _help("Extra --set values of both stages.", factory=dict)


@dataclass
class PipelineConfig:
    zoo: str = _help("`toy` builds the tiny zoo into OUT/zoo (reused when there), a directory is a zoo "
                     "already built; empty: no zoo (every path is real).", "")
    vision_tower: str = _help("The base tower (HF id/dir, open_clip:..., an enhance output).",
                              "openai/clip-vit-large-patch14")
    llm: str = _help("LLaVA's language model (e.g. a local lmsys/vicuna-7b-v1.5).", "")
    methods: dict[str, MethodRun] = _help("Method name (the enhance registry) -> its run; each enhanced tower "
                                          "goes through LLaVA and eval like the base tower.", factory=dict)
    generators: dict[str, str] = _help("Named generator paths the methods refer to (--sd, --flux, --unclip, --vq).",
                                       factory=dict)
    enhance: EnhanceStage = _help("The enhance runs.", factory=EnhanceStage)
    llava: LlavaStage = _help("LLaVA-1.5 pretraining and instruction tuning, the same for every tower.",
                              factory=LlavaStage)
    eval: dict[str, dict[str, Any]] = _help(
        "Benchmark (an `eval` subcommand) -> its flags, e.g. mmvp: {data: DIR}. An encoder benchmark scores "
        "each tower, a generation benchmark each LLaVA.", factory=dict)
    launch: Launch = _help("Processes per training stage: gpus, hostfile, launcher (torchrun | deepspeed).",
                           factory=Launch)
    jobs: int = _help("Jobs run side by side (CPU runs; with gpus > 1 keep 1).", 1)

    def validate(self) -> None:
        self.methods = {name: run if isinstance(run, MethodRun) else from_dict(MethodRun, run or {}, f"methods.{name}.")
                        for name, run in self.methods.items()}
        if self.launch.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {'/'.join(LAUNCHERS)}, got {self.launch.launcher!r}")
        if self.launch.gpus < 1 or self.jobs < 1:
            raise ConfigError(f"--gpus and --jobs must be positive integers, got {self.launch.gpus} and {self.jobs}")
        if self.launch.hostfile and not Path(self.launch.hostfile).is_file():
            raise ConfigError(f"hostfile not found: {self.launch.hostfile}")


def recipes() -> list[str]:
    return list_presets(PRESET_DIR)


def recipe_dict(name: str) -> dict[str, Any]:
    """A recipe by name or YAML path, `base:` chain merged, not yet validated."""
    return load_yaml_preset(PRESET_DIR, name)


def load_recipe(name: str, overrides: dict | None = None) -> PipelineConfig:
    return from_dict(PipelineConfig, deep_merge(recipe_dict(name), overrides or {}))
