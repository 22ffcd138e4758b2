"""Chat templates, tokenization and label masking for LLaVA-1.5 training.

The formats themselves (plain, vicuna_v1) are data: llava_plugin/templates.yaml, read by
llava_plugin.chat, which also writes each as the Jinja chat template exported checkpoints carry.
`ChatTemplate` is such a format plus the training renderer: text and supervised spans.

Labels come from the rendered text, not from length arithmetic: rendering a conversation
returns the character spans that are supervised, and the fast tokenizer's offset mapping
says which tokens fall inside them. A token that straddles a span boundary makes the sample
an error (`BadSample`, naming its id) instead of a silently shifted or masked sample.

The image is one `<image>` tag in the text; it becomes `num_image_tokens` copies of
`image_token_id`: one IMAGE_TOKEN_INDEX (-200) for the collapsed form original LLaVA uses (and
`inspect` prints), or the model's image token repeated once per patch token for HF Llava
training.

Tokenization (`tokenization`, DataConfig.tokenization and `inspect --tokenization`):
- `hf` (default): the text after the tag is tokenized as it is when the tag is a special token,
  i.e. exactly as HF's LlavaProcessor tokenizes the same prompt at inference.
- `original`: original LLaVA's ids (llava/mm_utils.py `tokenizer_image_token`, llava/train/train.py
  `preprocess_v1`/`preprocess_plain`, haotian-liu/LLaVA c121f04): the text is cut at the tag and
  each piece tokenized as a fresh string, so with a non-legacy LLaMA tokenizer (vicuna's) the piece
  after the image gains a dummy-prefix "▁": `<s> ... <image> ▁ \n What` instead of
  `<s> ... <image> \n What`; and a conversation opening with a gpt turn loses that turn
  (train.py's preprocess_v1 skips it). For fine-tuning an imported original checkpoint, or a
  byte-faithful reproduction. Labels still come from the supervised spans: the original's length
  arithmetic (cur_len/round_len) gives the same labels where it is consistent, and where it is not
  (multi-round samples with a non-legacy tokenizer) it masks the whole sample with a printed
  warning; we keep the sample's supervision.
"""
from __future__ import annotations

from dataclasses import dataclass

from llava_plugin.chat import IMAGE_PLACEHOLDER, ChatFormat, get_format, load_formats
from llava_plugin.errors import GenfeedbackError

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200  # original LLaVA's id for the single collapsed image position
HUMAN, GPT = "human", "gpt"
TOKENIZATIONS = ("hf", "original")  # see the module docstring


class BadSample(GenfeedbackError, ValueError):
    """A sample that cannot be trained on; the message names its id, the problem and the fix."""

    def __init__(self, sample_id, problem: str):
        self.sample_id = sample_id
        self.problem = problem
        super().__init__(f"sample {sample_id!r}: {problem}")


@dataclass(frozen=True)
class Turn:
    role: str  # HUMAN or GPT
    text: str  # may contain IMAGE_PLACEHOLDER (human turns only)


@dataclass(frozen=True)
class ChatTemplate(ChatFormat):
    """A chat format of llava_plugin/templates.yaml (fields and checks: `ChatFormat`), rendered
    for training."""

    def render(self, turns: list[Turn], sample_id=None, add_generation_prompt: bool = False) -> Rendered:
        """The conversation as text, plus the character spans to supervise (the answers).

        With `add_generation_prompt` the conversation must end with a human turn, and the text
        ends with `assistant_prompt`, ready for the model to answer (evaluation).
        """
        check_turns(turns, sample_id, self, allow_open_end=add_generation_prompt)
        if add_generation_prompt and turns[-1].role != HUMAN:
            raise BadSample(sample_id, "add_generation_prompt needs a conversation ending with a human turn")
        text, spans = self.system, []
        for turn in turns:
            if turn.role == HUMAN:
                text += self.human.format(**_human_fields(turn.text, self.image))
            else:
                text += self.assistant_prompt
                start = len(text)
                text += self.assistant.format(text=turn.text)
                spans.append((start, len(text)))
        if add_generation_prompt:
            text += self.assistant_prompt
        return Rendered(text=text, supervised=tuple(spans))


