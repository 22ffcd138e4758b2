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


ALL_LINEAR = "all-linear"  # peft's keyword for every Linear; `targets=[ALL_LINEAR]` passes it as the bare string


def add_lora(model: torch.nn.Module, *, r: int, alpha: float, dropout: float, targets: list[str],
             bias: str = "none", key: str = "lora") -> torch.nn.Module:
    """`model` wrapped by peft with LoRA on the Linear modules named `targets` (suffixes); only the
    adapters (and, with bias='lora_only', the adapted biases) require grad. `key` names the config
    section in errors."""
    from peft import LoraConfig, get_peft_model

    # nn.MultiheadAttention (SigLIP's attention-pool head) reads out_proj.weight directly, so an
    # adapter there would be skipped in forward yet merged on export: leave those alone.
    bypassed = [f"{name}.out_proj" for name, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)]
    target_modules = ALL_LINEAR if list(targets) == [ALL_LINEAR] else list(targets)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias=bias,
                        exclude_modules=bypassed or None)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        from llava_plugin.config import ConfigError

        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"{key}.targets={list(targets)}: {err}. The model's Linear module names are {names}") from err


def merged_model(peft_model: torch.nn.Module) -> torch.nn.Module:
    """A new plain model equal to the LoRA-wrapped one, every adapter folded into its Linear by
    `merge_lora_state`. The wrapped model is only read, never merged in place (its base weights stay
    bit-exact), and never deep-copied (safe on ZeRO-3-gathered params)."""
    from peft.tuners.lora import LoraLayer

    inner = peft_model.get_base_model()
    scalings = set()
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer):
            if module.merged:
                raise RuntimeError(f"LoRA of {name} is already merged into its weights; cannot export it twice")
            scalings.update(module.scaling[adapter] for adapter in module.active_adapters)
    if len(scalings) > 1:
        raise RuntimeError(f"LoRA layers with different scalings {sorted(scalings)}: cannot merge with one factor")
    state = merge_lora_state(peft_model.state_dict(), scalings.pop() if scalings else 0.0)
    plain = type(inner)(inner.config)
    plain.load_state_dict(state, strict=True)
    return plain.to(next(inner.parameters()).dtype)
