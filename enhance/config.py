"""The enhance stage's config: one nested dataclass, loaded from a preset YAML plus overrides.

    cfg = load_config(preset="diva-openai-l14-224", overrides={"data": {"source": "/cc3m"}})

Every field is documented (`help_lines()` prints them for `--help`) and validated with a
message naming the field, the value and the fix. The method's own hyperparameters live in
the `method:` section; its `name` picks the registered method, the other keys are parsed by
that method's `config_cls` (so a typo there is rejected too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from llava_plugin.config import (
    ConfigError,
    deep_merge,
    from_dict,
    help_text,
    list_presets,
    load_yaml_preset,
    to_dict,
)
from llava_plugin.config import documented as _help

PRESET_DIR = Path(str(resources.files("enhance") / "configs"))
DEEPSPEED_DIR = PRESET_DIR / "deepspeed"
DEEPSPEED_NAMES = ("zero2", "zero3")


@dataclass
class DataConfig:
    source: str = _help("Images: a folder, a .jsonl list ({'image': path} lines), .tar shard(s) / brace "
                        "pattern / directory of shards (webdataset). --data sets it.", "")
    global_batch_size: int = _help("Images per optimizer step over all ranks = micro_batch_size x "
                                   "gradient accumulation x world size (accumulation is derived).", 32)
    micro_batch_size: int = _help("Images per forward/backward on one rank.", 8)
    seed: int = _help("Seeds the epoch shuffle (order = f(seed, epoch)) and the per-step noise.", 0)
    shuffle: bool = _help("Shuffle each epoch (deterministically); false keeps source order.", True)
    num_workers: int = _help("DataLoader workers decoding and preprocessing images (0: in-process).", 0)
    max_bad_fraction: float = _help("Unreadable images are skipped and counted; more than this fraction of "
                                    "the images tried is an error (0 allows none).", 0.01)
    bad_check_after: int = _help("Images tried before the bad-image fraction is enforced (it is always "
                                 "enforced at the end of the run).", 256)

    def validate(self) -> None:
        _positive("data.global_batch_size", self.global_batch_size)
        _positive("data.micro_batch_size", self.micro_batch_size)
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"data.global_batch_size={self.global_batch_size} is not a multiple of data.micro_batch_size="
                f"{self.micro_batch_size}; pick a micro batch that divides it (e.g. "
                f"{_largest_divisor(self.global_batch_size, self.micro_batch_size)})")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction={self.max_bad_fraction}: must be in [0, 1] (e.g. 0.01)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers}: must be >= 0")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = _help("Optimizer (a torch optimizer handed to DeepSpeed).", "adamw")
    lr: float = _help("Peak learning rate (per-group lrs a method sets are scaled by the same schedule).", 1e-4)
    weight_decay: float = _help("Weight decay (decoupled for AdamW, L2 for SGD).", 0.0)
    momentum: float = _help("SGD momentum (ignored by AdamW).", 0.9)
    betas: list[float] = _help("AdamW betas.", factory=lambda: [0.9, 0.999])
    eps: float = _help("AdamW epsilon.", 1e-8)
    grad_clip: float = _help("Clip the global gradient norm to this (0: no clipping).", 1.0)

    def validate(self) -> None:
        _positive("optim.lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay}: must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas}: expected two numbers in [0, 1), e.g. [0.9, 0.999]")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip={self.grad_clip}: must be >= 0 (0 disables clipping)")


@dataclass
class ScheduleConfig:
    max_steps: int = _help("Optimizer steps to train (0: derive from `epochs`).", 0)
    epochs: float = _help("Passes over the data, used when max_steps is 0.", 1.0)
    kind: Literal["cosine", "constant"] = _help("LR after warmup: cosine decay to min_lr_ratio, or constant.",
                                                "cosine")
    warmup_steps: int = _help("Linear warmup steps from 0 (takes precedence over warmup_ratio).", 0)
    warmup_ratio: float = _help("Warmup as a fraction of max_steps, used when warmup_steps is 0.", 0.0)
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
    dtype: Literal["fp32", "bf16"] = _help("Training precision. bf16: DeepSpeed bf16 (module in bf16, fp32 "
                                           "master weights, batch float inputs cast); fp16 is not supported.",
                                           "bf16")
    gradient_checkpointing: bool = _help("Recompute the tower's activations in backward "
                                         "(tower.model.gradient_checkpointing_enable()).", False)


@dataclass
class DeepSpeedConfig:
    config: str = _help("ZeRO config: 'zero2', 'zero3' (shipped JSON) or a path to a DeepSpeed JSON. Batch "
                        "sizes, precision and clipping are filled in from this config; do not put an "
                        "'optimizer'/'scheduler' block in it.", "zero2")

    def validate(self) -> None:
        if self.config not in DEEPSPEED_NAMES and not Path(self.config).is_file():
            raise ConfigError(f"deepspeed.config={self.config!r}: expected one of {list(DEEPSPEED_NAMES)} or "
                              "an existing DeepSpeed JSON file")

    def load(self) -> dict:
        path = DEEPSPEED_DIR / f"{self.config}.json" if self.config in DEEPSPEED_NAMES else Path(self.config)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"deepspeed.config: {path} is not valid JSON ({err})") from err
        for block in ("optimizer", "scheduler", "fp16"):
            if block in data:
                raise ConfigError(f"deepspeed.config: {path} has a {block!r} block; remove it (the optimizer and "
                                  "schedule come from optim/schedule; fp16 is unsupported, use precision.dtype)")
        return data


@dataclass
class CacheConfig:
    latents: bool = _help("Cache the method's frozen target encodings (VAE latents / VQ ids) once and reuse "
                          "them; a cache built for another method/generator/preprocessing/image list is "
                          "refused.", False)
    dir: str = _help("Cache directory ('' -> OUTPUT/latent_cache).", "")
    shard_size: int = _help("Images per cache file.", 1024)
    batch_size: int = _help("Images per encode_targets call while building.", 32)

    def validate(self) -> None:
        _positive("cache.shard_size", self.shard_size)
        _positive("cache.batch_size", self.batch_size)


@dataclass
class CheckpointConfig:
    every_steps: int = _help("Write a resumable checkpoint every N optimizer steps (0: only at the end).", 500)
    keep_last: int = _help("Checkpoints kept (older ones are deleted after a new one is complete).", 2)
    resume: str = _help("'auto' (latest in OUTPUT/checkpoints if any), 'none', or a checkpoint dir.", "auto")

    def validate(self) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"checkpointing.every_steps={self.every_steps}: must be >= 0")
        _positive("checkpointing.keep_last", self.keep_last)
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            raise ConfigError(f"checkpointing.resume={self.resume!r}: expected 'auto', 'none' or an existing "
                              "checkpoint directory (OUTPUT/checkpoints/step-NNNNNNN)")


@dataclass
class LoggingConfig:
    every_steps: int = _help("Write a metrics.jsonl line every N steps.", 1)
    progress_bar: bool = _help("tqdm bar on rank 0.", True)
    diagnose_images: int = _help("Images for the condition-gap check at start (0 skips it).", 8)
    diagnose_bands: int = _help("Timestep bands of that check.", 4)
    min_relative_gap: float = _help("Warn when (shuffled - own condition loss) / own loss is below this: the "
                                    "generator ignores the tower, so feedback can only make it drift.", 0.01)

    def validate(self) -> None:
        _positive("logging.every_steps", self.every_steps)
        if self.diagnose_images < 0 or self.diagnose_images == 1:
            raise ConfigError(f"logging.diagnose_images={self.diagnose_images}: use 0 (skip) or >= 2 "
                              "(conditions are shuffled within the batch)")
        _positive("logging.diagnose_bands", self.diagnose_bands)


@dataclass
class EnhanceConfig:
    """One enhance run (a stage): what to train, on what, how."""

    vision_tower: str = _help("Tower spec to train (see llava_plugin.registry). --vision-tower sets it.", "")
    generator: str = _help("Generator spec/path the method loads (frozen). --generator sets it.", "")
    output_dir: str = _help("Run directory: metrics.jsonl, checkpoints/, vision_tower/. --output sets it.", "")
    seed: int = _help("Global seed (model init of new heads, torch/numpy/python RNGs).", 0)
    method: dict[str, Any] = _help("Method section: `name` (diva, un2clip, genhancer, ...) plus that method's "
                                   "own fields (see `python -m enhance presets --method NAME`).", factory=dict)
    data: DataConfig = _help("", factory=DataConfig)
    optim: OptimConfig = _help("", factory=OptimConfig)
    schedule: ScheduleConfig = _help("", factory=ScheduleConfig)
    precision: PrecisionConfig = _help("", factory=PrecisionConfig)
    deepspeed: DeepSpeedConfig = _help("", factory=DeepSpeedConfig)
    cache: CacheConfig = _help("", factory=CacheConfig)
    checkpointing: CheckpointConfig = _help("", factory=CheckpointConfig)
    logging: LoggingConfig = _help("", factory=LoggingConfig)

    def validate(self) -> None:
        if not self.method.get("name"):
            raise ConfigError("method.name is not set: pass --method NAME (or a --preset that sets it)")
        self.method_config()  # parse now, so a bad method key fails before any model loads

    @property
    def method_name(self) -> str:
        return self.method["name"]

    def method_config(self):
        """The method's own config dataclass, parsed from `method:` minus `name`."""
        from enhance.methods.base import get_method

        try:
            cls = get_method(self.method_name)
        except KeyError as err:
            raise ConfigError(f"method.name={self.method_name!r}: {err.args[0]}") from err
        params = {k: v for k, v in self.method.items() if k != "name"}
        return from_dict(cls.config_cls, params, "method.")

    def require_run_fields(self) -> None:
        """The fields only a real run needs (presets may leave them to the command line)."""
        for key, flag in (("vision_tower", "--vision-tower"), ("generator", "--generator"),
                          ("output_dir", "--output")):
            if not getattr(self, key):
                raise ConfigError(f"{key} is not set: pass {flag} (or set it in the preset)")
        if not self.data.source:
            raise ConfigError("data.source is not set: pass --data DIR|FILE.jsonl|SHARDS")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _positive(key: str, value) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be > 0")


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


