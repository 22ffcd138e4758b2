"""GenHancer, both variants, both stages, on the tiny zoo (plain torch AdamW loops, CPU).

Stage 1 trains the denoiser + condition MLPs with the tower and tokenizer frozen and writes
them out; stage 2 loads that output, trains only the tower's LoRA, and exports a plain HF
tower whose features equal the LoRA-wrapped tower's.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from enhance.generators.flow_dit import FlowDiTConfig
from enhance.generators.vq import MaskedDenoiserConfig
from enhance.methods.base import get_method
from enhance.methods.genhancer import GENERATOR_DIR, GENERATOR_FILE, GenHancerConfig
from enhance.methods.genhancer_discrete import GenHancerDiscreteConfig
from llava_plugin.config import ConfigError, from_dict
from llava_plugin.registry import load_tower

STEPS = 30
TINY_FLOW = FlowDiTConfig(num_double_blocks=1, num_single_blocks=1, num_heads=2, head_dim=16, pooled_dim=16,
                          context_dim=32, axes_dims_rope=(4, 6, 6))
TINY_MASKED = MaskedDenoiserConfig(depth=2, width=32, num_heads=2, pooled_dim=16, context_dim=32)
VARIANTS = {
    "genhancer": (GenHancerConfig, TINY_FLOW, "flux_vae"),  # upstream's autoencoder: FLUX.1-dev's
    "genhancer-discrete": (GenHancerDiscreteConfig, TINY_MASKED, "vqgan"),
}


@pytest.fixture(scope="module")
def gen_zoo(tmp_path_factory):
    """Only the parts GenHancer needs: the tiny CLIP, FLUX.1-dev's VAE, SD-2.1 (the alternative VAE)
    and the VQ model."""
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("gen_zoo"), seed=0, parts=["vision", "diffusion"])


def _config(name: str, stage: int):
    cfg_cls, denoiser, _ = VARIANTS[name]
    return cfg_cls(stage=stage, denoiser=denoiser)


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _hash(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, v in state.items()}


def _eval_loss(method, batch) -> float:
    """The loss at fixed noise / timesteps / masks, in eval mode (no LoRA dropout)."""
    was_training = method.training
    method.eval()
    with torch.no_grad():
        loss = method(batch, torch.Generator().manual_seed(123)).loss.item()
    method.train(was_training)
    return loss


def _train(method, batch, lr: float) -> None:
    params = [p for group in method.trainable_parameters() for p in group["params"]]
    optimizer = torch.optim.AdamW(params, lr=lr)
    method.train()
    for step in range(STEPS):
        loss = method(batch, torch.Generator().manual_seed(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@dataclass
class Stage1:
    method: object
    run_dir: object
    batch: dict
    loss_before: float
    loss_after: float
    tower_before: dict
    frozen_before: dict


@pytest.fixture(scope="module", params=list(VARIANTS))
def stage1(request, gen_zoo, tmp_path_factory):
    name = request.param
    method = get_method(name)(_config(name, 1), load_tower(str(gen_zoo.clip)),
                              str(getattr(gen_zoo, VARIANTS[name][2])))
    batch = method.preprocess(_images())
    batch |= method.encode_targets(batch)
    tower_before = _hash(method.tower.state_dict())
    frozen_before = method.frozen_state_fingerprint()
    loss_before = _eval_loss(method, batch)
    _train(method, batch, lr=1e-3)
    run_dir = tmp_path_factory.mktemp(f"{name}-stage1")
    method.save_extras(run_dir)
    return Stage1(method, run_dir, batch, loss_before, _eval_loss(method, batch), tower_before, frozen_before)


def test_stage1_trains_denoiser_and_mlps_only(stage1):
    method = stage1.method
    assert stage1.loss_after < 0.9 * stage1.loss_before, (stage1.loss_before, stage1.loss_after)
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n in trainable} == {"denoiser", "projector"}
    assert sum(len(g["params"]) for g in method.trainable_parameters()) == len(trainable)
    assert _hash(method.tower.state_dict()) == stage1.tower_before
    assert method.frozen_state_fingerprint() == stage1.frozen_before
    assert set(method.frozen) == {"tokenizer"}


def test_stage1_condition_is_the_global_token_through_two_mlps(stage1):
    method = stage1.method
    condition = method.encode_condition(stage1.batch)
    cfg = method.cfg.denoiser
    assert condition["pooled"].shape == (4, cfg.pooled_dim)
    assert condition["context"].shape == (4, 1, cfg.context_dim)
    # both MLPs read the tower's image_embeds (projected CLS) and nothing else
    embeds = method.tower(stage1.batch["pixel_values"]).image_embeds
    assert torch.allclose(condition["pooled"], method.projector.to_pooled(embeds))
    assert torch.allclose(condition["context"][:, 0], method.projector.to_context(embeds))


def test_stage1_output_layout(stage1):
    out = stage1.run_dir / GENERATOR_DIR
    meta = json.loads((out / GENERATOR_FILE).read_text())
    assert meta["method"] == stage1.method.name
    assert meta["projector"]["embed_dim"] == stage1.method.tower.sizes.embed_dim
    assert (out / "denoiser" / "config.json").is_file()
    # the frozen tokenizer is copied byte for byte from where stage 1 loaded it
    copied = out / stage1.method.tokenizer_dir
    source = stage1.method.tokenizer_source
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in source.iterdir())
    assert all((copied / p.name).read_bytes() == p.read_bytes() for p in source.iterdir())
    assert (out / "projector.safetensors").is_file()


@pytest.fixture(scope="module")
def stage2(stage1, gen_zoo):
    name = stage1.method.name
    method = get_method(name)(_config(name, 2), load_tower(str(gen_zoo.clip)), str(stage1.run_dir))
    frozen_before = method.frozen_state_fingerprint()
    base_before = {k: v.clone() for k, v in method.tower.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in method.tower.state_dict().items() if "lora_" in k}
    loss_before = _eval_loss(method, stage1.batch)
    _train(method, stage1.batch, lr=1e-2)
    return method, frozen_before, base_before, lora_before, loss_before, _eval_loss(method, stage1.batch)


def test_stage2_loads_stage1_and_trains_lora_only(stage1, stage2):
    method, frozen_before, base_before, lora_before, loss_before, loss_after = stage2
    # the frozen parts are exactly what stage 1 trained and saved
    assert _hash(method.frozen["denoiser"].state_dict()) == _hash(stage1.method.part("denoiser").state_dict())
    assert _hash(method.frozen["projector"].state_dict()) == _hash(stage1.method.projector.state_dict())
    assert set(method.frozen) == {"tokenizer", "denoiser", "projector"}
    assert not any(p.requires_grad for p in method.frozen["denoiser"].parameters())
    assert loss_after < loss_before, (loss_before, loss_after)
    assert method.frozen_state_fingerprint() == frozen_before
    state = method.tower.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_before.items())
    assert lora_before and any(not torch.equal(state[k], v) for k, v in lora_before.items())
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # LoRA reaches every attention and MLP linear of the vision encoder
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_stage2_all_trains_the_denoiser_and_mlps_from_their_stage1_weights(stage1, gen_zoo):
    """Upstream's stage2_all (Continuous/train_OpenAICLIP_stage2_all.py:165): the stage-1 denoiser and
    condition MLPs are loaded, then train beside the tower's LoRA, at the same lr."""
    name = stage1.method.name
    cfg = _config(name, 2)
    cfg.stage2_trains = "all"
    method = get_method(name)(cfg, load_tower(str(gen_zoo.clip)), str(stage1.run_dir))
    assert set(method.frozen) == {"tokenizer"}
    assert _hash(method.part("denoiser").state_dict()) == _hash(stage1.method.part("denoiser").state_dict())
    assert _hash(method.part("projector").state_dict()) == _hash(stage1.method.projector.state_dict())
    trainable = {n.split(".", 1)[0] for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"tower", "denoiser", "projector"}
    tower_trainable = [n for n, p in method.tower.named_parameters() if p.requires_grad]
    assert tower_trainable and all("lora_" in n for n in tower_trainable)
    [group] = method.trainable_parameters()
    assert len(group["params"]) == sum(p.requires_grad for p in method.parameters())
    before = _hash(method.part("denoiser").state_dict())
    loss_before = _eval_loss(method, stage1.batch)
    _train(method, stage1.batch, lr=1e-3)
    assert _hash(method.part("denoiser").state_dict()) != before
    assert _eval_loss(method, stage1.batch) < loss_before


