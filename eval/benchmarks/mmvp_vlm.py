"""MMVP-VLM: does a CLIP-style encoder tell the two images of a "CLIP-blind" pair apart?

Data (the official release, MMVP/MMVP_VLM): `Questions.csv` with columns
`Question ID,Type,Statement` (270 rows) and `MLLM_VLM Images/<Type>/<Question ID>.jpg`.

The official rule (tsb0601/MMVP scripts/evaluate_vlm.py, checked by hand):
- rows are paired two at a time in file order; both images come from the FIRST row's Type folder;
- each statement becomes the text "a photo of " + statement;
- per statement, softmax over the pair's two images of (logit_scale x cosine similarity); the
  statement picks image 1 iff p(image 1) > 0.5 (a tie goes to image 2);
- ground truth by question-id parity: odd -> image 1, even -> image 2;
- a pair counts iff both statements pick their own image;
- the category is positional, pair index // 15, in CATEGORIES order (not the Type column);
- headline = mean of the 9 category pair accuracies.

`--categories` (recorded in metrics.json's config):
- `positional` (default): the official rule above; the file must have exactly 270 rows.
- `type`: for derived datasets in the same layout (e.g. the shapes world's, world/benchmarks.py):
  a pair's category is its first row's Type, any even number of rows is accepted, and the headline
  is the mean over the categories present, in the order they first appear. Everything else (pairing,
  image folders, parity, decision, pair rule) is the official one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from eval.benchmarks.base import EncoderBenchmark, field_resampling, register_benchmark
from eval.benchmarks.common import (
    DatasetLayoutError,
    batched,
    mean,
    open_rgb,
    percent,
    problem_lists,
    read_csv_rows,
    require_dir,
    require_file,
)

NAME = "mmvp_vlm"
CATEGORIES = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)
PAIRS_PER_CATEGORY = 15
ROWS = len(CATEGORIES) * PAIRS_PER_CATEGORY * 2
HEADER = ["Question ID", "Type", "Statement"]
IMAGES_DIR = "MLLM_VLM Images"
TEXT_PREFIX = "a photo of "
CATEGORY_RULES = ("positional", "type")  # --categories: official pair index // 15, or the pair's first Type


@dataclass(frozen=True)
class Statement:
    qid: int
    type: str  # the Type column of this row
    statement: str
    image: Path  # <IMAGES_DIR>/<Type of the pair's first row>/<qid>.jpg
    pair: int  # pair index in file order
    category: str  # CATEGORIES[pair // 15] (official), or the pair's first row's Type (--categories type)

    @property
    def text(self) -> str:
        return TEXT_PREFIX + self.statement

    @property
    def gold(self) -> str:
        return "img1" if self.qid % 2 == 1 else "img2"


def load(data_dir: Path | str, categories: str = "positional") -> list[Statement]:
    """The statements in file order; `categories` is the category rule (CATEGORY_RULES)."""
    if categories not in CATEGORY_RULES:
        raise ValueError(f"unknown MMVP-VLM category rule {categories!r}; known: {CATEGORY_RULES}")
    root = Path(data_dir)
    csv_path = require_file(
        NAME,
        root / "Questions.csv",
        "the MMVP-VLM question file Questions.csv",
        "Download the MMVP/MMVP_VLM dataset and pass its root directory as --data",
    )
    images = require_dir(NAME, root / IMAGES_DIR, f"the image folder '{IMAGES_DIR}' (one subfolder per Type)")
    if categories == "positional":
        body = read_csv_rows(NAME, csv_path, HEADER, ROWS,
                             rows_note=" (categories are assigned by position; --categories type takes them "
                                       "from the Type column of a derived dataset)")
    else:
        body = read_csv_rows(NAME, csv_path, HEADER, None)
        if not body or len(body) % 2:
            raise DatasetLayoutError(NAME, "an even, non-zero number of question rows (statements pair up)",
                                     csv_path, f"found {len(body)}")
    statements = []
    for i, row in enumerate(body):
        if len(row) != 3:
            raise DatasetLayoutError(
                NAME, "3 columns per row", csv_path, f"row {i + 2} has {len(row)}: {row}"
            )
        qid, type_name, text = int(row[0]), row[1], row[2]
        pair = i // 2
        folder = body[2 * pair][1]  # both images of a pair come from the first row's Type folder
        statements.append(
            Statement(
                qid=qid,
                type=type_name,
                statement=text,
                image=images / folder / f"{qid}.jpg",
                pair=pair,
                category=CATEGORIES[pair // PAIRS_PER_CATEGORY] if categories == "positional" else folder,
            )
        )
    return statements


# ---------------------------------------------------------------- pure scoring
def judge(p_img1: float | None) -> str | None:
    """The official decision: image 1 iff its probability is strictly above 0.5."""
    if p_img1 is None:
        return None
    return "img1" if p_img1 > 0.5 else "img2"


def make_prediction(s: Statement, p_img1: float | None, missing_image: bool) -> dict:
    parsed = judge(p_img1)
    return {
        "id": s.qid,
        "prompt": s.text,
        "raw_answer": p_img1,
        "parsed": parsed,
        "gold": s.gold,
        "correct": parsed == s.gold,
        "pair": s.pair,
        "category": s.category,
        "type": s.type,
        "image": str(s.image),
        "missing_image": missing_image,
    }


def rejudge(prediction: dict, config: dict) -> dict:
    parsed = judge(prediction["raw_answer"])
    return {**prediction, "parsed": parsed, "correct": parsed == prediction["gold"]}


def score(predictions: list[dict], config: dict) -> dict:
    pairs: dict[int, list[dict]] = {}
    for p in predictions:
        pairs.setdefault(p["pair"], []).append(p)
    for index, members in pairs.items():
        if len(members) != 2:
            raise ValueError(
                f"MMVP-VLM pair {index} has {len(members)} statements; every pair needs exactly 2"
            )
    pair_correct = {i: all(m["correct"] for m in members) for i, members in pairs.items()}
    category_of = {i: members[0]["category"] for i, members in pairs.items()}
    if config.get("categories", "positional") == "positional":
        names = CATEGORIES
    else:  # the Types present, in the order they first appear
        names = tuple(dict.fromkeys(category_of[i] for i in sorted(pairs)))
    categories = {c: percent(pair_correct[i] for i in pairs if category_of[i] == c) for c in names}
    present = {c: v for c, v in categories.items() if v is not None}
    average = mean(present.values()) if present else None
    return {
        "benchmark": NAME,
        "config": config,
        "headline": {"average": average},
        "average": average,
        "categories": categories,
        "pair_accuracy": percent(pair_correct.values()),
        "statement_accuracy": percent(p["correct"] for p in predictions),
        "n_pairs": len(pairs),
        "n_statements": len(predictions),
        **problem_lists(predictions),
    }


# ---------------------------------------------------------------- model
@torch.no_grad()
def predict(tower, statements: list[Statement], batch_size: int = 32) -> list[dict]:
    """Embed every image and statement once, then apply the official per-pair softmax."""
    text_encoder = tower.load_text_encoder().to(device=tower.device, dtype=tower.dtype)
    images = [open_rgb(s.image) for s in statements]
    image_embeds: list[torch.Tensor | None] = [None] * len(statements)
    present = [i for i, im in enumerate(images) if im is not None]
    for chunk in tqdm(list(batched(present, batch_size)), desc="mmvp-vlm images", unit="batch"):
        embeds = tower.image_embeds(tower.preprocess([images[i] for i in chunk])).float()
        for i, e in zip(chunk, torch.nn.functional.normalize(embeds, dim=-1)):
            image_embeds[i] = e
    text_embeds = []
    for chunk in tqdm(list(batched(statements, batch_size)), desc="mmvp-vlm texts", unit="batch"):
        text_embeds.append(
            torch.nn.functional.normalize(text_encoder.encode([s.text for s in chunk]).float(), dim=-1)
        )
    texts = torch.cat(text_embeds).cpu()
    predictions = []
    for i, s in enumerate(statements):
        first = 2 * s.pair
        pair_images = [image_embeds[first], image_embeds[first + 1]]
        missing = pair_images[0] is None or pair_images[1] is None
        p_img1 = None
        if not missing:
            logits = text_encoder.logit_scale * torch.stack(pair_images).cpu() @ texts[i]
            p_img1 = float(logits.softmax(dim=-1)[0])
        predictions.append(make_prediction(s, p_img1, missing_image=missing))
    return predictions


@register_benchmark
class MMVPVLM(EncoderBenchmark):
    name = NAME
    command = "mmvp-vlm"
    help = "MMVP-VLM with a CLIP-style tower and its text encoder (official pairing and scoring)"

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--categories",
            choices=CATEGORY_RULES,
            default="positional",
            help="positional: the official category of pair k, CATEGORIES[k // 15], on exactly 270 rows "
            "(default); type: each pair's first row's Type, any even number of rows (derived datasets "
            "in this layout, e.g. the shapes world's)",
        )

    def load(self, args) -> list[Statement]:
        return load(args.data, categories=args.categories)

    def predict(self, args, statements: list[Statement]) -> list[dict]:
        return predict(self.load_tower(args), statements, args.batch_size)

    def options(self, args, statements: list[Statement]) -> dict:
        category = "pair index // 15" if args.categories == "positional" else "the pair's first row's Type"
        return {
            "text_prefix": TEXT_PREFIX,
            "categories": args.categories,
            "rule": "official: per-statement softmax over the pair's 2 images, img1 iff p>0.5; "
            f"category = {category}",
        }

    rejudge = staticmethod(rejudge)
    score = staticmethod(score)

    def resampling(self, config):
        return field_resampling("pair", stratum="category")  # headline: the mean of category pair accuracies
