"""The contract between the training loop and a generative-feedback method.

A method says how the tower's features become the generator's condition and what the
generator's loss is. The loop (enhance/trainer.py) knows nothing else about it.

Parameters that train are registered submodules of the method (the tower, projectors, a
light denoiser, LoRA adapters); everything frozen (UNet, VAE, text encoder, unCLIP
normaliser, a stage-1 denoiser in stage 2) lives in `self.frozen`, a plain dict. So frozen
weights never reach the optimizer, the checkpoint, or ZeRO-3's partitioning (partitioning
a frozen generator would only add communication), and calling the method through the
DeepSpeed engine still gathers the tower's partitions on use.

A training step is, for every method:

    batch = method.preprocess(images)              # deterministic, per image, on the data workers
    batch |= method.encode_targets(batch)          # frozen + deterministic: cacheable (VAE latents, VQ ids)
    cond = method.encode_condition(batch)          # tower forward -> dict of [B, ...] tensors
    loss = method.denoising_loss(batch, cond, rng) # per-sample generator loss, [B]

`forward(batch, rng)` runs the last two and returns a `LossOutput`, the loss made by the run's
`feedback:` options (enhance/feedback.py: the generator loss's weight, a shuffled-condition control,
a regulariser; upstream's plain mean of the generator loss by default), which the trainer applies to
every method alike through `set_feedback`; `diagnose` calls them separately to compare a tower's own
condition with a shuffled one at fixed noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from enhance.feedback import Feedback, FeedbackConfig
from llava_plugin.registry_util import Registry
from llava_plugin.towers import VisionTower


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what backward() runs on
    metrics: dict[str, float] = field(default_factory=dict)  # logged as-is (already detached floats)


class Method(nn.Module):
    """Base class of a generative-feedback method; subclasses register with `@register_method`."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object  # the method's hyperparameter dataclass
    #: The stages one `python -m enhance train` runs, in order (a multi-stage preset names a
    #: preset per stage under `stages:`); `stage_overrides` chains them. One stage by default.
    stages: ClassVar[tuple[str, ...]] = ("train",)

    @classmethod
    def stage_overrides(cls, stage: str, run_dir: str) -> dict[str, Any]:
        """Config overrides that place `stage` of a multi-stage run in `run_dir` (output dirs, and
        what a stage takes from the one before). The last stage writes the run's vision_tower/."""
        return {"output_dir": run_dir}

    def __init__(self, cfg, tower: VisionTower, generator: str):
        """`cfg`: an instance of `config_cls`; `tower`: the tower to train; `generator`: a
        path/spec the method loads its (frozen) generator from (SD-2.1 dir, unCLIP dir, VAE
        dir, or a GenHancer stage-1 output dir)."""
        super().__init__()
        self.cfg = cfg
        self.tower = tower
        self.generator_spec = generator
        self.frozen: dict[str, nn.Module] = {}  # not registered: see module docstring
        self.feedback = Feedback()  # upstream's objective until the trainer calls set_feedback

    def set_feedback(self, cfg: FeedbackConfig) -> None:
        """Apply a run's `feedback:` options (enhance/feedback.py) to this method; the trainer calls it
        once, right after building the method (a regulariser copies the tower as it is then)."""
        self.feedback = Feedback(cfg)
        self.feedback.attach(self)

    def _apply(self, fn, recurse=True):
        # .to()/.bfloat16() reach the frozen modules too, though they are not registered.
        super()._apply(fn, recurse)
        for module in self.frozen.values():
            module._apply(fn)
        return self

    def freeze(self, name: str, module: nn.Module) -> nn.Module:
        """Hold `module` frozen: eval mode, no grads, outside parameters()/state_dict()."""
        module.eval().requires_grad_(False)
        self.frozen[name] = module
        return module

    # -- data side (deterministic, may run in data-loader workers) -------------------------
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """PIL images -> tensors, one normalisation per consumer (tower vs generator)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Frozen, deterministic encodings of the images (cacheable). Keys it returns are
        what `denoising_loss` reads; stochastic parts (e.g. sampling a VAE posterior) must
        happen in `denoising_loss` from cached parameters, so a cache changes nothing."""
        return {}

    # -- model side ----------------------------------------------------------------------
    def encode_condition(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tower forward -> the generator's condition; every tensor has the batch first."""
        raise NotImplementedError

    def denoising_loss(self, batch: dict[str, torch.Tensor], condition: dict[str, torch.Tensor],
                       rng: torch.Generator | None = None, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample generator loss [B] (averaged over any repeated noise draws).
        `timesteps` fixes t (in the method's own scale, see `timestep_range`) for diagnostics."""
        raise NotImplementedError

    def timestep_range(self) -> tuple[float, float]:
        """The [low, high) range of t that `denoising_loss` samples from (for diagnostic bands)."""
        raise NotImplementedError

    def global_embedding(self, batch: dict[str, torch.Tensor], condition: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tower's `image_embeds` [B, embed_dim] of the batch, for a `feedback.regularizer`: the
        condition's own when it carries them (un2CLIP, no second forward), else one more tower forward
        (a method whose condition holds the same tensor can override this to return it)."""
        embeds = condition.get("image_embeds")
        return embeds if embeds is not None else self.tower(batch["pixel_values"]).image_embeds

    def forward(self, batch: dict[str, torch.Tensor], rng: torch.Generator | None = None) -> LossOutput:
        """The step's loss: by default the mean of `denoising_loss` under the tower's condition
        (metrics `loss` and `feedback_loss`); `set_feedback` changes how it is made."""
        loss, metrics = self.feedback.loss(self, batch, rng)
        return LossOutput(loss=loss, metrics=metrics)

    # -- what trains and what ships ------------------------------------------------------
    def trainable_parameters(self) -> list[dict[str, Any]]:
        """Optimizer param groups ({"params": [...], optional "lr": ...}); default: all that require grad."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def export_tower(self) -> VisionTower:
        """The tower to save (e.g. with LoRA merged into its weights)."""
        return self.tower

    def save_extras(self, out_dir) -> None:
        """Write what a later stage needs besides the tower into `out_dir` (e.g. GenHancer's
        stage-1 denoiser and projectors, which its stage 2 loads as `generator`). The trainer
        calls it on the main process wherever it saves the exported tower, with parameters
        gathered (ZeRO-3). Default: nothing."""

    def frozen_state_fingerprint(self) -> dict[str, str]:
        """A hash per frozen module, to prove the generator never changed."""
        import hashlib

        out = {}
        for name, module in self.frozen.items():
            h = hashlib.sha256()
            for key, tensor in sorted(module.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            out[name] = h.hexdigest()
        return out


# Every module of enhance/methods/ (but this one) registers its Method subclass on import.
METHODS: Registry[type[Method]] = Registry("method", "enhance.methods")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a `Method` subclass under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    return METHODS.add(cls.name, cls)


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; an unknown name raises a KeyError listing the known ones."""
    return METHODS.get(name)
