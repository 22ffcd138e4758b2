"""DIVA on the tiny zoo: the condition path, each branch's pixels, targets by prediction type,
caching, and a short plain training loop (generator frozen, tower and projector train)."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from enhance.generators.sd import GeneratorError, LatentDiffusion, vae_pixels
from enhance.methods.base import get_method
from enhance.methods.diva import Diva, DivaConfig
from llava_plugin.config import ConfigError, from_dict
from llava_plugin.registry import load_tower
from llava_plugin.toy.scenes import draw_scene


def scenes(n, size=(40, 36), seed=0):
    rng = random.Random(seed)
    return [draw_scene(rng, size).image for _ in range(n)]


def make(zoo, generator=None, **cfg) -> Diva:
    torch.manual_seed(0)
    return Diva(from_dict(DivaConfig, cfg), load_tower(str(zoo.clip)), str(generator or zoo.sd21))


@pytest.fixture(scope="module")
def method(zoo) -> Diva:
    """An untrained DIVA with the default config, for the tests that only read from it."""
    return make(zoo)


def with_prediction_type(src, dst, prediction_type):
    shutil.copytree(src, dst)
    path = dst / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": prediction_type}))
    return dst


def loss_at(method, batch, seed):
    with torch.no_grad():
        return method.denoising_loss(
            batch, method.encode_condition(batch), torch.Generator().manual_seed(seed)
        )


def test_registered_with_documented_config():
    assert get_method("diva") is Diva
    cfg = DivaConfig()
    assert (cfg.num_noise_draws, cfg.num_patch_tokens, cfg.prompt) == (2, 76, "a photo of a .")
    with pytest.raises(ConfigError, match="num_noise_draws"):
        from_dict(DivaConfig, {"num_noise_draws": 0})


def test_plain_loop_trains_tower_and_projector_only(zoo):
    method = make(zoo)
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    frozen_before = method.frozen_state_fingerprint()
    tower_before = {k: v.clone() for k, v in method.tower.state_dict().items()}
    projector_before = method.projector.weight.detach().clone()
    trainable = {id(p) for group in method.trainable_parameters() for p in group["params"]}
    assert trainable == {id(p) for p in method.parameters()}  # tower + projector, nothing frozen
    assert not any(p.requires_grad for m in method.frozen.values() for p in m.parameters())

    before = loss_at(method, batch, seed=123).mean()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=3e-3)
    method.train()
    for step in range(20):
        loss = method(batch, torch.Generator().manual_seed(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
    after = loss_at(method, batch, seed=123).mean()

    assert after < 0.95 * before
    assert method.frozen_state_fingerprint() == frozen_before
    assert any(not torch.equal(tower_before[k], v) for k, v in method.tower.state_dict().items())
    assert not torch.equal(projector_before, method.projector.weight)


def test_vae_branch_gets_minus_one_to_one_pixels_not_the_towers(zoo, method):
    """Upstream DIVA fed CLIP-normalised pixels to the VAE; this fails if any tower normalisation leaks in."""
    side = method.resolution
    assert side == 16 and method.tower.sizes.image_size == 32  # the branches differ in size too
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    batch = method.preprocess([Image.fromarray(pixels)])
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() * 2 / 255 - 1
    torch.testing.assert_close(batch["generator_pixels"][0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch["pixel_values"], method.tower.preprocess([Image.fromarray(pixels)]))
    assert (
        batch["pixel_values"].min() < -1.2 or batch["pixel_values"].max() > 1.2
    )  # CLIP's mean/std, not [-1, 1]

    # the cached target is the posterior of exactly those pixels
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(zoo.sd21, subfolder="vae")
    with torch.no_grad():
        reference = vae.encode(expected[None]).latent_dist
    targets = method.encode_targets(batch)
    # DIVA reads the posterior mean (sample_latents false): that is all a cache stores
    assert sorted(targets) == ["latent_mean"]
    torch.testing.assert_close(targets["latent_mean"], reference.mean)
    torch.testing.assert_close(make(zoo, sample_latents=True).encode_targets(batch)["latent_logvar"], reference.logvar)


def test_vae_pixels_resize_shortest_side_then_centre_crop():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 60, 3), dtype=np.uint8))  # 60 x 30
    got = vae_pixels([image, image.convert("L")], 16)
    crop = np.array(image.resize((32, 16), Image.BICUBIC))[:, 8:24]
    torch.testing.assert_close(got[0], torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1)
    assert got.shape == (2, 3, 16, 16) and torch.equal(got[1][0], got[1][2])  # greyscale -> RGB


def test_both_branches_see_the_same_square_with_a_squashing_tower(zoo):
    """SigLIP's processor squashes a non-square image; the VAE branch crops: both get the centre square."""
    method = Diva(DivaConfig(), load_tower(str(zoo.siglip)), str(zoo.sd21))
    image = Image.new("RGB", (48, 32), (255, 0, 0))
    image.paste((0, 0, 255), (8, 0, 40, 32))  # red margins outside the centred 32 x 32 square
    square = image.crop((8, 0, 40, 32))
    batch = method.preprocess([image])
    torch.testing.assert_close(batch["pixel_values"], method.tower.preprocess([square]))
    assert not torch.allclose(batch["pixel_values"], method.tower.preprocess([image]))
    torch.testing.assert_close(batch["generator_pixels"], vae_pixels([square], method.resolution))
    with torch.no_grad():  # no CLS, no projection: the attention-pooled token leads the patches
        tokens = method.encode_condition(batch)["tokens"]
    assert tokens.shape == (1, 1 + 16, 32)


