"""Benchmark data of the tiny zoo in the real benchmarks' layouts (keys: llava_plugin/toy/data.py):
MMVP-VLM, MMVP (with the original release's label swap), CV-Bench and zero-shot classification."""

from __future__ import annotations

import csv
import random
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from llava_plugin.toy.files import (
    HF_IMAGE_TYPE,
    hf_image,
    save_jpeg,
    scene_size,
    write_hf_parquet,
    write_jsonl,
)
from llava_plugin.toy.scenes import (
    COLORS,
    PATTERNS,
    SHAPES,
    Group,
    Pair,
    draw_pair,
    draw_scene,
    random_groups,
)

# Real MMVP-VLM Type folder names, in the benchmark's category order
# (Orientation and Direction, Presence of Specific Features, State and Condition, Quantity and Count,
#  Positional and Relational Context, Color and Appearance, Structural Characteristics, Texts,
#  Viewpoint and Perspective).
MMVP_VLM_TYPES = (
    "Orientation",
    "Presence",
    "State",
    "Quantity",
    "Spatial",
    "Color",
    "Structural Character",
    "Text",
    "Camera Perspective",
)
MMVP_VLM_PAIRS_PER_TYPE = 15
MMVP_PAIRS = 150
# 1-based question numbers whose labels the original release swapped: it reads (a), (b) for
# each of these pairs where the images say (b), (a); later releases (lmms-lab-eval/MMVP) fixed them.
MMVP_SWAPPED_QUESTIONS = ((99, 100), (279, 280))


