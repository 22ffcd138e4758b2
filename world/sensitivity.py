"""Which world attributes a frozen generator uses: feedback can only teach what the generator reads.

For held-out scenes, the generator's denoising loss under the scene's own condition is compared,
at the same noise and t, with its loss under a condition in which one attribute is corrupted:
- text-to-image (DIVA's generator): the full caption of the scene with that attribute changed;
- unCLIP (un2CLIP's generator): the world CLIP's image embedding of that changed scene.
The report is the relative loss increase per attribute, (corrupted - own) / own. Near zero means
the generator ignores the attribute, so no method can learn it from that generator.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from world import pretrain, scenes
from world.probe import PROBE_SEED


def _corrupted(n: int, seed: int = PROBE_SEED) -> dict[str, list[tuple[scenes.Scene, scenes.Scene]]]:
    out = {}
    for attribute in scenes.ATTRIBUTES:
        rng = random.Random(f"{seed}-sensitivity-{attribute}")
        out[attribute] = [scenes.sample_pair(rng, attribute) for _ in range(n)]
    return out


@torch.no_grad()
def _loss(unet, scheduler, latents, context, t, noise, class_labels=None) -> torch.Tensor:
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=context, class_labels=class_labels).sample
    return (pred - latents).pow(2).flatten(1).mean(1)  # x0-prediction


def _pixels(items: list[scenes.Scene]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(scenes.draw(s))).permute(2, 0, 1) for s in items])


def _latents(vae, items: list[scenes.Scene]) -> torch.Tensor:
    return vae.encode(pretrain.vae_pixels(_pixels(items))).latent_dist.mean * vae.config.scaling_factor


def generator_sensitivity(text_to_image: Path, unclip: Path, clip: Path, n: int = 128,
                          t_range: tuple[float, float] = (0.5, 1.0), seed: int = 0) -> dict:
    """{"text_to_image": {attribute: relative increase}, "unclip": {...}, "settings": ...}."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.models.embeddings import get_timestep_embedding
    from transformers import AutoTokenizer, CLIPModel, CLIPTextModel

    pairs = _corrupted(n)
    gen = torch.Generator().manual_seed(seed)
    out: dict = {"settings": {"n": n, "t_range": list(t_range), "seed": seed}}

    # text-to-image: own caption vs the caption of the scene with one attribute changed
    vae = AutoencoderKL.from_pretrained(text_to_image / "vae").eval()
    unet = UNet2DConditionModel.from_pretrained(text_to_image / "unet").eval()
    scheduler = DDPMScheduler.from_pretrained(text_to_image / "scheduler")
    tokenizer = AutoTokenizer.from_pretrained(text_to_image / "tokenizer")
    text = CLIPTextModel.from_pretrained(text_to_image / "text_encoder").eval()
    total = scheduler.config.num_train_timesteps
    result = {}
    for attribute, items in pairs.items():
        latents = _latents(vae, [a for a, _ in items])
        t = torch.randint(int(t_range[0] * total), int(t_range[1] * total), (len(items),), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        own = text(pretrain.tokenize(tokenizer, [a.full_caption for a, _ in items])).last_hidden_state
        bad = text(pretrain.tokenize(tokenizer, [b.full_caption for _, b in items])).last_hidden_state
        l_own, l_bad = _loss(unet, scheduler, latents, own, t, noise), _loss(unet, scheduler, latents, bad, t, noise)
        result[attribute] = float((l_bad.mean() - l_own.mean()) / l_own.mean())
    out["text_to_image"] = result

    # unCLIP: own CLIP embedding vs the embedding of the changed scene, at noise level 0
    unet = UNet2DConditionModel.from_pretrained(unclip / "unet").eval()
    scheduler = DDPMScheduler.from_pretrained(unclip / "scheduler")
    tokenizer = AutoTokenizer.from_pretrained(unclip / "tokenizer")
    empty = CLIPTextModel.from_pretrained(unclip / "text_encoder").eval()(pretrain.tokenize(tokenizer, [""])).last_hidden_state
    model = CLIPModel.from_pretrained(clip).eval()

    def labels(items: list[scenes.Scene]) -> torch.Tensor:
        """unCLIP's class labels at noise level 0 (normalise, noise at level 0, unnormalise: the
        identity up to sqrt(1 - alpha_bar_0) ~ 0.006 of noise, left out so the comparison is exact)."""
        pixels = pretrain.clip_pixels(_pixels(items))
        embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        levels = torch.zeros(len(items), dtype=torch.long)
        return torch.cat([embeds, get_timestep_embedding(levels, embeds.shape[1], flip_sin_to_cos=True,
                                                         downscale_freq_shift=0)], 1)

    result = {}
    for attribute, items in pairs.items():
        latents = _latents(vae, [a for a, _ in items])
        t = torch.randint(int(t_range[0] * total), int(t_range[1] * total), (len(items),), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        context = empty.expand(len(items), -1, -1)
        l_own = _loss(unet, scheduler, latents, context, t, noise, labels([a for a, _ in items]))
        l_bad = _loss(unet, scheduler, latents, context, t, noise, labels([b for _, b in items]))
        result[attribute] = float((l_bad.mean() - l_own.mean()) / l_own.mean())
    out["unclip"] = result
    return out
