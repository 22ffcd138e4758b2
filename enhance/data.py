"""Image sources, and the micro-batches a training run reads from them.

A source is an indexable list of images (`open_source(spec)`):
    DIR                      every image file under DIR (recursive, sorted); no captions
    FILE.jsonl               one {"image": path} per line, paths relative to the file's folder; a row's
                             caption, if any, in the `caption_key` field (data.caption_key)
    SHARD.tar, a brace       webdataset shards (img2dataset/CC3M layout: KEY.jpg + KEY.txt caption ...);
    pattern ({00000..00099}.tar), or a directory holding only .tar files
Shards are indexed once (tar headers only), then read by offset, so any rank can read any image.
Captions are read only when a run needs them (feedback.regularizer.kind=contrastive).

Who reads what is llava_plugin.train.plan's: the images form a stream of seeded epoch
permutations (`StreamOrder`), optimizer step s consumes stream positions [s*G, (s+1)*G) (G = global
batch) in micro-batches of m images, and micro-batch j of a step goes to rank j % world at
accumulation index j // world. Each rank decodes only its own micro-batches, and every rank count
sees the same global batches.

Unreadable images (zero-size, truncated, not an image) are skipped, never a crash: the slot is
refilled by the next readable image in dataset order, and every failure is reported (`bad` in each
micro-batch); `BadImageTracker` counts them per distinct file and turns too many into an error.
"""
from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llava_plugin import distributed
from llava_plugin.errors import GenfeedbackError
from llava_plugin.images import ImageDecodeError, decode_rgb
from llava_plugin.train.plan import StreamOrder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_CONSECUTIVE_BAD = 64  # more unreadable images in a row than this means the source itself is broken


class DataError(GenfeedbackError, ValueError):
    """A data source that cannot be used at all (missing, empty, malformed list file)."""


class BadImage(Exception):
    """One image that cannot be decoded; skipped and counted."""


