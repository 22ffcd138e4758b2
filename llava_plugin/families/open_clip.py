"""open_clip towers, converted to HF CLIP on load so every stage sees one architecture.

`open_clip:ARCH@CHECKPOINT` (ARCH: a built-in open_clip name, or a model-config JSON file)
or `open_clip:DIR` (the hub layout: open_clip_config.json + weights).
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from llava_plugin.families.base import TowerSpecError, register_family, wrap_load_errors
from llava_plugin.families.hf_clip import build_clip_tower

CONFIG_FILE = "open_clip_config.json"  # marks an open_clip hub-layout directory


@register_family("open_clip", files=(CONFIG_FILE,), forms=(
    ("open_clip:ARCH@CHECKPOINT", ("an open_clip architecture (built-in name, or a model-config JSON file) "
                                   "with a local checkpoint file")),
    ("open_clip:DIR", (f"an open_clip hub-layout directory ({CONFIG_FILE} + open_clip_pytorch_model.bin / "
                       "open_clip_model.safetensors)")),
))
def load(spec: str, location: str):
    from transformers import CLIPVisionModelWithProjection

    hf_model, processor, tokenizer = _convert(spec, location)
    vision = CLIPVisionModelWithProjection(hf_model.config.vision_config)
    vision.vision_model.load_state_dict(hf_model.vision_model.state_dict(), strict=True)
    vision.visual_projection.load_state_dict(hf_model.visual_projection.state_dict(), strict=True)
    return build_clip_tower(
        vision.eval(), processor, family="open_clip", spec=spec,
        full_model_loader=lambda: copy.deepcopy(_convert(spec, location)[0]),  # the cache stays pristine
        tokenizer_loader=lambda: tokenizer,
        metadata={"converted_from": spec},
    )


@lru_cache(maxsize=4)
def _convert(spec: str, location: str):
    """Load with open_clip itself (its own config and weight reading), then convert to HF."""
    import open_clip

    from llava_plugin.convert import open_clip_to_hf

    arch, sep, checkpoint = location.partition("@")
    if sep:
        if not checkpoint:
            raise TowerSpecError(spec, "nothing follows '@': expected open_clip:ARCH@/path/to/checkpoint")
        if not Path(checkpoint).is_file():
            raise TowerSpecError(spec, f"open_clip checkpoint file not found: {checkpoint}")
        model_cfg, preprocess_cfg, name = _arch(spec, arch)
        model = wrap_load_errors(spec, checkpoint, lambda: _create_for_checkpoint(spec, name, checkpoint))
    else:
        path = Path(location)
        if not path.is_dir():
            raise TowerSpecError(spec, f"no such directory: {path} (or use open_clip:ARCH@CHECKPOINT)")
        config_file = path / CONFIG_FILE
        if not config_file.is_file():
            raise TowerSpecError(spec, f"{path} has no {CONFIG_FILE} (the open_clip hub layout)")
        meta = json.loads(config_file.read_text())
        model_cfg, preprocess_cfg = meta["model_cfg"], meta.get("preprocess_cfg", {})
        model = wrap_load_errors(spec, location, lambda: open_clip.create_model(f"local-dir:{path}"))
    return open_clip_to_hf(model.eval(), model_cfg, preprocess_cfg)


def _create_for_checkpoint(spec: str, arch: str, checkpoint: str):
    """open_clip's model `arch` with `checkpoint`'s weights. open_clip asserts (resizing position
    embeddings) or fails a strict load when the two do not fit: that is a wrong ARCH, said as such."""
    import open_clip

    try:
        return open_clip.create_model(arch, pretrained=checkpoint)
    except (AssertionError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300]
        if isinstance(err, RuntimeError) and "state_dict" not in detail:
            raise  # not a shape/key mismatch: wrap_load_errors reports an unreadable file
        raise TowerSpecError(spec, f"checkpoint {checkpoint} does not fit open_clip architecture {arch!r} "
                                   f"({detail or type(err).__name__}): name the architecture it was trained "
                                   "with") from err


def _arch(spec: str, arch: str) -> tuple[dict, dict, str]:
    import open_clip

    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise TowerSpecError(spec, f"open_clip model-config file not found: {path}")
        cfg = json.loads(path.read_text())
        open_clip.add_model_config(path)  # registers the architecture under the file's stem
        return cfg, {}, path.stem  # open_clip's defaults: OpenAI mean/std, bicubic, shortest side
    if arch not in open_clip.list_models():
        raise TowerSpecError(spec, f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    cfg = open_clip.get_model_config(arch)
    return cfg, cfg.get("preprocess_cfg", {}), arch
