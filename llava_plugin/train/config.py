"""The run config every training stage embeds: batch, optim, schedule, precision, deepspeed,
checkpointing, logging. One dataclass per component, each field documented and validated; a
stage's config subclasses `RunConfig` and adds its own sections (enhance: method, data, cache,
diagnose; mllm_train: model, data, lora). Presets set the values; these are only fallbacks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from llava_plugin.config import ConfigError
from llava_plugin.config import documented as _help
from llava_plugin.train import deepspeed as ds


def positive(key: str, value) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be > 0")


@dataclass
class BatchConfig:
    global_batch_size: int = _help("Samples per optimizer step over all ranks = micro_batch_size x gradient "
                                   "accumulation x world size (accumulation is derived).", 32)
    micro_batch_size: int = _help("Samples per forward/backward on one rank.", 8)

    def validate(self) -> None:
        positive("batch.global_batch_size", self.global_batch_size)
        positive("batch.micro_batch_size", self.micro_batch_size)
        if self.global_batch_size % self.micro_batch_size:
            fits = [m for m in range(1, self.micro_batch_size + 1) if self.global_batch_size % m == 0]
            raise ConfigError(f"batch.global_batch_size={self.global_batch_size} is not a multiple of "
                              f"batch.micro_batch_size={self.micro_batch_size}; pick a micro batch that divides it "
                              f"(e.g. {fits[-1]})")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = _help("Optimizer (a torch optimizer handed to DeepSpeed).", "adamw")
    lr: float = _help("Peak learning rate (per-group lrs a stage sets follow the same schedule).", 1e-4)
    weight_decay: float = _help("Weight decay (decoupled for AdamW, L2 for SGD).", 0.0)
    momentum: float = _help("SGD momentum (ignored by AdamW).", 0.9)
    betas: list[float] = _help("AdamW betas.", factory=lambda: [0.9, 0.999])
    eps: float = _help("AdamW epsilon.", 1e-8)
    grad_clip: float = _help("Clip the global gradient norm to this (0: no clipping).", 1.0)

    def validate(self) -> None:
        positive("optim.lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay}: must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas}: expected two numbers in [0, 1), e.g. [0.9, 0.999]")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip={self.grad_clip}: must be >= 0 (0 disables clipping)")

    def build(self, groups: list[dict]) -> torch.optim.Optimizer:
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ConfigError("nothing to train: no parameter requires grad")
        if self.name == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.betas), eps=self.eps,
                                 weight_decay=self.weight_decay)


@dataclass
class ScheduleConfig:
    max_steps: int = _help("Optimizer steps to train (0: derive from `epochs`; `--max-steps`).", 0)
    epochs: float = _help("Passes over the data, used when max_steps is 0.", 1.0)
    kind: Literal["cosine", "constant"] = _help("LR after warmup: cosine decay to min_lr_ratio, or constant "
                                                "(the schedules of transformers.get_scheduler).", "cosine")
    warmup_steps: int = _help("Linear warmup steps from 0 (takes precedence over warmup_ratio).", 0)
    warmup_ratio: float = _help("Warmup as a fraction of the steps (ceil), used when warmup_steps is 0.", 0.0)
    min_lr_ratio: float = _help("Cosine floor as a fraction of the peak lr.", 0.0)

    def validate(self) -> None:
        if self.max_steps < 0:
            raise ConfigError(f"schedule.max_steps={self.max_steps}: must be >= 0 (0 derives it from epochs)")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("schedule.max_steps=0 and schedule.epochs<=0: set one of them (e.g. --max-steps 100)")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"schedule.warmup_steps={self.warmup_steps}, warmup_ratio={self.warmup_ratio}: "
                              "steps must be >= 0 and the ratio in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"schedule.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")


@dataclass
class PrecisionConfig:
    dtype: Literal["bf16", "fp32"] = _help("Training precision. bf16: DeepSpeed bf16 (module in bf16, fp32 "
                                           "master weights, float inputs cast); fp16 is not supported.", "bf16")
    tf32: bool = _help("Allow TF32 matmuls on Ampere+ GPUs (no effect on CPU).", True)
    gradient_checkpointing: bool = _help("Recompute the trained model's activations in backward (less memory, "
                                         "more compute).", False)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bf16" else torch.float32


@dataclass
class DeepSpeedConfig:
    config: str = _help("ZeRO config: 'zero2', 'zero3' (shipped JSON) or a path to a DeepSpeed JSON. Batch sizes, "
                        "precision and clipping are filled in from this config; do not put an "
                        "'optimizer'/'scheduler' block in it (`--deepspeed`).", "zero2")

    keep_zero_on_one_process: bool = _help(
        "With one process ZeRO has nothing to partition but still hooks every module (the tiny LLaVA finetune "
        "under ZeRO-3 ran at 0.51x the original LLaVA's tokens/s, at stage 0 1.52x: benchmarks/README.md), so a "
        "1-process run drops to stage 0 unless the JSON offloads to CPU/NVMe; true keeps the JSON's stage.", False)

    def validate(self) -> None:
        ds.check_name(self.config, "deepspeed.config")

    def load(self) -> dict:
        return ds.load_json(self.config)

    def for_world(self, world_size: int) -> dict:
        """The ZeRO JSON this run uses with `world_size` processes (see keep_zero_on_one_process)."""
        return ds.for_world(self.load(), world_size, keep=self.keep_zero_on_one_process)


@dataclass
class CheckpointConfig:
    every_steps: int = _help("Write a resumable checkpoint every N optimizer steps (0: never during training).",
                             500)
    keep_last: int = _help("Checkpoints kept (older ones are deleted after a new one is complete).", 2)
    resume: str = _help("'auto' (the newest complete checkpoint in OUTPUT/checkpoints, if any), 'none', or a "
                        "checkpoint dir.", "auto")
    force_resume: bool = _help("Resume even from a checkpoint whose run identity differs from this run's (the "
                               "differences are logged); for deliberate changes such as a longer schedule.", False)

    def validate(self) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"checkpointing.every_steps={self.every_steps}: must be >= 0")
        positive("checkpointing.keep_last", self.keep_last)
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            raise ConfigError(f"checkpointing.resume={self.resume!r}: expected 'auto', 'none' or an existing "
                              "checkpoint directory (OUTPUT/checkpoints/step-NNNNNNNN)")


@dataclass
class LoggingConfig:
    every_steps: int = _help("Write a metrics.jsonl line every N steps (and at the last).", 1)
    progress_bar: bool = _help("tqdm bar on rank 0.", True)

    def validate(self) -> None:
        positive("logging.every_steps", self.every_steps)


@dataclass
class RunConfig:
    """What every training run has; a stage's config subclasses it."""

    output_dir: str = _help("Run directory: metrics.jsonl, checkpoints/, the export (`--output`).", "")
    seed: int = _help("Global seed (new heads' init, torch/numpy/python RNGs).", 0)
    batch: BatchConfig = _help("", factory=BatchConfig)
    optim: OptimConfig = _help("", factory=OptimConfig)
    schedule: ScheduleConfig = _help("", factory=ScheduleConfig)
    precision: PrecisionConfig = _help("", factory=PrecisionConfig)
    deepspeed: DeepSpeedConfig = _help("", factory=DeepSpeedConfig)
    checkpointing: CheckpointConfig = _help("", factory=CheckpointConfig)
    logging: LoggingConfig = _help("", factory=LoggingConfig)