# --------------------------------------------------------------------------- sources
class ImageSource:
    """An ordered list of images; `key(i)` is a stable name, `read(i)` the raw bytes, `caption(i)`
    the image's caption where the source has them."""

    description: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, index: int) -> str:
        raise NotImplementedError

    def read(self, index: int) -> bytes:
        raise NotImplementedError

    def keys(self) -> list[str]:
        return [self.key(i) for i in range(len(self))]

    def missing_captions(self) -> str | None:
        """None when every image has a caption, else what is missing (for a one-line error)."""
        return f"{self.description} has no captions"

    def caption(self, index: int) -> str:
        raise DataError(f"{self.missing_captions()}")

    def load(self, index: int) -> Image.Image:
        """Decoded RGB image; raises BadImage (with the reason) when it cannot be read."""
        try:
            data = self.read(index)
        except OSError as err:
            raise BadImage(f"cannot read: {err}") from err
        return decode_image(data)


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> fully decoded RGB image (grayscale, RGBA, CMYK, palette converted); BadImage if not."""
    try:
        return decode_rgb(data)
    except ImageDecodeError as err:
        raise BadImage(str(err)) from err


class FolderSource(ImageSource):
    def __init__(self, root: Path):
        self.root = root
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.description = f"folder {root} ({len(self.paths)} images)"

    def missing_captions(self):
        return f"data.source {self.root} is an image folder, which holds no captions"

    def __len__(self):
        return len(self.paths)

    def key(self, index):
        return self.paths[index].relative_to(self.root).as_posix()

    def read(self, index):
        return self.paths[index].read_bytes()


class JsonlSource(ImageSource):
    def __init__(self, path: Path, image_key: str = "image", caption_key: str = "caption"):
        self.path, self.root, self.caption_key = path, path.parent, caption_key
        self.names: list[str] = []
        self.captions: list[str | None] = []
        self.lines: list[int] = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno} is not JSON ({err}); each line must be "
                                f'{{"{image_key}": "relative/or/absolute/path.jpg"}}') from err
            if not isinstance(row, dict) or not isinstance(row.get(image_key), str):
                raise DataError(f"{path}:{lineno} has no string {image_key!r} field; each line must be "
                                f'{{"{image_key}": "path.jpg", ...}}')
            self.names.append(row[image_key])
            caption = row.get(caption_key)
            self.captions.append(caption if isinstance(caption, str) else None)
            self.lines.append(lineno)
        self.description = f"jsonl {path} ({len(self.names)} images)"

    def missing_captions(self):
        for index, caption in enumerate(self.captions):
            if caption is None:
                return (f"{self.path}:{self.lines[index]} has no string {self.caption_key!r} field "
                        "(data.caption_key)")
        return None

    def caption(self, index):
        if self.captions[index] is None:
            raise DataError(self.missing_captions())
        return self.captions[index]

    def __len__(self):
        return len(self.names)

    def key(self, index):
        return self.names[index]

    def read(self, index):
        return (self.root / self.names[index]).read_bytes()


@dataclass
class _Member:
    shard: int
    offset: int
    size: int
    key: str
    caption: tuple[int, int] | None = None  # (offset, size) of the sample's KEY.txt, if it has one


class WebDatasetSource(ImageSource):
    """Random access into webdataset shards: one image member per sample key."""

    def __init__(self, shards: list[Path]):
        self.shards = shards
        self.members: list[_Member] = []
        for shard_index, shard in enumerate(shards):
            self.members += _index_shard(shard, shard_index)
        self.description = f"webdataset {len(shards)} shard(s) ({len(self.members)} images)"

    def __len__(self):
        return len(self.members)

    def key(self, index):
        m = self.members[index]
        return f"{self.shards[m.shard].name}/{m.key}"

    def read(self, index):
        m = self.members[index]
        return self._read(m.shard, m.offset, m.size)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def missing_captions(self):
        for m in self.members:
            if m.caption is None:
                return f"webdataset shard {self.shards[m.shard]} has no caption ({m.key}.txt) for sample {m.key}"
        return None

    def caption(self, index):
        m = self.members[index]
        if m.caption is None:
            raise DataError(self.missing_captions())
        return self._read(m.shard, *m.caption).decode("utf-8").strip()


def _index_shard(shard: Path, shard_index: int) -> list[_Member]:
    members: dict[str, _Member] = {}
    captions: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name
                _, dot, suffix = name.rpartition(".")
                # webdataset keys: everything before the first dot of the basename
                base = name.rsplit("/", 1)[-1]
                key = name[: len(name) - len(base)] + base.split(".", 1)[0]
                if dot and suffix.lower() == "txt":
                    captions.setdefault(key, (info.offset_data, info.size))
                if not dot or f".{suffix.lower()}" not in IMAGE_SUFFIXES:
                    continue
                members.setdefault(key, _Member(shard_index, info.offset_data, info.size, key))
    except tarfile.ReadError as err:
        raise DataError(f"webdataset shard {shard} is not a readable tar file ({err}); "
                        "re-download it or remove it from the shard list") from err
    for key, member in members.items():
        member.caption = captions.get(key)
    return list(members.values())


def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> [a/000.tar, a/001.tar, a/002.tar]; `{a,b}` lists work too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end():], match.group(1)
    range_match = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if range_match:
        lo, hi = range_match.groups()
        width = len(lo)
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for option in options for p in expand_braces(head + option + tail)]


def open_source(spec: str | Path, caption_key: str = "caption") -> ImageSource:
    """Resolve a --data spec (see module docstring) to an ImageSource; raises DataError if unusable.
    `caption_key`: the caption field of a .jsonl list's rows (data.caption_key)."""
    text = str(spec)
    if not text:
        raise DataError("no data source given: pass --data DIR|FILE.jsonl|SHARDS.tar")
    if "{" in text:
        shards = [Path(p) for p in expand_braces(text)]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise DataError(f"data {text!r}: {len(missing)} shard(s) of the pattern do not exist, e.g. {missing[0]}")
        source: ImageSource = WebDatasetSource(shards)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(f"data {text!r} does not exist (expected an image folder, a .jsonl list or .tar shards)")
        if path.is_file() and path.suffix == ".jsonl":
            source = JsonlSource(path, caption_key=caption_key)
        elif path.is_file() and path.suffix == ".tar":
            source = WebDatasetSource([path])
        elif path.is_dir():
            shards = sorted(path.glob("*.tar"))
            others = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            if shards and not others:
                source = WebDatasetSource(shards)
            else:
                source = FolderSource(path)
        else:
            raise DataError(f"data {text!r}: a file must be .jsonl (image list) or .tar (webdataset shard)")
    if len(source) == 0:
        raise DataError(f"data {text!r} holds no images ({source.description}); image suffixes: {IMAGE_SUFFIXES}")
    return source


# --------------------------------------------------------------------------- augmentation
def random_resized_crop(image: Image.Image, seed: int, scale: tuple[float, float]) -> Image.Image:
    """torchvision's RandomResizedCrop box (area `scale`, aspect 3/4-4/3), drawn from `seed` alone and
    warped to a square of the crop's longer side (bicubic, as upstream); the method's preprocessing then
    resizes it for each model."""
    from torchvision.transforms import RandomResizedCrop

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, height, width = RandomResizedCrop.get_params(image, scale=list(scale), ratio=[3 / 4, 4 / 3])
    side = max(height, width)
    return image.resize((side, side), Image.BICUBIC, box=(left, top, left + width, top + height))


def augment_seed(data_seed: int, position: int) -> int:
    """The crop seed of the image at stream `position` (micro index x micro batch + row): world-size
    independent, so every rank and every resume crops an image the same way."""
    return (data_seed * 1_000_003 + position) % (2**63)


