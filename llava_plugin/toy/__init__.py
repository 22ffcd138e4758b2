"""The tiny zoo: random-weight miniatures and synthetic data in the exact on-disk layouts
of the real hub checkpoints and datasets, so every real loading path (`from_pretrained`,
`open_clip.create_model`, webdataset, the benchmark readers) runs offline in tests.

Tiny models differ from the real ones only in their config sizes. Everything is
deterministic given the seed.

    python -m llava_plugin.toy --out DIR [--seed 0] [--parts vision,llm,...]
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# part name -> (module, writer function); each writer is `write(zoo: Zoo, seed: int) -> None`
# and fills in its fields of `zoo`. Order matters: later parts may use earlier ones.
PARTS: dict[str, tuple[str, str]] = {
    "vision": ("llava_plugin.toy.vision", "write_vision_towers"),
    "llm": ("llava_plugin.toy.llm", "write_llm"),
    "diffusion": ("llava_plugin.toy.diffusion", "write_generators"),
    "data": ("llava_plugin.toy.data", "write_data"),
    "llava": ("llava_plugin.toy.llava", "write_llava_checkpoints"),
}


@dataclass
class Zoo:
    """Paths of everything the tiny zoo wrote. A field stays None until its part is built."""

    root: Path
    # vision towers (part "vision")
    clip: Path | None = None  # HF CLIPModel dir (+ CLIPImageProcessor, CLIPTokenizer), 32 px, patch 8
    clip_large: Path | None = None  # same family at 48 px, patch 8 (the "@336" stand-in)
    siglip: Path | None = None  # HF SiglipModel dir (+ processor, tokenizer), 32 px, patch 8
    open_clip: Path | None = None  # open_clip hub layout: open_clip_config.json + open_clip_pytorch_model.bin
    open_clip_arch: Path | None = None  # the same model config as a standalone JSON (for ARCH@CKPT specs)
    open_clip_checkpoint: Path | None = None  # the same weights as a standalone file
    # language model (part "llm")
    llm: Path | None = None  # LlamaForCausalLM + sentencepiece tokenizer (vicuna layout)
    # generators (part "diffusion")
    sd21: Path | None = None  # StableDiffusionPipeline layout (unet, vae, text_encoder, tokenizer, scheduler)
    unclip: Path | None = None  # StableUnCLIPImg2ImgPipeline layout, image encoder matching `clip`
    vqgan: Path | None = None  # diffusers VQModel dir (discrete GenHancer tokenizer)
    flux_vae: Path | None = None  # FLUX.1-dev layout, vae/ only: 16-channel AutoencoderKL with shift_factor
    # data (part "data")
    data: dict[str, Path] = field(default_factory=dict)
    # LLaVA checkpoints (part "llava")
    llava: Path | None = None  # HF LlavaForConditionalGeneration + LlavaProcessor dir
    llava_original: Path | None = None  # original LLaVA-1.5 layout (mm_vision_tower, model.mm_projector.*)

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else {dk: str(dv) for dk, dv in v.items()}
                    if isinstance(v, dict) else v) for k, v in asdict(self).items()}


def build_zoo(out: str | Path, seed: int = 0, parts: list[str] | None = None) -> Zoo:
    """Write the zoo under `out` (models/ and data/) and return its paths.

    `parts` selects a subset (see PARTS); the default builds everything. `zoo.json`
    at the root lists what was written.
    """
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    zoo = Zoo(root=root)
    unknown = set(parts or []) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown toy zoo part(s) {sorted(unknown)}; known parts: {list(PARTS)}")
    timings = {}
    for name, (module, fn) in PARTS.items():
        if parts is not None and name not in parts:
            continue
        start = time.perf_counter()
        getattr(importlib.import_module(module), fn)(zoo, seed)
        timings[name] = round(time.perf_counter() - start, 2)
    (root / "zoo.json").write_text(json.dumps({"seed": seed, "seconds": timings, **zoo.to_json()}, indent=2))
    return zoo


def load_zoo(root: str | Path) -> Zoo:
    """Read back a zoo written by `build_zoo` (from its zoo.json)."""
    root = Path(root).resolve()
    meta = json.loads((root / "zoo.json").read_text())
    zoo = Zoo(root=root)
    for key, value in meta.items():
        if key in ("seed", "seconds", "root") or value is None:
            continue
        if key == "data":
            zoo.data = {k: Path(v) for k, v in value.items()}
        else:
            setattr(zoo, key, Path(value))
    return zoo


def open_zoo(root: str | Path, seed: int = 0, parts: list[str] | None = None) -> Zoo:
    """The zoo written at `root` (its zoo.json), or one built there first (`build_zoo`), saying so on
    stderr: building takes a few minutes."""
    root = Path(root)
    if (root / "zoo.json").exists():
        return load_zoo(root)
    print(f"building the tiny zoo in {root}", file=sys.stderr, flush=True)
    return build_zoo(root, seed=seed, parts=parts)
