"""Original LLaVA-1.5 checkpoints <-> HF Llava: identical outputs, exact round trip, strict errors."""
import json
import shutil

import pytest
import torch
from PIL import Image

from llava_plugin.convert_llava import (
    LlavaConversionError,
    checkpoint_format,
    llava_hf_to_original,
    llava_original_to_hf,
    load_llava,
    read_state_dict,
    save_llava_original,
)


def _inputs(processor):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nHow many circles are in the image?"}], add_generation_prompt=True)
    return processor(images=[Image.new("RGB", (40, 28), (20, 90, 200))], text=[prompt], return_tensors="pt")


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_zoo_layouts(zoo):
    assert checkpoint_format(zoo.llava) == "hf_llava"
    assert checkpoint_format(zoo.llava_original) == "original_llava"
    config = json.loads((zoo.llava_original / "config.json").read_text())
    assert config["mm_vision_tower"] == str(zoo.clip) and config["mm_projector_type"] == "mlp2x_gelu"
    assert (config["mm_vision_select_layer"], config["mm_vision_select_feature"]) == (-2, "patch")
    assert config["architectures"] == ["LlavaLlamaForCausalLM"] and config["vocab_size"] == 1000
    index = json.loads((zoo.llava_original / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded like the real checkpoint
    state = read_state_dict(zoo.llava_original)
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias", "lm_head.weight",
            "model.embed_tokens.weight"} <= set(state)
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.") for k in state)
    assert state["model.embed_tokens.weight"].shape[0] == 1000  # no <image> row in the original vocab
    assert {p.name for p in zoo.llava_original.iterdir()} >= {"tokenizer.model", "tokenizer_config.json"}


def test_original_converts_to_identical_logits(zoo):
    hf_model, hf_processor = load_llava(zoo.llava)
    model, processor = load_llava(zoo.llava_original)
    inputs = _inputs(processor)
    assert torch.equal(inputs.input_ids, _inputs(hf_processor).input_ids)
    # Bitwise by construction: both load as the same HF Llava class with the same (exactly converted) weights.
    torch.testing.assert_close(_logits(model, inputs), _logits(hf_model, inputs), rtol=0, atol=0)
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False),
                       hf_model.generate(**inputs, max_new_tokens=5, do_sample=False))


def test_state_dict_round_trip_is_exact(zoo):
    original = read_state_dict(zoo.llava_original)
    hf = llava_original_to_hf(original, image_token_id=1000)
    assert hf["model.language_model.embed_tokens.weight"].shape[0] == 1001
    back = llava_hf_to_original(hf, image_token_id=1000)
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    model, _ = load_llava(zoo.llava)
    model_state = model.state_dict()
    assert sorted(hf) == sorted(model_state)
    assert all(torch.equal(hf[k], model_state[k]) for k in hf)


def test_strict_errors(zoo):
    original = read_state_dict(zoo.llava_original)
    with pytest.raises(LlavaConversionError, match="model.visual_thing.weight"):
        llava_original_to_hf({**original, "model.visual_thing.weight": torch.zeros(1)}, image_token_id=1000)
    with pytest.raises(LlavaConversionError, match="model.mm_projector.1.weight"):
        llava_original_to_hf({**original, "model.mm_projector.1.weight": torch.zeros(1)}, image_token_id=1000)
    with pytest.raises(LlavaConversionError, match="tokenizer and weights do not match"):
        llava_original_to_hf(original, image_token_id=999)
    stale = {**original, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)}
    assert sorted(llava_original_to_hf(stale, image_token_id=1000)) == sorted(
        llava_original_to_hf(original, image_token_id=1000))


def _copy_with(zoo, tmp_path, drop: str | None = None, config_update: dict | None = None):
    out = tmp_path / "ckpt"
    shutil.copytree(zoo.llava_original, out)
    if drop:
        index = json.loads((out / "pytorch_model.bin.index.json").read_text())
        shard = out / index["weight_map"].pop(drop)
        state = torch.load(shard, weights_only=True)
        del state[drop]
        torch.save(state, shard)
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    if config_update:
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, **config_update}))
    return out


def test_missing_key_is_an_error_naming_it(zoo, tmp_path):
    with pytest.raises(LlavaConversionError, match=r"language model weights .*missing \['layers.1.mlp.up_proj.weight'\]"):
        load_llava(_copy_with(zoo, tmp_path, drop="model.layers.1.mlp.up_proj.weight"))


def test_missing_projector_is_an_error(zoo, tmp_path):
    with pytest.raises(LlavaConversionError, match="mm_projector"):
        load_llava(_copy_with(zoo, tmp_path, drop="model.mm_projector.2.weight"))


@pytest.mark.parametrize("update, message", [
    ({"mm_projector_type": "linear"}, "mm_projector_type='linear'"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ({"mm_hidden_size": 1024}, "mm_hidden_size=1024"),
    ({"mm_patch_merge_type": "spatial_unpad"}, "LLaVA-NeXT"),
])
def test_unsupported_configs_are_errors(zoo, tmp_path, update, message):
    with pytest.raises(LlavaConversionError, match=message):
        load_llava(_copy_with(zoo, tmp_path, config_update=update))


def test_tower_from_mm_vision_tower_or_override(zoo, tmp_path):
    """A checkpoint without vision weights (the tower was frozen) gets them from the tower spec."""
    hf_model, processor = load_llava(zoo.llava)
    out = save_llava_original(hf_model, processor, tmp_path / "novision", vision_tower="openai/clip-vit-large-patch14",
                              tokenizer_dir=zoo.llm, include_vision_tower=False)
    assert not any(k.startswith("model.vision_tower") for k in read_state_dict(out))
    with pytest.raises(Exception, match="openai/clip-vit-large-patch14"):  # not in the offline cache
        load_llava(out)
    model, processor = load_llava(out, vision_tower=str(zoo.clip))
    inputs = _inputs(processor)
    torch.testing.assert_close(_logits(model, inputs), _logits(hf_model, inputs), rtol=0, atol=0)
