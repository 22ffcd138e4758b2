"""LLaVA JSON datasets: reading and checking samples, image preprocessing, the batch collator
and the modality/length-grouped batch sampler. Independent of DeepSpeed and of the model.

A LLaVA JSON file is a list of records `{"id", "image"?, "conversations": [{"from":
"human"|"gpt", "value"}, ...]}`; a record with an `image` has exactly one `<image>` tag in a
human turn, a record without one has none (text-only). `.jsonl` (one record a line) works too.

Bad samples are found when the dataset is built (structure, template fit, image files and, by
default, each image's header; with `verify: full` also tokenization and decoding every image) and
raise `BadSample` naming the id, or, with `skip_bad_samples`, are dropped and counted; more than
`max_skip_fraction` dropped is an error. A problem met later, in `__getitem__` (a file truncated
after its header, nothing supervised after truncation), raises too, or with `skip_bad_samples` is
replaced by the next sample of the same modality and counted.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from llava_plugin.config import ConfigError
from llava_plugin.images import (
    ImageDecodeError,
    check_image_header,
    decode_rgb,
    pad_to_square,
    processor_mean_color,
)
from llava_plugin.train.plan import modality_length_steps
from mllm_train.conversation import (
    GPT,
    HUMAN,
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    TOKENIZATIONS,
    BadSample,
    ChatTemplate,
    Turn,
    check_turns,
    conversation_turns,
    tokenize_conversation,
)

VERIFY_MODES = ("none", "header", "full")  # data.verify: how much of each sample the start-up check reads


@dataclass
class DataConfig:
    """Where the samples are and how they become tensors."""

    data_path: str = field(default="", metadata={"help": "LLaVA JSON (list of records) or JSONL file"})
    image_folder: str | None = field(default=None, metadata={
        "help": "folder the records' `image` paths are relative to (required if any record has an image)"})
    image_aspect_ratio: Literal["pad", "resize", "crop"] = field(default="pad", metadata={
        "help": "pad: pad to square with the processor's mean colour, then preprocess (LLaVA-1.5); "
                "resize: stretch to the processor's output size; crop: the processor as is "
                "(CLIP: resize shortest side + center crop)"})
    tokenization: str = field(default="hf", metadata={
        "help": "hf: the text after <image> tokenized as HF's LlavaProcessor does at inference (default); "
                "original: original LLaVA's ids (the text after <image> as a fresh string, which adds a '▁' "
                "after the image with vicuna's tokenizer; a leading gpt turn dropped), for fine-tuning an "
                "imported original checkpoint or a byte-faithful reproduction (mllm_train.conversation)"})
    max_length: int = field(default=2048, metadata={
        "help": "truncate input_ids (image tokens included) to this many tokens (LLaVA's model_max_length)"})
    skip_bad_samples: bool = field(default=False, metadata={
        "help": "drop and count samples that fail the checks instead of raising"})
    max_skip_fraction: float = field(default=0.01, metadata={
        "help": "with skip_bad_samples: raise if more than this fraction of the samples was dropped"})
    group_by_modality_length: bool = field(default=False, metadata={
        "help": "steps that are all-image or all-text with length-balanced micro-batches (LLaVA-1.5 finetune: "
                "true; llava_plugin.train.plan.modality_length_steps)"})
    length_group_megabatches: int = field(default=1, metadata={
        "help": "with group_by_modality_length: micro-batches per length-sorted megabatch (LLaVA-1.5: 1, which "
                "balances lengths across ranks only; more puts similar lengths in one micro-batch: less padding, "
                "less randomness)"})
    pack_sequences: bool = field(default=False, metadata={
        "help": "concatenate each micro-batch into one row without padding (mllm_train.packing; same loss, "
                "fewer positions computed). LLaVA-1.5 pads."})
    seed: int = field(default=42, metadata={"help": "seeds the data order: order = f(seed, epoch)"})
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers (0: in-process)"})
    verify: str = field(default="header", metadata={
        "help": "what the start-up check reads of each sample besides its structure and image path: header "
                "(default: each image's file header, a small fraction of a decode), full (also tokenize every "
                "sample and decode every image: slower, catches every bad sample before training starts) or "
                "none. What it misses is found when read, and skipped with skip_bad_samples"})

    def validate(self) -> None:
        if not self.data_path:
            raise ConfigError("data.data_path is required: the LLaVA JSON file to train on")
        if self.max_length < 1:
            raise ConfigError(f"data.max_length={self.max_length}: must be positive (LLaVA-1.5 uses 2048)")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"data.max_skip_fraction={self.max_skip_fraction}: must be in [0, 1]")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers}: must be >= 0")
        if self.tokenization not in TOKENIZATIONS:
            raise ConfigError(f"data.tokenization={self.tokenization!r}: must be one of {', '.join(TOKENIZATIONS)}")
        if self.length_group_megabatches < 1:
            raise ConfigError(f"data.length_group_megabatches={self.length_group_megabatches}: must be >= 1")
        if isinstance(self.verify, bool):  # the switch was a bool: true meant the full check
            self.verify = "full" if self.verify else "none"
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"data.verify={self.verify!r}: must be one of {', '.join(VERIFY_MODES)}")


@dataclass(frozen=True)
class Sample:
    id: str
    image: str | None  # path relative to the image folder
    turns: tuple[Turn, ...]

    @property
    def num_words(self) -> int:
        """LLaVA's cheap length proxy for grouping: whitespace-separated words of all turns."""
        return sum(len(turn.text.split()) for turn in self.turns)


