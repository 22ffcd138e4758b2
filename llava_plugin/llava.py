"""LLaVA-1.5 as an HF `LlavaForConditionalGeneration` + `LlavaProcessor`, from any `VisionTower`.

HF Llava is LLaVA-1.5's architecture: a vision tower whose hidden state at
`vision_feature_layer` is projected by Linear-GELU-Linear (`mlp2x_gelu`) into the LLM's input
embeddings, one embedding per `<image>` token of the text. The differences from the original
code are in the bookkeeping only: HF Llava repeats `<image>` once per feature token in the
text (the original collapses it to one position, id -200), and drops the CLS token with
`vision_feature_select_strategy="default"`, so towers without CLS (SigLIP) use `"full"`.

An HF Llava directory is the contract between training and evaluation: `save_llava` writes
model + processor (chat template included) + `genfeedback.json`, and
`LlavaForConditionalGeneration.from_pretrained` / `AutoProcessor.from_pretrained` read it
without our code. `convert_llava.load_llava` reads either this or an original LLaVA-1.5
checkpoint (convert_llava.py builds on this module; this module never imports it).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import torch

from llava_plugin.chat import DEFAULT_FORMAT, chat_template, get_format
from llava_plugin.errors import (
    GenfeedbackError,
    missing_local_path,
    naming_disk_full,
    read_json,
    tensor_bytes,
)
from llava_plugin.towers import VisionTower

logger = logging.getLogger("genfeedback")

IMAGE_TOKEN = "<image>"
METADATA_FILE = "genfeedback.json"
MM_PROJECTOR_FILE = "mm_projector.bin"

# LLaVA projector name -> HF Llava `projector_hidden_act`. HF Llava has only the two-layer MLP,
# so `linear` and deeper `mlpNx_gelu` projectors cannot be represented.
PROJECTORS = {"mlp2x_gelu": "gelu"}

# Original LLaVA's mm_projector is nn.Sequential(Linear, GELU, Linear): indices 0 and 2.
MM_PROJECTOR_KEYS = {
    "model.mm_projector.0.weight": "linear_1.weight",
    "model.mm_projector.0.bias": "linear_1.bias",
    "model.mm_projector.2.weight": "linear_2.weight",
    "model.mm_projector.2.bias": "linear_2.bias",
}

# LLaVA-1.5's vicuna_v1 system prompt, without the separator after it. The chat template an
# exported processor carries is generated from the same format (llava_plugin/templates.yaml).
VICUNA_V1_SYSTEM = get_format("vicuna_v1").system.rstrip()


def feature_strategy(tower_has_cls: bool, select_feature: str) -> str:
    """HF Llava's `vision_feature_select_strategy` for LLaVA's `mm_vision_select_feature`.

    `default` drops the first token, which is right only when that token is a CLS token.
    """
    if select_feature == "patch":
        return "default" if tower_has_cls else "full"
    if select_feature == "cls_patch":
        if not tower_has_cls:
            raise ValueError("select_feature='cls_patch' needs a tower with a CLS token (SigLIP has none); use 'patch'")
        return "full"
    raise ValueError(f"select_feature={select_feature!r}; expected 'patch' (LLaVA-1.5) or 'cls_patch'")


def num_image_tokens(tower: VisionTower, select_feature: str) -> int:
    """Feature tokens per image the projector emits: patches, plus CLS with `cls_patch`."""
    return tower.sizes.num_patches + int(select_feature == "cls_patch")


def add_image_token(tokenizer) -> int:
    """Add `<image>` as a special token (if missing) and return its id. LLaVA pads with <unk>,
    so a tokenizer without a pad token gets its unk token as pad."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither pad nor unk token; set a pad token")
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def llava_config(tower: VisionTower, text_config, image_token_id: int, *, projector: str = "mlp2x_gelu",
                 select_layer: int = -2, select_feature: str = "patch"):
    """The `LlavaConfig` joining `tower` to a language model of `text_config`."""
    from transformers import LlavaConfig

    if projector not in PROJECTORS:
        raise ValueError(f"projector {projector!r} has no HF Llava equivalent; supported: {sorted(PROJECTORS)}")
    num_states = tower.sizes.num_layers + 1  # embeddings output + one per layer
    if not -num_states <= select_layer < num_states:
        raise ValueError(f"select_layer={select_layer} out of range: the tower has {num_states} hidden states "
                         f"(LLaVA-1.5 uses -2, the penultimate layer)")
    return LlavaConfig(
        vision_config=tower.model.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=num_image_tokens(tower, select_feature),
        projector_hidden_act=PROJECTORS[projector],
        vision_feature_select_strategy=feature_strategy(tower.has_cls, select_feature),
        vision_feature_layer=select_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )


