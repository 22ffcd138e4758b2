"""build_llava / save_llava / the projector file: any tower, HF formats, the vicuna_v1 chat template."""
import json

import pytest
import torch
from PIL import Image

from llava_plugin.convert_llava import load_llava
from llava_plugin.llava import (
    MM_PROJECTOR_KEYS,
    VICUNA_V1_SYSTEM,
    ProjectorError,
    build_llava,
    load_mm_projector,
    read_mm_projector,
    save_llava,
    write_mm_projector,
)
from llava_plugin.registry import load_tower

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the star?"}]}]


def _tower_spec(zoo, name, tmp_path_factory):
    if name == "enhanced":  # a tower written by `enhance` (genfeedback.json next to an HF CLIP dir)
        out = tmp_path_factory.mktemp("enhanced")
        load_tower(str(zoo.clip)).save_pretrained(out, {"method": "diva", "steps": 2})
        return str(out)
    if name == "open_clip":
        return f"open_clip:{zoo.open_clip}"
    return str(getattr(zoo, name))


@pytest.mark.parametrize("name", ["clip", "clip_large", "siglip", "open_clip", "enhanced"])
def test_build_llava_any_tower(zoo, name, tmp_path_factory):
    tower = load_tower(_tower_spec(zoo, name, tmp_path_factory))
    model, processor = build_llava(tower, zoo.llm)
    sizes = tower.sizes
    assert model.config.image_seq_length == sizes.num_patches
    assert model.config.vision_feature_select_strategy == ("default" if sizes.has_cls else "full")
    assert model.config.vision_feature_layer == -2

    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    image = Image.new("RGB", (50, 30), (200, 30, 30))
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    assert (inputs.input_ids == model.config.image_token_id).sum() == sizes.num_patches
    with torch.no_grad():
        # the projected features are exactly LLaVA's: layer -2, CLS dropped, through the projector
        expected = model.model.multi_modal_projector(tower.features(inputs.pixel_values, -2, "patch"))
        got = model.model.get_image_features(
            inputs.pixel_values, vision_feature_layer=-2,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy).pooler_output
        torch.testing.assert_close(torch.stack(list(got)), expected, rtol=0, atol=1e-6)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and inputs.input_ids.shape[1] < out.shape[1] <= inputs.input_ids.shape[1] + 4


def test_build_copies_llm_and_tower_exactly(zoo):
    from transformers import AutoModelForCausalLM

    tower = load_tower(str(zoo.clip))
    model, processor = build_llava(tower, zoo.llm)
    llm = AutoModelForCausalLM.from_pretrained(zoo.llm)
    vocab = llm.config.vocab_size
    embed = model.get_input_embeddings().weight
    assert embed.shape[0] == vocab + 1 == len(processor.tokenizer)
    assert processor.image_token_id == vocab  # appended last, so it can be dropped for the original layout
    torch.testing.assert_close(embed[:vocab], llm.get_input_embeddings().weight, rtol=0, atol=0)
    torch.testing.assert_close(embed[vocab], llm.get_input_embeddings().weight.mean(0), rtol=0, atol=1e-7)
    llm_state = llm.model.state_dict()
    for key, value in model.model.language_model.state_dict().items():
        if key != "embed_tokens.weight":
            assert torch.equal(value, llm_state[key]), key
    for key, value in tower.vision_model.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[key], value), key
    assert processor.tokenizer.pad_token == "<unk>"  # LLaVA-1.5 pads vicuna with <unk>
    assert not model.generation_config.do_sample  # vicuna's sampling defaults are not inherited


def test_projector_init_is_seeded(zoo):
    tower = load_tower(str(zoo.clip))
    first = build_llava(tower, zoo.llm, seed=1)[0].model.multi_modal_projector.state_dict()
    again = build_llava(tower, zoo.llm, seed=1)[0].model.multi_modal_projector.state_dict()
    other = build_llava(tower, zoo.llm, seed=2)[0].model.multi_modal_projector.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["linear_1.weight"], other["linear_1.weight"])


def test_build_rejects_what_llava_cannot_represent(zoo):
    clip, siglip = load_tower(str(zoo.clip)), load_tower(str(zoo.siglip))
    with pytest.raises(ValueError, match="cls_patch.*CLS"):
        build_llava(siglip, zoo.llm, select_feature="cls_patch")
    with pytest.raises(ValueError, match="projector 'linear'.*mlp2x_gelu"):
        build_llava(clip, zoo.llm, projector="linear")
    with pytest.raises(ValueError, match="select_layer=-9 out of range"):
        build_llava(clip, zoo.llm, select_layer=-9)
    model, processor = build_llava(clip, zoo.llm, select_feature="cls_patch")
    assert model.config.image_seq_length == clip.sizes.num_patches + 1
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    assert (inputs.input_ids == model.config.image_token_id).sum() == clip.sizes.num_patches + 1
    model(**inputs)  # the processor's token count and the model's feature count agree


