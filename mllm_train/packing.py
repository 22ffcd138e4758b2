"""Sequence packing: a micro-batch as one row, without padding.

The samples of a micro-batch are concatenated into a single row; `position_ids` restart at 0
at each sample and no attention_mask is passed, so transformers builds a block-diagonal causal
mask from the position ids (sdpa, eager) or runs the variable-length kernels
(flash_attention_2): no token attends across a sample boundary. Images stay in sample order,
so HF Llava fills each sample's image tokens with its own image. The loss is the padded
batch's: both average over the same supervised tokens, and the first token of every sample
(BOS, never supervised) is the only one predicted across a boundary. Needs `use_cache=False`
(a KV cache disables the packed-sequence mask), which training sets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedCollator:
    """Dataset items (mllm_train.data.LlavaDataset) -> one packed row for `model(**batch)`."""

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        if any(len(item["input_ids"]) < 2 for item in items):
            raise ValueError("packing needs samples of at least 2 tokens: a 1-token sample's position 0 "
                             "cannot be told apart from the next sample's start")
        batch = {
            "input_ids": torch.cat([item["input_ids"] for item in items])[None],
            "labels": torch.cat([item["labels"] for item in items])[None],
            "position_ids": torch.cat([torch.arange(len(item["input_ids"])) for item in items])[None],
        }
        images = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch


def num_sequences(batch: dict[str, torch.Tensor]) -> int:
    """Samples in a padded or a packed batch."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return int((batch["position_ids"] == 0).sum())
    return int(batch["input_ids"].shape[0])


def num_positions(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, positions computed) of a padded or a packed batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    return batch["input_ids"].numel(), batch["input_ids"].numel()
