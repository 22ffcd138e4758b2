"""Write a trained model as an HF Llava directory (and, after pretraining, `mm_projector.bin`).

Under ZeRO-3 a parameter is an empty tensor on every rank until gathered, so the weights are
gathered to rank 0 first (`llava_plugin.train.deepspeed.full_state_dict`); LoRA adapters are
merged into their base weights (W + alpha/r * B @ A) by an explicit key map; the result is
loaded strictly into a fresh model and written with `save_llava`, so evaluation needs neither
DeepSpeed nor peft.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llava_plugin import distributed
from llava_plugin.convert_llava import load_exact
from llava_plugin.llava import MM_PROJECTOR_FILE, save_llava, write_mm_projector
from llava_plugin.train.deepspeed import full_state_dict
from llava_plugin.train.lora import merge_lora_state


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
                 projector_file: str | Path | None = None, metadata: dict | None = None,
                 dtype: torch.dtype | None = None, vision_tower: str | None = None) -> Path | None:
    """Collective: every rank calls it; rank 0 writes `out_dir` (HF Llava) and, with
    `projector_file`, the projector as original LLaVA's mm_projector.bin (with the record of
    `vision_tower`, the spec it was trained with). Returns the directory
    on rank 0, None elsewhere. `lora_scaling` (alpha / r) merges LoRA adapters; `dtype` is the
    training precision the weights are saved in (from the fp32 masters: exactly the working copy)."""
    from transformers import GenerationConfig

    state = full_state_dict(engine, dtype=dtype)
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
            write_mm_projector(model, projector_file, vision_tower)
    distributed.barrier()
    return out


__all__ = ["MM_PROJECTOR_FILE", "export_llava", "materialize", "merge_lora_state"]
