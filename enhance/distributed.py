"""Everything DeepSpeed- and process-group-specific in enhance, in one place.

- `init()`, `rank()`, `barrier()`, ...: the process-group helpers of `llava_plugin.distributed`
  (shared with mllm_train), re-exported here.
- `build_engine()` wraps a Method with a torch optimizer and LR scheduler. The frozen
  generator is not a registered submodule of the method (see enhance/methods/base.py), so
  ZeRO never partitions it, the optimizer never sees it and checkpoints never contain it.
- `full_precision_weights()` gives rank 0 the complete, full-precision parameters for export:
  under ZeRO-3 they are gathered from all ranks; under bf16 the fp32 master weights replace
  the bf16 working copies (tiny learning rates such as un2CLIP's 3e-7 vanish in bf16 rounding).

The method's forward returns a `LossOutput` dataclass, so ZeRO-3 logs once that it cannot see
the top module's output tensors; its per-submodule hooks (the tower's layers return tensors)
still gather and release partitions, and 2-rank ZeRO-3 runs match 1-rank runs (tests).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# The process-group helpers are the shared ones; this module adds what only enhance needs.
from llava_plugin.distributed import (  # noqa: F401  (re-exported for enhance's modules)
    SKIP_SHM_ENV,
    all_reduce_sum,
    barrier,
    broadcast_object,
    device,
    init,
    is_main,
    rank,
    shutdown,
    world_size,
)


def deepspeed_config(base: dict, *, global_batch: int, micro_batch: int, accumulation: int,
                     bf16: bool, grad_clip: float) -> dict:
    """The shipped/user ZeRO JSON with this run's batch, precision and clipping filled in."""
    cfg = dict(base)
    cfg.update(
        train_batch_size=global_batch,
        train_micro_batch_size_per_gpu=micro_batch,
        gradient_accumulation_steps=accumulation,
        gradient_clipping=grad_clip,
        bf16={"enabled": bool(bf16)},
        # a torch optimizer object (not a DeepSpeed-native one) is what we pass; ZeRO accepts it with this flag
        zero_allow_untested_optimizer=True,
        steps_per_print=cfg.get("steps_per_print", 10**9),
        wall_clock_breakdown=False,
    )
    return cfg


def zero_stage(ds_cfg: dict) -> int:
    return int(ds_cfg.get("zero_optimization", {}).get("stage", 0))


def build_engine(method: nn.Module, optimizer: torch.optim.Optimizer, scheduler, ds_cfg: dict):
    """deepspeed.initialize over the method (its frozen generator stays outside: not registered)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=method, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_cfg)
    return engine


def untrained_fp32_snapshot(method: nn.Module) -> dict[str, torch.Tensor]:
    """CPU fp32 copies of the method's registered parameters that do not train (e.g. a tower's
    base weights under LoRA), taken before DeepSpeed casts them to bf16, so the export keeps
    their exact values. Only rank 0 exports, so only rank 0 keeps them."""
    if not is_main():
        return {}
    return {name: p.detach().float().cpu().clone() for name, p in method.named_parameters()
            if not p.requires_grad}


@contextlib.contextmanager
def full_precision_weights(engine, fp32_untrained: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Collective: every rank enters. Inside, the method's parameters on rank 0 are complete
    fp32 tensors (trained ones from the optimizer's master copy, others from the snapshot), so
    `method.export_tower().save_pretrained(...)` writes full-precision weights. Other ranks see
    partitions; only rank 0 may save. Training must be over: the working copies are replaced."""
    from deepspeed.utils import safe_get_full_fp32_param

    method = engine.module
    named = list(method.named_parameters())
    # gathering the master copies is itself a collective under ZeRO-3: all ranks, same order
    masters = {}
    for name, param in named:
        if param.requires_grad:
            master = safe_get_full_fp32_param(param)
            masters[name] = master.detach().float().cpu().clone() if master is not None else None
    params = [p for _, p in named]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitioned
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        if is_main():
            for name, param in named:
                full = masters.get(name)
                if full is None:
                    full = fp32_untrained.get(name)
                if full is None:  # trained param without a master copy (fp32 ZeRO-0): already exact
                    full = param.data.detach().float()
                param.data = full.to(param.device)
        yield method
