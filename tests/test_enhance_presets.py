"""The paper presets: their batch plans at every world size, and one preset per published
(method, backbone) pair whose tower resolves, through the registry, to a registered family at the
resolution its name states (issue 11, items 5 and 6).

No real weights are read and nothing is downloaded: a bare HF id is resolved from a throwaway HF
hub cache holding a tiny stand-in of the same family and resolution, and an `open_clip:ARCH@FILE`
spec's architecture is read from open_clip's own configs, its loading path run on a tiny stand-in.
"""
import json
import re

import pytest
import yaml
from PIL import Image

from enhance.config import PRESET_DIR, STAGES_KEY, load_config, load_run, presets, resolve_preset
from llava_plugin.config import ConfigError, load_yaml_preset
from llava_plugin.train.plan import BatchPlan

WORLD_SIZES = (1, 2, 4, 8, 16, 32, 64)
PAPER_WORLD = 8  # DIVA, GenHancer and un2CLIP all train on 8 GPUs

# The enhanced towers each upstream publishes (with an MMVP-VLM row): baaivision/DIVA README.md:95-102,
# mashijie1028/GenHancer README.md:81-86, and un2CLIP's four backbones (paper, experimental setup).
PUBLISHED = {
    "diva": ["openai-l14-224", "openai-l14-336", "metaclip-l14-224", "metaclip-h14-224",
             "siglip-so14-224", "siglip-so14-384", "dfn-h14-224", "dfn-h14-378"],
    "genhancer": ["openai-l14-224", "openai-l14-336", "metaclip-l14-224", "metaclip-h14-224",
                  "siglip-so14-224", "siglip-so14-384"],
    "un2clip": ["openai-l14-224", "openai-l14-336", "openclip-h14-224", "siglip-so14-384"],
}
# The tower family each backbone's preset spec must reach (DFN is published in open_clip's layout only).
FAMILY = {"openai": "hf_clip", "metaclip": "hf_clip", "openclip": "hf_clip", "siglip": "hf_siglip",
          "dfn": "open_clip"}
# What the hub's config.json of each HF id says (model_type, image_size, patch_size): the stand-in copies it.
HUB_CONFIG = {
    "openai/clip-vit-large-patch14": ("clip", 224, 14),
    "openai/clip-vit-large-patch14-336": ("clip", 336, 14),
    "facebook/metaclip-l14-fullcc2.5b": ("clip", 224, 14),
    "facebook/metaclip-h14-fullcc2.5b": ("clip", 224, 14),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": ("clip", 224, 14),
    "google/siglip-so400m-patch14-224": ("siglip", 224, 14),
    "google/siglip-so400m-patch14-384": ("siglip", 384, 14),
}
NAME = re.compile(r"^(?P<method>diva|un2clip|genhancer-discrete|genhancer)-"
                  r"(?P<backbone>(?P<kind>[a-z]+)-[a-z]+\d+-(?P<res>\d+))(?P<stage>-stage\d(-[a-z]+)?)?$")


def _single_stage(name):
    return STAGES_KEY not in load_yaml_preset(PRESET_DIR, name)


PAPER_PRESETS = [p for p in presets() if p != "base" and not p.startswith(("tiny-", "world-")) and _single_stage(p)]
BACKBONE_PRESETS = [p for p in PAPER_PRESETS if NAME.match(p)]


# ---- item 5: batch plans ---------------------------------------------------------------------------
def _documented_worlds(name):
    """The world sizes stated in the comment of the preset (on its `base:` chain) that sets the batch."""
    while True:
        text = (PRESET_DIR / f"{name}.yaml").read_text()
        own = yaml.safe_load(text) or {}
        if "batch" in own:
            found = re.search(r"Batch plan valid on ((?:\d+, )*\d+) GPUs", text)
            assert found, f"{name}.yaml sets batch: but does not say 'Batch plan valid on N, M GPUs'"
            return {int(n) for n in found.group(1).split(", ")}
        assert own.get("base"), f"no preset on the base chain ending in {name}.yaml sets batch:"
        name = own["base"]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_batch_plan_is_valid_on_8_gpus_and_where_documented(name):
    batch = load_config(preset=name).batch
    valid = set()
    for world in WORLD_SIZES:
        plan = BatchPlan(batch.global_batch_size, batch.micro_batch_size, world)
        try:
            plan.check("batch.")
        except ConfigError as err:
            fix = re.search(r"set batch\.micro_batch_size=(\d+)", str(err))
            if fix:  # the fix keeps the paper's global batch and works
                BatchPlan(batch.global_batch_size, int(fix.group(1)), world).check("batch.")
            else:
                assert batch.global_batch_size % world, err  # only when no micro batch can split it
            continue
        valid.add(world)
    assert PAPER_WORLD in valid, f"{name}: {batch} does not split over the papers' {PAPER_WORLD} GPUs"
    assert valid == _documented_worlds(name)


