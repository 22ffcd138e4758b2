"""Write a trained model as an HF Llava directory (and, after pretraining, `mm_projector.bin`).

Under ZeRO-3 a parameter is an empty tensor on every rank until gathered, so the weights are
gathered to rank 0 first (`llava_plugin.distributed.gathered_state_dict`); LoRA adapters are
merged into their base weights (W + alpha/r * B @ A) by an explicit key map; the result is
loaded strictly into a fresh model and written with `save_llava`, so evaluation needs neither
DeepSpeed nor peft.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from llava_plugin import distributed
from llava_plugin.convert_llava import load_exact
from llava_plugin.llava import MM_PROJECTOR_FILE, save_llava, write_mm_projector

PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<adapter>[^.]+)\.weight")
_BASE_KEY = re.compile(r"(?P<module>.+)\.base_layer\.(?P<param>weight|bias)")


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft LoRA model's state dict -> the plain model's, adapters merged into their layers.

    Every key must be a plain weight under `base_model.model.`, a `base_layer` weight/bias, or a
    lora_A/lora_B pair of the single adapter; anything else (DoRA magnitudes, LoRA on
    embeddings, a second adapter) is an error rather than silently dropped.
    """
    merged, lora = {}, {}
    for key, tensor in state.items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"LoRA state key {key!r} lacks the peft prefix {PEFT_PREFIX!r}")
        key = key[len(PEFT_PREFIX):]
        if match := _LORA_KEY.fullmatch(key):
            lora.setdefault(match["module"], {})[(match["part"], match["adapter"])] = tensor
        elif match := _BASE_KEY.fullmatch(key):
            merged[f"{match['module']}.{match['param']}"] = tensor
        elif "lora_" in key:
            raise ValueError(f"cannot merge LoRA key {key!r} (only lora_A/lora_B on linear layers are supported)")
        else:
            merged[key] = tensor
    adapters = {adapter for parts in lora.values() for _, adapter in parts}
    if len(adapters) > 1:
        raise ValueError(f"more than one LoRA adapter in the state dict: {sorted(adapters)}")
    for module, parts in lora.items():
        (adapter,) = adapters
        a, b = parts.get(("lora_A", adapter)), parts.get(("lora_B", adapter))
        weight_key = f"{module}.weight"
        if a is None or b is None or weight_key not in merged:
            raise ValueError(f"LoRA layer {module!r} is incomplete: needs lora_A, lora_B and base_layer.weight")
        base = merged[weight_key]
        merged[weight_key] = (base.float() + scaling * (b.float() @ a.float())).to(base.dtype)
    return merged


def materialize(config, state: dict[str, torch.Tensor]):
    """A LlavaForConditionalGeneration holding exactly `state` (strict: same keys and shapes).

    Parameters are created empty and assigned from `state`, so a 7B model is not initialised
    just to be overwritten; buffers (rotary frequencies, position ids) are built normally.
    """
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    with init_empty_weights(include_buffers=False):
        model = LlavaForConditionalGeneration(config)
    load_exact(model, state, "the exported training state", "Llava")
    return model.eval()


def export_llava(engine, processor, out_dir: str | Path, *, lora_scaling: float | None = None,
                 projector_file: str | Path | None = None, metadata: dict | None = None) -> Path | None:
    """Collective: every rank calls it; rank 0 writes `out_dir` (HF Llava) and, with
    `projector_file`, the projector as original LLaVA's mm_projector.bin. Returns the directory
    on rank 0, None elsewhere. `lora_scaling` (alpha / r) merges LoRA adapters."""
    from transformers import GenerationConfig

    state = distributed.gathered_state_dict(engine)
    out = None
    if distributed.is_main():
        module = engine.module if hasattr(engine, "module") else engine
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        if lora_scaling is not None:
            state = merge_lora_state(state, lora_scaling)
        model = materialize(base.config, state)
        model.config.use_cache = model.config.get_text_config().use_cache = True
        model.generation_config = GenerationConfig.from_dict(base.generation_config.to_dict())
        model.generation_config.use_cache = True
        out = save_llava(model, processor, out_dir, metadata)
        if projector_file is not None:
            write_mm_projector(model, projector_file)
    distributed.barrier()
    return out


__all__ = ["MM_PROJECTOR_FILE", "export_llava", "materialize", "merge_lora_state"]