@dataclass(frozen=True)
class Rendered:
    text: str
    supervised: tuple[tuple[int, int], ...]  # [start, end) character spans of `text`


def _human_fields(text: str, image: str) -> dict[str, str]:
    if IMAGE_PLACEHOLDER not in text:
        return {"image": "", "text": text}
    words = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return {"image": image if words else image.rstrip(), "text": words}


def load_templates() -> dict[str, ChatTemplate]:
    """All formats of llava_plugin/templates.yaml, by name."""
    return load_formats(ChatTemplate)


def get_template(name: str) -> ChatTemplate:
    return get_format(name, ChatTemplate)


def conversation_turns(turns, tokenization: str = "hf") -> list[Turn]:
    """The turns that are rendered: under `original`, without a leading gpt turn, which original
    LLaVA's conversation preprocessing skips (llava/train/train.py, preprocess_v1: "Skip the first
    one if it is not from human"); under `hf`, all of them (a leading gpt turn is then a BadSample)."""
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"unknown tokenization {tokenization!r}; known: {', '.join(TOKENIZATIONS)}")
    turns = list(turns)
    if tokenization == "original" and turns and turns[0].role == GPT:
        return turns[1:]
    return turns


def check_turns(turns: list[Turn], sample_id, template: ChatTemplate, allow_open_end: bool = False) -> None:
    """Raise BadSample unless the turns alternate human/gpt from a human turn, fit the template,
    and carry at most one image tag, in a human turn."""
    if not turns:
        raise BadSample(sample_id, "empty conversation")
    for i, turn in enumerate(turns):
        expected = HUMAN if i % 2 == 0 else GPT
        if turn.role != expected:
            raise BadSample(sample_id, f"turn {i} is from {turn.role!r} but should be from {expected!r}: "
                                       f"conversations must alternate human/gpt starting with human")
        if turn.role == GPT and IMAGE_PLACEHOLDER in turn.text:
            raise BadSample(sample_id, f"turn {i} (gpt) contains {IMAGE_PLACEHOLDER}; only human turns may")
        if turn.role == GPT and not turn.text.strip():
            raise BadSample(sample_id, f"turn {i} (gpt) is empty: nothing to supervise")
    if turns[-1].role != GPT and not allow_open_end:
        raise BadSample(sample_id, "conversation ends with a human turn: the last question has no answer")
    n_tags = sum(turn.text.count(IMAGE_PLACEHOLDER) for turn in turns)
    if n_tags > 1:
        raise BadSample(sample_id, f"{n_tags} {IMAGE_PLACEHOLDER} tags; one image per sample is supported")
    if template.requires_image and n_tags == 0:
        raise BadSample(sample_id, f"template {template.name!r} needs an image: no {IMAGE_PLACEHOLDER} tag")
    rounds = (len(turns) + 1) // 2
    if template.max_rounds is not None and rounds > template.max_rounds:
        raise BadSample(sample_id, f"{rounds} rounds, template {template.name!r} allows {template.max_rounds}")


@dataclass
class TokenizedSample:
    prompt: str  # the rendered text
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not supervised
    truncated: bool

    def supervised_runs(self) -> list[list[int]]:
        """The supervised token ids, as contiguous runs (one per answer unless truncated)."""
        runs, current = [], []
        for token, label in zip(self.input_ids, self.labels):
            if label == IGNORE_INDEX:
                if current:
                    runs.append(current)
                current = []
            else:
                current.append(token)
        return runs + ([current] if current else [])


