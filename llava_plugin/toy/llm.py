"""The zoo's language model: a tiny `LlamaForCausalLM` with a sentencepiece BPE tokenizer
trained here on synthetic scene-description English, written in the on-disk layout of
lmsys/vicuna-7b-v1.5 (`tokenizer.model` + `tokenizer_config.json` + `special_tokens_map.json`,
no `tokenizer.json`; `config.json`, `generation_config.json`, sharded weights + index).

The tokenizer is trained with LLaMA's sentencepiece settings (BPE, byte fallback, split
digits, dummy prefix, identity normalisation, `<unk>`=0 `<s>`=1 `</s>`=2), so
`AutoTokenizer.from_pretrained(dir)` yields a tokenizer that behaves like LLaMA's: BOS
prepended, no EOS appended, `</s>` in text read as the EOS token, and the same
space-handling quirks the label-masking code must survive.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# LLaMA-1/2 tokenizer.model trainer spec (read from the released model's proto), minus the
# corpus-size options that only matter at 32k-vocab scale.
LLAMA_SENTENCEPIECE_SPEC = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_number=True,
    split_by_whitespace=True,
    treat_whitespace_as_suffix=False,
    character_coverage=1.0,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    unk_surface=" \u2047 ",
)

# The tiny LLaMA's shape; everything else is LlamaConfig's default, as in vicuna-7b-v1.5.
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    initializer_range=0.02,
    tie_word_embeddings=False,
)
TOKENIZER_VOCAB_SIZE = 1000

# vicuna-7b-v1.5's tokenizer files, with the model_max_length the LLaVA-1.5 recipes train at.
_SPECIAL = {name: {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                   "single_word": False}
            for name, text in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    **{name: {"__type": "AddedToken", **token} for name, token in _SPECIAL.items()},
    "clean_up_tokenization_spaces": False,
    "legacy": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
}
GENERATION_CONFIG = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True,
                         temperature=0.9, top_p=0.6, max_length=2048)


def train_sentencepiece(sentences: list[str], model_path: str | Path, vocab_size: int, seed: int = 0,
                        **overrides) -> Path:
    """Train a sentencepiece model with LLaMA's settings and write it to `model_path`.

    Deterministic: one thread, no input sampling, fixed generator seed. `overrides` replace
    entries of LLAMA_SENTENCEPIECE_SPEC (e.g. `model_type="unigram"` for a SigLIP-like tokenizer).
    """
    import sentencepiece as spm

    model_path = Path(model_path)
    if model_path.suffix != ".model":
        raise ValueError(f"sentencepiece model path must end in .model, got {model_path}")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    spec = {**LLAMA_SENTENCEPIECE_SPEC, **overrides}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(model_path.with_suffix("")),
        vocab_size=vocab_size,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
        minloglevel=2,
        **spec,
    )
    model_path.with_suffix(".vocab").unlink(missing_ok=True)
    return model_path


# Words of the synthetic world (the zoo's images are shapes on plain backgrounds) and of the
# prompts the pipeline sends: LLaVA chat, MMVP / CV-Bench multiple choice, captions.
SHAPES = ["circle", "square", "triangle", "star", "cross", "rectangle", "ring", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange", "gray", "pink"]
POSITIONS = ["left", "right", "top", "bottom", "center", "above", "below", "next to", "behind",
             "in front of", "closer to the camera", "farther from the camera"]
COUNT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
QUESTION_TEMPLATES = [
    "What color is the {shape}?",
    "How many {shape}s are in the image?",
    "Is the {colour} {shape} on the {position} of the image?",
    "Where is the {colour} {shape}?",
    "Describe the image briefly.",
    "Which shape is {position} the {shape}?",
    "Is there a {colour} {shape} in the picture? Answer yes or no.",
    "Count the {colour} objects. Answer with a number.",
    "Estimate the real-world distances between objects in this image.",
]
ANSWER_TEMPLATES = [
    "The {shape} is {colour}.",
    "There are {count} {shape}s in the image.",
    "Yes, the {colour} {shape} is on the {position}.",
    "No, it is on the {position}.",
    "The image shows a {colour} {shape} {position} a {colour2} {shape2} on a plain background.",
    "The answer is ({letter}).",
    "{letter}",
    "{number}",
]
CAPTION_TEMPLATES = [
    "a {colour} {shape} on a {colour2} background",
    "{count} {colour} {shape}s and a {shape2}",
    "a photo of a {colour} {shape} {position} a {shape2}",
    "a small {colour} {shape} in the {position} of the picture",
]


def scene_corpus(seed: int, n_sentences: int = 3000) -> list[str]:
    """Synthetic scene-description English: captions, Q/A turns, chat scaffolding, options."""
    rng = random.Random(seed)

    def fill(template: str) -> str:
        return template.format(
            shape=rng.choice(SHAPES), shape2=rng.choice(SHAPES), colour=rng.choice(COLOURS),
            colour2=rng.choice(COLOURS), position=rng.choice(POSITIONS), count=rng.choice(COUNT_WORDS),
            letter=rng.choice("ABCD"), number=rng.randint(0, 2048))

    sentences = [SYSTEM_PROMPT, "Answer with the option's letter from the given choices directly.",
                 "Answer the question using a single word or phrase."]
    for _ in range(n_sentences):
        kind = rng.random()
        if kind < 0.35:
            sentences.append(f"USER: <image>\n{fill(rng.choice(QUESTION_TEMPLATES))} "
                             f"ASSISTANT: {fill(rng.choice(ANSWER_TEMPLATES))}</s>")
        elif kind < 0.6:
            sentences.append(fill(rng.choice(CAPTION_TEMPLATES)))
        elif kind < 0.8:
            options = "\n".join(f"{letter}. {fill('{colour} {shape}')}" for letter in "ABCD"[:rng.randint(2, 4)])
            sentences.append(f"{fill(rng.choice(QUESTION_TEMPLATES))}\n{options}")
        else:
            sentences.append(f"{fill(rng.choice(ANSWER_TEMPLATES))} {fill(rng.choice(CAPTION_TEMPLATES))}, "
                             f"{rng.randint(0, 99)}% ; ({fill('{letter}')}) \"{fill('{shape}')}\" - ok!")
    return sentences


def write_tokenizer(out: Path, seed: int, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> None:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json, as vicuna-7b-v1.5 ships them."""
    train_sentencepiece(scene_corpus(seed), out / "tokenizer.model", vocab_size, seed)
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    special = {**_SPECIAL, "pad_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def write_llm(zoo, seed: int) -> None:
    """Write models/vicuna-tiny (tokenizer + random-weight LlamaForCausalLM) and set `zoo.llm`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(zoo.root) / "models" / "vicuna-tiny"
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, seed)
    config = LlamaConfig(vocab_size=TOKENIZER_VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         **TINY_LLAMA)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Two shards + index, like the real checkpoint, so the sharded loading path is exercised.
    model.save_pretrained(out, max_shard_size="500KB")
    GenerationConfig(**GENERATION_CONFIG).save_pretrained(out)
    zoo.llm = out
