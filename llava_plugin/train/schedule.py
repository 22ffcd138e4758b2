"""The learning-rate schedule of every training stage: `transformers.get_scheduler`, as the upstream
trainers use it (LLaVA and DIVA through the HF Trainer, GenHancer through diffusers' copy of it).

Warmup is linear from 0: the multiplier after `s` optimizer steps is s / warmup_steps, so the first
step trains at lr 0, exactly as upstream. Then cosine to `min_lr_ratio` x peak, or constant.
"""
from __future__ import annotations

import math

import torch


def warmup_steps(*, max_steps: int, steps: int = 0, ratio: float = 0.0) -> int:
    """Explicit warmup steps win; else HF's ceil(ratio x max_steps)."""
    return steps or math.ceil(ratio * max_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, max_steps: int, warmup: int,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_scheduler

    if kind == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup)
    if kind != "cosine":
        raise ValueError(f"schedule kind {kind!r}: expected 'cosine' or 'constant'")
    if min_lr_ratio:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=max_steps,
                             scheduler_specific_kwargs={"min_lr_rate": min_lr_ratio})
    return get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