# ---------------------------------------------------------------- MMVP-VLM and MMVP
def write_mmvp_vlm(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "mmvp_vlm"
    rows = []
    qid = 1
    for type_name, pattern in zip(MMVP_VLM_TYPES, PATTERNS):
        for _ in range(MMVP_VLM_PAIRS_PER_TYPE):
            pair = draw_pair(rng, pattern)
            for scene, statement in zip(pair.scenes, pair.statements):
                save_jpeg(scene.image, out / "MLLM_VLM Images" / type_name / f"{qid}.jpg")
                rows.append([qid, type_name, statement])
                qid += 1
    with open(out / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Question ID", "Type", "Statement"])
        writer.writerows(rows)
    return {"mmvp_vlm": out}


def write_mmvp(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "mmvp"
    rows = []
    for p in range(MMVP_PAIRS):
        pair: Pair = draw_pair(rng, PATTERNS[p * len(PATTERNS) // MMVP_PAIRS])
        options = list(pair.options)
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        if any(first == 2 * p + 1 for first, _ in MMVP_SWAPPED_QUESTIONS):
            # the original release reads (a), (b) here where the truth is (b), (a)
            order = [1, 0]
        options = [options[k] for k in order]
        for scene, true_option in zip(pair.scenes, pair.answers):
            index = len(rows) + 1
            save_jpeg(scene.image, out / "MMVP Images" / f"{index}.jpg")
            letter = "ab"[order.index(true_option)]
            rows.append([index, pair.question, f"(a) {options[0]} (b) {options[1]}", f"({letter})"])
    for first, second in MMVP_SWAPPED_QUESTIONS:
        rows[first - 1][3], rows[second - 1][3] = rows[second - 1][3], rows[first - 1][3]
    with open(out / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["lndex", "Question", "Options", "Correct Answer"])
        writer.writerows(rows)
    return {"mmvp": out}


# ---------------------------------------------------------------- CV-Bench
CV_BENCH_SOURCES = (  # (source, source_dataset, type, tasks, rows): unbalanced on purpose
    ("ADE20K", "ADE20K Validation Set", "2D", ("Count", "Relation"), 8),
    ("COCO", "COCO 2017 Validation Set", "2D", ("Count", "Relation"), 24),
    ("Omni3D", "Omni3D Test Set", "3D", ("Depth", "Distance"), 16),
)
_CV_FEATURES = {
    "idx": {"dtype": "int32", "_type": "Value"},
    "type": {"dtype": "string", "_type": "Value"},
    "task": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "question": {"dtype": "string", "_type": "Value"},
    "choices": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    "answer": {"dtype": "string", "_type": "Value"},
    "prompt": {"dtype": "string", "_type": "Value"},
    "filename": {"dtype": "string", "_type": "Value"},
    "source": {"dtype": "string", "_type": "Value"},
    "source_dataset": {"dtype": "string", "_type": "Value"},
    "source_filename": {"dtype": "string", "_type": "Value"},
    "target_class": {"dtype": "string", "_type": "Value"},
    "target_size": {"dtype": "int64", "_type": "Value"},
    "bbox": {
        "feature": {"feature": {"dtype": "float64", "_type": "Value"}, "_type": "Sequence"},
        "_type": "Sequence",
    },
}
_CV_ARROW = {
    "idx": pa.int32(),
    "type": pa.string(),
    "task": pa.string(),
    "image": HF_IMAGE_TYPE,
    "question": pa.string(),
    "choices": pa.list_(pa.string()),
    "answer": pa.string(),
    "prompt": pa.string(),
    "filename": pa.string(),
    "source": pa.string(),
    "source_dataset": pa.string(),
    "source_filename": pa.string(),
    "target_class": pa.string(),
    "target_size": pa.int64(),
    "bbox": pa.list_(pa.list_(pa.float64())),
}


def _cv_question(task: str, rng: random.Random) -> tuple[list[Group], str, list[str], int, str]:
    """(groups, question, choices, index of the right choice, target class) true for the drawn scene."""
    if task == "Count":
        group = replace(random_groups(rng)[0], position="top")
        choices = [str(n) for n in rng.sample(range(6), 4) if n != group.count][:3] + [str(group.count)]
        rng.shuffle(choices)
        return (
            [group],
            f"How many {group.shape}s are in the image?",
            choices,
            choices.index(str(group.count)),
            group.shape,
        )
    a, b = rng.sample(SHAPES[:4], 2)
    ca, cb = rng.sample(list(COLORS), 2)
    if task == "Relation":
        pa_, pb = rng.choice((("left", "right"), ("right", "left")))
        groups = [Group(a, ca, 1, pa_), Group(b, cb, 1, pb, direction="up" if b == "triangle" else None)]
        groups[0] = replace(groups[0], direction="up" if a == "triangle" else None)
        choices = ["left", "right"]
        return (
            groups,
            (
                f"Considering the relative positions of the {a} and the {b} in the image provided, "
                f"where is the {a} located with respect to the {b}?"
            ),
            choices,
            choices.index(pa_),
            a,
        )
    # Depth / Distance: the large object is "closer to the camera"
    big_first = rng.random() < 0.5
    groups = [
        Group(
            a, ca, 1, "left", "large" if big_first else "small", direction="up" if a == "triangle" else None
        ),
        Group(
            b, cb, 1, "right", "small" if big_first else "large", direction="up" if b == "triangle" else None
        ),
    ]
    choices = [a, b]
    question = (
        f"Which object is closer to the camera taking this photo, the {a} (highlighted by a red box) or the "
        f"{b} (highlighted by a blue box)?"
        if task == "Depth"
        else f"Estimate the real-world distances between objects in this image. Which object is closer to the "
        f"camera, the {a} or the {b}?"
    )
    return groups, question, choices, 0 if big_first else 1, a


def write_cv_bench(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "cv_bench"
    by_type: dict[str, list[dict]] = {"2D": [], "3D": []}
    idx = 0
    for source, source_dataset, type_, tasks, count in CV_BENCH_SOURCES:
        for k in range(count):
            task = tasks[k % len(tasks)]
            groups, question, choices, right, target = _cv_question(task, rng)
            scene = draw_scene(rng, scene_size(rng), groups)
            letters = "ABCDEF"
            prompt = (
                question
                + " Select from the following choices.\n"
                + "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))
            )
            filename = f"img/{type_}/{task.lower()}/{source.lower()}_{idx}.png"
            (out / filename).parent.mkdir(parents=True, exist_ok=True)
            scene.image.save(out / filename, format="PNG")
            by_type[type_].append(
                {
                    "idx": idx,
                    "type": type_,
                    "task": task,
                    "image": hf_image(scene.image, Path(filename).name),
                    "question": question,
                    "choices": choices,
                    "answer": f"({letters[right]})",
                    "prompt": prompt,
                    "filename": filename,
                    "source": source,
                    "source_dataset": source_dataset,
                    "source_filename": f"{source.lower()}_{idx:06d}.jpg",
                    "target_class": target,
                    "target_size": 0,
                    "bbox": [[0.0, 0.0, float(scene.image.size[0]), float(scene.image.size[1])]],
                }
            )
            idx += 1
    paths = {}
    for type_, rows in by_type.items():
        name = f"test_{type_.lower()}"
        write_hf_parquet(out / f"{name}.parquet", rows, _CV_FEATURES, _CV_ARROW)
        write_jsonl(out / f"{name}.jsonl", [{k: v for k, v in r.items() if k != "image"} for r in rows])
    paths["cv_bench"] = out
    return paths


# ---------------------------------------------------------------- zero-shot classification
def write_zeroshot(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "zeroshot"
    for shape in SHAPES:
        for k in range(6):
            group = Group(
                shape,
                rng.choice(list(COLORS)),
                1,
                "center",
                "large",
                direction=rng.choice(("up", "down", "left", "right"))
                if shape in ("triangle", "arrow")
                else None,
            )
            scene = draw_scene(rng, scene_size(rng), [group])
            save_jpeg(scene.image, out / shape / f"{k:02d}.jpg")
    return {"zeroshot": out}
