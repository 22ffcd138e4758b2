"""The zoo's tiny generators: hub layouts that the real diffusers pipelines load and run."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava_plugin.toy import Zoo
from llava_plugin.toy.diffusion import write_generators, write_tiny_sd21
from llava_plugin.toy.vision import write_tiny_clip


@pytest.fixture(scope="module")
def gen_zoo(tmp_path_factory):
    zoo = Zoo(root=tmp_path_factory.mktemp("gen_zoo"))
    zoo.clip = write_tiny_clip(zoo.root / "models" / "clip", seed=0)
    write_generators(zoo, seed=0)
    return zoo


def _image(size=32, seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_sd21_layout_and_one_step(gen_zoo):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    index = json.loads((gen_zoo.sd21 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    pipe = StableDiffusionPipeline.from_pretrained(gen_zoo.sd21)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.unet.config.use_linear_projection and pipe.unet.config.cross_attention_dim == 32
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.model_max_length == 77  # SD-2's padding
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert isinstance(
        UNet2DConditionModel.from_pretrained(gen_zoo.sd21, subfolder="unet"), UNet2DConditionModel
    )
    out = pipe(
        "a red circle", num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert out.shape == (1, side, side, 3) and np.isfinite(out).all()


def test_unclip_image_encoder_is_the_tiny_clip_tower(gen_zoo):
    from diffusers import StableUnCLIPImg2ImgPipeline

    from llava_plugin.registry import load_tower

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(gen_zoo.unclip)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.image_noising_scheduler.config.beta_schedule == "squaredcos_cap_v2"
    embed_dim = pipe.image_encoder.config.projection_dim
    assert pipe.image_normalizer.config.embedding_dim == embed_dim == 16
    assert pipe.unet.config.class_embed_type == "projection"
    assert pipe.unet.config.projection_class_embeddings_input_dim == 2 * embed_dim
    tower = load_tower(str(gen_zoo.clip))
    pixels = tower.preprocess([_image()])
    with torch.no_grad():
        expected = tower.forward(pixels).image_embeds
        got = pipe.image_encoder(pixel_values=pixels).image_embeds
    # Two different modules (CLIPModel.get_image_features vs CLIPVisionModelWithProjection) on the same
    # weights: mathematically equal, but free to order their float ops differently (1.2e-7 seen on AMD EPYC).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    out = pipe(
        image=_image(),
        prompt="",
        num_inference_steps=1,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape[0] == 1 and np.isfinite(out).all()


def test_vq_roundtrip_shapes(gen_zoo):
    from diffusers import VQModel

    vq = VQModel.from_pretrained(gen_zoo.vqgan)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = vq.encode(x).latents
        decoded = vq.decode(latents).sample
    assert latents.shape == (2, 4, 8, 8) and decoded.shape == x.shape


def test_deterministic_by_seed(tmp_path):
    def digest(seed, name):
        out = write_tiny_sd21(tmp_path / name, seed)
        return hashlib.sha256((out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()

    assert digest(0, "a") == digest(0, "b") != digest(1, "c")


def test_flux_vae_layout_and_roundtrip(gen_zoo):
    """FLUX.1-dev's vae/ subfolder: a 16-channel AutoencoderKL with shift_factor and no quant convs."""
    from diffusers import AutoencoderKL

    config = json.loads((gen_zoo.flux_vae / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"
    assert (config["latent_channels"], config["scaling_factor"], config["shift_factor"]) == (16, 0.3611, 0.1159)
    assert not config["use_quant_conv"] and not config["use_post_quant_conv"]
    vae = AutoencoderKL.from_pretrained(gen_zoo.flux_vae, subfolder="vae")
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
        assert latents.shape == (1, 16, 8, 8)
        assert vae.decode(latents).sample.shape == pixels.shape
