"""Original LLaVA-1.5 checkpoints <-> HF Llava, with explicit key maps and strict checks.

The original layout (haotian-liu/LLaVA, e.g. liuhaotian/llava-v1.5-7b) is a LlamaForCausalLM
checkpoint whose config.json adds `mm_*` fields (`mm_vision_tower` names the tower by HF id,
`mm_projector_type`, `mm_vision_select_layer`, `mm_vision_select_feature`, `mm_hidden_size`,
...) and whose weights add `model.mm_projector.{0,2}.*` (nn.Sequential Linear-GELU-Linear) and,
when the whole model was saved, `model.vision_tower.vision_tower.vision_model.*`. Its vocabulary
has no image token: the image is spliced in at a placeholder id (-200) that never reaches the
embedding. HF Llava needs a real `<image>` token, so converting appends one embedding row (and
lm_head row), the mean of the others, and the inverse drops it again.

`load_llava` reads a checkpoint of either layout (HF Llava, the contract between stages, or
original), so every stage loads LLaVA through this module; it builds on `llava.py`, which
never imports it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from llava_plugin.errors import GenfeedbackError
from llava_plugin.llava import (
    IMAGE_TOKEN,
    MM_PROJECTOR_KEYS,
    PROJECTORS,
    assemble_llava,
    feature_strategy,
    greedy_generation_config,
    llava_config,
    llava_processor,
)


class LlavaConversionError(GenfeedbackError, ValueError):
    """A checkpoint that does not convert exactly; the message names the key or field."""


class LlavaFileMissingError(GenfeedbackError, FileNotFoundError):
    """A LLaVA checkpoint directory (or a file it needs) that is not there."""


# Original key prefix -> HF Llava (in-memory) key prefix. Every original key must match one.
ORIGINAL_TO_HF_PREFIXES = (
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
)
# Buffers older transformers versions saved; they are recomputed, never loaded.
IGNORED_ORIGINAL_KEYS = (
    re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
    re.compile(r"model\.vision_tower\.vision_tower\.vision_model\.embeddings\.position_ids"),
)
VOCAB_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")  # HF names of the vocab-sized rows

# config.json fields the original LLaVA adds to a LlamaConfig (everything else is the LLM's).
LLAVA_CONFIG_FIELDS = (
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
    "mm_vision_select_feature", "mm_use_im_start_end", "mm_use_im_patch_token", "mm_patch_merge_type",
    "mm_projector_lr", "mm_vision_tower_lr", "use_mm_proj", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length",
    "tokenizer_padding_side", "mm_resampler_type",
)
NON_LLM_FIELDS = ("architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


def original_key_to_hf(key: str) -> str | None:
    """The HF Llava name of an original key; None for a stale buffer; an error for anything else."""
    if any(pattern.fullmatch(key) for pattern in IGNORED_ORIGINAL_KEYS):
        return None
    for old, new in ORIGINAL_TO_HF_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise LlavaConversionError(f"original LLaVA key {key!r} has no HF Llava equivalent (known prefixes: "
                               f"{[old for old, _ in ORIGINAL_TO_HF_PREFIXES]})")


def hf_key_to_original(key: str) -> str:
    for old, new in ORIGINAL_TO_HF_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    raise LlavaConversionError(f"HF Llava key {key!r} has no original LLaVA equivalent")


def llava_original_to_hf(state: dict[str, torch.Tensor], *, image_token_id: int) -> dict[str, torch.Tensor]:
    """Original LLaVA weights -> HF Llava weights (in-memory names), `<image>` rows appended.

    `image_token_id` must be the current vocabulary size (the token is appended at the end).
    """
    out = {}
    for key, tensor in state.items():
        new = original_key_to_hf(key)
        if new is None:
            continue
        if new in out:
            raise LlavaConversionError(f"two original keys map to {new!r}")
        out[new] = tensor
    for key in VOCAB_KEYS:
        if key not in out:
            raise LlavaConversionError(f"original checkpoint lacks {hf_key_to_original(key)!r}")
        rows = out[key].shape[0]
        if image_token_id != rows:
            raise LlavaConversionError(
                f"{hf_key_to_original(key)} has {rows} rows, so {IMAGE_TOKEN} would be token {rows}, but the "
                f"tokenizer gives it id {image_token_id}: tokenizer and weights do not match")
        out[key] = torch.cat([out[key], out[key].float().mean(dim=0, keepdim=True).to(out[key].dtype)])
    return out


def llava_hf_to_original(state: dict[str, torch.Tensor], *, image_token_id: int) -> dict[str, torch.Tensor]:
    """HF Llava weights (in-memory names) -> original LLaVA names, the `<image>` row dropped.

    The image token must be the last row: original LLaVA has no such token, and removing a row
    from the middle would renumber the tokens after it.
    """
    out = {}
    for key, tensor in state.items():
        new = hf_key_to_original(key)
        if key in VOCAB_KEYS:
            if image_token_id != tensor.shape[0] - 1:
                raise LlavaConversionError(f"{IMAGE_TOKEN} is token {image_token_id} but {key} has "
                                           f"{tensor.shape[0]} rows: only a last-row image token can be dropped")
            tensor = tensor[:-1]
        out[new] = tensor
    return out


# ---- configs ---------------------------------------------------------------------------------
def split_original_config(config: dict) -> tuple[dict, dict]:
    """(LLaVA's mm fields, the LlamaConfig fields) of an original config.json."""
    mm = {key: config[key] for key in LLAVA_CONFIG_FIELDS if key in config}
    llm = {key: value for key, value in config.items() if key not in LLAVA_CONFIG_FIELDS + NON_LLM_FIELDS}
    return mm, llm


def check_original_mm_config(mm: dict, tower, source: str) -> tuple[str, int, str]:
    """(projector, select_layer, select_feature) of an original config, rejecting what HF Llava
    cannot represent. The defaults are original LLaVA's own when a field is absent."""
    projector = mm.get("mm_projector_type", "linear")
    if projector not in PROJECTORS:
        raise LlavaConversionError(f"{source}: mm_projector_type={projector!r} is not supported by HF Llava "
                                   f"(supported: {sorted(PROJECTORS)})")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if mm.get(flag):
            raise LlavaConversionError(f"{source}: {flag}=true (extra image tokens) is not LLaVA-1.5 and has no "
                                       f"HF Llava equivalent")
    if mm.get("mm_patch_merge_type", "flat") != "flat":
        raise LlavaConversionError(f"{source}: mm_patch_merge_type={mm['mm_patch_merge_type']!r} (LLaVA-NeXT "
                                   f"tiling) is not LLaVA-1.5")
    hidden = mm.get("mm_hidden_size")
    if hidden is not None and hidden != tower.sizes.hidden_size:
        raise LlavaConversionError(f"{source}: mm_hidden_size={hidden} but tower {tower.spec!r} has hidden size "
                                   f"{tower.sizes.hidden_size}: wrong tower for this checkpoint")
    return projector, int(mm.get("mm_vision_select_layer", -1)), mm.get("mm_vision_select_feature", "patch")


def original_config(model, vision_tower: str, *, image_aspect_ratio: str = "pad",
                    model_max_length: int = 2048) -> dict:
    """config.json of the original layout for an HF Llava model (vocab without `<image>`)."""
    cfg = model.config
    text = cfg.text_config.to_dict()
    for key in NON_LLM_FIELDS:
        text.pop(key, None)
    # "default" drops CLS; "full" keeps every token, which is `patch` for a tower without CLS
    # (one token per patch) and `cls_patch` for one with CLS (one token more).
    num_patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    keeps_cls = cfg.vision_feature_select_strategy == "full" and cfg.image_seq_length == num_patches + 1
    select_feature = "cls_patch" if keeps_cls else "patch"
    return {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        **text,
        "vocab_size": text["vocab_size"] - 1,
        "mm_vision_tower": vision_tower,
        "mm_hidden_size": cfg.vision_config.hidden_size,
        "mm_projector_type": _projector_name(cfg.projector_hidden_act),
        "mm_vision_select_layer": cfg.vision_feature_layer,
        "mm_vision_select_feature": select_feature,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": image_aspect_ratio,
        "tokenizer_model_max_length": model_max_length,
        "tokenizer_padding_side": "right",
    }


def _projector_name(act: str) -> str:
    names = [name for name, hf_act in PROJECTORS.items() if hf_act == act]
    if not names:
        raise LlavaConversionError(f"projector_hidden_act={act!r} has no original LLaVA projector name")
    return names[0]


# ---- files -----------------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint dir: safetensors or .bin, single file or sharded with an index."""
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _torch_load)):
        index = path / index_name
        if index.is_file():
            state = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                if not (path / shard).is_file():
                    raise LlavaFileMissingError(f"{index} lists shard {shard}, which is missing from {path}")
                state.update(loader(path / shard))
            return state
    for name, loader in (("model.safetensors", load_file), ("pytorch_model.bin", _torch_load)):
        if (path / name).is_file():
            return loader(path / name)
    raise LlavaFileMissingError(f"{path} has no weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True)


def checkpoint_format(path: str | Path) -> str:
    """'hf_llava' or 'original_llava', from config.json; an error names what was found."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir():
        raise LlavaFileMissingError(f"LLaVA checkpoint {path} does not exist: pass an HF Llava directory (the llava/ "
                                    "of `python -m mllm_train`) or an original LLaVA-1.5 checkpoint directory")
    if not config_file.is_file():
        raise LlavaFileMissingError(f"{path} has no config.json: not a LLaVA checkpoint directory")
    config = json.loads(config_file.read_text())
    if "mm_vision_tower" in config and "text_config" not in config:
        return "original_llava"
    if config.get("model_type") == "llava" and "text_config" in config:
        return "hf_llava"
    raise LlavaConversionError(f"{config_file}: neither an HF Llava config (model_type 'llava' with text_config) nor an "
                     f"original LLaVA config (with mm_vision_tower); model_type={config.get('model_type')!r}")


def load_llava(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
               vision_tower: str | None = None):
    """(model, processor) from an HF Llava dir or an original LLaVA-1.5 checkpoint dir.

    Original checkpoints name their tower by an HF id in `mm_vision_tower`; `vision_tower`
    overrides where it is loaded from (any `load_tower` spec, e.g. a local directory).
    """
    path = Path(path)
    if checkpoint_format(path) == "original_llava":
        model, processor = load_original_llava(path, vision_tower=vision_tower, dtype=dtype)
    else:
        if vision_tower is not None:
            raise LlavaConversionError(f"{path} is an HF Llava checkpoint with its tower inside; vision_tower= applies "
                             f"only to original LLaVA checkpoints")
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path)
    return model.to(device).eval(), processor


def load_original_llava(path: str | Path, *, vision_tower: str | None = None, dtype: torch.dtype = torch.float32):
    """(HF LlavaForConditionalGeneration, LlavaProcessor) from an original LLaVA-1.5 checkpoint dir.

    The tower comes from `vision_tower` (a `load_tower` spec) or else the config's
    `mm_vision_tower`; if the checkpoint holds vision weights (a whole-model save), those are
    used, strictly, since they are what was trained or evaluated.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from llava_plugin.registry import load_tower

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    mm, llm_fields = split_original_config(config)
    if "mm_vision_tower" not in mm:
        raise LlavaConversionError(f"{path}/config.json has no mm_vision_tower: not an original LLaVA checkpoint")
    tower = load_tower(vision_tower or mm["mm_vision_tower"], dtype=dtype)
    projector, select_layer, select_feature = check_original_mm_config(mm, tower, f"{path}/config.json")

    tokenizer = _original_tokenizer(path)
    processor = llava_processor(tower, tokenizer, select_feature)
    state = llava_original_to_hf(read_state_dict(path), image_token_id=processor.image_token_id)

    text_config = LlamaConfig(**{**llm_fields, "vocab_size": llm_fields["vocab_size"] + 1})
    with torch.device("meta"):
        llm = LlamaForCausalLM(text_config)
    llm_state = {key[len("model.language_model."):]: value for key, value in state.items()
                 if key.startswith("model.language_model.")}
    load_exact(llm.model, llm_state, path, "language model")
    load_exact(llm.lm_head, {"weight": state["lm_head.weight"]}, path, "lm_head")
    llm.model.rotary_emb = type(llm.model.rotary_emb)(config=text_config)  # a buffer, not a weight
    llm.to(dtype)

    vision_state = {key[len("model.vision_tower."):]: v for key, v in state.items() if key.startswith("model.vision_tower.")}
    if vision_state:
        load_exact(tower.vision_model, vision_state, path, "vision tower")
    projector_state = {key[len("model.multi_modal_projector."):]: v for key, v in state.items()
                       if key.startswith("model.multi_modal_projector.")}
    if not projector_state:
        raise LlavaConversionError(f"{path} has no model.mm_projector.* weights; the projector of a pretraining "
                                   f"run is in its mm_projector.bin (see llava.load_mm_projector)")
    missing = sorted(original for original, hf in MM_PROJECTOR_KEYS.items() if hf not in projector_state)
    if missing:
        raise LlavaConversionError(f"{path}: the mlp2x_gelu projector lacks {missing}")
    hf_config = llava_config(tower, text_config, processor.image_token_id, projector=projector,
                             select_layer=select_layer, select_feature=select_feature)
    model = assemble_llava(hf_config, tower, llm.model, llm.lm_head, projector_state=projector_state)
    model.generation_config = greedy_generation_config(GenerationConfig, tokenizer)
    return model.to(dtype), processor


def _original_tokenizer(path: Path):
    """The tokenizer class tokenizer_config.json names. AutoTokenizer would go by config.json's
    model_type 'llava' and pick the generic HF-Llava tokenizer class, which tokenizes a
    sentencepiece LLaMA vocabulary differently (the first word loses its dummy prefix)."""
    import transformers

    config_file = path / "tokenizer_config.json"
    if not config_file.is_file():
        raise LlavaFileMissingError(f"{path} has no tokenizer_config.json (original LLaVA saves the LLM's tokenizer "
                                f"next to the weights)")
    name = json.loads(config_file.read_text()).get("tokenizer_class") or "LlamaTokenizer"
    cls = getattr(transformers, name.removesuffix("Fast"), None) or getattr(transformers, name, None)
    if cls is None:
        raise LlavaConversionError(f"{config_file}: unknown tokenizer_class {name!r}")
    return cls.from_pretrained(path)


def load_exact(module, state: dict, path: Path | str, what: str) -> None:
    """load_state_dict(strict=True, assign=True) with an error naming the checkpoint (or source) and
    the keys; shapes are checked first, so a mismatch never half-loads."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise LlavaConversionError(f"{path}: {what} weights do not match the architecture; missing "
                                   f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise LlavaConversionError(f"{path}: {what} weight {key} has shape {tuple(tensor.shape)}, the config "
                                       f"needs {tuple(own[key].shape)}")
    module.load_state_dict(state, strict=True, assign=True)


def save_llava_original(model, processor, out_dir: str | Path, *, vision_tower: str,
                        tokenizer_dir: str | Path | None = None, include_vision_tower: bool = True,
                        image_aspect_ratio: str = "pad", max_shard_size: int = 2 << 30) -> Path:
    """Write an HF Llava model in the original LLaVA-1.5 layout: config.json with mm_* fields
    (`mm_vision_tower` = `vision_tower`), the LLM's sentencepiece tokenizer files (from
    `tokenizer_dir`, default the processor tokenizer's source directory), and
    `pytorch_model-0000i-of-0000n.bin` shards + index. The `<image>` token must be the last one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_token_id = model.config.image_token_id
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not include_vision_tower:
        state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
    original = llava_hf_to_original(state, image_token_id=image_token_id)
    config = original_config(model, vision_tower, image_aspect_ratio=image_aspect_ratio,
                             model_max_length=processor.tokenizer.model_max_length)
    config["torch_dtype"] = str(next(iter(original.values())).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_bin_shards(original, out, max_shard_size)
    _write_original_tokenizer(processor.tokenizer, Path(tokenizer_dir or processor.tokenizer.name_or_path), out)
    model.generation_config.save_pretrained(out)
    return out


def _write_bin_shards(state: dict[str, torch.Tensor], out: Path, max_shard_size: int) -> None:
    shards, current, size = [], {}, 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, out / name)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def _write_original_tokenizer(tokenizer, source: Path, out: Path) -> None:
    """The tokenizer as LLaVA saves it: the LLM's own files, without `<image>`, padding with <unk>."""
    model_file = source / "tokenizer.model"
    if not model_file.is_file():
        raise LlavaFileMissingError(f"the original layout needs the LLM's sentencepiece tokenizer.model; {source} has "
                                f"none: pass tokenizer_dir= (the LLM directory the model was built from)")
    (out / "tokenizer.model").write_bytes(model_file.read_bytes())
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    config.update(pad_token="<unk>", model_max_length=tokenizer.model_max_length, padding_side="right")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
               "unk_token": tokenizer.unk_token, "pad_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


__all__ = [
    "MM_PROJECTOR_KEYS",
    "LlavaConversionError",
    "feature_strategy",
    "llava_hf_to_original",
    "llava_original_to_hf",
    "load_original_llava",
    "original_config",
    "read_state_dict",
    "save_llava_original",
]
