"""The contract of a tower family, and what family modules share.

A family is one module in `llava_plugin/families/` whose loader is decorated with
`@register_family(name, ...)`: `load(spec, location) -> VisionTower`, where `location` is the
spec without its `name:` prefix. What it declares is all `llava_plugin.registry` needs:
- `model_types`: the config.json `model_type` values of the HF directories/ids it loads, so a
  bare path or id is routed to it;
- `files`: files that mark a directory of its own (one without config.json) as its;
- `forms`: (spec form, what it means) lines for the accepted-forms help (`spec_help`) that
  every `--vision-tower` help text and every `TowerSpecError` carries.

Family modules import from here and from `llava_plugin.towers`, never from
`llava_plugin.registry` (which imports them): imports go one way.
"""
from __future__ import annotations

import pickle
import textwrap
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from llava_plugin.errors import GenfeedbackError, missing_local_path
from llava_plugin.registry_util import Registry
from llava_plugin.towers import VisionTower

# Forms every family accepts, resolved by the registry itself (family detected from the files).
GENERIC_FORMS = (
    ("openai/clip-vit-large-patch14", "an HF id (from the local cache) or a local directory, including"),
    ("/abs/path/to/dir", ("directories written by `enhance`; the family is read from the files in it "
                          "(config.json's model_type), never from the directory's name")),
)
FORM_WIDTH = 37  # column where the descriptions start


@dataclass(frozen=True)
class TowerFamily:
    name: str
    load: Callable[[str, str], VisionTower]  # (spec, location) -> tower
    model_types: tuple[str, ...] = ()  # config.json model_type values this family loads
    files: tuple[str, ...] = ()  # a directory without config.json holding one of these is this family's
    forms: tuple[tuple[str, str], ...] = ()  # (spec form, description) for the accepted-forms help


FAMILIES: Registry[TowerFamily] = Registry("tower family", "llava_plugin.families", plural="families")


def register_family(name: str, model_types: tuple[str, ...] = (), *, files: tuple[str, ...] = (),
                    forms: tuple[tuple[str, str], ...] = ()):
    """Decorator: register `load(spec, location) -> VisionTower` as tower family `name`."""

    def wrap(load):
        FAMILIES.add(name, TowerFamily(name, load, tuple(model_types), tuple(files), tuple(forms)))
        return load

    return wrap


def spec_help() -> str:
    """The accepted spec forms, one per line (each line starts with a newline and 4 spaces)."""
    forms = [*GENERIC_FORMS, *(form for family in FAMILIES.values() for form in family.forms)]
    lines = []
    for form, text in forms:
        wrapped = textwrap.wrap(text, 100 - FORM_WIDTH - 4) or [""]
        lines.append(f"    {form:<{FORM_WIDTH - 1}} {wrapped[0]}")
        lines += [" " * (FORM_WIDTH + 4) + rest for rest in wrapped[1:]]
    return "".join("\n" + line for line in lines)


class TowerSpecError(GenfeedbackError, ValueError):
    """A --vision-tower spec that cannot be resolved; the message lists the accepted forms."""

    def __init__(self, spec: str, problem: str):
        super().__init__(f"cannot load vision tower {spec!r}: {problem}\nAccepted forms:{spec_help()}")


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
    if missing_local_path(location):
        raise TowerSpecError(spec, f"no such file or directory: {location}")  # not a hub id, not corrupt
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