def test_condition_is_cls_and_patches_through_post_ln_projection_and_projector(zoo, method):
    from transformers import CLIPModel

    batch = method.preprocess(scenes(2))
    clip = CLIPModel.from_pretrained(zoo.clip).eval()
    with torch.no_grad():
        tokens = method.encode_condition(batch)["tokens"]
        hidden = clip.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state  # before post-LN
        expected = method.projector(clip.visual_projection(clip.vision_model.post_layernorm(hidden)))
        cls = method.projector(clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output)
    assert tokens.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], cls, rtol=1e-5, atol=1e-5)


def test_context_adds_tokens_to_the_prompt_embedding(zoo, method):
    assert method.prompt_embeds.shape == (1, 77, 32)
    tokens = torch.randn(2, 17, 32)
    ids = torch.randint(0, 16, (2, 76))
    context = method.context(tokens, ids)
    chosen = torch.stack([tokens[b, 1:][ids[b]] for b in range(2)])
    torch.testing.assert_close(context - method.prompt_embeds, torch.cat([tokens[:, :1], chosen], 1))

    mean_mode = make(zoo, num_patch_tokens=4, combine="add_to_prompt_mean")
    context = mean_mode.context(tokens, ids[:, :4])
    assert context.shape == (2, 5, 32)
    torch.testing.assert_close(context[:, 0], tokens[:, 0] + mean_mode.prompt_embeds.mean(1))
    with pytest.raises(ConfigError, match="num_patch_tokens=76 with patch_tokens='random', or combine="):
        make(zoo, num_patch_tokens=4)


def test_upstreams_other_patch_choices_all_and_window_mean(zoo):
    """MetaCLIP/DFN-224 (every patch in order) and SigLIP (means over windows, remainder dropped): the
    same condition for every draw, so no random token choice."""
    tokens = torch.randn(2, 17, 32)  # the global token + the zoo CLIP's 16 patches
    every = make(zoo, patch_tokens="all", num_patch_tokens=0, combine="add_to_prompt_mean")
    prompt_mean = every.prompt_embeds.mean(1, keepdim=True)
    torch.testing.assert_close(every.context(tokens), tokens + prompt_mean)
    windows = make(zoo, patch_tokens="window_mean", patch_window=6, num_patch_tokens=0, combine="add_to_prompt_mean")
    expected = torch.cat([tokens[:, :1], tokens[:, 1:7].mean(1, keepdim=True), tokens[:, 7:13].mean(1, keepdim=True)],
                         dim=1)  # 16 // 6 = 2 windows; patches 13-16 dropped, as avg_pool1d drops them
    torch.testing.assert_close(windows.context(tokens), expected + prompt_mean)
    batch = windows.preprocess(scenes(2))
    batch |= windows.encode_targets(batch)
    condition = windows.encode_condition(batch)
    with torch.no_grad():  # the token choice draws nothing from the rng: same t and noise, same loss
        first = windows.denoising_loss(batch, condition, torch.Generator().manual_seed(3))
        again = windows.denoising_loss(batch, condition, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)
    with pytest.raises(ConfigError, match="num_patch_tokens=42 counts random draws"):
        from_dict(DivaConfig, {"patch_tokens": "window_mean", "num_patch_tokens": 42})
    with pytest.raises(ConfigError, match="patch_window=20: wider than the tower's 16 patches"):
        make(zoo, patch_tokens="window_mean", patch_window=20, num_patch_tokens=0, combine="add_to_prompt_mean")
    with pytest.raises(ConfigError, match="the global token \\+ 16 patch tokens\\) must have the prompt"):
        make(zoo, patch_tokens="all", num_patch_tokens=0)


@pytest.mark.parametrize("preset, mode, window", [
    ("diva-metaclip-l14-224", "all", None), ("diva-metaclip-h14-224", "all", None),
    ("diva-dfn-h14-224", "all", None), ("diva-siglip-so14-224", "window_mean", 6),
    ("diva-siglip-so14-384", "window_mean", 10), ("diva-openai-l14-224", "random", None),
    ("diva-dfn-h14-378", "random", None)])
