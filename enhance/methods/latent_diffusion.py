"""What DIVA and un2CLIP share: a frozen latent-diffusion generator (SD-2.1 UNet + VAE) whose
denoising loss, given the tower's condition, trains the tower.

Both preprocess an image the same way (one centred square, normalised once for the tower and
once into the VAE's [-1, 1]), cache the same targets (the VAE posterior's mean and log-variance)
and run the same noising/denoising step; they differ only in how the condition reaches the
UNet (cross-attention tokens vs `class_labels`).

Both also share `timestep_range` (TIMESTEP_RANGE_HELP): t is drawn uniformly from a band of the
schedule, by default all of it (upstream); a narrower band is a general option for runs such as the
shapes world, off in every paper preset.
"""
from __future__ import annotations

import torch
from PIL import Image

from enhance.generators.sd import (
    GeneratorError,
    LatentDiffusion,
    center_squares,
    per_sample_mse,
    randn,
    vae_pixels,
)
from enhance.methods.base import Method
from llava_plugin.config import ConfigError

TIMESTEP_RANGE_HELP = (
    "[low, high]: t is drawn uniformly from the integers [low * T, high * T) of the generator's T training "
    "steps (rounded); [0.0, 1.0] (upstream) is every step. A band such as [0.8, 1.0] (high noise) is a "
    "general option, off in the paper presets.")


def check_timestep_range(band: list[float]) -> None:
    """For a method config's validate(): two fractions 0 <= low < high <= 1."""
    if len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0:
        raise ConfigError(f"method.timestep_range={band}: expected [low, high], fractions of the schedule with "
                          "0 <= low < high <= 1 (e.g. [0.0, 1.0], all steps)")


class LatentDiffusionFeedback(Method):
    """Base for methods over a frozen `LatentDiffusion` generator; subclasses call `hold_generator`."""

    def hold_generator(self, generator: LatentDiffusion) -> None:
        """Freeze every generator module, embed the method's fixed prompt once, fix the VAE resolution."""
        self.generator = generator
        for name, module in generator.modules().items():
            self.freeze(name, module)
        # fixed for the whole run: a buffer (moves with the method; not a parameter, not saved)
        self.register_buffer("prompt_embeds", generator.encode_prompt(self.cfg.prompt), persistent=False)
        self.resolution = self.cfg.generator_resolution or generator.native_resolution
        try:  # a band holding no integer step fails now, not at the first step
            generator.timestep_bounds(self.cfg.timestep_range)
        except GeneratorError as err:
            raise ConfigError(f"method.timestep_range={self.cfg.timestep_range}: {err}") from err

    # -- data side -------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """One centred square crop, normalised for each model: the tower's processor, the VAE's [-1, 1]."""
        squares = center_squares(images)
        return {
            "pixel_values": self.tower.preprocess(squares),
            "generator_pixels": vae_pixels(squares, self.resolution),
        }

    @torch.no_grad()
    def encode_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The VAE posterior mean, and its log-variance only when latents are sampled from it (a
        latent cache then stores half as much for DIVA and un2CLIP, which read the mean)."""
        mean, logvar = self.generator.posterior(batch["generator_pixels"])
        return {"latent_mean": mean, "latent_logvar": logvar} if self.cfg.sample_latents else {"latent_mean": mean}

    def timestep_range(self) -> tuple[float, float]:
        """The [low, high) timesteps training draws from: the `timestep_range` band, in steps."""
        low, high = self.generator.timestep_bounds(self.cfg.timestep_range)
        return float(low), float(high)

    # -- the shared step -------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, torch.Tensor], context: torch.Tensor, draws: int,
                       rng: torch.Generator | None, timesteps: torch.Tensor | None,
                       class_labels: torch.Tensor | None = None,
                       draw_weights: list[float] | None = None) -> torch.Tensor:
        """Per-sample loss [B] of denoising the image's latents under `context` (and `class_labels`),
        both with draw-major rows [draws * B, ...]; averaged over the draws, or their `draw_weights` sum."""
        batch_size = context.shape[0] // draws
        latents = self.generator.latents(
            batch["latent_mean"].to(context.device),
            batch["latent_logvar"].to(context.device) if self.cfg.sample_latents else None, rng, self.cfg.sample_latents,
        ).repeat(draws, 1, 1, 1)
        t = self.generator.timesteps(batch_size, draws, rng, context.device, fixed=timesteps,
                                     band=self.cfg.timestep_range)
        noise = randn(latents.shape, rng, latents)
        noisy = self.generator.add_noise(latents, noise, t)
        pred = self.generator.denoise(noisy, t, context, class_labels=class_labels)
        return per_sample_mse(pred, self.generator.target(latents, noise, t), draws, draw_weights)
