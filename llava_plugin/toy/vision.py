"""Tiny vision towers in the exact hub layouts: OpenAI CLIP (HF), SigLIP (HF), open_clip.

Sizes only differ from the real models: the real tokenizers' formats are kept (the CLIP
BPE vocabulary that open_clip ships; a sentencepiece model for SigLIP).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llava_plugin.convert import OPENAI_MEAN, OPENAI_STD, clip_bpe_tokenizer

# Shared by the tiny towers: 32 px images in 8 px patches -> 16 patch tokens.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   image_size=32, patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77)
TINY_PROJECTION_DIM = 16


def write_vision_towers(zoo, seed: int) -> None:
    models = zoo.root / "models"
    zoo.clip = write_tiny_clip(models / "clip-vit-tiny-patch8-32", seed, image_size=32)
    zoo.clip_large = write_tiny_clip(models / "clip-vit-tiny-patch8-48", seed + 1, image_size=48)
    zoo.open_clip, zoo.open_clip_arch, zoo.open_clip_checkpoint = write_tiny_open_clip(models, seed + 2)
    zoo.siglip = write_tiny_siglip(models / "siglip-tiny-patch8-32", seed + 3)


def write_tiny_clip(out: Path, seed: int, image_size: int = 32) -> Path:
    """An openai/clip-vit-* lookalike: CLIPModel + CLIPImageProcessor + CLIPTokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = clip_bpe_tokenizer(out)
    config = CLIPConfig(
        vision_config={**TINY_VISION, "image_size": image_size, "hidden_act": "quick_gelu",
                       "projection_dim": TINY_PROJECTION_DIM},
        text_config={**TINY_TEXT, "vocab_size": len(tokenizer), "hidden_act": "quick_gelu",
                     "projection_dim": TINY_PROJECTION_DIM,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        projection_dim=TINY_PROJECTION_DIM,
    )
    CLIPModel(config).save_pretrained(out)
    CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_normalize=True,
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD), do_convert_rgb=True,
    ).save_pretrained(out)
    return out


def tiny_open_clip_config() -> dict:
    """An open_clip model config shaped like ViT-H-14's (GELU, no QuickGELU), scaled down."""
    return {
        "embed_dim": TINY_PROJECTION_DIM,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }


def write_tiny_open_clip(models: Path, seed: int) -> tuple[Path, Path, Path]:
    """The open_clip hub layout (open_clip_config.json + open_clip_pytorch_model.bin), plus the
    same architecture as a standalone model-config JSON and the weights as a standalone file."""
    import open_clip

    hub_dir = models / "open_clip-vit-tiny-patch8-32"
    hub_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = tiny_open_clip_config()
    preprocess_cfg = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic",
                      "resize_mode": "shortest"}
    arch_file = models / "ViT-tiny-8.json"
    arch_file.write_text(json.dumps(model_cfg, indent=2))
    torch.manual_seed(seed)
    open_clip.add_model_config(arch_file)
    model = open_clip.create_model("ViT-tiny-8", pretrained=None)
    # open_clip initialises some weights to constants; perturb so conversion tests see real values
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.02 * torch.randn_like(param))
    state = model.state_dict()
    torch.save(state, hub_dir / "open_clip_pytorch_model.bin")
    (hub_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
    checkpoint = models / "open_clip-vit-tiny-8.pt"
    torch.save(state, checkpoint)
    return hub_dir, arch_file, checkpoint


def write_tiny_siglip(out: Path, seed: int) -> Path:
    """A google/siglip-* lookalike: SiglipModel + SiglipImageProcessor + sentencepiece tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    from llava_plugin.toy.llm import scene_corpus, train_sentencepiece

    out.mkdir(parents=True, exist_ok=True)
    spm_path = out / "spiece.model"
    # SigLIP's spiece.model is a T5-style unigram model
    train_sentencepiece(scene_corpus(seed, n_sentences=1000), spm_path, vocab_size=400, seed=seed,
                        model_type="unigram")
    tokenizer = SiglipTokenizer(vocab_file=str(spm_path), model_max_length=16)
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = SiglipConfig(
        vision_config={**TINY_VISION, "hidden_act": "gelu_pytorch_tanh"},
        text_config={**TINY_TEXT, "max_position_embeddings": 16, "vocab_size": len(tokenizer),
                     "hidden_act": "gelu_pytorch_tanh", "projection_size": TINY_VISION["hidden_size"],
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id},
    )
    SiglipModel(config).save_pretrained(out)
    SiglipImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, resample=3, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out)
    return out