def test_stage2_export_merges_lora(stage1, stage2, gen_zoo, tmp_path):
    from transformers import CLIPVisionModel

    method = stage2[0]
    exported = method.export_tower()
    out = exported.save_pretrained(tmp_path / "tower", metadata={"method": method.name})
    plain = CLIPVisionModel.from_pretrained(out).eval()
    assert not [k for k in plain.state_dict() if "lora" in k or "base_layer" in k]
    pixels = stage1.batch["pixel_values"]
    method.eval()
    with torch.no_grad():
        wrapped = method.tower(pixels).hidden_states
        loaded = plain(pixel_values=pixels, output_hidden_states=True).hidden_states
        base = load_tower(str(gen_zoo.clip))(pixels).hidden_states
    assert (wrapped[-1] - loaded[-1]).abs().max() < 1e-5
    assert (wrapped[-1] - base[-1]).abs().max() > 1e-3
    # the export is a copy: the training tower still has its adapters
    assert any("lora_" in k for k in method.tower.state_dict())
    # and the registry reads it back as an ordinary CLIP tower
    assert load_tower(str(out)).family == "hf_clip"


def test_stage2_refuses_a_generator_that_does_not_fit(stage1, gen_zoo, tmp_path):
    name = stage1.method.name
    tower = str(gen_zoo.clip)
    with pytest.raises(ConfigError, match="run stage 1"):
        get_method(name)(_config(name, 2), load_tower(tower), str(tmp_path))
    other = "genhancer-discrete" if name == "genhancer" else "genhancer"
    with pytest.raises(ConfigError, match=f"trained by method '{name}'"):
        get_method(other)(_config(other, 2), load_tower(tower), str(stage1.run_dir))
    cfg = _config(name, 2)
    cfg.denoiser = type(cfg.denoiser)(**{**cfg.denoiser.__dict__, "num_heads": 4})
    with pytest.raises(ConfigError, match="method.denoiser.num_heads"):
        get_method(name)(cfg, load_tower(tower), str(stage1.run_dir))
    cfg = _config(name, 2)
    cfg.image_size = 64
    with pytest.raises(ConfigError, match="method.image_size"):
        get_method(name)(cfg, load_tower(tower), str(stage1.run_dir))


