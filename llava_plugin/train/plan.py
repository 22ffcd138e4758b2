"""Who reads what, at every step: one global-index batch plan for every training stage.

Optimizer step s is `micro_per_step = global_batch / micro_batch` micro-batches with the global
indices g = s * micro_per_step + j; micro-batch j of a step goes to rank j % world at accumulation
index j // world. An *ordering* says which dataset items global micro-batch g holds; it depends on
(data, seed, epoch) only, never on the world size, so 1 and N processes see the same global
batches, and a run resumed at step s continues exactly where an uninterrupted one would be.

Orderings (strategies):
- `StreamOrder`: an endless stream of epoch permutations cut into micro-batches; a step may
  straddle two epochs (enhance's image streams).
- `EpochOrder`: each epoch a list of whole steps, from a step function: `shuffled_steps` (a
  seeded shuffle, the last partial step padded with its own items) or `modality_length_steps`
  (LLaVA's group_by_modality_length: all-image or all-text steps of length-balanced micro-batches).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llava_plugin.config import ConfigError

Steps = list[list[list[int]]]  # step -> micro-batch -> dataset indices


@dataclass(frozen=True)
class BatchPlan:
    """The split of every global batch into micro-batches, ranks and accumulation steps."""

    global_batch: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0

    @property
    def micro_per_step(self) -> int:
        return self.global_batch // self.micro_batch

    @property
    def accumulation(self) -> int:
        return self.micro_per_step // self.world_size

    def check(self, prefix: str = "") -> None:
        """The global batch must split evenly over ranks; the fix suggested keeps the global batch
        (a paper setting) and changes the micro batch."""
        if self.global_batch % self.micro_batch == 0 and self.micro_per_step % self.world_size == 0:
            return
        fits = [m for m in range(1, self.global_batch + 1)
                if self.global_batch % m == 0 and (self.global_batch // m) % self.world_size == 0]
        smaller = [m for m in fits if m <= self.micro_batch]
        hint = (f"set {prefix}micro_batch_size={smaller[-1]}" if smaller else
                f"no micro batch splits {self.global_batch} over {self.world_size} ranks; use a world size that "
                f"divides {self.global_batch}")
        raise ConfigError(
            f"{prefix}global_batch_size={self.global_batch} with {prefix}micro_batch_size={self.micro_batch} gives "
            f"{self.global_batch / self.micro_batch:g} micro-batches per step, not divisible by world size "
            f"{self.world_size}: {hint} (micro batches that fit: {fits})")

    def rank_micro_indices(self, step: int) -> list[int]:
        """This rank's global micro-batch indices of optimizer step `step`, in accumulation order."""
        base = step * self.micro_per_step
        return [base + a * self.world_size + self.rank for a in range(self.accumulation)]

    def micro_indices(self, start_step: int, end_step: int) -> Iterator[int]:
        for step in range(start_step, end_step):
            yield from self.rank_micro_indices(step)


class PlanSampler(torch.utils.data.Sampler):
    """This rank's global micro-batch indices for steps [start_step, end_step) (a DataLoader sampler)."""

    def __init__(self, plan: BatchPlan, start_step: int, end_step: int):
        self.plan, self.start_step, self.end_step = plan, start_step, end_step

    def __iter__(self):
        return self.plan.micro_indices(self.start_step, self.end_step)

    def __len__(self):
        return max(0, self.end_step - self.start_step) * self.plan.accumulation


class StreamOrder:
    """Global micro-batch g holds stream positions [g*m, (g+1)*m); position p is item
    permutation(epoch)[offset] with (epoch, offset) = divmod(p, n)."""

    def __init__(self, num_items: int, micro_batch: int, seed: int, shuffle: bool = True):
        self.num_items, self.micro_batch, self.seed, self.shuffle = num_items, micro_batch, seed, shuffle
        self._perm: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def item_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_items)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, self.permutation(epoch))  # only the current epoch is kept
        return int(self._perm[1][offset])

    def micro_batch_items(self, micro_index: int) -> list[int]:
        start = micro_index * self.micro_batch
        return [self.item_at(p) for p in range(start, start + self.micro_batch)]

    def epoch_of(self, step: int, global_batch: int) -> float:
        return step * global_batch / self.num_items


class EpochOrder:
    """Each epoch is `steps_for(epoch)`: whole steps, each of `micro_per_step` micro-batches."""

    def __init__(self, steps_for: Callable[[int], Steps]):
        self.steps_for = steps_for
        self._epoch: tuple[int, Steps] | None = None
        self.steps_per_epoch = len(self.steps(0))

    def steps(self, epoch: int) -> Steps:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.steps_for(epoch))
        return self._epoch[1]

    def micro_batch_items(self, micro_index: int, micro_per_step: int) -> list[int]:
        step, j = divmod(micro_index, micro_per_step)
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.steps(epoch)[k][j]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


def shuffled_steps(num_items: int, global_batch: int, micro_batch: int, seed: int, epoch: int) -> Steps:
    """A seeded shuffle cut into steps; a last partial step is padded by repeating its own items up
    to a whole number of micro-batches, which then share its items evenly."""
    chunks = global_batch // micro_batch
    order = list(range(num_items))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    plan = []
    for start in range(0, num_items, global_batch):
        step = order[start:start + global_batch]
        step = step + [step[j % len(step)] for j in range(-len(step) % chunks)]
        per = len(step) // chunks
        plan.append([step[k * per:(k + 1) * per] for k in range(chunks)])
    return plan


def modality_length_steps(lengths: Sequence[int], has_image: Sequence[bool], micro_batch: int, chunks: int,
                          seed: int, epoch: int, *, drop_last: bool = False, megabatch_mult: int = 1) -> Steps:
    """LLaVA's group_by_modality_length as a step function, deterministic in (seed, epoch).

    Each modality is shuffled and cut into megabatches of `megabatch_mult * chunks * micro_batch`
    items; a megabatch is sorted by length, cut into steps of `chunks * micro_batch`, and each step
    is dealt into `chunks` micro-batches of similar total length, so every step is all-image or
    all-text. `megabatch_mult=1` is LLaVA-1.5's grouping; larger values put similar lengths in the
    same micro-batch. A modality's last partial step is padded to a multiple of `chunks` by
    repeating its own items (or dropped with `drop_last`). Step order is shuffled.
    """
    rng = random.Random(f"{seed}/{epoch}")
    step_size = chunks * micro_batch
    mega_size = megabatch_mult * step_size
    steps = []
    for modality in (True, False):
        indices = [i for i, flag in enumerate(has_image) if flag == modality]
        rng.shuffle(indices)
        for start in range(0, len(indices), mega_size):
            mega = sorted(indices[start:start + mega_size], key=lambda i: -lengths[i])
            for k in range(0, len(mega), step_size):
                step = mega[k:k + step_size]
                if len(step) < step_size:
                    if drop_last:
                        continue
                    step = step + [step[j % len(step)] for j in range(-len(step) % chunks)]
                steps.append(step)
    rng.shuffle(steps)
    return [_deal(step, chunks, lengths) for step in steps]


def _deal(step: list[int], chunks: int, lengths: Sequence[int]) -> list[list[int]]:
    """Longest first, each to the micro-batch with the least total length that still has room."""
    per = len(step) // chunks
    batches: list[list[int]] = [[] for _ in range(chunks)]
    totals = [0] * chunks
    for index in sorted(step, key=lambda i: -lengths[i]):
        chunk = min((c for c in range(chunks) if len(batches[c]) < per), key=lambda c: totals[c])
        batches[chunk].append(index)
        totals[chunk] += lengths[index]
    return batches
