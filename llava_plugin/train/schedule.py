"""The learning-rate schedule of every training stage: the schedules the upstream trainers take from
`transformers.get_scheduler` (LLaVA and DIVA through the HF Trainer, GenHancer through diffusers' copy
of it), "constant_with_warmup", "cosine" and "cosine_with_min_lr", as a torch `LambdaLR` of the same
multipliers (tests compare every step's lr with transformers' own schedulers: equal, not close).
transformers.optimization is not imported for them: it imports transformers.trainer_utils, and that
imports peft (about 230 modules, 0.1-0.15 s of every start-up), which only LoRA runs use.

Warmup is linear from 0: the multiplier after `s` optimizer steps is s / warmup_steps, so the first
step trains at lr 0, exactly as upstream. Then cosine to `min_lr_ratio` x peak, or constant:
after warmup, with p = (s - warmup) / (max_steps - warmup), the cosine multiplier is
min_lr_ratio + (1 - min_lr_ratio) x (1 + cos(pi p)) / 2.

A param group can also be held: `held_steps[i] = N` gives group i an lr factor of 0 for its first N
optimizer steps (then the schedule's own multiplier, not restarted), e.g. a tower kept fixed while a new
projector warms up. An lr of 0 is no update at all, weight decay included (AdamW's and SGD's), and the
optimizer, its state and its checkpoints stay what they are without the hold.
"""
from __future__ import annotations

import functools
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
    if kind == "constant":
        multiplier = functools.partial(_constant_multiplier, warmup=warmup)
    elif kind == "cosine":
        multiplier = functools.partial(_cosine_multiplier, warmup=warmup, max_steps=max_steps,
                                       min_lr_ratio=min_lr_ratio)
    else:
        raise ValueError(f"schedule kind {kind!r}: expected 'cosine' or 'constant'")
    # a partial (a callable object, like transformers'), so the scheduler's state_dict keeps its format
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def _warmup_multiplier(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _constant_multiplier(step: int, *, warmup: int) -> float:
    return _warmup_multiplier(step, warmup) if step < warmup else 1.0


def _cosine_multiplier(step: int, *, warmup: int, max_steps: int, min_lr_ratio: float) -> float:
    if step < warmup:
        return _warmup_multiplier(step, warmup)
    progress = float(step - warmup) / float(max(1, max_steps - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    if min_lr_ratio:
        factor = factor * (1 - min_lr_ratio) + min_lr_ratio
    return max(0.0, factor)
