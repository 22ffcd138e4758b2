"""Pre-training the world's models: the counterparts of the hub checkpoints the methods start from.

- `train_clip`: a CLIP trained contrastively on captions that always name colour and shape and
  rarely (p_mention) the fine attributes, like web alt-text: zero-shot perfect on the coarse
  attributes, partly blind to the fine ones. Saved as an HF `CLIPModel` dir (openai/clip-* layout).
- `train_vae`: an SD-layout `AutoencoderKL` (x4 downsampling: 32 px <-> 8x8x8 latents).
- `train_text_to_image`: an SD-2.1-layout pipeline (UNet + the VAE + its own text encoder +
  tokenizer + scheduler) trained on rich captions (each fine attribute named half the time), the
  toy counterpart of a text-to-image model trained on descriptive captions. x0-prediction (`prediction_type: sample`): with epsilon-prediction a
  small denoiser learns to ignore its condition.
- `train_unclip`: a Stable-unCLIP-layout pipeline whose UNet is conditioned, through
  `class_labels`, on the world CLIP's own image embedding, as Stable unCLIP is on OpenCLIP's.

Each loop is explicit (diffusers' training-example style): AdamW, cosine decay after a short
warmup, a progress bar, and a JSONL row every `log_every` steps. Everything is seeded.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from world import scenes

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_LENGTH = 77  # CLIP/SD tokenizers' model_max_length
# DIVA's fixed prompt (baaivision/DIVA: "a photo of a {}." with an empty class) is what the world's
# text-to-image model must also understand, so it sees it, rarely, as its "no caption" condition.
UNCONDITIONAL_PROMPT = "a photo of a ."


# ---------------------------------------------------------------- data
class ScenePool:
    """A fixed pool of scenes, drawn once, as a uint8 tensor [N, 3, 32, 32] plus their Scene records."""

    def __init__(self, size: int, seed: int):
        rng = random.Random(seed)
        self.scenes = [scenes.sample_scene(rng) for _ in range(size)]
        self.pixels = torch.from_numpy(np.stack([np.asarray(scenes.draw(s)) for s in self.scenes])).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.scenes)

    def batches(self, batch_size: int, seed: int) -> Iterator[list[int]]:
        """Endless shuffled index batches."""
        gen = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(self), generator=gen).tolist()
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield order[i:i + batch_size]


def clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] -> what CLIPImageProcessor gives a 32 px image (OpenAI mean/std)."""
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def vae_pixels(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


# ---------------------------------------------------------------- the loop
@dataclass
class LoopConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 50
    log_every: int = 50


def run_loop(name: str, params, cfg: LoopConfig, step_fn: Callable[[int], torch.Tensor], log_file: Path) -> float:
    """AdamW + linear warmup + cosine decay; `step_fn(step)` returns the loss. Returns the mean loss
    of the last 10% of steps."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    tail: list[float] = []
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log, tqdm(range(cfg.steps), desc=f"world {name}", unit="step") as bar:
        for step in bar:
            loss = step_fn(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            if step >= cfg.steps * 0.9:
                tail.append(value)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log.write(json.dumps({"step": step, "loss": value, "lr": scheduler.get_last_lr()[0]}) + "\n")
                bar.set_postfix(loss=f"{value:.4f}")
    return sum(tail) / max(1, len(tail))


# ---------------------------------------------------------------- CLIP
@dataclass
class Steps:
    """The optimisation settings every part shares."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.0

    @property
    def loop(self) -> LoopConfig:
        return LoopConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                          warmup_steps=min(50, max(1, self.steps // 10)))


@dataclass
class ClipSpec(Steps):
    """A partly blind CLIP (sizes from the controlled CPU experiment the world issue reports)."""

    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    width: int = 64
    layers: int = 4
    heads: int = 4
    patch: int = 4
    text_width: int = 64
    text_layers: int = 2
    projection_dim: int = 64
    p_mention: float = 0.02  # how often a caption names each fine attribute


@dataclass
class VaeSpec(Steps):
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    kl_weight: float = 1e-6


@dataclass
class DenoiserSpec(Steps):
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    high_noise_fraction: float = 0.5  # this share of t values from the top 10%: where the condition matters most
    p_unconditional: float = 0.05  # text-to-image: captions replaced by the unconditional prompt
    # text-to-image: each fine attribute named with this probability (colour and shape always), so the model
    # also denoises from partial descriptions, as one trained on varied captions does; each attribute it is
    # told then lowers its loss on its own, which is the signal feedback needs
    p_fine_mention: float = 0.5
    p_noised: float = 0.5  # unCLIP: embeddings noise-augmented at a random level (else level 0)


def tokenize(tokenizer, texts: list[str], max_length: int = PROMPT_LENGTH) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_clip(out: Path, pool: ScenePool, spec: ClipSpec, seed: int) -> dict:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from llava_plugin.convert import clip_bpe_tokenizer

    torch.manual_seed(seed)
    tokenizer = clip_bpe_tokenizer()
    config = CLIPConfig(
        vision_config={"hidden_size": spec.width, "intermediate_size": 4 * spec.width, "num_hidden_layers": spec.layers,
                           "num_attention_heads": spec.heads, "image_size": scenes.SIZE, "patch_size": spec.patch,
                           "hidden_act": "quick_gelu", "projection_dim": spec.projection_dim},
        text_config={"hidden_size": spec.text_width, "intermediate_size": 4 * spec.text_width,
                         "num_hidden_layers": spec.text_layers, "num_attention_heads": spec.heads,
                         "max_position_embeddings": PROMPT_LENGTH, "vocab_size": len(tokenizer), "hidden_act": "quick_gelu",
                         "projection_dim": spec.projection_dim, "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        projection_dim=spec.projection_dim,
    )
    model = CLIPModel(config).train()
    rng = random.Random(seed)
    batches = pool.batches(spec.batch_size, seed)
    # captions are short: tokenizing to the longest in the batch is the same model, 5x cheaper
    caption_length = 24

    def step(_: int) -> torch.Tensor:
        idx = next(batches)
        captions = [pool.scenes[i].caption(scenes.sample_mentions(rng, spec.p_mention)) for i in idx]
        ids = tokenize(tokenizer, captions, caption_length)
        out_ = model(input_ids=ids, pixel_values=clip_pixels(pool.pixels[idx]), return_loss=True)
        return out_.loss

    tail = run_loop("clip", model.parameters(), spec.loop, step, out / "pretrain_log.jsonl")
    model.eval().save_pretrained(out)
    clip_bpe_tokenizer(out)
    CLIPImageProcessor(do_resize=True, size={"shortest_edge": scenes.SIZE}, resample=3, do_center_crop=True,
                       crop_size={"height": scenes.SIZE, "width": scenes.SIZE}, do_normalize=True,
                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD), do_convert_rgb=True,
                       ).save_pretrained(out)
    return {"final_loss": tail, "spec": asdict(spec)}


# ---------------------------------------------------------------- VAE
LATENT_CHANNELS = 8
VAE_CONFIG = {"in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS, "layers_per_block": 1,
                  "block_out_channels": (16, 32, 32), "down_block_types": ("DownEncoderBlock2D",) * 3,
                  "up_block_types": ("UpDecoderBlock2D",) * 3,
                  "norm_num_groups": 8, "sample_size": scenes.SIZE, "mid_block_add_attention": False}


def train_vae(out: Path, pool: ScenePool, spec: VaeSpec, seed: int) -> dict:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    batches = pool.batches(spec.batch_size, seed)

    def step(_: int) -> torch.Tensor:
        x = vae_pixels(pool.pixels[next(batches)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return F.mse_loss(recon, x) + spec.kl_weight * posterior.kl().mean()

    tail = run_loop("vae", vae.parameters(), spec.loop, step, out / "pretrain_log.jsonl")
    vae.eval()
    with torch.no_grad():  # SD's recipe: scale latents to unit variance
        sample = vae.encode(vae_pixels(pool.pixels[:512])).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / sample.std()))
    vae.save_pretrained(out)
    return {"final_loss": tail, "scaling_factor": vae.config.scaling_factor, "spec": asdict(spec)}


# ---------------------------------------------------------------- denoisers
def unet_config(cross_attention_dim: int, **extra) -> dict:
    return dict(sample_size=scenes.SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
                attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8, **extra)


SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "clip_sample": False, "prediction_type": "sample"}
# what the pipelines ship for sampling (SD-2.1's DDIM settings); training reads the same betas as DDPM
SAMPLER = dict(SCHEDULER, set_alpha_to_one=False, steps_offset=1)


def sample_timesteps(n: int, spec: DenoiserSpec, gen: torch.Generator, total: int = 1000) -> torch.Tensor:
    t = torch.randint(0, total, (n,), generator=gen)
    high = torch.randint(int(0.9 * total), total, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < spec.high_noise_fraction, high, t)


class Latents:
    """The VAE's posterior means of the whole pool, encoded once (the VAE is frozen from here on)."""

    def __init__(self, vae, pool: ScenePool, batch: int = 256):
        with torch.no_grad():
            means = [vae.encode(vae_pixels(pool.pixels[i:i + batch])).latent_dist.mean for i in range(0, len(pool), batch)]
        self.scaled = torch.cat(means) * vae.config.scaling_factor


def _denoise_step(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, gen: torch.Generator,
                  spec: DenoiserSpec, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    t = sample_timesteps(latents.shape[0], spec, gen)
    noise = torch.randn(latents.shape, generator=gen)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=context, class_labels=class_labels).sample
    return F.mse_loss(pred, latents)  # prediction_type "sample": the target is x0


def text_encoder_for(tokenizer, width: int = 64, layers: int = 2, heads: int = 4):
    """SD-2's text encoder shape (a CLIPTextModel used unprojected), world-sized."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                                        num_hidden_layers=layers, num_attention_heads=heads,
                                        max_position_embeddings=PROMPT_LENGTH, hidden_act="gelu", projection_dim=width,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))


def sd_tokenizer():
    """SD-2's tokenizer: the CLIP BPE vocabulary, padded with '!' (open_clip pads with id 0)."""
    from llava_plugin.convert import clip_bpe_tokenizer

    tokenizer = clip_bpe_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def train_text_to_image(out: Path, pool: ScenePool, vae_dir: Path, spec: DenoiserSpec, seed: int) -> dict:
    """An SD-2.1-layout pipeline trained on full captions (x0-prediction)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPImageProcessor

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    latents = Latents(vae, pool)
    tokenizer = sd_tokenizer()
    text_encoder = text_encoder_for(tokenizer).train()
    unet = UNet2DConditionModel(**unet_config(text_encoder.config.hidden_size)).train()
    scheduler = DDPMScheduler(**SCHEDULER)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    batches = pool.batches(spec.batch_size, seed)

    def step(_: int) -> torch.Tensor:
        idx = next(batches)
        captions = [UNCONDITIONAL_PROMPT if rng.random() < spec.p_unconditional
                    else pool.scenes[i].caption(scenes.sample_mentions(rng, spec.p_fine_mention)) for i in idx]
        context = text_encoder(tokenize(tokenizer, captions)).last_hidden_state
        return _denoise_step(unet, scheduler, latents.scaled[idx], context, gen, spec)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    tail = run_loop("text-to-image", params, spec.loop, step, out / "pretrain_log.jsonl")
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=DDIMScheduler(**SAMPLER), safety_checker=None, requires_safety_checker=False,
        feature_extractor=CLIPImageProcessor(crop_size={"height": scenes.SIZE, "width": scenes.SIZE},
                                             size={"shortest_edge": scenes.SIZE}),
    ).save_pretrained(out)
    return {"final_loss": tail, "spec": asdict(spec)}


UNCLIP_NOISING = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
                      "clip_sample": True}


def train_unclip(out: Path, pool: ScenePool, vae_dir: Path, clip_dir: Path, text_to_image_dir: Path,
                 spec: DenoiserSpec, seed: int) -> dict:
    """A Stable-unCLIP-layout pipeline: its UNet reads the world CLIP's image embedding (normalised,
    noise-augmented at a random level for `p_noised` of the samples, else level 0) through
    `class_labels`, with the empty prompt as context, as un2CLIP runs it. The text encoder and
    tokenizer are the text-to-image model's (frozen; only the empty prompt is ever encoded)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.models.embeddings import get_timestep_embedding
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    latents = Latents(vae, pool)
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        embeds = torch.cat([clip.visual_projection(clip.vision_model(pixel_values=clip_pixels(
            pool.pixels[i:i + 256])).pooler_output) for i in range(0, len(pool), 256)])
    dim = embeds.shape[1]
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=dim)
    with torch.no_grad():
        normalizer.mean.copy_(embeds.mean(0, keepdim=True))
        normalizer.std.copy_(embeds.std(0, keepdim=True))
    noising = DDPMScheduler(**UNCLIP_NOISING)
    tokenizer = sd_tokenizer()
    text_encoder = CLIPTextModel.from_pretrained(text_to_image_dir / "text_encoder").eval()
    with torch.no_grad():
        empty = text_encoder(tokenize(tokenizer, [""])).last_hidden_state
    unet = UNet2DConditionModel(**unet_config(text_encoder.config.hidden_size, class_embed_type="projection",
                                              projection_class_embeddings_input_dim=2 * dim)).train()
    scheduler = DDPMScheduler(**SCHEDULER)
    gen = torch.Generator().manual_seed(seed)
    batches = pool.batches(spec.batch_size, seed)

    def step(_: int) -> torch.Tensor:
        idx = next(batches)
        n = len(idx)
        levels = torch.where(torch.rand(n, generator=gen) < spec.p_noised, torch.randint(0, 1000, (n,), generator=gen),
                             torch.zeros(n, dtype=torch.long))
        scaled = (embeds[idx] - normalizer.mean) / normalizer.std
        noised = noising.add_noise(scaled, torch.randn(scaled.shape, generator=gen), levels)
        labels = torch.cat([noised * normalizer.std + normalizer.mean,
                            get_timestep_embedding(levels, dim, flip_sin_to_cos=True, downscale_freq_shift=0)], 1)
        return _denoise_step(unet, scheduler, latents.scaled[idx], empty.expand(n, -1, -1), gen, spec,
                             class_labels=labels.detach())

    tail = run_loop("unclip", unet.parameters(), spec.loop, step, out / "pretrain_log.jsonl")
    image_encoder = CLIPVisionModelWithProjection(clip.config.vision_config)
    image_encoder.vision_model.load_state_dict(clip.vision_model.state_dict(), strict=True)
    image_encoder.visual_projection.load_state_dict(clip.visual_projection.state_dict(), strict=True)
    StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor.from_pretrained(clip_dir), image_encoder=image_encoder,
        image_normalizer=normalizer, image_noising_scheduler=noising, tokenizer=tokenizer, text_encoder=text_encoder,
        unet=unet.eval(), scheduler=DDIMScheduler(**SAMPLER), vae=vae,
    ).save_pretrained(out)
    return {"final_loss": tail, "spec": asdict(spec)}
