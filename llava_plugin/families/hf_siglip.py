"""HF SigLIP towers (no CLS token: LLaVA's `patch` selection keeps every token)."""
from __future__ import annotations

import json
from pathlib import Path

from llava_plugin.families.base import quiet_transformers, register_family, wrap_load_errors
from llava_plugin.towers import TextEncoder, VisionTower, read_metadata


@register_family("hf_siglip", model_types=("siglip", "siglip_vision_model"), forms=(
    ("hf_siglip:ID_OR_DIR", "an HF SigLIP model (SiglipModel or SiglipVisionModel), family named explicitly"),
))
def load(spec: str, location: str) -> VisionTower:
    from transformers import AutoConfig, SiglipImageProcessor, SiglipModel, SiglipVisionModel

    def _load():
        path = Path(location)
        cfg = json.loads((path / "config.json").read_text()) if path.is_dir() else AutoConfig.from_pretrained(
            location).to_dict()
        full = cfg.get("model_type") == "siglip"
        with quiet_transformers():  # a full SiglipModel dir has text weights the vision class skips
            model = SiglipVisionModel.from_pretrained(location)
        return full, model, SiglipImageProcessor.from_pretrained(location)

    full, model, processor = wrap_load_errors(spec, location, _load)

    def full_loader():
        return SiglipModel.from_pretrained(location)

    def tokenizer_loader():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(location)

    def text_loader():
        full_model = full_loader()
        text = full_model.text_model
        # SigLIP was trained on texts padded to max_length: pad the same way when scoring.
        return TextEncoder(text, tokenizer_loader(), logit_scale=full_model.logit_scale.exp().item(),
                           padding="max_length", max_length=full_model.config.text_config.max_position_embeddings)

    return VisionTower(model, processor, family="hf_siglip", spec=spec, has_cls=False,
                       full_model_loader=full_loader if full else None,
                       text_encoder_loader=text_loader if full else None,
                       tokenizer_loader=tokenizer_loader if full else None,
                       metadata=read_metadata(location) if Path(location).is_dir() else {})
