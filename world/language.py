"""The world's language model: a small `LlamaForCausalLM` + sentencepiece tokenizer in the
lmsys/vicuna-7b-v1.5 layout (what `--llm` loads; see llava_plugin/toy/llm.py), pre-trained on
world text only, the counterpart of Vicuna before LLaVA ever shows it an image.

    train_language_model(out, seed) -> {"steps", "final_loss", "parameters", ...}

The corpus (`corpus`): the scenes' captions (as LLaVA pretraining's plain template writes them:
caption + newline), and conversations about scenes rendered in the vicuna_v1 chat format without
the image (system prompt, "USER: ... ASSISTANT: ...</s>"), in exactly the question formats of the
world benchmarks and LLaVA instruction set (world/questions.py), plus the instruction set's
text-only world facts. Without the image an answer is a guess, so the model learns the language,
the formats and the answer priors, not the scenes: those come with the projector and finetuning.

Training: the tokenized documents (BOS each) are packed into one stream cut into `seq_len`
blocks; AdamW, linear warmup, cosine decay, batches drawn by a seeded generator; one CPU thread
is enough (about a minute and a half at the defaults). Same seed, same tokenizer and weights.
"""
from __future__ import annotations

import functools
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


def corpus(seed: int, documents: int, captions: float = 0.4, restated: float = 0.5, described: float = 0.3,
           text_only: float = 0.05, described_formats: dict[str, float] | None = None) -> list[str]:
    """`documents` world texts: captions (fraction `captions`; half of them name every fine
    attribute, the rest a random subset), chats about a scene described in words where its image
    would be (`described`: the answers follow from the description, as a chat model answers about a
    scene it is told of), text-only fact chats (`text_only`), and the rest chats about an unseen
    scene (the answers are guesses: the formats and priors). Chats have 1-3 rounds."""
    rng = random.Random(f"world-language:{seed}")
    out = []
    for _ in range(documents):
        kind = rng.random()
        if kind < captions:
            scene = scenes.sample_scene(rng)
            mention = scenes.FINE if rng.random() < 0.5 else scenes.sample_mentions(rng, 0.5)
            told = scene.full_caption + "\n" if rng.random() < restated else ""
            out.append(told + scene.caption(mention) + "\n")
        elif kind < captions + text_only:
            human, answer = TEXT_ONLY[rng.randrange(len(TEXT_ONLY))]
            out.append(render_chat([{"from": "human", "value": human}, {"from": "gpt", "value": answer}]))
        else:
            scene = scenes.sample_scene(rng)
            told = kind < captions + text_only + described
            turns = conversation(scene, rng, rng.randint(1, 3), described_formats if told else None)
            out.append(render_chat(turns, image_text=scene.full_caption if told else None))
    return out


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
                         seq_len: int = 256, batch_size: int = 16, steps: int = 120, lr: float = 3e-3,
                         warmup_steps: int = 20, weight_decay: float = 0.01, log_every: int = 25) -> dict:
    """Train the world LM into `out` (tokenizer, config, weights, generation config, log); returns
    what part.json records. Deterministic given `seed`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    texts = corpus(seed, documents)
    write_tokenizer(out, texts, vocab_size, seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    stream = [token for ids in tokenizer(texts)["input_ids"] for token in ids]  # BOS opens each document
    blocks = torch.tensor(stream[: len(stream) // seq_len * seq_len]).view(-1, seq_len)

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
    model.train()
    log, losses = [], []
    for step in range(1, steps + 1):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": round(sum(losses[-log_every:]) / len(losses[-log_every:]), 4),
                        "lr": schedule.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 1)})
    model.eval()
    model.save_pretrained(out)
    GenerationConfig(**GENERATION_CONFIG).save_pretrained(out)
    (out / LOG_FILE).write_text("".join(json.dumps(row) + "\n" for row in log))
    return {"steps": steps, "final_loss": log[-1]["loss"], "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "corpus_documents": documents, "corpus_tokens": len(stream),
            "blocks": len(blocks), "train_seconds": round(time.perf_counter() - start, 1)}


READING_STYLES = ("mmvp", "cv_bench", "short")  # the question formats whose answer is one short string


def reading_check(lm_dir: Path | str, n: int = 60, seed: int = 12345) -> dict:
    """Can the world LM answer a question about a scene that is *described in words* where the
    image would be (a perfect projector, in the LM's own words), and how often does it guess right
    when it sees nothing (blind)? Per format and attribute, greedy answers scored by exact match
    against the gold string (a letter, "(B)", or a word). LLaVA adds the image to what the LM can
    already do with a description: if the described accuracy is at chance, LLaVA on this LM cannot
    show a tower difference whatever the tower sees."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = LlamaForCausalLM.from_pretrained(lm_dir).eval()
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    rng = random.Random(seed)
    result: dict = {"described": {}, "blind": {}, "settings": {"n": n, "seed": seed}}
    for style in READING_STYLES:
        for attribute in scenes.ATTRIBUTES:
            asked = []
            while len(asked) < n:
                scene = scenes.sample_scene(rng)
                if scene.value(attribute) is not None:
                    asked.append((scene, *questions.ask(scene, attribute, style, rng)))
            for mode in ("described", "blind"):
                right = 0
                for scene, human, gold in asked:
                    turn = {"from": "human", "value": "<image>\n" + human}
                    prompt = render_chat([turn], image_text=scene.full_caption if mode == "described" else None)
                    prompt += _chat_format().assistant_prompt  # where the answer begins
                    ids = tokenizer(prompt.rstrip(), return_tensors="pt").input_ids
                    with torch.no_grad():
                        out = model.generate(ids, generation_config=greedy)
                    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
                    right += answer.lower() == gold.lower()
                result[mode].setdefault(style, {})[attribute] = right / n
    return result