def llava_processor(tower: VisionTower, tokenizer, select_feature: str = "patch",
                    chat_format: str = DEFAULT_FORMAT):
    """LlavaProcessor: the tower's image processor, the tokenizer (with `<image>`), and the Jinja
    chat template of `chat_format` (llava_plugin/templates.yaml; default vicuna_v1)."""
    from transformers import LlavaProcessor

    add_image_token(tokenizer)
    return LlavaProcessor(
        image_processor=tower.image_processor, tokenizer=tokenizer, patch_size=tower.sizes.patch_size,
        vision_feature_select_strategy=feature_strategy(tower.has_cls, select_feature),
        chat_template=chat_template(chat_format), image_token=IMAGE_TOKEN,
        num_additional_image_tokens=int(tower.has_cls),
    )


def assemble_llava(config, tower: VisionTower, language_model, lm_head, projector_state: dict | None = None,
                   *, seed: int = 0):
    """A `LlavaForConditionalGeneration` made of existing parts, without a second copy of the LLM.

    The shell is built on the meta device and its language model / lm_head are replaced by the
    given modules (so a 7B model is never allocated twice); the tower's vision weights are
    copied in strictly; the projector gets `projector_state` (HF names `linear_1.*`, `linear_2.*`)
    or a fresh `nn.Linear` initialisation seeded by `seed`, as LLaVA initialises it.
    """
    from transformers import AutoModel, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    dtype = language_model.dtype
    if language_model.get_input_embeddings().num_embeddings != config.text_config.vocab_size:
        raise ValueError(f"language model has {language_model.get_input_embeddings().num_embeddings} embeddings "
                         f"but the config says vocab_size={config.text_config.vocab_size}")
    config.text_config = language_model.config  # one config object, as from_pretrained gives (use_cache, ...)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    vision = AutoModel.from_config(config.vision_config)
    vision.load_state_dict(tower.vision_model.state_dict(), strict=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = LlavaMultiModalProjector(config)
    if projector_state is not None:
        projector.load_state_dict(projector_state, strict=True)
    model.model.vision_tower = vision.to(dtype)
    model.model.multi_modal_projector = projector.to(dtype)
    model.model.language_model = language_model
    model.lm_head = lm_head
    meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if meta:
        raise RuntimeError(f"assembled Llava still has unset tensors: {meta[:5]}")
    return model.eval()


def build_llava(tower: VisionTower, llm_dir: str | Path, projector: str = "mlp2x_gelu", select_layer: int = -2,
                select_feature: str = "patch", *, dtype: torch.dtype = torch.float32, seed: int = 0,
                attn_implementation: str | None = None):
    """(LlavaForConditionalGeneration, LlavaProcessor) from a tower and an LLM directory, with a
    freshly initialised projector: the starting point of LLaVA-1.5 pretraining.

    `<image>` is added to the tokenizer and the embeddings grow by one row, initialised to the
    mean of the existing rows (deterministic; the row is never read as input, images replace it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    llm_dir = Path(llm_dir)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    tokenizer, llm = load_language_model(llm_dir, lambda: (
        AutoTokenizer.from_pretrained(llm_dir), AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype, **kwargs)))
    processor = llava_processor(tower, tokenizer, select_feature)
    image_token_id = processor.image_token_id
    grow_embeddings(llm, len(tokenizer))
    config = llava_config(tower, llm.config, image_token_id, projector=projector, select_layer=select_layer,
                          select_feature=select_feature)
    model = assemble_llava(config, tower, llm.model, llm.lm_head, seed=seed)
    model.generation_config = greedy_generation_config(GenerationConfig, tokenizer)
    model.config.text_config._name_or_path = str(llm_dir)
    return model, processor


class LanguageModelError(GenfeedbackError, ValueError):
    """A --llm that is not a loadable causal language model."""


def load_language_model(llm_dir: Path, load):
    """`load()` (tokenizer and causal LM from `llm_dir`), with transformers' errors (a missing path
    read as a malformed hub id, a config of another kind of model) turned into one line naming --llm."""
    if missing_local_path(llm_dir):
        raise LanguageModelError(f"language model (--llm / model.llm) {llm_dir} does not exist: pass a local "
                                 "directory with config.json, tokenizer and weights (e.g. lmsys/vicuna-7b-v1.5)")
    try:
        return load()
    except (OSError, ValueError, KeyError) as err:
        detail = " ".join(str(err).split())[:300]
        raise LanguageModelError(f"cannot load the language model (--llm / model.llm) {llm_dir} as a causal LM "
                                 f"with its tokenizer ({type(err).__name__}: {detail}); pass a directory or HF id "
                                 "(in the local cache) of a decoder LLM such as lmsys/vicuna-7b-v1.5") from err


def grow_embeddings(llm, vocab_size: int) -> None:
    """Resize input/output embeddings to `vocab_size`, new rows = mean of the old ones."""
    old = llm.get_input_embeddings().weight
    if vocab_size < old.shape[0]:
        raise ValueError(f"tokenizer has {vocab_size} tokens but the LLM has {old.shape[0]} embeddings")
    if vocab_size == old.shape[0]:
        return
    added = vocab_size - old.shape[0]
    llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for weight in {llm.get_input_embeddings().weight, llm.get_output_embeddings().weight}:
            weight[-added:] = weight[:-added].mean(dim=0, keepdim=True)


def greedy_generation_config(generation_config_cls, tokenizer):
    """Special ids only: LLaVA evaluates greedily, so no sampling defaults travel with the model
    (vicuna's own generation_config.json samples at temperature 0.9)."""
    return generation_config_cls(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)


def save_llava(model, processor, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """Write the HF Llava directory (weights, config, generation config, processor with the chat
    template) and genfeedback.json (how it was built: tower, LLM, stage, ...). Atomic: written
    under `.incomplete-<name>` beside it and renamed when complete, so a kill mid-write never
    leaves a directory that loads; a full disk is named and the partial directory removed."""
    out = Path(out_dir)
    tmp = out.parent / f".incomplete-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with naming_disk_full(out.parent, lambda: tensor_bytes(model.state_dict()), cleanup=[tmp]):
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        meta = {"format": "hf_llava", "image_token": IMAGE_TOKEN,
                "vision_feature_layer": model.config.vision_feature_layer,
                "vision_feature_select_strategy": model.config.vision_feature_select_strategy,
                **(metadata or {})}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# ---- the projector alone (original LLaVA's mm_projector.bin) ------------------------------------
def projector_state_original(model) -> dict[str, torch.Tensor]:
    """The projector's weights under original LLaVA names (model.mm_projector.{0,2}.*)."""
    state = model.model.multi_modal_projector.state_dict()
    hf_to_original = {hf: original for original, hf in MM_PROJECTOR_KEYS.items()}
    if set(state) != set(hf_to_original):
        raise ValueError(f"projector has keys {sorted(state)}; expected {sorted(hf_to_original)} "
                         f"(mlp2x_gelu with biases)")
    return {hf_to_original[key]: tensor.detach().clone().cpu() for key, tensor in state.items()}


class ProjectorError(GenfeedbackError, ValueError):
    """A pretrained projector that is missing, malformed, or trained with another tower."""


def projector_tower_record(config) -> dict:
    """What a projector must share with the tower it is loaded onto, from a Llava config: a projector
    learns one tower's features at one layer, so another family, width, layer or resolution (which
    changes the position embeddings the features carry) makes it a wrong start, even at equal shapes."""
    vision = config.vision_config
    return {"family": vision.model_type.removesuffix("_vision_model"), "hidden_size": vision.hidden_size,
            "feature_layer": config.vision_feature_layer, "image_size": vision.image_size}


def projector_record_path(path: str | Path) -> Path:
    """The record beside a projector file: mm_projector.bin -> mm_projector.json."""
    return Path(path).with_suffix(".json")


def write_mm_projector(model, path: str | Path, vision_tower: str | None = None) -> Path:
    """Write `mm_projector.bin` as LLaVA pretraining does, loadable by `--pretrain_mm_mlp_adapter`, and
    beside it `mm_projector.json`: the tower it was trained with (`projector_tower_record`). Both atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"tower": projector_tower_record(model.config), "vision_tower": vision_tower}
    record_file = projector_record_path(path)
    tmp_record = record_file.with_name(f".incomplete-{record_file.name}")
    tmp = path.with_name(f".incomplete-{path.name}")
    state = projector_state_original(model)
    with naming_disk_full(path.parent, tensor_bytes(state), cleanup=[tmp_record, tmp]):
        tmp_record.write_text(json.dumps(record, indent=2) + "\n")
        torch.save(state, tmp)
    os.replace(tmp_record, record_file)
    os.replace(tmp, path)
    return path


def projector_file(path: str | Path) -> Path:
    """The projector file itself, given it or a pretraining output directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / MM_PROJECTOR_FILE
    if not path.is_file():
        raise ProjectorError(f"pretrained projector {path} does not exist: pass the mm_projector.bin written by "
                             "`python -m mllm_train pretrain` (--pretrained-projector / model.pretrained_projector)")
    return path


def read_mm_projector(path: str | Path) -> dict[str, torch.Tensor]:
    """An mm_projector.bin (or a pretraining output directory holding one) as HF projector names
    (linear_1.*, linear_2.*); every key must be one of the four of an mlp2x_gelu projector."""
    path = projector_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ProjectorError(f"cannot read pretrained projector {path} ({type(err).__name__}: {err}); it may be "
                             "truncated: pretrain again or copy it anew") from err
    if not isinstance(state, dict) or set(state) != set(MM_PROJECTOR_KEYS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ProjectorError(f"{path}: keys {found} are not an mlp2x_gelu mm_projector; expected exactly "
                             f"{sorted(MM_PROJECTOR_KEYS)}")
    return {MM_PROJECTOR_KEYS[key]: tensor for key, tensor in state.items()}


def check_projector_tower(model, path: str | Path, *, any_tower: bool = False) -> None:
    """Refuse a projector recorded as trained with another tower than `model`'s (the differing fields
    listed) unless `any_tower`; a projector without a record (original LLaVA's) is let through with a
    warning that it cannot be checked."""
    path = projector_file(path)
    record_file = projector_record_path(path)
    if not record_file.is_file():
        logger.warning("%s has no %s recording the tower it was trained with (an original LLaVA projector, or "
                       "one written before genfeedback recorded it): its tower cannot be checked", path,
                       record_file.name)
        return
    saved = read_json(record_file, "projector record", "pretrain again, or delete it to skip the check")
    saved = saved.get("tower", {}) if isinstance(saved, dict) else {}
    now = projector_tower_record(model.config)
    differences = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in now.items() if saved.get(key) != value]
    if not differences:
        return
    if not any_tower:
        raise ProjectorError(f"pretrained projector {path} was trained with another tower ({'; '.join(differences)}; "
                             f"see {record_file.name}): pretrain a projector with this tower, or set "
                             "model.projector_any_tower=true to load it anyway")
    logger.warning("loading %s although it was trained with another tower (%s): model.projector_any_tower=true",
                   path, "; ".join(differences))


def load_mm_projector(model, path: str | Path, *, any_tower: bool = False) -> None:
    """Load a pretrained mm_projector.bin into `model`'s projector: its tower record checked
    (`check_projector_tower`), then its shapes."""
    path = projector_file(path)
    check_projector_tower(model, path, any_tower=any_tower)
    state = read_mm_projector(path)
    projector = model.model.multi_modal_projector
    own = projector.state_dict()
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ProjectorError(f"{path}: {key} has shape {tuple(tensor.shape)} but this model's projector needs "
                                 f"{tuple(own[key].shape)}: was it pretrained with another tower or LLM?")
    projector.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
