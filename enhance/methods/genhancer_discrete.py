"""Discrete GenHancer (`genhancer-discrete`): masked VQ-token prediction from the global token.

The paper reports a discrete variant but upstream never released it; this one follows its
description with MaskGIT-style training: a frozen diffusers `VQModel` turns images into
codebook ids, a random subset (ratio by the cosine schedule) is replaced by [MASK], and a
light transformer predicts the hidden ids (cross-entropy on masked positions) from the
visible ones and the condition. Stages, condition MLPs, stage-1 output and LoRA export are
the continuous variant's (genhancer.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from enhance.generators.flow_dit import rand
from enhance.generators.vq import MaskedDenoiserConfig, VQTokenizer, mask_ratio, random_mask
from enhance.methods.base import register_method
from enhance.methods.genhancer import GenHancerBase, GenHancerCommonConfig, fixed_timesteps


@dataclass
class GenHancerDiscreteConfig(GenHancerCommonConfig):
    """Discrete GenHancer: masked token prediction over VQ ids."""

    denoiser: MaskedDenoiserConfig = field(default_factory=MaskedDenoiserConfig,
                                           metadata={"help": "masked-token transformer"})
    mask_schedule: Literal["cosine", "linear"] = field(default="cosine", metadata={
        "help": "mask ratio = cos(pi/2 u) (MaskGIT) or 1 - u, u ~ U(0, 1)"})


@register_method
class GenHancerDiscrete(GenHancerBase):
    """`generator` (stage 1): a diffusers VQModel dir (or a dir with `vqvae/`)."""

    name = "genhancer-discrete"
    config_cls = GenHancerDiscreteConfig
    tokenizer_dir = "vqvae"

    def tokenizer_directory(self, generator):
        return VQTokenizer.directory(generator)

    def load_tokenizer(self, directory):
        return VQTokenizer.load(directory)

    def build_denoiser(self, tokenizer: VQTokenizer):
        from enhance.generators.masked_denoiser import MaskedTokenDenoiser

        h, w = tokenizer.grid(self.image_size)
        return MaskedTokenDenoiser.build(self.cfg.denoiser, tokenizer.codebook_size, h * w)

    def load_denoiser(self, directory):
        from enhance.generators.masked_denoiser import MaskedTokenDenoiser

        return MaskedTokenDenoiser.from_pretrained(directory)

    @torch.no_grad()
    def encode_targets(self, batch):
        """Codebook ids [B, tokens] (deterministic, cacheable)."""
        tokenizer = self.frozen["tokenizer"]
        pixels = batch["generator_pixels"].to(next(tokenizer.parameters()).device)
        return {"token_ids": tokenizer.encode_ids(pixels)}

    def denoising_loss(self, batch, condition, rng=None, timesteps=None):
        """Mean cross-entropy over the masked positions, per sample; `timesteps` fixes the mask ratio."""
        device = condition["pooled"].device
        ids = batch["token_ids"].to(device)
        denoiser = self.part("denoiser")
        if ids.shape[1] != denoiser.config.num_tokens:
            raise ValueError(f"token_ids have {ids.shape[1]} tokens per image, the denoiser expects "
                             f"{denoiser.config.num_tokens}: the cached ids come from another image size or VQ model")
        b, n = ids.shape
        if timesteps is None:
            ratios = mask_ratio(rand((b,), rng, device), self.cfg.mask_schedule)
        else:
            ratios = fixed_timesteps(timesteps, b, device)
        masked = random_mask(ratios, n, rng, device)
        logits = denoiser(ids.masked_fill(masked, denoiser.mask_id), condition["pooled"], condition["context"])
        ce = F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")
        return (ce * masked).sum(dim=1) / masked.sum(dim=1)

    def timestep_range(self) -> tuple[float, float]:
        """The mask-ratio range."""
        return (0.0, 1.0)
