"""The LLaVA model of a training stage, and which of its parameters train.

    model, processor = build_model(cfg)        # tower + LLM (+ pretrained projector, + LoRA), frozen per stage

LLaVA-1.5's stages differ only in what trains: pretraining trains the projector alone;
finetuning trains the LLM and the projector (or LoRA adapters on the LLM's linear layers and
the projector, at its own learning rate). The vision tower never trains here: improving it is
`enhance`'s job, and freezing it keeps the comparison between towers clean.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from llava_plugin.convert_llava import load_llava
from llava_plugin.llava import build_llava, load_mm_projector
from llava_plugin.registry import load_tower
from mllm_train.config import LlavaOptimConfig, LoraConfig, TrainConfig

PROJECTOR = "model.multi_modal_projector."
TOWER = "model.vision_tower."
LANGUAGE_MODEL = "model.language_model."
LM_HEAD = "lm_head."


def resolve_attn_implementation(requested: str) -> str:
    """`auto` -> flash_attention_2 when flash_attn imports and CUDA is present, else sdpa."""
    if requested != "auto":
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ImportError("model.attn_implementation=flash_attention_2 needs flash-attn: "
                              "pip install 'genfeedback[flash]' (or use sdpa)")
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def training_dtype(cfg: TrainConfig) -> torch.dtype:
    return cfg.precision.torch_dtype


def build_model(cfg: TrainConfig):
    """(model, processor) for `cfg.stage`, with requires_grad set by `freeze_for`.

    The model is the HF Llava module, or a peft model wrapping it when LoRA is enabled.
    """
    m = cfg.model
    dtype = training_dtype(cfg)
    attn = resolve_attn_implementation(m.attn_implementation)
    if m.init_from:
        model, processor = load_llava(m.init_from, dtype=dtype)
        model.set_attn_implementation(attn)
    else:
        tower = load_tower(m.vision_tower, dtype=dtype)
        model, processor = build_llava(tower, m.llm, m.projector, m.select_layer, m.select_feature, dtype=dtype,
                                       seed=m.seed, attn_implementation=attn)
    if m.pretrained_projector:
        load_mm_projector(model, m.pretrained_projector, any_tower=m.projector_any_tower)
    set_use_cache(model, False)  # no KV cache in training (it also disables packed masks); export turns it on
    if cfg.precision.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    freeze_for(model, cfg.stage, lora=cfg.lora.enabled)
    return model, processor


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant: works when only the projector trains).
    transformers renamed gradient_checkpointing_enable to activation_checkpointing_enable in 5.x."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def set_use_cache(model, enabled: bool) -> None:
    """Llava's own config and its language model's both decide whether a KV cache is built."""
    model.config.use_cache = enabled
    model.config.get_text_config().use_cache = enabled


def llm_linear_names(model) -> list[str]:
    """Every nn.Linear of the language model (LLaVA's LoRA targets: not the tower, the projector
    or lm_head)."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.startswith(LANGUAGE_MODEL)]
    if not names:
        raise ValueError("the language model has no nn.Linear layers to put LoRA on")
    return names


def apply_lora(model, lora: LoraConfig):
    """Wrap `model` in a peft model with LoRA on the LLM's linear layers (the shared wrap)."""
    from llava_plugin.train.lora import add_lora

    return add_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=llm_linear_names(model),
                    key="lora")


def unwrap(model):
    """The HF Llava module inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def trainable_name(name: str) -> str:
    """A parameter name without the peft wrapper prefix."""
    return name.removeprefix("base_model.model.")


def freeze_for(model, stage: str, *, lora: bool = False) -> list[str]:
    """Set requires_grad for `stage` and return the trainable parameter names.

    pretrain: the projector. finetune: LLM + projector (with LoRA: the adapters + projector).
    The tower is frozen in every stage.
    """
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage {stage!r}: expected 'pretrain' or 'finetune'")
    if lora and stage != "finetune":
        raise ValueError("LoRA is for the finetune stage")
    for name, param in model.named_parameters():
        base = trainable_name(name)
        if base.startswith(PROJECTOR):
            train = True
        elif base.startswith(TOWER) or stage == "pretrain":
            train = False
        elif lora:
            train = "lora_" in base
        else:
            train = base.startswith((LANGUAGE_MODEL, LM_HEAD))
        param.requires_grad_(train)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    if not trainable:
        raise ValueError(f"nothing trains in stage {stage!r}")
    return trainable


def param_groups(model, optim: LlavaOptimConfig) -> list[dict]:
    """AdamW groups: the projector (at `projector_lr` when set) and the rest of what trains."""
    projector, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (projector if trainable_name(name).startswith(PROJECTOR) else rest).append(param)
    groups = [{"name": "projector", "params": projector, "lr": optim.projector_lr or optim.lr}]
    if rest:
        groups.append({"name": "llm", "params": rest, "lr": optim.lr})
    return [{**group, "weight_decay": optim.weight_decay} for group in groups if group["params"]]