def read_records(path: str | Path) -> list[dict]:
    """The records of a LLaVA .json (a list) or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LLaVA data file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON{'L' if path.suffix == '.jsonl' else ''}: {err}") from err
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} must hold a list of records like "
                         f'{{"id": ..., "image": ..., "conversations": [...]}}')
    return records


def parse_record(record: dict, index: int) -> Sample:
    """A LLaVA record as a Sample; BadSample if its fields are malformed or its image tags do not
    match its `image` field. (Turn order and template fit are checked by `check_turns`.)"""
    sample_id = str(record.get("id", f"#{index}"))
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise BadSample(sample_id, "no `conversations` list")
    turns = []
    for i, message in enumerate(conversations):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise BadSample(sample_id, f"conversations[{i}] must be {{'from': ..., 'value': str}}")
        if message.get("from") not in (HUMAN, GPT):
            raise BadSample(sample_id, f"conversations[{i}] is from {message.get('from')!r}; "
                                       f"expected {HUMAN!r} or {GPT!r}")
        turns.append(Turn(message["from"], message["value"]))
    image = record.get("image")
    n_tags = sum(turn.text.count(IMAGE_PLACEHOLDER) for turn in turns)
    if image is not None and not isinstance(image, str):
        raise BadSample(sample_id, f"`image` must be one relative path, got {image!r}")
    if image and n_tags != 1:
        raise BadSample(sample_id, f"has an image but {n_tags} {IMAGE_PLACEHOLDER} tags; put exactly one "
                                   f"{IMAGE_PLACEHOLDER} in the first human turn")
    if not image and n_tags:
        raise BadSample(sample_id, f"has {n_tags} {IMAGE_PLACEHOLDER} tag(s) but no `image` field")
    return Sample(id=sample_id, image=image or None, turns=tuple(turns))


def load_image(path: Path, sample_id):
    """The image as RGB; BadSample naming the sample if it is missing or cannot be decoded."""
    if not Path(path).exists():
        raise BadSample(sample_id, f"image {path} does not exist")
    try:
        return decode_rgb(path)
    except ImageDecodeError as err:
        raise BadSample(sample_id, f"image {path} cannot be read ({err})") from err


def processor_output_size(processor) -> tuple[int, int]:
    """(height, width) of the processor's pixel_values."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    raise ValueError(f"cannot tell the output size of {type(processor).__name__} (size={size})")


def preprocess_image(image, processor, aspect_ratio: str) -> torch.Tensor:
    """pixel_values (3, H, W) of one RGB image, per DataConfig.image_aspect_ratio."""
    from PIL import Image

    if aspect_ratio == "pad":
        image = pad_to_square(image, processor_mean_color(processor))
    elif aspect_ratio == "resize":
        height, width = processor_output_size(processor)
        image = image.resize((width, height), Image.BICUBIC)
    elif aspect_ratio != "crop":
        raise ValueError(f"image_aspect_ratio {aspect_ratio!r}: expected pad, resize or crop")
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


