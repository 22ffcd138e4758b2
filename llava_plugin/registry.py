"""Spec string -> `VisionTower`. The same `--vision-tower SPEC` flag works in every stage.

A spec is `FAMILY:LOCATION` (the family named explicitly) or a bare HF id / local directory,
whose family is read from the files in it (config.json's `model_type`, or a family's own marker
file such as open_clip_config.json), never guessed from the directory's name. The families are
the modules of `llava_plugin/families/` (contract: `families/base.py`); each declares the
model types it loads and the spec forms it accepts, so `SPEC_HELP` (in every `--vision-tower`
help text and every `TowerSpecError`) lists what the registered families accept.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llava_plugin.families.base import FAMILIES, TowerSpecError, register_family, spec_help
from llava_plugin.towers import TextEncoder, VisionTower, read_metadata

SPEC_HELP = spec_help()


def list_families() -> list[str]:
    return FAMILIES.names()


def load_tower(spec: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> VisionTower:
    """Resolve `spec` (see module docstring) to a `VisionTower`, in eval mode."""
    if not isinstance(spec, str) or not spec.strip():
        raise TowerSpecError(str(spec), "the spec is empty")
    spec = spec.strip()
    family_name, location = _split_family(spec)
    if family_name is None:
        family_name = _detect_family(spec, location)
    tower = FAMILIES[family_name].load(spec, location)
    if dtype is not None or device is not None:
        tower.to(device=device, dtype=dtype)
    return tower.eval()


def _split_family(spec: str) -> tuple[str | None, str]:
    head, sep, rest = spec.partition(":")
    if sep and head in FAMILIES:
        if not rest:
            raise TowerSpecError(spec, f"nothing follows '{head}:'")
        return head, rest
    if sep and "/" not in head and not Path(spec).exists():
        raise TowerSpecError(spec, str(FAMILIES.unknown(head)))
    return None, spec


def _detect_family(spec: str, location: str) -> str:
    path = Path(location)
    if location.startswith((".", "/", "~")) or path.exists():
        path = path.expanduser()
        if not path.exists():
            raise TowerSpecError(spec, f"no such directory: {path}")
        if not path.is_dir():
            raise TowerSpecError(spec, f"{path} is a file; a tower is a directory (or open_clip:ARCH@{path})")
        config_file = path / "config.json"
        if not config_file.is_file():
            for family in FAMILIES.values():
                if any((path / name).is_file() for name in family.files):
                    return family.name
            raise TowerSpecError(spec, f"{path} has no config.json (expected an HF CLIP/SigLIP model directory)")
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise TowerSpecError(spec, f"{config_file} is not valid JSON ({err})") from err
    else:
        model_type = _hub_model_type(spec, location)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family.name
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise TowerSpecError(spec, f"config model_type {model_type!r} is not a supported tower; supported: {known}")


def _hub_model_type(spec: str, repo_id: str) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(repo_id).model_type
    except (OSError, ValueError) as err:
        raise TowerSpecError(
            spec, f"not a local directory and not loadable as an HF hub id from the local cache ({err})"
        ) from err


__all__ = [
    "FAMILIES",
    "SPEC_HELP",
    "TextEncoder",
    "TowerSpecError",
    "VisionTower",
    "list_families",
    "load_tower",
    "read_metadata",
    "register_family",
]
