"""un2CLIP (Li et al. 2025): invert a frozen Stable unCLIP. The tower under training takes the
place of the pipeline's image encoder: its projected global embedding goes, with no
projector, through the pipeline's own image normaliser and noising schedule (at a fixed
noise level) into the UNet's `class_labels`, with the empty prompt's text embedding as
the cross-attention context. The generator stays frozen, so the tower's embedding has to
stay in the space unCLIP was trained on; the paper finds a projector or a trained
generator both hurt.

General options, all off in the paper presets: `timestep_range` narrows t to a band of the
schedule; the run's `feedback:` section (enhance/feedback.py) applies as to every method (its
regulariser reads the condition's own `image_embeds`, with no second tower forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from enhance.generators.unclip import UnCLIPDiffusion
from enhance.methods.base import register_method
from enhance.methods.latent_diffusion import (
    TIMESTEP_RANGE_HELP,
    LatentDiffusionFeedback,
    check_timestep_range,
)
from llava_plugin.config import ConfigError
from llava_plugin.config import documented as _help
from llava_plugin.towers import VisionTower


@dataclass
class Un2ClipConfig:
    noise_level: int = _help(
        "unCLIP noise level applied to the tower's embedding before the UNet (0..image noising steps - 1; "
        "0 trains on the (almost) clean embedding).", 0)
    num_noise_draws: int = _help("Denoising draws (t, noise) per image per step; their losses are averaged.",
                                 1)
    prompt: str = _help("Text prompt of the cross-attention context (un2CLIP: empty).", "")
    generator_resolution: int = _help(
        "Side in pixels of the image the VAE encodes (0: the generator's native size, 768 for "
        "stable-diffusion-2-1-unclip).", 0)
    sample_latents: bool = _help(
        "Draw latents from the VAE posterior, as latent diffusion trains; false uses its mean.", True)
    timestep_range: list[float] = _help(TIMESTEP_RANGE_HELP, factory=lambda: [0.0, 1.0])

    def validate(self) -> None:
        check_timestep_range(self.timestep_range)
        if self.noise_level < 0:
            raise ConfigError(f"method.noise_level={self.noise_level}: must be >= 0")
        if self.num_noise_draws < 1:
            raise ConfigError(f"method.num_noise_draws={self.num_noise_draws}: must be >= 1")
        if self.generator_resolution < 0:
            raise ConfigError(
                f"method.generator_resolution={self.generator_resolution}: must be >= 0 "
                "(0: the generator's native resolution)"
            )


@register_method
class Un2Clip(LatentDiffusionFeedback):
    name = "un2clip"
    config_cls = Un2ClipConfig

    def __init__(self, cfg: Un2ClipConfig, tower: VisionTower, generator: str):
        super().__init__(cfg, tower, generator)
        cfg.validate()
        diffusion = UnCLIPDiffusion(generator)
        diffusion.check_embed_dim(tower.sizes.embed_dim, tower.spec)
        levels = diffusion.image_noising_scheduler.config.num_train_timesteps
        if cfg.noise_level >= levels:
            raise ConfigError(
                f"method.noise_level={cfg.noise_level}: the generator's image noising schedule has "
                f"{levels} levels (0..{levels - 1})"
            )
        self.hold_generator(diffusion)
        tower.model.requires_grad_(True)  # the whole tower trains; nothing else does

    # -- model side ------------------------------------------------------------------------
    def encode_condition(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tower's projected global embedding [B, embed_dim], where unCLIP's image encoder's was."""
        return {"image_embeds": self.tower(batch["pixel_values"]).image_embeds}

    def denoising_loss(
        self,
        batch: dict[str, torch.Tensor],
        condition: dict[str, torch.Tensor],
        rng: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = condition["image_embeds"]
        draws = self.cfg.num_noise_draws
        class_labels = self.generator.noise_image_embeddings(embeds.repeat(draws, 1), self.cfg.noise_level, rng)
        context = self.prompt_embeds.expand(draws * embeds.shape[0], -1, -1)
        return self.diffusion_loss(batch, context, draws, rng, timesteps, class_labels=class_labels)