def test_configs_parse_from_yaml_dicts_and_reject_bad_values():
    cfg = from_dict(GenHancerConfig, {"stage": 2, "denoiser": {"axes_dims_rope": [4, 6, 6], "head_dim": 16},
                                      "lora": {"r": 8, "targets": "q_proj,v_proj"}}, "method.")
    assert cfg.stage == 2 and cfg.denoiser.axes_dims_rope == (4, 6, 6) and cfg.lora.targets == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="method.stage=3"):
        from_dict(GenHancerConfig, {"stage": 3})
    with pytest.raises(ConfigError, match="axes_dims_rope"):
        from_dict(GenHancerConfig, {"denoiser": {"head_dim": 64}})
    with pytest.raises(ConfigError, match="mask_schedule"):
        from_dict(GenHancerDiscreteConfig, {"mask_schedule": "square"})
    with pytest.raises(ConfigError, match="divisible"):
        from_dict(GenHancerDiscreteConfig, {"denoiser": {"width": 30, "num_heads": 4}})


def test_flux_packing_ids_and_flow_convention():
    from enhance.generators.flow_dit import (
        flow_interpolate,
        latent_image_ids,
        logit_normal_timesteps,
        pack_latents,
        unpack_latents,
    )

    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 16)
    # token 0 is the top-left 2x2 patch, channel-major: (c, dy, dx)
    assert torch.equal(packed[0, 0].view(4, 2, 2), latents[0, :, :2, :2])
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    ids = latent_image_ids(6, 8)
    assert ids.shape == (12, 3) and ids[5].tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="divisible by 2"):
        pack_latents(torch.randn(1, 4, 5, 8))
    x0, noise = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    x_t, target = flow_interpolate(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])
    assert torch.allclose(x_t[2], 0.75 * x0[2] + 0.25 * noise[2]) and torch.equal(target, noise - x0)
    t = logit_normal_timesteps(20000, 0.5, 2.0, torch.Generator().manual_seed(0), "cpu")
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 0.05 and abs(logit.std().item() - 2.0) < 0.05