ZOO_PREFIX = "zoo:"


def load_config(preset: str | None = None, config_file: str | None = None,
                overrides: dict[str, Any] | None = None, zoo: str | None = None) -> EnhanceConfig:
    """Preset (by name or path) <- config file <- overrides, each a (nested) dict, then validate.

    String values `zoo:NAME` (tiny presets use them) become paths of the tiny zoo at `zoo`:
    `zoo:clip` -> zoo.clip, `zoo:data/scenes` -> zoo.data["scenes"].
    """
    data: dict[str, Any] = {}
    if preset:
        data = load_yaml_preset(PRESET_DIR, preset)
    if config_file:
        data = deep_merge(data, load_yaml_preset(PRESET_DIR, config_file))
    data = deep_merge(data, overrides or {})
    return from_dict(EnhanceConfig, resolve_zoo_refs(data, zoo))


def resolve_zoo_refs(data, zoo: str | None, key: str = ""):
    if isinstance(data, dict):
        return {k: resolve_zoo_refs(v, zoo, f"{key}{k}.") for k, v in data.items()}
    if not (isinstance(data, str) and data.startswith(ZOO_PREFIX)):
        return data
    where = key.rstrip(".")
    if not zoo:
        raise ConfigError(f"{where}={data!r} refers to the tiny zoo: pass --zoo DIR (built by "
                          "`python -m llava_plugin.toy --out DIR`) or give a real path")
    from llava_plugin.toy import load_zoo

    loaded = load_zoo(zoo)
    name = data[len(ZOO_PREFIX):]
    if name.startswith("data/"):
        value = loaded.data.get(name[len("data/"):])
    else:
        value = getattr(loaded, name, None)
    if value is None:
        raise ConfigError(f"{where}={data!r}: the zoo at {zoo} has no {name!r} (was its part built?); "
                          f"it has {sorted(k for k, v in vars(loaded).items() if v)} and data "
                          f"{sorted(loaded.data)}")
    return str(value)


def presets() -> list[str]:
    return list_presets(PRESET_DIR)


def preset_summary(name: str) -> str:
    """One line per preset for `python -m enhance presets`."""
    data = load_yaml_preset(PRESET_DIR, name)
    method = data.get("method", {}).get("name", "?")
    optim = data.get("optim", {})
    sched = data.get("schedule", {})
    batch = data.get("data", {}).get("global_batch_size", "?")
    return (f"{name:<42} method={method:<19} tower={data.get('vision_tower') or '(--vision-tower)'} "
            f"{optim.get('name', '?')} lr={optim.get('lr', '?')} batch={batch} steps={sched.get('max_steps') or 'epochs=' + str(sched.get('epochs', '?'))}")


def help_lines() -> list[str]:
    return help_text(EnhanceConfig)