# --------------------------------------------------------------------------- micro-batches
class MicroBatches(torch.utils.data.Dataset):
    """Global micro-batch index -> preprocessed tensors (+ cached targets) and skip accounting.

    Items: {"batch": {name: tensor}, "indices": [dataset index per row], "micro_index": int,
            "tried": images attempted, "bad": [(index, key, reason), ...]}, and with `captions`
            "captions": [caption per row].
    """

    def __init__(self, source: ImageSource, order: StreamOrder,
                 preprocess: Callable[[list[Image.Image]], dict[str, torch.Tensor]],
                 targets: Callable[[list[int]], dict[str, torch.Tensor]] | None = None, captions: bool = False,
                 crop: tuple[int, tuple[float, float]] | None = None):
        """`crop`: (data seed, area scale) turns on random_resized_crop."""
        self.source, self.order, self.preprocess, self.targets = source, order, preprocess, targets
        self.captions, self.crop = captions, crop

    def __len__(self):  # indices are unbounded (epochs repeat); the sampler bounds them
        return 2**62

    def __getitem__(self, micro_index: int) -> dict:
        images, indices, bad = [], [], []
        tried = 0
        for index in self.order.micro_batch_items(micro_index):
            for _ in range(MAX_CONSECUTIVE_BAD + 1):
                tried += 1
                try:
                    images.append(self.source.load(index))
                    indices.append(index)
                    break
                except BadImage as err:
                    bad.append((index, self.source.key(index), str(err)))
                    index = (index + 1) % self.order.num_items
            else:
                raise DataError(f"{MAX_CONSECUTIVE_BAD + 1} unreadable images in a row near "
                                f"{self.source.key(index)} in {self.source.description}: the source looks broken")
        if self.crop is not None:
            seed, scale = self.crop
            first = micro_index * self.order.micro_batch
            images = [random_resized_crop(im, augment_seed(seed, first + row), scale) for row, im in enumerate(images)]
        batch = self.preprocess(images)
        if self.targets is not None:
            batch.update(self.targets(indices))
        item = {"batch": batch, "indices": indices, "micro_index": micro_index, "tried": tried, "bad": bad}
        if self.captions:
            item["captions"] = [self.source.caption(index) for index in indices]
        return item


def collate_identity(item):
    return item


@dataclass
class BadImageTracker:
    """Unreadable images, counted per distinct file over all ranks. The fraction held against
    `max_fraction` is bad files over files read, so a bad file met again (a later epoch, or the retries
    of a run of neighbouring bad files) counts once, and the count does not depend on the world size."""

    max_fraction: float
    check_after: int
    order: StreamOrder
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)  # dataset index -> (key, reason), all ranks
    pending: list[tuple[int, str, str]] = field(default_factory=list)  # this rank's, since the last gather
    _first_epoch_rank: np.ndarray | None = None

    def add(self, bad: list[tuple[int, str, str]]) -> None:
        self.pending += bad

    def gather(self) -> None:
        """Collective: every rank's failures since the last gather, merged on every rank."""
        for rank_bad in distributed.all_gather_object(self.pending):
            for index, key, reason in rank_bad:
                self.bad.setdefault(int(index), (key, reason))
        self.pending = []

    def files_read(self, positions: int) -> int:
        """Distinct files read once stream positions [0, positions) are filled: the ones the plan asked
        for, the bad ones and, after each bad file, the next one (a bad slot is refilled from there)."""
        n = self.order.num_items
        if positions >= n:
            return n
        if not self.bad:
            return positions
        if self._first_epoch_rank is None:  # position of each file in the first epoch's order
            self._first_epoch_rank = np.empty(n, dtype=np.int64)
            self._first_epoch_rank[self.order.permutation(0)] = np.arange(n)
        reached = set(self.bad) | {(index + 1) % n for index in self.bad}
        return positions + sum(1 for index in reached if self._first_epoch_rank[index] >= positions)

    def check(self, positions: int, final: bool = False) -> None:
        files = self.files_read(positions)
        if files == 0 or (not final and files < self.check_after):
            return
        if len(self.bad) / files > self.max_fraction:
            raise DataError(
                f"{len(self.bad)} of {files} files read ({len(self.bad) / files:.1%}) are unreadable, more than "
                f"data.max_bad_fraction={self.max_fraction}; e.g. {self.report(5)}. Fix or remove those files, "
                "or raise data.max_bad_fraction")

    def report(self, limit: int = 10) -> str:
        items = list(self.bad.values())[:limit]
        more = f" (+{len(self.bad) - limit} more)" if len(self.bad) > limit else ""
        return "; ".join(f"{key}: {reason}" for key, reason in items) + more
