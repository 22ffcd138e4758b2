"""un2CLIP on the tiny zoo: the tower replaces unCLIP's image encoder exactly, the pipeline's
own embedding noising, width checks, caching, and a short plain training loop."""

import json
import random
import shutil

import pytest
import torch

from enhance.generators.sd import GeneratorError
from enhance.methods.base import get_method
from enhance.methods.un2clip import Un2Clip, Un2ClipConfig
from llava_plugin.config import ConfigError, from_dict
from llava_plugin.registry import load_tower
from llava_plugin.toy.scenes import draw_scene


def scenes(n, size=(40, 36), seed=0):
    rng = random.Random(seed)
    return [draw_scene(rng, size).image for _ in range(n)]


def make(zoo, generator=None, tower=None, **cfg) -> Un2Clip:
    return Un2Clip(
        from_dict(Un2ClipConfig, cfg), load_tower(str(tower or zoo.clip)), str(generator or zoo.unclip)
    )


@pytest.fixture(scope="module")
def method(zoo) -> Un2Clip:
    """An untrained un2CLIP with the default config, for the tests that only read from it."""
    return make(zoo)


def test_registered_without_trainable_extras(method):
    assert get_method("un2clip") is Un2Clip
    assert {id(p) for g in method.trainable_parameters() for p in g["params"]} == {
        id(p) for p in method.tower.parameters()
    }  # no projector: the tower alone trains
    assert set(method.frozen) == {"unet", "vae", "image_normalizer"}
    assert method.generator.prediction_type == "v_prediction"  # what stable-diffusion-2-1-unclip ships


def test_tower_embedding_is_what_the_pipelines_image_encoder_gives(zoo, method):
    from diffusers import StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(zoo.unclip)
    images = scenes(2, size=(40, 40))  # square: both processors then see the same pixels
    batch = method.preprocess(images)
    pixels = pipe.feature_extractor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = method.encode_condition(batch)["image_embeds"]
        torch.testing.assert_close(embeds, pipe.image_encoder(pixels).image_embeds)
        for level in (0, 500):
            ours = method.generator.noise_image_embeddings(embeds, level, torch.Generator().manual_seed(3))
            noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(3))
            theirs = pipe.noise_image_embeddings(embeds, level, noise=noise)
            assert ours.shape == (2, pipe.unet.config.projection_class_embeddings_input_dim)
            torch.testing.assert_close(ours, theirs)
    prompt, _ = pipe.encode_prompt("", "cpu", 1, False)
    torch.testing.assert_close(method.prompt_embeds, prompt)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_plain_loop_trains_the_tower_only(zoo, tmp_path, prediction_type):
    generator = tmp_path / "unclip"
    shutil.copytree(zoo.unclip, generator)
    config = generator / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": prediction_type}))
    torch.manual_seed(0)
    method = make(zoo, generator=generator)
    assert method.generator.prediction_type == prediction_type
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    frozen_before = method.frozen_state_fingerprint()
    tower_before = {k: v.clone() for k, v in method.tower.state_dict().items()}

    def loss_at(seed):
        with torch.no_grad():
            return method.denoising_loss(
                batch, method.encode_condition(batch), torch.Generator().manual_seed(seed)
            )

    # the embedding reaches a random tiny UNet only through its class-embedding MLP, so its
    # pull on the loss is weak next to the spread over t: train and measure at one fixed draw
    before = loss_at(123).mean()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2)
    method.train()
    for _ in range(15):
        loss = method(batch, torch.Generator().manual_seed(123)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()

    assert loss_at(123).mean() < 0.97 * before
    assert method.frozen_state_fingerprint() == frozen_before
    assert any(not torch.equal(tower_before[k], v) for k, v in method.tower.state_dict().items())


def test_width_mismatch_fails_early_naming_both_sizes(zoo):
    siglip = load_tower(str(zoo.siglip))  # no projection: image_embeds are its 32-wide pooled output
    assert siglip.sizes.embed_dim == 32
    with pytest.raises(GeneratorError, match=r"embeddings 32 wide .* expects 16 .*input 32"):
        make(zoo, tower=zoo.siglip)


def test_bad_generator_and_noise_level_are_refused(zoo):
    with pytest.raises(GeneratorError, match="image_normalizer/"):
        make(zoo, generator=zoo.sd21)
    with pytest.raises(ConfigError, match="noise_level=1000"):
        make(zoo, noise_level=1000)
    with pytest.raises(ConfigError, match="num_noise_draws"):
        from_dict(Un2ClipConfig, {"num_noise_draws": 0})


def test_cached_targets_give_the_same_loss(method, tmp_path):
    images = scenes(3)
    cached = method.preprocess(images)
    cached |= method.encode_targets(cached)
    # un2CLIP samples the posterior (sample_latents), so the cache keeps its log-variance too
    assert sorted(k for k in cached if k.startswith("latent")) == ["latent_logvar", "latent_mean"]
    torch.save({k: cached[k] for k in ("latent_mean", "latent_logvar")}, tmp_path / "cache.pt")
    from_cache = method.preprocess(images) | torch.load(tmp_path / "cache.pt")
    fresh = method.preprocess(images)
    fresh |= method.encode_targets(fresh)
    with torch.no_grad():
        condition = method.encode_condition(fresh)
        a = method.denoising_loss(from_cache, condition, torch.Generator().manual_seed(7))
        b = method.denoising_loss(fresh, condition, torch.Generator().manual_seed(7))
        c = method.denoising_loss(fresh, condition, torch.Generator().manual_seed(8))
    assert a.shape == (3,)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_condition_reaches_the_unet(method):
    """A different image embedding at the same t and noise changes the loss: the class path is wired."""
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    with torch.no_grad():
        condition = method.encode_condition(batch)
        own = method.denoising_loss(
            batch, condition, torch.Generator().manual_seed(0), timesteps=torch.tensor(500)
        )
        swapped = method.denoising_loss(
            batch,
            {"image_embeds": condition["image_embeds"].flip(0)},
            torch.Generator().manual_seed(0),
            timesteps=torch.tensor(500),
        )
    assert not torch.allclose(own, swapped)


def test_normaliser_gets_no_gradient_even_after_its_own_to(zoo):
    """diffusers' StableUnCLIPImageNormalizer.to() re-creates its statistics with requires_grad=True."""
    method = make(zoo, noise_level=100)
    normalizer = method.frozen["image_normalizer"]
    normalizer.to(torch.float32)  # as a trainer casting the frozen modules does
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    method(batch, torch.Generator().manual_seed(0)).loss.backward()
    assert normalizer.mean.grad is None and normalizer.std.grad is None
    assert any(p.grad is not None for p in method.tower.parameters())
