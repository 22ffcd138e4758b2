"""The world's language model: a small `LlamaForCausalLM` + sentencepiece tokenizer in the
lmsys/vicuna-7b-v1.5 layout (what `--llm` loads; see llava_plugin/toy/llm.py), pre-trained on
world text only, the counterpart of Vicuna before LLaVA ever shows it an image.

    train_language_model(out, seed) -> {"steps", "final_loss", "parameters", ...}

The corpus (`corpus`): the scenes' captions (as LLaVA pretraining's plain template writes them:
caption + newline), and conversations about scenes rendered in the vicuna_v1 chat format without
the image (system prompt, "USER: ... ASSISTANT: ...</s>"), in exactly the question formats of the
world benchmarks and LLaVA instruction set (world/questions.py), plus the instruction set's
text-only world facts. A chat is about an unseen scene (its answers are guesses: the model learns
the language, the formats and the answer priors) or about a scene *described in words* where the
image would be (its answers follow from the description: the model learns to read a scene, what
LLaVA needs of its LM once the projector puts the image there). Options come in random order;
no text names a held-out combination of attributes (`held_out`), on which the reading check
tests reading rather than recall.

Training: whole documents (BOS each) in batches; a weighted token loss (answers
vs the rest of a chat, `prompt_weight`); AdamW, linear warmup, cosine decay; one CPU thread.
Same seed, same tokenizer and weights. `reading_check` measures what the LM reads (`python -m
world reading`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from pathlib import Path

from llava_plugin.chat import get_format
from llava_plugin.toy.llm import GENERATION_CONFIG, TOKENIZER_CONFIG, train_sentencepiece
from world import questions, scenes
from world.benchmarks import TEXT_ONLY, conversation

CHAT_FORMAT = "vicuna_v1"  # the instruction-tuning and evaluation format (llava_plugin/templates.yaml)
LOG_FILE = "pretrain_log.jsonl"


@functools.cache
def _chat_format():
    return get_format(CHAT_FORMAT)


def render_chat(turns: list[dict], image_text: str | None = None) -> str:
    """A LLaVA conversation as vicuna_v1 text without its image: the tag is dropped, or replaced
    by `image_text` (a description of the scene, where the image's tokens would be)."""
    fmt = _chat_format()
    text = fmt.system
    for turn in turns:
        has_image = "<image>" in turn["value"]
        words = turn["value"].replace("<image>", "").strip()
        if turn["from"] == "human":
            image = fmt.image.replace("<image>", image_text) if has_image and image_text else ""
            text += fmt.human.format(image=image, text=words)
        else:
            text += fmt.assistant_prompt + fmt.assistant.format(text=words)
    return text


HELD_OUT = 0.2  # the share of scene combinations the corpus never describes (see `held_out`)


def held_out(scene: scenes.Scene) -> bool:
    """Is `scene`'s combination of attributes (its full caption) one the LM corpus never shows? A
    fixed hash, the same for every seed, so the reading check can ask about described scenes the LM
    cannot have memorised: if it answers those as well as the others, it reads the description."""
    digest = hashlib.sha256(scene.full_caption.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT


def corpus(seed: int, documents: int, captions: float = 0.4, restated: float = 0.5, described: float = 0.3,
           text_only: float = 0.05, described_formats: dict[str, float] | None = None,
           described_rounds: int = 3) -> list[str]:
    """`documents` world texts: captions (fraction `captions`; half of them name every fine
    attribute, the rest a random subset), chats about a scene described in words where its image
    would be (`described`: the answers follow from the description, as a chat model answers about a
    scene it is told of; formats drawn by `described_formats`, default the instruction set's), text-only
    fact chats (`text_only`), and the rest chats about an unseen scene (the answers are guesses: the
    formats and priors). Chats have 1-3 rounds, described ones 1-`described_rounds` (each round asks
    another attribute, so more rounds are more answers per description); options come in random order, so an option's letter
    says nothing about its truth. No text names a held-out combination (`held_out`)."""
    rng = random.Random(f"world-language:{seed}")

    def scene() -> scenes.Scene:
        while True:
            drawn = scenes.sample_scene(rng)
            if not held_out(drawn):
                return drawn

    out = []
    for _ in range(documents):
        kind = rng.random()
        if kind < captions:
            shown = scene()
            mention = scenes.FINE if rng.random() < 0.5 else scenes.sample_mentions(rng, 0.5)
            told = shown.full_caption + "\n" if rng.random() < restated else ""
            out.append(told + shown.caption(mention) + "\n")
        elif kind < captions + text_only:
            human, answer = TEXT_ONLY[rng.randrange(len(TEXT_ONLY))]
            out.append(render_chat([{"from": "human", "value": human}, {"from": "gpt", "value": answer}]))
        else:
            shown = scene()
            told = kind < captions + text_only + described
            rounds = rng.randint(1, described_rounds if told else 3)
            turns = conversation(shown, rng, rounds, described_formats if told else None)
            out.append(render_chat(turns, image_text=shown.full_caption if told else None))
    return out


def supervised_labels(ids: list[int], assistant: list[int], eos: int) -> list[int]:
    """The labels of one tokenized document: a chat (it holds the `assistant` prompt's tokens) is
    supervised on its answers only, from the token after each "ASSISTANT:" through its "</s>", as
    LLaVA's and Vicuna's instruction tuning do; a caption is supervised everywhere. -100: no loss."""
    n = len(assistant)
    starts = [i + n for i in range(len(ids) - n + 1) if ids[i:i + n] == assistant]
    if not starts:
        return list(ids)
    labels = [-100] * len(ids)
    for start in starts:
        end = ids.index(eos, start) if eos in ids[start:] else len(ids) - 1
        labels[start:end + 1] = ids[start:end + 1]
    return labels


def write_tokenizer(out: Path, texts: list[str], vocab_size: int, seed: int) -> None:
    """tokenizer.model (LLaMA's sentencepiece settings) + tokenizer_config.json +
    special_tokens_map.json, as vicuna-7b-v1.5 ships them."""
    train_sentencepiece(texts, out / "tokenizer.model", vocab_size, seed)
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    special = {name: {k: v for k, v in TOKENIZER_CONFIG[name].items() if k != "__type"}
               for name in ("bos_token", "eos_token", "unk_token")}
    (out / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<unk>"}, indent=2) + "\n")


def train_language_model(out: Path, seed: int = 0, documents: int = 6000, vocab_size: int = 768,
                         hidden_size: int = 128, layers: int = 4, heads: int = 4, intermediate_size: int = 384,
                         batch_size: int = 40, steps: int = 120, lr: float = 3e-3, warmup_steps: int = 20,
                         weight_decay: float = 0.01, log_every: int = 25, captions: float = 0.4,
                         described: float = 0.3, text_only: float = 0.05,
                         described_formats: dict[str, float] | None = None, described_rounds: int = 3,
                         prompt_weight: float = 1.0, group_by_length: bool = False) -> dict:
    """Train the world LM into `out` (tokenizer, config, weights, generation config, log); returns
    what part.json records. Deterministic given `seed`. A batch is `batch_size` whole documents
    (right-padded to the longest), so every answer sees its own scene and no other, and the batches
    go through the corpus in a seeded order, pass after pass. The loss is a weighted
    mean over tokens: a chat's answers (`supervised_labels`) and captions weigh 1, the rest of a
    chat (system prompt, description, questions, options) `prompt_weight` (0: instruction tuning's
    answers-only loss; 1: plain language modelling). `group_by_length`: batches of documents of
    about one length (less padding, but one kind of document per batch: at the default 120 steps
    its answers were not even well formed, "(B. ASSISTANT"). The corpus mix: `corpus`'s arguments of the same names."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    texts = corpus(seed, documents, captions=captions, described=described, text_only=text_only,
                   described_formats=described_formats, described_rounds=described_rounds)
    write_tokenizer(out, texts, vocab_size, seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assistant = tokenizer(_chat_format().assistant_prompt, add_special_tokens=False)["input_ids"]
    rows = tokenizer(texts)["input_ids"]  # BOS opens each document
    labels = [supervised_labels(ids, assistant, tokenizer.eos_token_id) for ids in rows]
    chats = sum(text.startswith(_chat_format().system) for text in texts)
    answered = sum(label[0] == -100 for label in labels)
    if answered != chats:
        raise RuntimeError(f"{chats - answered} of {chats} chats have no answer to supervise: the tokenizer splits "
                           f"{_chat_format().assistant_prompt!r} differently inside a chat ({assistant})")
    supervised = sum(sum(t != -100 for t in label) for label in labels)

    def batch_of(index: list[int]) -> tuple:
        width = max(len(rows[i]) for i in index)
        pad = [width - len(rows[i]) for i in index]
        ids = torch.tensor([rows[i] + [tokenizer.pad_token_id or 0] * p for i, p in zip(index, pad)])
        mask = torch.tensor([[1] * len(rows[i]) + [0] * p for i, p in zip(index, pad)])
        answer = torch.tensor([[t != -100 for t in labels[i]] + [False] * p for i, p in zip(index, pad)])
        weight = torch.where(answer, 1.0, prompt_weight) * mask
        return ids, mask, weight[:, 1:]  # the weight of predicting token t+1 from tokens <= t

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act="silu",
                         initializer_range=0.02, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(seed)
    by_length = sorted(range(len(rows)), key=lambda i: len(rows[i])) if group_by_length else \
        torch.randperm(len(rows), generator=generator).tolist()
    groups = [by_length[i:i + batch_size] for i in range(0, len(by_length) - batch_size + 1, batch_size)]
    order: list[int] = []
    model.train()
    log, losses = [], []
    (out / LOG_FILE).write_text("")
    for step in range(1, steps + 1):
        if not order:  # one pass over the groups in a seeded order, then another
            order = torch.randperm(len(groups), generator=generator).tolist()
        ids, mask, weight = batch_of(groups[order.pop()])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (token_loss * weight).sum() / weight.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": round(sum(losses[-log_every:]) / len(losses[-log_every:]), 4),
                        "lr": schedule.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 1)})
            with open(out / LOG_FILE, "a") as f:  # as it goes: the loss curve of a long build can be watched
                f.write(json.dumps(log[-1]) + "\n")
    model.eval()
    model.save_pretrained(out)
    GenerationConfig(**GENERATION_CONFIG).save_pretrained(out)
    return {"steps": steps, "final_loss": log[-1]["loss"], "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "corpus_documents": documents, "chats": chats,
            "corpus_tokens": sum(map(len, rows)), "supervised_tokens": supervised,
            "train_seconds": round(time.perf_counter() - start, 1)}


READING_STYLES = ("mmvp", "cv_bench", "short")  # the question formats whose answer is one short string
BENCHMARK_STYLES = ("world_mmvp", "world_cv_bench")  # the world benchmarks' own questions (a zoo's data)


def sampled_questions(n: int, seed: int) -> list[tuple[str, str, scenes.Scene, str, str]]:
    """(style, attribute, scene, human words, gold) : `n` questions per READING_STYLES format and
    attribute about scenes of a stream of their own (no benchmark's, no corpus's)."""
    rng = random.Random(seed)
    asked = []
    for style in READING_STYLES:
        for attribute in scenes.ATTRIBUTES:
            for _ in range(n):
                scene = scenes.sample_scene(rng)
                while scene.value(attribute) is None:
                    scene = scenes.sample_scene(rng)
                asked.append((style, attribute, scene, *questions.ask(scene, attribute, style, rng)))
    return asked


def benchmark_questions(data: dict) -> list[tuple[str, str, scenes.Scene, str, str]]:
    """The same tuples for every question of the world MMVP (`data["mmvp"]`: its Questions.csv in
    eval's `llava` prompt style) and CV-Bench (`data["cv_bench"]`: each row's prompt + the letter
    instruction, as `python -m eval cv-bench` sends them), with the scene each image shows."""
    import csv
    import re

    import pyarrow.parquet as pq

    from world.benchmarks import read_labels

    asked = []
    labels = {row["id"]: row for row in read_labels(data["mmvp"])}
    with open(Path(data["mmvp"]) / "Questions.csv", newline="", encoding="utf-8") as f:
        for index, text, options, answer in list(csv.reader(f))[1:]:
            label = labels[int(index)]
            parsed = re.fullmatch(r"\(a\)\s*(.*?)\s*\(b\)\s*(.*)", options.strip())
            if parsed is None:
                raise ValueError(f"world MMVP question {index}: options {options!r} are not '(a) x (b) y'")
            asked.append(("world_mmvp", label["attribute"], scenes.Scene(**label["scene"]),
                          questions.mmvp_prompt(text, list(parsed.groups())), answer.strip("()").upper()))
    labels = {row["id"]: row for row in read_labels(data["cv_bench"])}
    for row in pq.read_table(Path(data["cv_bench"]) / "test_2d.parquet", columns=["idx", "prompt", "answer"]).to_pylist():
        label = labels[row["idx"]]
        asked.append(("world_cv_bench", label["attribute"], scenes.Scene(**label["scene"]),
                      f"{row['prompt']}\n{questions.LETTER_SUFFIX}", row["answer"]))
    return asked


def reading_check(lm_dir: Path | str, n: int = 60, seed: int = 12345, data: dict | None = None) -> dict:
    """Can the world LM answer a question about a scene that is *described in words* where the
    image would be (a perfect projector, in the LM's own words), and how often does it guess right
    when it sees nothing (blind)? Per format and attribute (`result[mode][style][attribute]`), greedy
    answers scored by exact match against the gold string (a letter, "(B)", or a word): `n` sampled
    questions per READING_STYLES format and attribute, and with `data` (a zoo's data paths) every
    world MMVP and CV-Bench question (BENCHMARK_STYLES). `held_out`: the described accuracy per
    style on the scenes whose combination the corpus never showed, and on the others. LLaVA adds the
    image to what the LM can already do with a description: if the described accuracy is at chance,
    LLaVA on this LM cannot show a tower difference whatever the tower sees."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = LlamaForCausalLM.from_pretrained(lm_dir).eval()
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    asked = sampled_questions(n, seed) + (benchmark_questions(data) if data else [])
    result: dict = {"described": {}, "blind": {}, "held_out": {}, "questions": {},
                    "settings": {"n": n, "seed": seed, "benchmarks": bool(data)}}
    tally: dict = {}
    for style, attribute, scene, human, gold in asked:
        for mode in ("described", "blind"):
            turn = {"from": "human", "value": "<image>\n" + human}
            prompt = render_chat([turn], image_text=scene.full_caption if mode == "described" else None)
            prompt += _chat_format().assistant_prompt  # where the answer begins
            ids = tokenizer(prompt.rstrip(), return_tensors="pt").input_ids
            with torch.no_grad():
                out = model.generate(ids, generation_config=greedy)
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            right = answer.lower() == gold.lower()
            tally.setdefault((mode, style, attribute), []).append(right)
            if mode == "described":
                split = "unseen" if held_out(scene) else "seen"
                tally.setdefault(("held_out", style, split), []).append(right)
    for (mode, style, key), flags in tally.items():
        result[mode].setdefault(style, {})[key] = sum(flags) / len(flags)
        if mode != "held_out":
            result["questions"].setdefault(style, {})[key] = len(flags)
    return result
