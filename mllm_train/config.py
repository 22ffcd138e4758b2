"""The one config of a LLaVA-1.5 training stage (pretrain or finetune), loaded from a preset.

    cfg = load_config("llava15-7b-pretrain", {"data": {"data_path": "..."}, "model": {...}})

Presets live in mllm_train/configs/ (`base:` chains); the published LLaVA-1.5 recipes are
`llava15-{7b,13b}-{pretrain,finetune,finetune-lora}`, the `tiny-*` ones run the same code on
the toy zoo. Every field is documented (`help_lines()`) and validated with a message naming
the field, the value and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from llava_plugin.config import (
    ConfigError,
    deep_merge,
    from_dict,
    help_text,
    list_presets,
    load_yaml_preset,
    to_dict,
)
from llava_plugin.config import documented as _help
from llava_plugin.train.config import OptimConfig, RunConfig
from mllm_train.data import DataConfig

PRESET_DIR = Path(str(resources.files("mllm_train") / "configs"))


@dataclass
class ModelConfig:
    vision_tower: str = _help("Vision tower spec (`--vision-tower`): HF id, CLIP/SigLIP dir, enhanced tower dir, "
                              "open_clip:...; see llava_plugin.registry.", "")
    llm: str = _help("Language model directory or HF id (`--llm`), e.g. lmsys/vicuna-7b-v1.5.", "")
    init_from: str | None = _help("Start from this LLaVA checkpoint instead (HF Llava dir or original LLaVA-1.5 "
                                  "dir); vision_tower/llm are then ignored.", None)
    pretrained_projector: str | None = _help("mm_projector.bin from pretraining (`--pretrained-projector`), "
                                             "loaded into the fresh projector (finetune).", None)
    projector_any_tower: bool = _help("Load pretrained_projector even if its mm_projector.json records another "
                                      "tower (family, width, feature layer or image size) than this one.", False)
    projector: Literal["mlp2x_gelu"] = _help("Projector type (LLaVA-1.5: mlp2x_gelu).", "mlp2x_gelu")
    select_layer: int = _help("Tower hidden state fed to the projector (LLaVA-1.5: -2).", -2)
    select_feature: Literal["patch", "cls_patch"] = _help("patch: drop CLS (LLaVA-1.5); cls_patch: keep it.",
                                                          "patch")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = _help(
        "LLM attention kernel; auto = flash_attention_2 when flash_attn imports and CUDA is present, else sdpa.",
        "auto")
    seed: int = _help("Seeds the fresh projector's initialisation.", 0)

    def validate(self) -> None:
        if not self.init_from and not (self.vision_tower and self.llm):
            raise ConfigError("model.vision_tower and model.llm are required (--vision-tower SPEC --llm DIR), "
                              "unless model.init_from names a LLaVA checkpoint")


@dataclass
class LoraConfig:
    enabled: bool = _help("Train LoRA adapters on the LLM's linear layers instead of the LLM (`--lora`).", False)
    r: int = _help("LoRA rank (LLaVA-1.5: 128).", 128)
    alpha: int = _help("LoRA alpha (LLaVA-1.5: 256).", 256)
    dropout: float = _help("LoRA dropout (LLaVA-1.5: 0.05).", 0.05)

    def validate(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: r={self.r}, alpha={self.alpha}, dropout={self.dropout}; need r >= 1, "
                              f"alpha > 0, 0 <= dropout < 1 (LLaVA-1.5: 128, 256, 0.05)")


@dataclass
class LlavaOptimConfig(OptimConfig):
    """The shared optimizer config plus LLaVA's separate projector learning rate."""

    projector_lr: float | None = _help("Learning rate of the projector if different (LLaVA-1.5 LoRA: 2e-5).", None)

    def validate(self) -> None:
        super().validate()
        if self.projector_lr is not None and self.projector_lr <= 0:
            raise ConfigError(f"optim.projector_lr={self.projector_lr}: must be > 0")


@dataclass
class TrainConfig(RunConfig):
    """One LLaVA training stage; batch, optim, schedule, precision, deepspeed, checkpointing and logging
    come from the shared RunConfig."""

    stage: Literal["pretrain", "finetune"] = _help(
        "pretrain: projector only (plain template); finetune: LLM + projector, tower frozen (vicuna_v1).", "pretrain")
    template: str = _help("Chat template (llava_plugin/templates.yaml); pretrain: plain, finetune: vicuna_v1.", "plain")
    model: ModelConfig = _help("The model.", factory=ModelConfig)
    data: DataConfig = _help("The data.", factory=DataConfig)
    lora: LoraConfig = _help("LoRA (finetune only).", factory=LoraConfig)
    optim: LlavaOptimConfig = _help("The optimizer (AdamW in every LLaVA-1.5 recipe).", factory=LlavaOptimConfig)

    def validate(self) -> None:
        from mllm_train.conversation import load_templates

        if self.template not in load_templates():
            raise ConfigError(f"template={self.template!r} is unknown; known: {sorted(load_templates())}")
        if not self.output_dir:
            raise ConfigError("output_dir is required (--output DIR)")
        if self.lora.enabled and self.stage != "finetune":
            raise ConfigError("lora.enabled is for the finetune stage (LLaVA-1.5 pretraining trains the projector)")


def preset_data(preset: str) -> dict:
    return load_yaml_preset(PRESET_DIR, preset)


def load_config(preset: str, overrides: dict | None = None) -> TrainConfig:
    """A preset (name or YAML path) with `overrides` (nested dict) merged on top."""
    return from_dict(TrainConfig, deep_merge(preset_data(preset), overrides or {}))


def presets() -> list[str]:
    return list_presets(PRESET_DIR)


def help_lines() -> list[str]:
    return help_text(TrainConfig)


__all__ = [
    "ConfigError",
    "DataConfig",
    "LlavaOptimConfig",
    "LoraConfig",
    "ModelConfig",
    "TrainConfig",
    "help_lines",
    "load_config",
    "presets",
    "to_dict",
]
