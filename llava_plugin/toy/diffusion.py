"""Tiny generators in the exact diffusers hub layouts: Stable Diffusion 2.1-base, Stable
unCLIP 2.1 (image variation), FLUX.1-dev's autoencoder, and a VQ autoencoder.

Each is written by the real pipeline/model `save_pretrained`, so `from_pretrained(dir)` runs
the real loading code. Only sizes differ from the hub checkpoints; the component classes,
scheduler configs, tokenizer conventions (SD-2's "!" padding) and the unCLIP conditioning
layout (image embedding + noise-level embedding -> UNet `class_labels`) are the real ones.
The unCLIP image encoder is the tiny CLIP tower's own vision weights, so that tower can
stand in for it exactly as the 1024-wide OpenCLIP-H tower does for the real pipeline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llava_plugin.convert import clip_bpe_tokenizer
from llava_plugin.toy.vision import TINY_PROJECTION_DIM

# SD-2.x: 4 latent channels, VAE scaling factor 0.18215, linear-projection transformers,
# `attention_head_dim` read by diffusers as heads per block. Sizes are ours.
LATENT_CHANNELS = 4
VAE_SCALING_FACTOR = 0.18215
TEXT_WIDTH = 32  # SD-2.1's text encoder (OpenCLIP-H text) is 1024 wide; the UNet's cross-attention dim
TINY_UNET = dict(
    sample_size=8,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    norm_num_groups=8,
)
# two blocks -> downsampling factor 2: 8x8 latents <-> 16 px images
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=LATENT_CHANNELS,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8,
    sample_size=16,
    scaling_factor=VAE_SCALING_FACTOR,
)
# FLUX.1-dev's vae/config.json: 16 latent channels, latents mapped as (z - 0.1159) * 0.3611, no
# quant/post-quant convs (GenHancer's Continuous/src/flux/util.py, AutoEncoderParams of "flux-dev",
# has the same z_channels, scale_factor and shift_factor). The hub VAE has 4 blocks (8x); ours 2.
FLUX_LATENT_CHANNELS = 16
FLUX_VAE_SCALING_FACTOR = 0.3611
FLUX_VAE_SHIFT_FACTOR = 0.1159
TINY_FLUX_VAE = dict(
    TINY_VAE,
    latent_channels=FLUX_LATENT_CHANNELS,
    scaling_factor=FLUX_VAE_SCALING_FACTOR,
    shift_factor=FLUX_VAE_SHIFT_FACTOR,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
# SD-2.1-base's scheduler_config.json (PNDM for sampling; training scripts read it as DDPM)
SD21_BASE_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    prediction_type="epsilon",
)
# stable-diffusion-2-1-unclip: DDIM with v-prediction; image embeddings noised on a cosine DDPM schedule
UNCLIP_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
)
UNCLIP_NOISING_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True
)
TINY_VQ = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    vq_embed_dim=4,
    num_vq_embeddings=64,
    layers_per_block=1,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=8,
    sample_size=32,
)


def write_generators(zoo, seed: int) -> None:
    if zoo.clip is None:
        raise ValueError(
            "toy part 'diffusion' needs part 'vision' first (the unCLIP image encoder is zoo.clip)"
        )
    models = zoo.root / "models"
    zoo.sd21 = write_tiny_sd21(models / "stable-diffusion-2-1-base-tiny", seed)
    zoo.unclip = write_tiny_unclip(models / "stable-diffusion-2-1-unclip-tiny", zoo.clip, seed + 1)
    zoo.vqgan = write_tiny_vq(models / "vqgan-tiny-f4", seed + 2)
    zoo.flux_vae = write_tiny_flux_vae(models / "FLUX.1-dev-tiny", seed + 3)


def _sd2_tokenizer():
    """SD-2's tokenizer: the CLIP BPE vocabulary with "!" as padding (open_clip pads with id 0)."""
    tokenizer = clip_bpe_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def _text_encoder(tokenizer, seed: int):
    """OpenCLIP-H's text tower as SD-2 ships it: a `CLIPTextModel` with GELU, used unprojected."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _vae(seed: int, config: dict = TINY_VAE):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**config)


def write_tiny_flux_vae(out: Path, seed: int) -> Path:
    """black-forest-labs/FLUX.1-dev as GenHancer uses it: only its `vae/` subfolder (download it with
    `--include "vae/*"`); the rest of the FLUX pipeline (the 12B transformer, T5, CLIP-L) is never read."""
    _vae(seed, TINY_FLUX_VAE).save_pretrained(out / "vae")
    return out


def write_tiny_sd21(out: Path, seed: int) -> Path:
    """A stabilityai/stable-diffusion-2-1-base lookalike (epsilon prediction)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor

    tokenizer = _sd2_tokenizer()
    text_encoder = _text_encoder(tokenizer, seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**TINY_UNET)
    pipe = StableDiffusionPipeline(
        vae=_vae(seed + 2),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD21_BASE_SCHEDULER),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(
            crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}
        ),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


def write_tiny_unclip(out: Path, clip_dir: Path, seed: int) -> Path:
    """A stabilityai/stable-diffusion-2-1-unclip lookalike whose image encoder is the tiny CLIP
    tower at `clip_dir` (its vision weights and visual projection, loaded strictly)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    clip = CLIPModel.from_pretrained(clip_dir)
    image_encoder = CLIPVisionModelWithProjection(clip.config.vision_config)
    image_encoder.vision_model.load_state_dict(clip.vision_model.state_dict(), strict=True)
    image_encoder.visual_projection.load_state_dict(clip.visual_projection.state_dict(), strict=True)
    embed_dim = image_encoder.config.projection_dim
    if embed_dim != TINY_PROJECTION_DIM:
        raise ValueError(f"{clip_dir}: projection_dim {embed_dim}, expected {TINY_PROJECTION_DIM}")
    torch.manual_seed(seed)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
    with torch.no_grad():  # real statistics are not 0/1; make scale/unscale do something
        normalizer.mean.normal_(0.0, 0.1)
        normalizer.std.uniform_(0.5, 1.5)
    tokenizer = _sd2_tokenizer()
    text_encoder = _text_encoder(tokenizer, seed + 1)
    torch.manual_seed(seed + 2)
    # the class embedding reads [image embedding, noise-level embedding], each embed_dim wide
    unet = UNet2DConditionModel(
        **TINY_UNET, class_embed_type="projection", projection_class_embeddings_input_dim=2 * embed_dim
    )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor.from_pretrained(clip_dir),
        image_encoder=image_encoder,
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(**UNCLIP_NOISING_SCHEDULER),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=DDIMScheduler(**UNCLIP_SCHEDULER),
        vae=_vae(seed + 3),
    )
    pipe.save_pretrained(out)
    return out


def write_tiny_vq(out: Path, seed: int) -> Path:
    """A diffusers `VQModel` directory: 32 px images <-> 8x8 codes from a 64-entry codebook."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    VQModel(**TINY_VQ).save_pretrained(out)
    return out
