"""open_clip ViT checkpoints <-> HF `CLIPModel`, as pure functions over state dicts.

un2CLIP trains OpenCLIP ViT-H/14, while LLaVA, HF Llava and lmms-eval load HF CLIP classes;
converting once, exactly, lets one code path serve both. The key map is explicit, every
key is consumed, and shapes are checked.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import torch

from llava_plugin.errors import GenfeedbackError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip per-block names -> HF per-layer names (q/k/v are split from in_proj separately)
_BLOCK_MAP = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_UNSUPPORTED_VISION_KEYS = ("attentional_pool", "attn_pool", "final_ln_after_pool", "no_ln_pre", "timm_model_name",
                            "pos_embed_type", "output_tokens")


class ConversionError(GenfeedbackError, ValueError):
    pass


def open_clip_config_to_hf(model_cfg: dict):
    """An open_clip model config (the `model_cfg` of open_clip_config.json) -> `CLIPConfig`."""
    from transformers import CLIPConfig

    vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    for key in _UNSUPPORTED_VISION_KEYS:
        if vision.get(key) not in (None, False, "learnable"):
            raise ConversionError(f"open_clip vision option {key}={vision[key]!r} has no HF CLIP equivalent")
    if text.get("hf_model_name") or model_cfg.get("custom_text") and text.get("hf_model_name"):
        raise ConversionError("open_clip models with an HF text transformer are not CLIP-architecture models")
    if isinstance(vision.get("image_size"), (list, tuple)) or isinstance(vision.get("patch_size"), (list, tuple)):
        raise ConversionError("non-square open_clip images/patches have no HF CLIP equivalent")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    v_width = vision["width"]
    t_width = text.get("width", 512)
    vision_config = dict(
        hidden_size=v_width,
        intermediate_size=int(v_width * vision.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision["layers"],
        num_attention_heads=v_width // vision.get("head_width", 64),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        projection_dim=model_cfg["embed_dim"],
        hidden_act=act,
        layer_norm_eps=1e-5,
    )
    text_config = dict(
        hidden_size=t_width,
        intermediate_size=int(t_width * text.get("mlp_ratio", 4.0)),
        num_hidden_layers=text.get("layers", 12),
        num_attention_heads=text.get("heads", 8),
        max_position_embeddings=text.get("context_length", 77),
        vocab_size=text.get("vocab_size", 49408),
        projection_dim=model_cfg["embed_dim"],
        hidden_act=act,
        layer_norm_eps=1e-5,
        # open_clip pools the text at the end-of-text token, the largest id of its vocabulary.
        bos_token_id=text.get("vocab_size", 49408) - 2,
        eos_token_id=text.get("vocab_size", 49408) - 1,
        pad_token_id=0,
    )
    return CLIPConfig(vision_config=vision_config, text_config=text_config, projection_dim=model_cfg["embed_dim"])


def _split_qkv(prefix_hf: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0), bias.chunk(3, dim=0)):
        out[f"{prefix_hf}.self_attn.{name}.weight"] = w
        out[f"{prefix_hf}.self_attn.{name}.bias"] = b
    return out


def _tower_blocks(src: dict, oc_prefix: str, hf_prefix: str, layers: int, used: set) -> dict:
    out = {}
    for i in range(layers):
        o, h = f"{oc_prefix}.resblocks.{i}", f"{hf_prefix}.encoder.layers.{i}"
        for oc_name, hf_name in _BLOCK_MAP.items():
            for kind in ("weight", "bias"):
                out[f"{h}.{hf_name}.{kind}"] = src[f"{o}.{oc_name}.{kind}"]
                used.add(f"{o}.{oc_name}.{kind}")
        out.update(_split_qkv(h, src[f"{o}.attn.in_proj_weight"], src[f"{o}.attn.in_proj_bias"]))
        used.update({f"{o}.attn.in_proj_weight", f"{o}.attn.in_proj_bias"})
    return out


def open_clip_state_dict_to_hf(src: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Map an open_clip CLIP state dict onto `CLIPModel` keys. Every source key must be used."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise ConversionError(f"open_clip checkpoint lacks {key!r}")
        used.add(key)
        return src[key]

    v, t = "vision_model", "text_model"
    out = {
        f"{v}.embeddings.class_embedding": take("visual.class_embedding"),
        f"{v}.embeddings.patch_embedding.weight": take("visual.conv1.weight"),
        f"{v}.embeddings.position_embedding.weight": take("visual.positional_embedding"),
        f"{v}.pre_layrnorm.weight": take("visual.ln_pre.weight"),
        f"{v}.pre_layrnorm.bias": take("visual.ln_pre.bias"),
        f"{v}.post_layernorm.weight": take("visual.ln_post.weight"),
        f"{v}.post_layernorm.bias": take("visual.ln_post.bias"),
        "visual_projection.weight": take("visual.proj").t().contiguous(),
        f"{t}.embeddings.token_embedding.weight": take("token_embedding.weight"),
        f"{t}.embeddings.position_embedding.weight": take("positional_embedding"),
        f"{t}.final_layer_norm.weight": take("ln_final.weight"),
        f"{t}.final_layer_norm.bias": take("ln_final.bias"),
        "text_projection.weight": take("text_projection").t().contiguous(),
        "logit_scale": take("logit_scale").reshape(()),
    }
    out.update(_tower_blocks(src, "visual.transformer", v, config.vision_config.num_hidden_layers, used))
    out.update(_tower_blocks(src, "transformer", t, config.text_config.num_hidden_layers, used))
    # buffers open_clip keeps that HF recomputes
    ignored = {k for k in src if k in ("attn_mask", "logit_bias") or k.endswith("position_ids")}
    if "logit_bias" in src:
        raise ConversionError("open_clip checkpoint has a logit_bias (a SigLIP model); not a CLIP architecture")
    leftover = sorted(set(src) - used - ignored)
    if leftover:
        raise ConversionError(f"open_clip keys with no HF CLIP equivalent: {leftover[:8]}")
    return out


def hf_state_dict_to_open_clip(src: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The inverse of `open_clip_state_dict_to_hf` (for round-trip tests and exporting back)."""
    out = {
        "visual.class_embedding": src["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": src["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": src["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": src["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": src["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": src["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": src["vision_model.post_layernorm.bias"],
        "visual.proj": src["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": src["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": src["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": src["text_model.final_layer_norm.weight"],
        "ln_final.bias": src["text_model.final_layer_norm.bias"],
        "text_projection": src["text_projection.weight"].t().contiguous(),
        "logit_scale": src["logit_scale"].reshape(()),
    }
    for oc_prefix, hf_prefix, layers in (
        ("visual.transformer", "vision_model", config.vision_config.num_hidden_layers),
        ("transformer", "text_model", config.text_config.num_hidden_layers),
    ):
        for i in range(layers):
            o, h = f"{oc_prefix}.resblocks.{i}", f"{hf_prefix}.encoder.layers.{i}"
            for oc_name, hf_name in _BLOCK_MAP.items():
                for kind in ("weight", "bias"):
                    out[f"{o}.{oc_name}.{kind}"] = src[f"{h}.{hf_name}.{kind}"]
            for kind in ("weight", "bias"):
                out[f"{o}.attn.in_proj_{kind}"] = torch.cat(
                    [src[f"{h}.self_attn.{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")], dim=0)
    return out


def open_clip_preprocess_to_hf(preprocess_cfg: dict, image_size: int):
    """open_clip's preprocess config -> an equivalent `CLIPImageProcessor` (resize shortest side,
    bicubic, centre crop, normalise)."""
    from transformers import CLIPImageProcessor

    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode != "shortest":
        raise ConversionError(f"open_clip resize_mode={mode!r} is not supported (only 'shortest')")
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    resample = {"bicubic": 3, "bilinear": 2}.get(interpolation)
    if resample is None:
        raise ConversionError(f"open_clip interpolation={interpolation!r} is not supported")
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=resample,
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(preprocess_cfg.get("mean", OPENAI_MEAN)), image_std=list(preprocess_cfg.get("std", OPENAI_STD)),
        do_convert_rgb=True,
    )


@lru_cache(maxsize=1)
def _clip_bpe_files() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary and merges, read once from the BPE file open_clip ships."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer(str(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"))
    # open_clip names its specials <start_of_text>/<end_of_text>; HF CLIP uses the original names
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): idx for token, idx in simple.encoder.items()}
    return vocab, tuple(sorted(simple.bpe_ranks, key=simple.bpe_ranks.get))


@lru_cache(maxsize=4)
def _clip_bpe_tokenizer(model_max_length: int):
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe_files()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def clip_bpe_tokenizer(out_dir: str | Path | None = None, model_max_length: int = 77):
    """An HF `CLIPTokenizer` built from the BPE vocabulary that open_clip ships (the original CLIP
    vocabulary), so converted and toy CLIP models carry the real tokenizer offline. With
    `out_dir`, also writes it there in the openai/clip-* layout (vocab.json, merges.txt, tokenizer.json)."""
    tok = copy.deepcopy(_clip_bpe_tokenizer(model_max_length))
    if out_dir is not None:
        files = Path(out_dir)
        files.mkdir(parents=True, exist_ok=True)
        vocab, merges = _clip_bpe_files()
        (files / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (files / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        tok.save_pretrained(files)
    return tok


def open_clip_to_hf(oc_model, model_cfg: dict, preprocess_cfg: dict):
    """A loaded open_clip CLIP -> (`CLIPModel`, `CLIPImageProcessor`, `CLIPTokenizer`), strictly."""
    from transformers import CLIPModel

    config = open_clip_config_to_hf(model_cfg)
    hf = CLIPModel(config)
    mapped = open_clip_state_dict_to_hf(oc_model.state_dict(), config)
    expected = {k: v.shape for k, v in hf.state_dict().items()}
    for key, value in mapped.items():
        if key not in expected:
            raise ConversionError(f"mapped key {key!r} is not in CLIPModel")
        if tuple(value.shape) != tuple(expected[key]):
            raise ConversionError(f"{key}: open_clip shape {tuple(value.shape)} != HF shape {tuple(expected[key])}")
    missing = sorted(set(expected) - set(mapped) - {k for k in expected if k.endswith("position_ids")})
    if missing:
        raise ConversionError(f"HF CLIPModel keys not produced by the conversion: {missing[:8]}")
    hf.load_state_dict(mapped, strict=False)
    processor = open_clip_preprocess_to_hf(preprocess_cfg, config.vision_config.image_size)
    tokenizer = clip_bpe_tokenizer(model_max_length=config.text_config.max_position_embeddings)
    return hf.eval(), processor, tokenizer
