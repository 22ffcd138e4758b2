"""The tower registry on the tiny zoo: every family by spec, LLaVA feature selection, saving,
open_clip conversion equivalence, and clear errors for bad specs and files."""
import json

import pytest
import torch
from PIL import Image

from llava_plugin.registry import FAMILIES, TowerSpecError, list_families, load_tower


def family_specs(zoo) -> dict[str, list[str]]:
    """Every accepted spec form for every registered family (the test below insists on full coverage)."""
    return {
        "hf_clip": [str(zoo.clip), f"hf_clip:{zoo.clip}", str(zoo.clip_large)],
        "hf_siglip": [str(zoo.siglip), f"hf_siglip:{zoo.siglip}"],
        "open_clip": [f"open_clip:{zoo.open_clip}", f"open_clip:{zoo.open_clip_arch}@{zoo.open_clip_checkpoint}"],
    }


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("L", (40, 52), 90),
            Image.new("RGBA", (33, 33), (0, 0, 255, 128))]


def test_every_family_has_a_smoke_case(zoo):
    assert set(family_specs(zoo)) == set(list_families())


@pytest.mark.parametrize("family", ["hf_clip", "hf_siglip", "open_clip"])
def test_family_loads_by_every_spec_form(zoo, images, family):
    for spec in family_specs(zoo)[family]:
        tower = load_tower(spec)
        assert tower.family == family
        sizes = tower.sizes
        pixels = tower.preprocess(images)
        assert pixels.shape == (3, 3, sizes.image_size, sizes.image_size)
        out = tower(pixels)
        assert len(out.hidden_states) == sizes.num_layers + 1
        assert all(h.shape == (3, sizes.num_tokens, sizes.hidden_size) for h in out.hidden_states)
        assert out.image_embeds.shape == (3, sizes.embed_dim)
        patch = tower.features(pixels)
        assert patch.shape == (3, sizes.num_patches, sizes.hidden_size)
        assert torch.isfinite(patch).all()


def test_token_counts(zoo):
    siglip = load_tower(str(zoo.siglip))
    assert not siglip.sizes.has_cls and siglip.sizes.num_tokens == 16
    with pytest.raises(ValueError, match="needs a CLS token"):
        siglip.select(siglip.hidden_states(torch.zeros(1, 3, 32, 32)), select_feature="cls_patch")
    oc = load_tower(f"open_clip:{zoo.open_clip}")
    assert oc.sizes.has_cls and oc.sizes.num_tokens == 17 and oc.sizes.num_patches == 16
    large = load_tower(str(zoo.clip_large))
    assert large.sizes.num_patches == 36 and large.sizes.image_size == 48


def test_layer_minus_two_patch_features_match_hf_directly(zoo, images):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    tower = load_tower(str(zoo.clip))
    ours = tower.features(tower.preprocess(images), select_layer=-2, select_feature="patch")
    model = CLIPVisionModel.from_pretrained(zoo.clip).eval()
    pixels = CLIPImageProcessor.from_pretrained(zoo.clip)(images=[i.convert("RGB") for i in images],
                                                         return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        direct = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)
    with_cls = tower.features(tower.preprocess(images), select_feature="cls_patch")
    torch.testing.assert_close(with_cls[:, 1:], ours, rtol=0, atol=0)


@pytest.mark.parametrize("spec_form", ["dir", "arch@ckpt"])
def test_open_clip_conversion_matches_open_clip(zoo, images, spec_form):
    import open_clip

    spec = (f"open_clip:{zoo.open_clip}" if spec_form == "dir"
            else f"open_clip:{zoo.open_clip_arch}@{zoo.open_clip_checkpoint}")
    tower = load_tower(spec)
    ref = open_clip.create_model(f"local-dir:{zoo.open_clip}").eval()
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{zoo.open_clip}")
    ref_pixels = torch.stack([preprocess(im) for im in images])
    ours_pixels = tower.preprocess(images)
    torch.testing.assert_close(ours_pixels, ref_pixels, rtol=0, atol=2e-2)  # same resize, PIL vs torchvision
    with torch.no_grad():
        ref_image = ref.encode_image(ref_pixels)
        ours_image = tower.image_embeds(ref_pixels)
        assert (ours_image - ref_image).abs().max() <= 1e-4
        # intermediate tokens too (LLaVA reads layer -2)
        inter = ref.visual.forward_intermediates(ref_pixels, indices=[tower.sizes.num_layers - 2],
                                                 intermediates_only=True, output_fmt="NLC",
                                                 output_extra_tokens=True)
        ref_tokens = torch.cat([inter["image_intermediates_prefix"][0], inter["image_intermediates"][0]], dim=1)
        ours_tokens = tower.hidden_states(ref_pixels)[-2]
        assert (ours_tokens - ref_tokens).abs().max() <= 1e-4
        text = tower.load_text_encoder()
        prompts = ["a photo of a red square", "two blue circles on the left"]
        ref_text = ref.encode_text(open_clip.get_tokenizer("ViT-B-32")(prompts))
        assert (text.encode(prompts) - ref_text).abs().max() <= 1e-4
        assert text.logit_scale == pytest.approx(ref.logit_scale.exp().item(), rel=1e-6)