def test_mask_schedule_and_random_mask():
    from enhance.generators.vq import mask_ratio, random_mask

    u = torch.tensor([0.0, 0.5, 0.999])
    assert torch.allclose(mask_ratio(u, "cosine"), torch.cos(torch.pi / 2 * u))
    assert torch.allclose(mask_ratio(u, "linear"), 1 - u)
    with pytest.raises(ValueError, match="known schedules"):
        mask_ratio(u, "square")
    masked = random_mask(torch.tensor([1.0, 0.5, 0.01, 0.3]), 10, torch.Generator().manual_seed(0), "cpu")
    assert masked.sum(dim=1).tolist() == [10, 5, 1, 3]
    again = random_mask(torch.tensor([1.0, 0.5, 0.01, 0.3]), 10, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(masked, again)


@pytest.mark.parametrize("name", ["genhancer", "genhancer-discrete"])
def test_paper_presets(name):
    from enhance.config import load_config

    stage1 = load_config(preset=f"{name}-openai-l14-224-stage1")
    stage2 = load_config(preset=f"{name}-openai-l14-224-stage2")
    assert stage1.method_name == stage2.method_name == name
    cfg1, cfg2 = stage1.method_config(), stage2.method_config()
    assert (cfg1.stage, stage1.optim.lr, cfg2.stage, stage2.optim.lr) == (1, 1e-4, 2, 1e-5)
    assert cfg1.architecture() == cfg2.architecture()  # stage 2 can load what stage 1 writes
    assert (cfg2.lora.r, cfg2.lora.alpha, cfg2.lora.dropout) == (16, 16, 0.1)
    assert stage1.optim.name == "adamw" and stage1.batch.global_batch_size == 256
    if name == "genhancer":
        assert (cfg1.denoiser.num_double_blocks, cfg1.denoiser.num_single_blocks) == (2, 4)
        assert (cfg1.logit_normal_mean, cfg1.logit_normal_std) == (0.0, 1.0)


def test_stage2_presets_match_their_upstream_variants():
    """stage2 = the paper's (denoiser frozen, upstream stage2_only), stage2-all trains it too; both put
    LoRA with bias 'lora_only' on every Linear of OpenAI/MetaCLIP towers and on the attention/MLP
    linears of SigLIP's, and export the tower at upstream's checkpoint steps."""
    from enhance.config import load_config

    for backbone in ("openai-l14-224", "openai-l14-336", "metaclip-l14-224", "metaclip-h14-224",
                     "siglip-so14-224", "siglip-so14-384"):
        default = load_config(preset=f"genhancer-{backbone}-stage2")
        only = load_config(preset=f"genhancer-{backbone}-stage2-only")
        every = load_config(preset=f"genhancer-{backbone}-stage2-all")
        assert only.to_dict() == default.to_dict()
        assert every.to_dict() == {**default.to_dict(), "method": {**default.method, "stage2_trains": "all"}}
        cfg = default.method_config()
        assert (cfg.stage, cfg.stage2_trains, cfg.lora.bias) == (2, "tower", "lora_only")
        expected = (["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"] if backbone.startswith("siglip")
                    else ["all-linear"])
        assert cfg.lora.targets == expected, backbone
        assert default.export.at_steps == [50, 100, 200, 300, 500, 1000, 2000, 3000]
        assert default.export.every_steps == 500
        assert [s for s in range(1, 5001) if default.export.due(s)] == [
            50, 100, 200, 300, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000]


def test_all_linear_lora_adapts_the_visual_projection(gen_zoo):
    """peft's 'all-linear' on a CLIP tower reaches visual_projection, the layer that makes the
    conditioning token (upstream's target_modules), and lora_only trains the adapted biases."""
    from enhance.methods.genhancer import LoraSettings, add_lora

    tower = load_tower(str(gen_zoo.clip))
    tower.model = add_lora(tower.model, LoraSettings(targets=["all-linear"], bias="lora_only"))
    trainable = [n for n, p in tower.model.named_parameters() if p.requires_grad]
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if "lora_" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "visual_projection"}
    assert any(n.endswith("fc1.base_layer.bias") for n in trainable)
    with pytest.raises(ConfigError, match="give it alone"):
        LoraSettings(targets=["all-linear", "fc1"]).validate()


@pytest.mark.parametrize("family,targets", [("clip", None), ("siglip", None), ("clip", ["all-linear"]),
                                            ("siglip", ["all-linear"])])
