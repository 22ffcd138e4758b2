"""The learning-rate schedule of every training stage: `transformers.get_scheduler`, as the upstream
trainers use it (LLaVA and DIVA through the HF Trainer, GenHancer through diffusers' copy of it).

Warmup is linear from 0: the multiplier after `s` optimizer steps is s / warmup_steps, so the first
step trains at lr 0, exactly as upstream. Then cosine to `min_lr_ratio` x peak, or constant.

A param group can also be held: `held_steps[i] = N` gives group i an lr factor of 0 for its first N
optimizer steps (then the schedule's own multiplier, not restarted), e.g. a tower kept fixed while a new
projector warms up. An lr of 0 is no update at all, weight decay included (AdamW's and SGD's), and the
optimizer, its state and its checkpoints stay what they are without the hold.
"""
from __future__ import annotations

import math

import torch


def warmup_steps(*, max_steps: int, steps: int = 0, ratio: float = 0.0) -> int:
    """Explicit warmup steps win; else HF's ceil(ratio x max_steps)."""
    return steps or math.ceil(ratio * max_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, max_steps: int, warmup: int,
                    min_lr_ratio: float = 0.0,
                    held_steps: list[int] | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """`held_steps`: one count per optimizer param group (see the module docstring); None holds none."""
    scheduler = _schedule(optimizer, kind=kind, max_steps=max_steps, warmup=warmup, min_lr_ratio=min_lr_ratio)
    if not any(held_steps or []):
        return scheduler
    if len(held_steps) != len(optimizer.param_groups):
        raise ValueError(f"held_steps has {len(held_steps)} entries for {len(optimizer.param_groups)} param groups")
    # The same multipliers, each held group's zero for its first steps. Built over the schedule's own
    # lambdas (they are functions of the step only); `initial_lr` stays the groups' peak lr.
    lambdas = [_held(fn, n) if n else fn for fn, n in zip(scheduler.lr_lambdas, held_steps)]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _held(fn, steps: int):
    def multiplier(step: int) -> float:
        return 0.0 if step < steps else fn(step)

    return multiplier


def _schedule(optimizer, *, kind: str, max_steps: int, warmup: int, min_lr_ratio: float):
    from transformers import get_scheduler

    if kind == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup)
    if kind != "cosine":
        raise ValueError(f"schedule kind {kind!r}: expected 'cosine' or 'constant'")
    if min_lr_ratio:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=max_steps,
                             scheduler_specific_kwargs={"min_lr_rate": min_lr_ratio})
    return get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