def test_open_clip_state_dict_round_trip(zoo):
    from llava_plugin.convert import (
        hf_state_dict_to_open_clip,
        open_clip_config_to_hf,
        open_clip_state_dict_to_hf,
    )
    from llava_plugin.toy.vision import tiny_open_clip_config

    src = torch.load(zoo.open_clip_checkpoint, weights_only=True)
    config = open_clip_config_to_hf(tiny_open_clip_config())
    back = hf_state_dict_to_open_clip(open_clip_state_dict_to_hf(src, config), config)
    skipped = {k for k in src if k == "attn_mask"}
    assert set(back) == set(src) - skipped
    for key, value in back.items():
        torch.testing.assert_close(value, src[key], rtol=0, atol=0)


def test_open_clip_conversion_rejects_leftover_keys(zoo):
    from llava_plugin.convert import ConversionError, open_clip_config_to_hf, open_clip_state_dict_to_hf
    from llava_plugin.toy.vision import tiny_open_clip_config

    src = torch.load(zoo.open_clip_checkpoint, weights_only=True)
    src["visual.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="no HF CLIP equivalent"):
        open_clip_state_dict_to_hf(src, open_clip_config_to_hf(tiny_open_clip_config()))


@pytest.mark.parametrize("family", ["hf_clip", "hf_siglip", "open_clip"])
def test_saved_tower_loads_with_plain_hf_classes(zoo, images, tmp_path, family):
    from transformers import AutoImageProcessor, CLIPModel, CLIPVisionModel, SiglipModel, SiglipVisionModel

    tower = load_tower(family_specs(zoo)[family][0])
    with torch.no_grad():  # change the vision weights so "saved what we trained" is checked
        for p in tower.model.parameters():
            p.add_(0.01)
    out = tower.save_pretrained(tmp_path / "tower", metadata={"method": "test"})
    vision_cls, full_cls = ((SiglipVisionModel, SiglipModel) if family == "hf_siglip"
                            else (CLIPVisionModel, CLIPModel))
    plain = vision_cls.from_pretrained(out).eval()
    pixels = AutoImageProcessor.from_pretrained(out)(images=[i.convert("RGB") for i in images],
                                                    return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, tower.preprocess(images))
    with torch.no_grad():
        torch.testing.assert_close(plain(pixel_values=pixels, output_hidden_states=True).hidden_states[-2],
                                   tower.hidden_states(pixels)[-2], rtol=1e-5, atol=1e-5)
    # the full model keeps its untouched text tower next to the trained vision weights
    full = full_cls.from_pretrained(out)
    original_text = tower._full_model_loader().text_model.state_dict()
    for key, value in full.text_model.state_dict().items():
        torch.testing.assert_close(value, original_text[key], rtol=0, atol=0)
    meta = json.loads((out / "genfeedback.json").read_text())
    assert meta["method"] == "test" and meta["family"] == family
    reloaded = load_tower(str(out))
    assert reloaded.family == ("hf_siglip" if family == "hf_siglip" else "hf_clip")
    assert reloaded.metadata["method"] == "test" and reloaded.has_text_encoder


def test_vision_only_directory_has_no_text_encoder(zoo, tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    CLIPVisionModel.from_pretrained(zoo.clip).save_pretrained(tmp_path)
    CLIPImageProcessor.from_pretrained(zoo.clip).save_pretrained(tmp_path)
    tower = load_tower(str(tmp_path))
    assert tower.sizes.num_patches == 16 and not tower.has_text_encoder
    with pytest.raises(ValueError, match="no paired text encoder"):
        tower.load_text_encoder()


def test_bad_spec_errors_list_accepted_forms(tmp_path):
    for spec, message in [
        ("", "empty"),
        ("nosuchfamily:/x", "unknown tower family 'nosuchfamily'"),
        (str(tmp_path / "missing"), "no such directory"),
        ("open_clip:", "nothing follows"),
        (f"open_clip:{tmp_path}", "has no open_clip_config.json"),
        (f"open_clip:ViT-B-32@{tmp_path / 'none.bin'}", "checkpoint file not found"),
        (f"open_clip:NoSuchArch@{__file__}", "unknown open_clip architecture"),
        (str(tmp_path), "has no config.json"),
    ]:
        with pytest.raises(TowerSpecError, match=message) as info:
            load_tower(spec)
        assert "Accepted forms" in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TowerSpecError, match="model_type 'bert' is not a supported tower"):
        load_tower(str(tmp_path))


def test_corrupt_weight_file_is_named(zoo, tmp_path):
    import shutil

    broken = tmp_path / "clip"
    shutil.copytree(zoo.clip, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(TowerSpecError, match="corrupt or truncated") as info:
        load_tower(str(broken))
    assert "model.safetensors" in str(info.value)


def test_registry_rejects_duplicate_family():
    from llava_plugin.registry import register_family

    list_families()
    with pytest.raises(ValueError, match="registered twice"):
        register_family("hf_clip")(lambda spec, location: None)
    assert "hf_clip" in FAMILIES


def test_pad_to_square_centres_on_the_fill_and_truncates_the_mean_like_llava():
    from llava_plugin.images import pad_to_square, processor_mean_color

    image = Image.new("RGB", (8, 4), (255, 0, 0))
    square = pad_to_square(image, (1, 2, 3))
    assert square.size == (8, 8)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((4, 4)) == (255, 0, 0)
    assert pad_to_square(square, (9, 9, 9)) is square

    class Processor:
        image_mean = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP: 122.77 -> 122, not 123

    assert processor_mean_color(Processor()) == (122, 116, 104)