def test_un2clip_keeps_the_paper_batch_on_8_gpus_without_accumulation():
    batch = load_config(preset="un2clip-openai-l14-224").batch
    assert batch.global_batch_size == 32  # un2CLIP: global batch 32 on 8 A100s
    assert BatchPlan(batch.global_batch_size, batch.micro_batch_size, PAPER_WORLD).accumulation == 1


# ---- item 6: a preset per published pair -----------------------------------------------------------
def test_every_published_pair_has_its_presets(tmp_path):
    for method, backbones in PUBLISHED.items():
        for backbone in backbones:
            name = resolve_preset(method, "paper", backbone)
            assert name == f"{method}-{backbone}"
            if method != "genhancer":
                assert _single_stage(name) and load_config(preset=name).method_name == method
                continue
            run = load_run(preset=name, overrides={"output_dir": str(tmp_path)})
            assert [(stage, cfg.method["stage"]) for stage, cfg in run] == [("stage1", 1), ("stage2", 2)]
            assert load_yaml_preset(PRESET_DIR, name)[STAGES_KEY] == {
                "stage1": f"{name}-stage1", "stage2": f"{name}-stage2"}
    named = {(m.group("method"), m.group("backbone")) for m in map(NAME.match, BACKBONE_PRESETS)
             if m.group("method") != "genhancer-discrete"}
    assert named == {(method, b) for method, backbones in PUBLISHED.items() for b in backbones}


def _write_stand_in(out, model_type, image_size, patch_size):
    """A tiny HF model of `model_type` at the real resolution and patch size, with its image processor."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    torch.manual_seed(0)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    if model_type == "clip":
        projection = {"projection_dim": 8}
        CLIPModel(CLIPConfig(vision_config={**vision, **projection}, text_config={**text, **projection},
                             **projection)).save_pretrained(out)
        CLIPImageProcessor(size={"shortest_edge": image_size},
                           crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    else:
        SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).save_pretrained(out)
        SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """An HF hub cache (models--ORG--NAME/refs/main + snapshots/REV/) with a stand-in for every HF id."""
    root = tmp_path_factory.mktemp("hub")
    revision = "0" * 40
    for repo_id, (model_type, image_size, patch_size) in HUB_CONFIG.items():
        repo = root / ("models--" + repo_id.replace("/", "--"))
        _write_stand_in(repo / "snapshots" / revision, model_type, image_size, patch_size)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
    return root


@pytest.mark.parametrize("name", BACKBONE_PRESETS)
def test_every_paper_tower_resolves_to_its_family_at_its_resolution(name, hub_cache, tmp_path, monkeypatch):
    import huggingface_hub

    from llava_plugin.registry import list_families, load_tower

    match = NAME.match(name)
    family, resolution = FAMILY[match.group("kind")], int(match.group("res"))
    assert family in list_families()
    spec = load_config(preset=name).vision_tower
    if spec.startswith("open_clip:"):
        import open_clip
        import torch

        arch, sep, checkpoint = spec.removeprefix("open_clip:").partition("@")
        assert sep and checkpoint.endswith(".bin"), f"{name}: expected open_clip:ARCH@CHECKPOINT, got {spec!r}"
        real = open_clip.get_model_config(arch)  # the architecture upstream names, from open_clip itself
        assert real is not None, f"{name}: open_clip has no architecture {arch!r}"
        assert real["vision_cfg"]["image_size"] == resolution
        # the same loading path on a tiny stand-in of that architecture's resolution and activation
        tiny = {"embed_dim": 8, "quick_gelu": real.get("quick_gelu", False),
                "vision_cfg": {"image_size": resolution, "layers": 1, "width": 16, "head_width": 8,
                               "patch_size": real["vision_cfg"]["patch_size"]},
                "text_cfg": {"context_length": 77, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
        arch_file = tmp_path / f"stand-in-{arch}.json"
        arch_file.write_text(json.dumps(tiny))
        open_clip.add_model_config(arch_file)
        checkpoint = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(open_clip.create_model(arch_file.stem).state_dict(), checkpoint)
        spec = f"open_clip:{arch_file}@{checkpoint}"
    else:
        assert spec in HUB_CONFIG, f"{name}: add {spec!r} (its hub config.json's model_type, size) to HUB_CONFIG"
        assert HUB_CONFIG[spec][1] == resolution, f"{name}: {spec} is a {HUB_CONFIG[spec][1]} px tower"
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    tower = load_tower(spec)
    assert (tower.family, tower.sizes.image_size) == (family, resolution)
    assert tower.preprocess([Image.new("RGB", (500, 400))]).shape[-2:] == (resolution, resolution)
