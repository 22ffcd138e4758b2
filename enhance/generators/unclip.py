"""Frozen Stable unCLIP (image variation) parts: the SD parts plus the image-embedding path.

Stable unCLIP conditions its UNet on a CLIP image embedding through `class_labels`: the
embedding is normalised by the pipeline's `image_normalizer`, noised to a `noise_level` by
its `image_noising_scheduler`, un-normalised, and concatenated with a sinusoidal embedding
of the noise level (flip_sin_to_cos, no frequency shift), as the pipeline's
`noise_image_embeddings` does. Here the embedding comes from the tower under training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from enhance.generators.sd import GeneratorError, LatentDiffusion, randn


class UnCLIPDiffusion(LatentDiffusion):
    expected = "stabilityai/stable-diffusion-2-1-unclip (or -unclip-small)"

    def __init__(self, spec: str | Path):
        from diffusers import DDPMScheduler
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
            StableUnCLIPImageNormalizer,
        )

        super().__init__(spec)
        for sub in ("image_normalizer", "image_noising_scheduler"):
            if not (self.path / sub).is_dir():
                raise GeneratorError(
                    f"generator {self.path}: no {sub}/ folder; expected a Stable unCLIP "
                    f"pipeline ({self.expected}), not a plain text-to-image one"
                )
        if self.unet.config.class_embed_type != "projection":
            raise GeneratorError(
                f"generator {self.path}: UNet class_embed_type="
                f"{self.unet.config.class_embed_type!r}, expected 'projection' (Stable unCLIP)"
            )
        self.image_normalizer = StableUnCLIPImageNormalizer.from_pretrained(
            self.path, subfolder="image_normalizer"
        )
        self.image_noising_scheduler = DDPMScheduler.from_pretrained(
            self.path, subfolder="image_noising_scheduler"
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {**super().modules(), "image_normalizer": self.image_normalizer}

    @property
    def image_embed_dim(self) -> int:
        return self.image_normalizer.config.embedding_dim

    @property
    def class_input_dim(self) -> int:
        return self.unet.config.projection_class_embeddings_input_dim

    def check_embed_dim(self, tower_dim: int, tower_name: str) -> None:
        """Fail before training when the tower's image_embeds cannot be the generator's input."""
        if tower_dim != self.image_embed_dim or self.class_input_dim != 2 * self.image_embed_dim:
            raise GeneratorError(
                f"tower {tower_name!r} gives image embeddings {tower_dim} wide (its projection dim), but "
                f"the unCLIP generator {self.path} expects {self.image_embed_dim} (image_normalizer "
                f"embedding_dim; UNet class embedding input {self.class_input_dim} = embedding + noise-level "
                "embedding). Pair the tower with the unCLIP trained on its embeddings (ViT-L/14, 768: "
                "stable-diffusion-2-1-unclip-small; OpenCLIP ViT-H/14, 1024: stable-diffusion-2-1-unclip); "
                "a projector is not part of un2CLIP."
            )

    def noise_image_embeddings(
        self, embeds: torch.Tensor, noise_level: int, rng: torch.Generator | None
    ) -> torch.Tensor:
        """[B, d] image embeddings -> [B, 2d] UNet class labels at `noise_level` (0: nearly clean)."""
        from diffusers.models.embeddings import get_timestep_embedding

        levels = torch.full((embeds.shape[0],), noise_level, device=embeds.device, dtype=torch.long)
        # the normaliser's statistics, detached: its own `.to()` re-creates them as parameters that
        # require grad, so freezing it does not survive a dtype cast
        mean = self.image_normalizer.mean.detach().to(embeds)
        std = self.image_normalizer.std.detach().to(embeds)
        scaled = (embeds - mean) / std
        noised = self.image_noising_scheduler.add_noise(scaled, randn(embeds.shape, rng, scaled), levels)
        unscaled = noised * std + mean
        level_embeds = get_timestep_embedding(
            levels, embedding_dim=embeds.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return torch.cat([unscaled, level_embeds.to(unscaled.dtype)], dim=1)