def test_save_and_reload_generate_identically(zoo, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, processor = build_llava(load_tower(str(zoo.siglip)), zoo.llm, seed=3)
    out = save_llava(model, processor, tmp_path / "llava", metadata={"stage": "test"})
    meta = json.loads((out / "genfeedback.json").read_text())
    assert meta["stage"] == "test" and meta["vision_feature_select_strategy"] == "full"
    reloaded = LlavaForConditionalGeneration.from_pretrained(out)
    reprocessor = AutoProcessor.from_pretrained(out)
    assert reprocessor.chat_template == processor.chat_template
    prompt = reprocessor.apply_chat_template(QUESTION, add_generation_prompt=True)
    image = Image.new("RGB", (32, 40), (10, 200, 30))
    inputs = reprocessor(images=[image], text=[prompt], return_tensors="pt")
    assert torch.equal(inputs.input_ids, processor(images=[image], text=[prompt], return_tensors="pt").input_ids)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(reloaded.generate(**inputs, max_new_tokens=6, do_sample=False), expected)
    model2, _ = load_llava(out)
    assert torch.equal(model2.generate(**inputs, max_new_tokens=6, do_sample=False), expected)
    with pytest.raises(ValueError, match="only to original LLaVA"):
        load_llava(out, vision_tower=str(zoo.clip))


def test_save_is_atomic_and_replaces_an_earlier_export(zoo, tmp_path):
    """A kill mid-save leaves only `.incomplete-<name>` (never a loadable half-export); the next save
    clears it and replaces the old directory whole."""
    model, processor = build_llava(load_tower(str(zoo.clip)), zoo.llm, seed=0)
    out = tmp_path / "llava"
    (tmp_path / ".incomplete-llava").mkdir()
    (tmp_path / ".incomplete-llava" / "config.json").write_text("")  # what a killed save left
    out.mkdir()
    (out / "stale.bin").write_text("from an earlier export")
    save_llava(model, processor, out, metadata={"stage": "test"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llava"]
    assert not (out / "stale.bin").exists() and json.loads((out / "genfeedback.json").read_text())["stage"] == "test"
    write_mm_projector(model, tmp_path / "mm_projector.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llava", "mm_projector.bin", "mm_projector.json"]


def test_chat_template_renders_llava_v1_5_prompt(zoo):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(zoo.llava)
    render = processor.apply_chat_template
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "  What is it?\n"}, {"type": "image"}]},
        {"role": "assistant", "content": "A star."},
        {"role": "user", "content": "Color?"},
    ]
    expected = (f"{VICUNA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A star.</s>USER: Color? ASSISTANT:")
    assert render(conversation, add_generation_prompt=True) == expected
    as_strings = [{"role": "user", "content": "What is it?\n<image>"}, *conversation[1:]]
    assert render(as_strings, add_generation_prompt=True) == expected
    image_only = [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "ok"}]
    assert render(image_only) == f"{VICUNA_V1_SYSTEM} USER: <image> ASSISTANT: ok</s>"
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(system, add_generation_prompt=True) == "Be brief. USER: Hi ASSISTANT:"
    with pytest.raises(Exception, match="unknown role tool"):
        render([{"role": "tool", "content": "x"}])


def test_mm_projector_file_round_trip(zoo, tmp_path):
    tower = load_tower(str(zoo.clip))
    source, _ = build_llava(tower, zoo.llm, seed=4)
    path = write_mm_projector(source, tmp_path / "mm_projector.bin")
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == sorted(MM_PROJECTOR_KEYS)
    assert raw["model.mm_projector.0.weight"].shape == (64, 32)  # (LLM hidden, tower hidden)
    target, _ = build_llava(tower, zoo.llm, seed=5)
    load_mm_projector(target, path.parent)  # a pretraining output dir works as well as the file
    for key, value in source.model.multi_modal_projector.state_dict().items():
        assert torch.equal(target.model.multi_modal_projector.state_dict()[key], value)

    del raw["model.mm_projector.2.bias"]
    torch.save(raw, tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="missing.bin.*not an mlp2x_gelu"):
        read_mm_projector(tmp_path / "missing.bin")
    raw["model.mm_projector.2.bias"] = torch.zeros(65)
    torch.save(raw, tmp_path / "shape.bin")
    with pytest.raises(ValueError, match="linear_2.bias has shape \\(65,\\)"):
        load_mm_projector(target, tmp_path / "shape.bin")


def test_a_projector_is_refused_on_another_tower_of_the_same_width(zoo, tmp_path, caplog):
    """mm_projector.json records the tower a projector was trained with; a SigLIP tower is refused a
    CLIP-trained projector although every shape fits, unless overridden; an unrecorded projector (original
    LLaVA's) loads with a warning that it cannot be checked."""
    clip, _ = build_llava(load_tower(str(zoo.clip)), zoo.llm, seed=4)
    path = write_mm_projector(clip, tmp_path / "mm_projector.bin", str(zoo.clip))
    assert json.loads((tmp_path / "mm_projector.json").read_text()) == {
        "tower": {"family": "clip", "hidden_size": 32, "feature_layer": -2, "image_size": 32},
        "vision_tower": str(zoo.clip)}
    siglip, _ = build_llava(load_tower(str(zoo.siglip)), zoo.llm, seed=5)
    with pytest.raises(ProjectorError, match=r"trained with another tower \(family 'clip' -> 'siglip'; see mm_projector.json\)"):
        load_mm_projector(siglip, path)
    load_mm_projector(siglip, path, any_tower=True)
    assert torch.equal(siglip.model.multi_modal_projector.linear_1.weight, clip.model.multi_modal_projector.linear_1.weight)
    other_layer, _ = build_llava(load_tower(str(zoo.clip)), zoo.llm, select_layer=-1)
    with pytest.raises(ProjectorError, match=r"feature_layer -2 -> -1"):
        load_mm_projector(other_layer, path)

    (tmp_path / "mm_projector.json").unlink()
    with caplog.at_level("WARNING", logger="genfeedback"):
        load_mm_projector(siglip, path)
    assert "its tower cannot be checked" in caplog.text
