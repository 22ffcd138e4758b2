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
from mllm_train.data import DataConfig

PRESET_DIR = Path(str(resources.files("mllm_train") / "configs"))
DEEPSPEED_NAMES = ("zero2", "zero3")


@dataclass
class ModelConfig:
    vision_tower: str = _help("Vision tower spec (`--vision-tower`): HF id, CLIP/SigLIP dir, enhanced tower dir, "
                              "open_clip:...; see llava_plugin.registry.", "")
    llm: str = _help("Language model directory or HF id (`--llm`), e.g. lmsys/vicuna-7b-v1.5.", "")
    init_from: str | None = _help("Start from this LLaVA checkpoint instead (HF Llava dir or original LLaVA-1.5 "
                                  "dir); vision_tower/llm are then ignored.", None)
    pretrained_projector: str | None = _help("mm_projector.bin from pretraining (`--pretrained-projector`), "
                                             "loaded into the fresh projector (finetune).", None)
    projector: Literal["mlp2x_gelu"] = _help("Projector type (LLaVA-1.5: mlp2x_gelu).", "mlp2x_gelu")
    select_layer: int = _help("Tower hidden state fed to the projector (LLaVA-1.5: -2).", -2)
    select_feature: Literal["patch", "cls_patch"] = _help("patch: drop CLS (LLaVA-1.5); cls_patch: keep it.",
                                                          "patch")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = _help(
        "LLM attention kernel; auto = flash_attention_2 when flash_attn imports and CUDA is present, else sdpa.",
        "auto")
    gradient_checkpointing: bool = _help("Recompute activations in backward (LLaVA-1.5: true).", True)
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
class OptimConfig:
    lr: float = _help("Peak learning rate (AdamW).", 2e-5)
    projector_lr: float | None = _help("Learning rate of the projector if different (LLaVA-1.5 LoRA: 2e-5).", None)
    weight_decay: float = _help("AdamW weight decay (LLaVA-1.5: 0).", 0.0)
    betas: list[float] = _help("AdamW betas.", factory=lambda: [0.9, 0.999])
    eps: float = _help("AdamW epsilon.", 1e-8)
    grad_clip: float = _help("Clip the global gradient norm (HF Trainer's default 1.0; 0 disables).", 1.0)
    warmup_ratio: float = _help("Linear warmup over this fraction of the steps (LLaVA-1.5: 0.03).", 0.03)
    schedule: Literal["cosine", "constant"] = _help("LR after warmup: cosine to 0 (LLaVA-1.5) or constant.",
                                                    "cosine")

    def validate(self) -> None:
        for name in ("lr", "projector_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"optim.{name}={value}: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("optim.weight_decay and optim.grad_clip must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas}: expected two numbers in [0, 1)")


@dataclass
class TrainConfig:
    stage: Literal["pretrain", "finetune"] = _help(
        "pretrain: projector only (plain template); finetune: LLM + projector, tower frozen (vicuna_v1).", "pretrain")
    template: str = _help("Chat template (mllm_train/templates.yaml); pretrain: plain, finetune: vicuna_v1.", "plain")
    model: ModelConfig = _help("The model.", factory=ModelConfig)
    data: DataConfig = _help("The data.", factory=DataConfig)
    lora: LoraConfig = _help("LoRA (finetune only).", factory=LoraConfig)
    optim: OptimConfig = _help("The optimizer and LR schedule.", factory=OptimConfig)
    global_batch_size: int = _help("Samples per optimizer step over all ranks (LLaVA-1.5: 256 pretrain, 128 "
                                   "finetune); accumulation = global / (micro x world size).", 256)
    micro_batch_size: int = _help("Samples per forward/backward on one rank.", 16)
    epochs: int = _help("Passes over the data (LLaVA-1.5: 1).", 1)
    max_steps: int = _help("Stop after this many optimizer steps (0: the epochs decide; `--max-steps`).", 0)
    precision: Literal["bf16", "fp32"] = _help("bf16 (LLaVA-1.5) or fp32; fp16 is not supported.", "bf16")
    tf32: bool = _help("Allow TF32 matmuls on Ampere+ GPUs (LLaVA-1.5: true; no effect on CPU).", True)
    deepspeed: str = _help("zero2 / zero3 (shipped JSONs) or a DeepSpeed JSON path (`--deepspeed`); batch "
                           "sizes, precision and clipping are filled in from this config.", "zero2")
    pack_sequences: bool = _help("Concatenate each micro-batch into one row without padding (mllm_train.packing; "
                                 "same loss, fewer positions computed). LLaVA-1.5 pads.", False)
    group_by_modality_length: bool = _help("Steps that are all-image or all-text with length-balanced "
                                           "micro-batches (LLaVA-1.5 finetune: true).", False)
    seed: int = _help("Seeds the data order (order = f(seed, epoch)) and the torch RNG.", 42)
    num_workers: int = _help("DataLoader workers (0: in-process).", 4)
    output_dir: str = _help("Where checkpoints, metrics.jsonl and the exported model go (`--output`).", "")
    save_steps: int = _help("Checkpoint every this many steps (0: only at the end); the last complete one "
                            "is resumed automatically.", 0)
    keep_checkpoints: int = _help("Complete checkpoints to keep (LLaVA-1.5: save_total_limit 1).", 1)
    log_steps: int = _help("Write a metrics.jsonl line every this many steps.", 1)

    def validate(self) -> None:
        from mllm_train.conversation import load_templates

        if self.template not in load_templates():
            raise ConfigError(f"template={self.template!r} is unknown; known: {sorted(load_templates())}")
        for name in ("global_batch_size", "micro_batch_size", "epochs", "log_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_steps < 0 or self.save_steps < 0 or self.num_workers < 0:
            raise ConfigError("max_steps, save_steps and num_workers must be >= 0")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size="
                              f"{self.micro_batch_size}")
        if self.deepspeed not in DEEPSPEED_NAMES and not Path(self.deepspeed).is_file():
            raise ConfigError(f"deepspeed={self.deepspeed!r}: expected one of {list(DEEPSPEED_NAMES)} or a JSON file")
        if not self.output_dir:
            raise ConfigError("output_dir is required (--output DIR)")
        if self.lora.enabled and self.stage != "finetune":
            raise ConfigError("lora.enabled is for the finetune stage (LLaVA-1.5 pretraining trains the projector)")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step, so global batch = micro x accumulation x world."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size "
                              f"x world size = {self.micro_batch_size} x {world_size}; change micro_batch_size")
        return self.global_batch_size // per_step


def deepspeed_json(name_or_path: str) -> Path:
    if name_or_path in DEEPSPEED_NAMES:
        return PRESET_DIR / "deepspeed" / f"{name_or_path}.json"
    return Path(name_or_path)


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
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "deepspeed_json",
    "help_lines",
    "load_config",
    "presets",
    "to_dict",
]
