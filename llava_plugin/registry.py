"""Spec string -> `VisionTower`. The same `--vision-tower SPEC` flag works in every stage.

Accepted forms:
    openai/clip-vit-large-patch14        an HF id (from the local cache) or a local directory of a
    /abs/path/to/dir                     CLIP or SigLIP model, including directories written by
                                         `enhance`; the family is read from config.json
    hf_clip:ID_OR_DIR, hf_siglip:...     the same with the family named explicitly
    open_clip:ARCH@CHECKPOINT            an open_clip architecture (built-in name, or a model-config
                                         JSON file) with a local checkpoint file
    open_clip:DIR                        an open_clip hub-layout directory (open_clip_config.json +
                                         open_clip_pytorch_model.bin / open_clip_model.safetensors)

The family is never guessed from a directory's name, only from the files in it.
"""
from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError

from llava_plugin.towers import METADATA_FILE, TextEncoder, VisionTower

SPEC_HELP = __doc__.split("Accepted forms:", 1)[1].split("The family", 1)[0].rstrip()


class TowerSpecError(ValueError):
    """A --vision-tower spec that cannot be resolved; the message lists the accepted forms."""

    def __init__(self, spec: str, problem: str):
        super().__init__(f"cannot load vision tower {spec!r}: {problem}\nAccepted forms:{SPEC_HELP}")


@dataclass(frozen=True)
class TowerFamily:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values this family loads
    load: Callable[[str, str], VisionTower]  # (spec, location) -> tower


FAMILIES: dict[str, TowerFamily] = {}


def register_family(name: str, model_types: tuple[str, ...] = ()):
    """Decorator: register `load(spec, location) -> VisionTower` as tower family `name`."""

    def wrap(load):
        if name in FAMILIES:
            raise ValueError(f"tower family {name!r} registered twice")
        FAMILIES[name] = TowerFamily(name, model_types, load)
        return load

    return wrap


def list_families() -> list[str]:
    _import_families()
    return sorted(FAMILIES)


def load_tower(spec: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> VisionTower:
    """Resolve `spec` (see module docstring) to a `VisionTower`, in eval mode."""
    _import_families()
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


def read_metadata(location: str | Path) -> dict:
    """genfeedback.json of an enhanced tower directory ({} for any other tower)."""
    path = Path(location) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _split_family(spec: str) -> tuple[str | None, str]:
    head, sep, rest = spec.partition(":")
    if sep and head in FAMILIES:
        if not rest:
            raise TowerSpecError(spec, f"nothing follows '{head}:'")
        return head, rest
    if sep and "/" not in head and not Path(spec).exists():
        raise TowerSpecError(spec, f"unknown tower family {head!r}; known families: {sorted(FAMILIES)}")
    return None, spec


def _detect_family(spec: str, location: str) -> str:
    path = Path(location)
    if location.startswith((".", "/", "~")) or path.exists():
        path = path.expanduser()
        if not path.exists():
            raise TowerSpecError(spec, f"no such directory: {path}")
        if not path.is_dir():
            raise TowerSpecError(spec, f"{path} is a file; a tower is a directory (or open_clip:ARCH@{path})")
        if (path / "open_clip_config.json").is_file() and not (path / "config.json").is_file():
            return "open_clip"
        config_file = path / "config.json"
        if not config_file.is_file():
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


def _import_families() -> None:
    # Each family module registers itself on import.
    from llava_plugin.families import hf_clip, hf_siglip, open_clip  # noqa: F401


@contextmanager
def quiet_transformers():
    """Silence transformers' load report where skipped keys are expected (vision class on a full model)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def wrap_load_errors(spec: str, location: str, load: Callable):
    """Run a from_pretrained-style loader, turning unreadable weights into an error naming the files."""
    try:
        return load()
    except TowerSpecError:
        raise
    except FileNotFoundError as err:
        raise TowerSpecError(spec, f"a file is missing: {err}") from err
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, pickle.UnpicklingError, SafetensorError) as err:
        files = sorted(p.name for p in Path(location).glob("*")) if Path(location).is_dir() else []
        raise TowerSpecError(
            spec,
            f"failed to read the model at {location} ({type(err).__name__}: {err}). "
            f"Files there: {files}. A weight file may be corrupt or truncated: re-download or re-export it.",
        ) from err


__all__ = ["load_tower", "register_family", "list_families", "read_metadata", "TowerSpecError",
           "VisionTower", "TextEncoder", "FAMILIES", "SPEC_HELP"]
