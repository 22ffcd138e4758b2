"""HF CLIP towers: a full CLIPModel directory, a vision-only CLIPVisionModel directory
(e.g. exported by LLaVA), an HF id from the local cache, or an `enhance` output."""
from __future__ import annotations

import json
from pathlib import Path

from llava_plugin.families.base import quiet_transformers, register_family, wrap_load_errors
from llava_plugin.towers import TextEncoder, VisionTower, read_metadata


def _model_type(location: str) -> str:
    path = Path(location)
    if path.is_dir():
        return json.loads((path / "config.json").read_text()).get("model_type", "")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(location).model_type


@register_family("hf_clip", model_types=("clip", "clip_vision_model"), forms=(
    ("hf_clip:ID_OR_DIR", "an HF CLIP model (CLIPModel or CLIPVisionModel), family named explicitly"),
))
def load(spec: str, location: str) -> VisionTower:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

    def _load():
        full = _model_type(location) == "clip"
        model_cls = CLIPVisionModelWithProjection if full else CLIPVisionModel
        with quiet_transformers():  # a full CLIPModel dir has text weights the vision class skips
            model = model_cls.from_pretrained(location)
        return full, model, CLIPImageProcessor.from_pretrained(location)

    full, model, processor = wrap_load_errors(spec, location, _load)
    return build_clip_tower(
        model, processor, family="hf_clip", spec=spec,
        full_model_loader=(lambda: CLIPModel.from_pretrained(location)) if full else None,
        tokenizer_loader=(lambda: _tokenizer(location)) if full else None,
        metadata=read_metadata(location) if Path(location).is_dir() else {},
    )


def build_clip_tower(model, processor, *, family, spec, full_model_loader, tokenizer_loader, metadata=None):
    """A CLIP-architecture tower; the text encoder comes from the full model when there is one."""
    text_loader = None
    if full_model_loader is not None and tokenizer_loader is not None:
        def text_loader():
            from transformers import CLIPTextModelWithProjection

            full = full_model_loader()
            text = CLIPTextModelWithProjection(full.config.text_config)
            text.text_model.load_state_dict(full.text_model.state_dict(), strict=True)
            text.text_projection.load_state_dict(full.text_projection.state_dict(), strict=True)
            text.to(dtype=full.dtype)
            return TextEncoder(text, tokenizer_loader(), logit_scale=full.logit_scale.exp().item(),
                               padding=True, max_length=full.config.text_config.max_position_embeddings)
    return VisionTower(model, processor, family=family, spec=spec, has_cls=True,
                       full_model_loader=full_model_loader, text_encoder_loader=text_loader,
                       tokenizer_loader=tokenizer_loader, metadata=metadata)


def _tokenizer(location: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location)