def test_paper_presets_choose_patches_as_upstream(preset, mode, window):
    from enhance.config import load_config

    cfg = load_config(preset=preset).method_config()
    assert cfg.patch_tokens == mode and (window is None or cfg.patch_window == window)


def test_prompt_embedding_is_the_pipelines(zoo, method):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(zoo.sd21)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("a photo of a .", "cpu", 1, False)
    torch.testing.assert_close(method.prompt_embeds, expected)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_target_follows_the_schedulers_prediction_type(zoo, tmp_path, prediction_type):
    gen = LatentDiffusion(with_prediction_type(zoo.sd21, tmp_path / "sd", prediction_type))
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    alpha = gen.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": noise, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * latents,
                "sample": latents}[prediction_type]  # sample: x0-prediction, the clean latents
    torch.testing.assert_close(gen.target(latents, noise, t), expected)
    torch.testing.assert_close(
        gen.add_noise(latents, noise, t), alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    )


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_types_train_too(zoo, tmp_path, prediction_type):
    method = make(zoo, generator=with_prediction_type(zoo.sd21, tmp_path / "sd", prediction_type))
    assert method.generator.prediction_type == prediction_type
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    loss = method(batch, torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert torch.isfinite(loss) and method.projector.weight.grad.abs().sum() > 0


def test_unknown_prediction_type_and_wrong_pipeline_are_refused(zoo, tmp_path):
    with pytest.raises(GeneratorError, match="prediction_type='flow' is not supported"):
        make(zoo, generator=with_prediction_type(zoo.sd21, tmp_path / "sd", "flow"))
    with pytest.raises(GeneratorError, match="stable-diffusion-2-1-base"):
        make(zoo, generator=zoo.unclip)
    with pytest.raises(GeneratorError, match="model_index.json"):
        make(zoo, generator=tmp_path)
    with pytest.raises(GeneratorError, match="not loadable from the hub cache"):
        make(zoo, generator="genfeedback-tests/not-a-cached-pipeline")


def test_cached_targets_give_the_same_loss(zoo, tmp_path):
    method = make(zoo, sample_latents=True)  # the posterior draw comes from the rng too
    images = scenes(3)
    cached = method.preprocess(images)
    cached |= method.encode_targets(cached)
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
    assert not torch.equal(a, c)  # the rng does drive t, noise and the token choice


def test_fixed_timesteps_and_range(method):
    assert method.timestep_range() == (0.0, 1000.0)
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    with torch.no_grad():
        condition = method.encode_condition(batch)
        low = method.denoising_loss(
            batch, condition, torch.Generator().manual_seed(0), timesteps=torch.tensor(10)
        )
        per_sample = method.denoising_loss(
            batch, condition, torch.Generator().manual_seed(0), timesteps=torch.tensor([10, 10])
        )
    torch.testing.assert_close(low, per_sample, rtol=0, atol=0)


def test_upstream_draw_weighting_applies_five_times_the_first_draw_plus_the_second(zoo):
    """baaivision/DIVA back-propagates its first pass inside forward, undivided, and hands the second to
    the HF Trainer, which divides it by the 5 accumulation steps: per step 5 g(draw 1) + g(draw 2)."""
    method = make(zoo, draw_weighting="upstream")
    batch = method.preprocess(scenes(2))
    batch |= method.encode_targets(batch)
    method.eval()

    def grads(weights=None):
        if weights is not None:
            method.draw_weights = lambda: weights
        method.zero_grad()
        method(batch, torch.Generator().manual_seed(7)).loss.backward()
        vars(method).pop("draw_weights", None)  # back to the class's
        return torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])

    upstream = grads()
    first, second = grads([1.0, 0.0]), grads([0.0, 1.0])
    assert torch.allclose(upstream, 5 * first + second, rtol=1e-5, atol=1e-6)
    method.cfg.draw_weighting = "mean"
    assert torch.allclose(grads(), (first + second) / 2, rtol=1e-5, atol=1e-6)


def test_paper_presets_weight_the_draws_as_upstream():
    from enhance.config import load_config

    for preset in ("diva", "diva-openai-l14-224", "diva-siglip-so14-384"):
        cfg = load_config(preset, overrides={"vision_tower": "v", "generator": "g", "output_dir": "o"})
        assert (cfg.method["draw_weighting"], cfg.method["upstream_accumulation"]) == ("upstream", 5), preset
    from enhance.config import PRESET_DIR, load_yaml_preset

    world = load_yaml_preset(PRESET_DIR, "world-diva")["method"]
    assert world.get("draw_weighting", "mean") == "mean"  # what the world study ran with