def tokenize_conversation(turns: list[Turn], template: ChatTemplate, tokenizer, *, sample_id=None,
                          image_token_id: int = IMAGE_TOKEN_INDEX, num_image_tokens: int = 1,
                          max_length: int | None = None, tokenization: str = "hf") -> TokenizedSample:
    """input_ids and labels of one conversation.

    The image tag becomes `num_image_tokens` x `image_token_id` (labels IGNORE_INDEX there);
    the tokenizer's own special prefix (LLaMA: BOS) opens the sequence, unsupervised.
    `tokenization` (hf | original, module docstring) says how the text after the tag is
    tokenized and whether a leading gpt turn is dropped. With
    `max_length`, the sequence (image tokens included) is cut to that length; a cut through
    the image tokens, or one that leaves nothing supervised, is a BadSample.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("tokenize_conversation needs a fast tokenizer (offset mapping); load it with "
                        "transformers.AutoTokenizer.from_pretrained(dir)")
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    rendered = template.render(conversation_turns(turns, tokenization), sample_id)
    pieces = rendered.text.split(IMAGE_PLACEHOLDER)
    input_ids = list(special_prefix(tokenizer))
    supervised = [False] * len(input_ids)
    offset = 0
    for i, piece in enumerate(pieces):
        if i > 0:
            input_ids += [image_token_id] * num_image_tokens
            supervised += [False] * num_image_tokens
            offset += len(IMAGE_PLACEHOLDER)
        ids, offsets = _encode(tokenizer, piece, after_special=i > 0 and tokenization == "hf")
        input_ids += ids
        supervised += [_is_supervised(offset + start, offset + end, rendered, sample_id) for start, end in offsets]
        offset += len(piece)
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, supervised)]
    if input_ids.count(image_token_id) != (len(pieces) - 1) * num_image_tokens:
        raise ValueError(f"image_token_id {image_token_id} is also an id of the text's tokens (sample "
                         f"{sample_id!r}); use an id outside the tokenizer's text vocabulary")
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        if input_ids[max_length - 1] == image_token_id and input_ids[max_length] == image_token_id:
            raise BadSample(sample_id, f"max_length {max_length} cuts through the image tokens; "
                                       f"raise max_length or shorten the prompt")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise BadSample(sample_id, f"no supervised token left after truncation to max_length {max_length}"
                        if truncated else "no supervised token")
    return TokenizedSample(prompt=rendered.text, input_ids=input_ids, labels=labels, truncated=truncated)


def _encode(tokenizer, text: str, after_special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`; with `after_special`, tokenized as it is right
    after a special token (whether a dummy-prefix space is added there depends on the tokenizer),
    found by tokenizing it behind the EOS token and dropping that."""
    if not after_special:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoding["input_ids"], encoding["offset_mapping"]
    marker = tokenizer.eos_token
    encoding = tokenizer(marker + text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if not ids or ids[0] != tokenizer.eos_token_id or tuple(offsets[0]) != (0, len(marker)):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} does not read its EOS token {marker!r} as one "
                         f"special token in text; it cannot be used for chat templates that write it")
    return ids[1:], [(start - len(marker), end - len(marker)) for start, end in offsets[1:]]


def _is_supervised(start: int, end: int, rendered: Rendered, sample_id) -> bool:
    """Whether the token covering text[start:end] is supervised; a token straddling a span edge
    cannot be labelled honestly and is an error."""
    for span_start, span_end in rendered.supervised:
        if span_start <= start and end <= span_end:
            return True
        if start < span_end and end > span_start:
            raise BadSample(sample_id, f"token covering {rendered.text[start:end]!r} (chars {start}:{end}) "
                                       f"straddles the edge of the supervised span {span_start}:{span_end} "
                                       f"{rendered.text[span_start:span_end]!r}; the template and tokenizer "
                                       f"do not split there")
    return False


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (LLaMA: [BOS]). A tokenizer that also appends
    ids (an EOS) is refused: the template writes its own end-of-answer marker."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    if full[len(full) - len(bare):] != bare:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} appends special tokens after the text "
                         f"({full} vs {bare}); load it with add_eos_token=False")
    return full[:len(full) - len(bare)]
