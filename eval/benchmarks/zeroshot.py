"""Zero-shot classification with a tower's paired text encoder: a class-per-folder dataset
(`<class>/<image>`; underscores in folder names read as spaces), one prompt per class
("a photo of a {class}."), top-1 accuracy. A quick check that an enhanced tower kept its
alignment with the text tower."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from eval.benchmarks.base import EncoderBenchmark, register_benchmark
from eval.benchmarks.common import DatasetLayoutError, batched, open_rgb, percent, problem_lists, require_dir

NAME = "zeroshot"
TEMPLATE = "a photo of a {}."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load(data_dir: Path | str) -> tuple[list[str], list[tuple[str, Path]]]:
    """(class names, [(class, image path)]), classes sorted by folder name."""
    root = require_dir(NAME, Path(data_dir), "a class-per-folder dataset (<class>/<image>.jpg)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    samples = [
        (f.name, img) for f in folders for img in sorted(f.iterdir()) if img.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(folders) < 2 or not samples:
        raise DatasetLayoutError(
            NAME,
            "at least two class folders with images (<class>/<image>.jpg)",
            root,
            f"found {len(folders)} folders and {len(samples)} images",
        )
    return [f.name for f in folders], samples


def class_prompt(name: str) -> str:
    return TEMPLATE.format(name.replace("_", " "))


def make_prediction(sample_id: str, gold: str, scores: list[float] | None, classes: list[str]) -> dict:
    parsed = classes[max(range(len(classes)), key=scores.__getitem__)] if scores is not None else None
    return {
        "id": sample_id,
        "prompt": TEMPLATE,
        "raw_answer": scores,
        "parsed": parsed,
        "gold": gold,
        "correct": parsed == gold,
        "missing_image": scores is None,
    }


def rejudge(prediction: dict, config: dict) -> dict:
    return make_prediction(prediction["id"], prediction["gold"], prediction["raw_answer"], config["classes"])


def score(predictions: list[dict], config: dict) -> dict:
    classes = config["classes"]
    top1 = percent(p["correct"] for p in predictions)
    return {
        "benchmark": NAME,
        "config": config,
        "headline": {"top1": top1},
        "top1": top1,
        "per_class": {c: percent(p["correct"] for p in predictions if p["gold"] == c) for c in classes},
        "n_images": len(predictions),
        **problem_lists(predictions),
    }


@torch.no_grad()
def predict(
    tower, classes: list[str], samples: list[tuple[str, Path]], root: Path, batch_size: int = 32
) -> list[dict]:
    text = tower.load_text_encoder().to(device=tower.device, dtype=tower.dtype)
    class_embeds = torch.nn.functional.normalize(
        text.encode([class_prompt(c) for c in classes]).float(), dim=-1
    )
    class_embeds = class_embeds.cpu()
    predictions = []
    for chunk in tqdm(list(batched(samples, batch_size)), desc="zeroshot", unit="batch"):
        images = [open_rgb(path) for _, path in chunk]
        present = [im for im in images if im is not None]
        logits = iter([])
        if present:
            embeds = torch.nn.functional.normalize(
                tower.image_embeds(tower.preprocess(present)).float(), dim=-1
            )
            logits = iter((text.logit_scale * embeds.cpu() @ class_embeds.T).tolist())
        for (gold, path), image in zip(chunk, images):
            scores = next(logits) if image is not None else None
            predictions.append(make_prediction(str(path.relative_to(root)), gold, scores, classes))
    return predictions


@register_benchmark
class ZeroShot(EncoderBenchmark):
    name = NAME
    help = "zero-shot top-1 over <class>/<image> folders with the tower's text encoder"

    def load(self, args) -> tuple[list[str], list[tuple[str, Path]]]:
        return load(args.data)

    def predict(self, args, data) -> list[dict]:
        classes, samples = data
        return predict(self.load_tower(args), classes, samples, Path(args.data), args.batch_size)

    def options(self, args, data) -> dict:
        return {"template": TEMPLATE, "classes": data[0]}

    rejudge = staticmethod(rejudge)
    score = staticmethod(score)
