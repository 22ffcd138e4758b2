"""LoRA adapters folded into their base weights, for every stage's export (a tower trained by
GenHancer stage 2, a LLaVA finetuned with LoRA): W' = W + scaling * B @ A, by an explicit key map
over a peft model's state dict, so it works the same on a live model and on ZeRO-3-gathered weights.
"""
from __future__ import annotations

import re

import torch

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