def test_lora_merge_matches_the_wrapped_tower(gen_zoo, family, targets):
    """Random adapters on every targeted linear: the merged plain model computes the same
    hidden states, pooled output and global embedding (SigLIP's attention-pool head included)."""
    from enhance.methods.genhancer import LoraSettings, add_lora, merged_tower

    tower = load_tower(str(getattr(gen_zoo, family)))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = tower(pixels)
    settings = LoraSettings() if targets is None else LoraSettings(targets=targets, bias="lora_only")
    tower.model = add_lora(tower.model, settings)
    tower.eval()
    with torch.no_grad():
        for name, param in tower.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
        wrapped = tower(pixels)
        merged = merged_tower(tower)(pixels)
    assert (wrapped.hidden_states[-1] - merged.hidden_states[-1]).abs().max() < 1e-5
    assert (wrapped.pooled - merged.pooled).abs().max() < 1e-5
    assert (wrapped.image_embeds - merged.image_embeds).abs().max() < 1e-5
    assert (wrapped.pooled - base.pooled).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_generator_sees_the_towers_crop_in_its_own_range(gen_zoo, family):
    """Upstream feeds one tensor to both branches: the generator's pixels are the tower's crop
    with the tower's normalisation undone, in [-1, 1]."""
    from enhance.methods.genhancer import generator_pixels

    tower = load_tower(str(getattr(gen_zoo, family)))
    # a wide image, red in its left quarter, blue elsewhere: CLIP's center crop keeps only blue,
    # SigLIP's squash keeps the red quarter
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 32))
    pixel_values = tower.preprocess([image])
    pixels = generator_pixels(pixel_values, tower.image_processor, 32)
    assert pixels.shape == (1, 3, 32, 32)
    red, blue = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1), torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1)
    left, right = pixels[0, :, :, :6], pixels[0, :, :, -6:]
    assert torch.allclose(right, blue.expand_as(right), atol=1e-2)
    assert torch.allclose(left, (red if family == "siglip" else blue).expand_as(left), atol=1e-2)
    assert generator_pixels(pixel_values, tower.image_processor, 16).shape == (1, 3, 16, 16)


def test_continuous_rejects_an_image_size_the_vae_cannot_pack(gen_zoo):
    cfg = _config("genhancer", 1)
    cfg.image_size = 34
    with pytest.raises(ConfigError, match="multiple of 4"):
        get_method("genhancer")(cfg, load_tower(str(gen_zoo.clip)), str(gen_zoo.sd21))


def test_continuous_runs_on_flux_latents_with_their_shift(gen_zoo):
    """FLUX.1-dev's AE (upstream's): 16 channels, latents (z - 0.1159) * 0.3611 (GenHancer
    Continuous/src/flux/util.py, flux-dev AutoEncoderParams)."""
    from enhance.generators.flow_dit import vae_scaled_latents

    method = get_method("genhancer")(_config("genhancer", 1), load_tower(str(gen_zoo.clip)), str(gen_zoo.flux_vae))
    vae = method.frozen["tokenizer"]
    assert (vae.config.latent_channels, vae.config.scaling_factor, vae.config.shift_factor) == (16, 0.3611, 0.1159)
    batch = method.preprocess(_images(2))
    targets = method.encode_targets(batch)
    assert targets["latent_mean"].shape[1] == 16
    zero_noise = torch.full_like(targets["latent_logvar"], -30.0)  # std ~ 3e-7: the mean itself
    latents = vae_scaled_latents(vae, targets["latent_mean"], zero_noise, torch.Generator().manual_seed(0))
    assert torch.allclose(latents, (targets["latent_mean"] - 0.1159) * 0.3611, atol=1e-5)
    assert method(batch | targets, torch.Generator().manual_seed(0)).loss.isfinite()


def test_continuous_takes_the_sd_vae_as_the_named_alternative(gen_zoo):
    """SD-2.1's 4-channel VAE (no shift) still works: a pipeline dir with vae/ is enough."""
    method = get_method("genhancer")(_config("genhancer", 1), load_tower(str(gen_zoo.clip)), str(gen_zoo.sd21))
    assert method.frozen["tokenizer"].config.latent_channels == 4
    batch = method.preprocess(_images(2))
    assert method(batch | method.encode_targets(batch), torch.Generator().manual_seed(0)).loss.isfinite()