class LlavaDataset(torch.utils.data.Dataset):
    """Samples of one LLaVA JSON file, tokenized with `template` on access.

    Items: `{"id", "input_ids", "labels", "pixel_values"}` (pixel_values None for text-only
    samples). The image tag becomes `num_image_tokens` x `image_token_id`: for HF Llava, the
    model's image token once per patch token; the defaults give original LLaVA's single -200.
    """

    def __init__(self, config: DataConfig, tokenizer, template: ChatTemplate, image_processor=None, *,
                 image_token_id: int = IMAGE_TOKEN_INDEX, num_image_tokens: int = 1):
        config.validate()
        self.config, self.tokenizer, self.template = config, tokenizer, template
        self.image_processor = image_processor
        self.image_token_id, self.num_image_tokens = image_token_id, num_image_tokens
        self.image_folder = Path(config.image_folder) if config.image_folder else None
        records = read_records(config.data_path)
        self.samples: list[Sample] = []
        self.skipped: list[BadSample] = []
        for index, record in enumerate(records):
            try:
                self.samples.append(self._checked(record, index))
            except BadSample as bad:
                if not config.skip_bad_samples:
                    raise BadSample(bad.sample_id, f"{bad.problem} (in {config.data_path}; set "
                                                   f"skip_bad_samples to drop such samples)") from bad
                self.skipped.append(bad)
        self.num_records = len(records)
        if not self.samples:
            raise ValueError(f"{config.data_path}: no usable sample out of {len(records)}"
                             + (f"; first problem: {self.skipped[0]}" if self.skipped else ""))
        if len(self.skipped) > config.max_skip_fraction * len(records):
            raise ValueError(f"{config.data_path}: {len(self.skipped)} of {len(records)} samples are bad, more "
                             f"than max_skip_fraction={config.max_skip_fraction}; first problems: "
                             + "; ".join(str(bad) for bad in self.skipped[:3]))

    def _checked(self, record: dict, index: int) -> Sample:
        sample = parse_record(record, index)
        check_turns(conversation_turns(sample.turns, self.config.tokenization), sample.id, self.template)
        if sample.image is not None:
            if self.image_folder is None or self.image_processor is None:
                raise BadSample(sample.id, "has an image but the dataset got no image_folder/image_processor")
            path = self.image_folder / sample.image
            if not path.is_file():
                raise BadSample(sample.id, f"image {path} does not exist")
        if self.config.verify == "full":
            self._tokenize(sample)
            if sample.image is not None:
                load_image(self.image_folder / sample.image, sample.id)
        elif self.config.verify == "header" and sample.image is not None:
            try:
                check_image_header(path)
            except ImageDecodeError as err:
                raise BadSample(sample.id, f"image {path} cannot be read ({err})") from err
        return sample

    def _tokenize(self, sample: Sample):
        return tokenize_conversation(
            list(sample.turns), self.template, self.tokenizer, sample_id=sample.id,
            image_token_id=self.image_token_id,
            num_image_tokens=self.num_image_tokens, max_length=self.config.max_length,
            tokenization=self.config.tokenization)

    def skip_report(self) -> dict:
        """How many records were read, kept and dropped, with the first reasons (for logs)."""
        return {"records": self.num_records, "kept": len(self.samples), "skipped": len(self.skipped),
                "first_skipped": [str(bad) for bad in self.skipped[:10]]}

    @property
    def has_image(self) -> list[bool]:
        return [sample.image is not None for sample in self.samples]

    @property
    def lengths(self) -> list[int]:
        """Length proxy per sample for grouping: LLaVA's word count, plus the image tokens."""
        return [sample.num_words + (self.num_image_tokens if sample.image else 0) for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """The sample at `index`; with skip_bad_samples, a sample found bad only now (an image that does
        not decode, nothing supervised left after truncation) is replaced by the next one of the same
        modality, deterministically, and named in the item's `skipped` list."""
        skipped: list[str] = []
        for _ in range(MAX_REPLACEMENTS + 1):
            try:
                return {**self._item(self.samples[index]), "skipped": skipped}
            except BadSample as bad:
                if not self.config.skip_bad_samples:
                    raise BadSample(bad.sample_id, f"{bad.problem} (in {self.config.data_path}, found during "
                                                   "training; set skip_bad_samples to skip such samples, or "
                                                   "check the file first with verify: true)") from bad
                skipped.append(str(bad))
                index = self._same_modality_after(index)
        raise BadSample(self.samples[index].id, f"{MAX_REPLACEMENTS + 1} bad samples in a row in "
                                                f"{self.config.data_path}: the file or image folder looks broken")

    def _same_modality_after(self, index: int) -> int:
        """The next sample (cyclically) with an image iff this one has one: a step stays all-image or
        all-text, as modality grouping and ZeRO-3 need."""
        wanted = self.samples[index].image is not None
        n = len(self.samples)
        for step in range(1, n + 1):
            candidate = (index + step) % n
            if (self.samples[candidate].image is not None) == wanted:
                return candidate
        return index

    def _item(self, sample: Sample) -> dict:
        tokenized = self._tokenize(sample)
        pixel_values = None
        if sample.image is not None:
            image = load_image(self.image_folder / sample.image, sample.id)
            pixel_values = preprocess_image(image, self.image_processor, self.config.image_aspect_ratio)
        return {"id": sample.id, "input_ids": torch.tensor(tokenized.input_ids),
                "labels": torch.tensor(tokenized.labels), "pixel_values": pixel_values}


def default_pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its unk id (LLaVA-1.5 pads Vicuna with <unk>). Padding is
    masked out by attention_mask and labels, so the choice only has to be a valid id."""
    for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an unk token; set pad_token")


MAX_REPLACEMENTS = 16  # bad samples in a row before the data is called broken


@dataclass
class WithSkips:
    """A collator's batch, plus the samples skipped to fill it: `{"batch": ..., "skipped": [...]}`."""

    collate: Callable[[list[dict]], dict[str, torch.Tensor]]

    def __call__(self, items: list[dict]) -> dict:
        return {"batch": self.collate(items), "skipped": [s for item in items for s in item.get("skipped", [])]}


@dataclass
class Collator:
    """Right-pads a list of dataset items into a batch for `model(**batch)`.

    input_ids are padded with `pad_token_id`, labels with IGNORE_INDEX, attention_mask marks
    the real tokens. `pixel_values` stacks the images of the samples that have one, in batch
    order, and is absent when none has: text-only samples contribute no image and no image
    tokens, which is what HF Llava expects (it scatters the i-th image's features into the
    i-th run of image tokens). Under ZeRO-3 a trainer whose ranks may see image-free batches
    must still run the tower on every rank (e.g. on a dummy image, multiplied by zero).
    """

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = item["input_ids"], item["labels"], 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        images = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch


class ModalityLengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches that are all-image or all-text, grouped by length; one rank's share.

    Per epoch (deterministic in seed and epoch): each modality is shuffled and cut into
    megabatches of `megabatch_mult * world_size * batch_size` samples; a megabatch is sorted
    by length, cut into steps of `world_size * batch_size`, and each step is dealt into
    `world_size` batches of similar total length, batch r going to rank r, so all ranks step
    through the same modality together. `megabatch_mult=1` is LLaVA-1.5's grouping (balance
    across ranks only); larger values put similar lengths in the same batch (less padding,
    less randomness). A modality's last partial step is padded to a multiple of `world_size`
    by repeating its own samples (like DistributedSampler; `drop_last` drops it instead), so
    every rank gets the same number of batches. Step order is shuffled. Use as
    `DataLoader(dataset, batch_sampler=sampler, collate_fn=...)` and call `set_epoch(epoch)`.
    """

    def __init__(self, lengths: list[int], has_image: list[bool], batch_size: int, *, world_size: int = 1,
                 rank: int = 0, seed: int = 0, drop_last: bool = False, megabatch_mult: int = 1):
        if len(lengths) != len(has_image):
            raise ValueError(f"{len(lengths)} lengths but {len(has_image)} has_image flags")
        if batch_size < 1 or megabatch_mult < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1, megabatch_mult >= 1 and 0 <= rank < world_size; got "
                             f"batch_size={batch_size}, megabatch_mult={megabatch_mult}, rank={rank}, "
                             f"world_size={world_size}")
        self.lengths, self.has_image = list(lengths), list(has_image)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.seed, self.drop_last, self.megabatch_mult, self.epoch = seed, drop_last, megabatch_mult, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self) -> list[list[list[int]]]:
        """This epoch's global plan: step -> per-rank batches of dataset indices."""
        return modality_length_steps(self.lengths, self.has_image, self.batch_size, self.world_size, self.seed,
                                     self.epoch, drop_last=self.drop_last, megabatch_mult=self.megabatch_mult)

    def __iter__(self):
        for batches in self.steps():
            yield batches[self.rank]

    def __len__(self) -> int:
        step_size, count = self.world_size * self.batch_size, 0
        for modality in (True, False):
            n = sum(flag == modality for flag in self.has_image)
            full_megas, rest = divmod(n, self.megabatch_mult * step_size)
            count += full_megas * self.megabatch_mult + rest // step_size
            count += bool(rest % step_size) and not self.drop_last
        return count
