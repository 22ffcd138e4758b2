"""The world's benchmarks and LLaVA training sets, written in the real datasets' layouts so the
project's own readers (eval/benchmarks/*, mllm_train/data.py) load them unchanged.

    write_benchmarks(root, seed)  -> {"mmvp_vlm": dir, "mmvp": dir, "cv_bench": dir}
    write_llava_data(root, seed)  -> {"llava_pretrain": json, "llava_finetune": json, ...}

Every benchmark item is a one-attribute pair (world.scenes.sample_pair): two scenes identical
but for the attribute the item asks about (layout included). Each benchmark directory also holds
`world_labels.jsonl` (outside the published layout; no reader looks at it): per question its
id, pair, the attribute asked and the scene, which `attribute_accuracy` joins with a results
directory's predictions.jsonl for the per-attribute numbers the headline does not show.

- **MMVP-VLM** (`mmvp_vlm/`): `Questions.csv` + `MLLM_VLM Images/<Type>/<qid>.jpg`, N pairs per
  attribute in the official category order: orientation "Orientation and Direction", count
  "Quantity and Count", position "Positional and Relational Context", colour "Color and
  Appearance", shape "Structural Characteristics". Pair k is rows qid 2k+1 (image 1) and 2k+2
  (image 2), so the official parity rule (odd -> image 1) holds; statements are
  `Scene.phrase({attribute})` ("a red triangle pointing up" vs "... pointing down"), to which the
  scorer prefixes "a photo of ", the world CLIP's caption form. The category of a pair comes from
  its Type: score with `python -m eval mmvp-vlm --categories type` (the official positional rule
  needs exactly 270 rows of the 9 real categories).
- **MMVP** (`mmvp/`): exactly the official 150 pairs / 300 questions (the reader requires them),
  `lndex,Question,Options,Correct Answer` + `MMVP Images/<n>.jpg`; questions 2k-1, 2k ask the same
  question with the same two options "(a) x (b) y" (the pair's two values) about the pair's two
  images. Fine attributes dominate: orientation 38, count 38, position 37, colour 19, shape 18
  pairs (113/150 fine). The labels are right for their images (no release's swap): evaluate with
  `--no-fix-label-swap` (the default fix refuses the file, since it does not carry the original
  release's swapped labels at 99/100).
- **CV-Bench** (`cv_bench/`): `test_2d.parquet` (HF Image feature) + an empty `test_3d.parquet`,
  CV-Bench's 2D tasks only: Count ("How many triangles are in the image?", choices 4 of 0-4) over
  count pairs and Relation ("Are the shapes on the left or on the right of the image?") over pairs
  on opposite sides; N pairs per task, answers "(B)". The world has no 3D scenes: the reader then
  reports 3D and overall as None and lists Omni3D in `missing_sources`. So that CV-Bench's official
  2D = mean(ADE20K, COCO) is defined, a task's pairs are dealt alternately to the sources ADE20K and
  COCO: the two are random halves of one distribution, and the per-task accuracies (Count: count,
  Relation: position) are the numbers to read.

Answer positions are balanced: each MMVP pair's gold letters are (A, B) or (B, A), alternating; a
Relation pair's are A and B in alternating choice order; the Count pairs' two gold letters cycle
through the 12 ordered pairs of distinct letters. Answering always "A" scores chance (50% of the
two-option questions, 25% of Count, 0% of pairs).

Seeds: every set draws from its own `random.Random("world-<set>:<seed>")` stream; the world's
training sets draw from other streams (the models' pools: integer seeds 10000+k; enhance images:
"enhance-<seed>"; the LLaVA sets below: "world-llava-<set>:<seed>"), so no benchmark stream is a
training stream. Images are JPEG at quality 95 without chroma subsampling (the releases ship
JPEGs; 4:2:0 would smear a 32-pixel scene's colours), CV-Bench's PNG bytes as in its parquet.
"""
from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa

from llava_plugin.toy.files import HF_IMAGE_TYPE, write_hf_parquet
from llava_plugin.toy.training_data import PRETRAIN_INSTRUCTIONS
from world import questions as q
from world.scenes import Scene, draw, sample_pair, sample_scene

LABELS_FILE = "world_labels.jsonl"
JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0}
VLM_TYPES = {  # attribute -> MMVP-VLM Type (= category name), in the official category order
    "orientation": "Orientation and Direction",
    "count": "Quantity and Count",
    "position": "Positional and Relational Context",
    "colour": "Color and Appearance",
    "shape": "Structural Characteristics",
}
MMVP_PAIRS = {"orientation": 38, "count": 38, "position": 37, "colour": 19, "shape": 18}  # 150, as the release
CV_TASKS = {"Count": "count", "Relation": "position"}  # CV-Bench 2D task -> the attribute it asks
CV_SOURCES = (("ADE20K", "ADE20K Validation Set"), ("COCO", "COCO 2017 Validation Set"))
_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_LETTER_PAIRS = [(a, b) for a in range(4) for b in range(4) if a != b]  # the Count pairs' gold letters


def _stream(name: str, seed: int) -> random.Random:
    return random.Random(f"world-{name}:{seed}")


def _save(scene: Scene, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(scene).save(path, **JPEG)


def _fresh(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; the world's data writers only write new directories")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _label(qid, pair: int, attribute: str, scene: Scene, **extra) -> dict:
    return {"id": qid, "pair": pair, "attribute": attribute, "scene": asdict(scene), **extra}


def _write_labels(out: Path, rows: list[dict]) -> None:
    (out / LABELS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------- MMVP-VLM
def write_mmvp_vlm(out: Path, seed: int = 0, pairs_per_attribute: int = 50) -> Path:
    out = _fresh(out)
    rng = _stream("mmvp_vlm", seed)
    rows, labels = [], []
    for attribute, type_name in VLM_TYPES.items():
        for _ in range(pairs_per_attribute):
            pair = len(rows) // 2
            for k, scene in enumerate(sample_pair(rng, attribute)):
                qid = 2 * pair + 1 + k  # odd qid: image 1
                _save(scene, out / "MLLM_VLM Images" / type_name / f"{qid}.jpg")
                rows.append([qid, type_name, scene.phrase({attribute})])
                labels.append(_label(qid, pair, attribute, scene))
    _write_csv(out / "Questions.csv", ["Question ID", "Type", "Statement"], rows)
    _write_labels(out, labels)
    return out


# ---------------------------------------------------------------- MMVP
def write_mmvp(out: Path, seed: int = 0) -> Path:
    out = _fresh(out)
    rng = _stream("mmvp", seed)
    rows, labels = [], []
    for attribute, n in MMVP_PAIRS.items():
        for _ in range(n):
            pair = len(rows) // 2
            scenes = sample_pair(rng, attribute)
            values = [q.value_text(s, attribute) for s in scenes]
            order = [1, 0] if pair % 2 else [0, 1]  # alternate which image's value is option (a)
            options = [values[k] for k in order]
            text = q.question(scenes[0], attribute)
            for k, scene in enumerate(scenes):
                index = len(rows) + 1
                _save(scene, out / "MMVP Images" / f"{index}.jpg")
                letter = "ab"[order.index(k)]
                rows.append([index, text, q.mmvp_options(options), f"({letter})"])
                labels.append(_label(index, pair, attribute, scene, gold=letter.upper()))
    _write_csv(out / "Questions.csv", ["lndex", "Question", "Options", "Correct Answer"], rows)
    _write_labels(out, labels)
    return out


# ---------------------------------------------------------------- CV-Bench
_CV_FEATURES = {
    **{name: {"dtype": dtype, "_type": "Value"} for name, dtype in (
        ("idx", "int32"), ("type", "string"), ("task", "string"), ("question", "string"), ("answer", "string"),
        ("prompt", "string"), ("source", "string"), ("source_dataset", "string"), ("target_class", "string"))},
    "image": {"_type": "Image"},
    "choices": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
}
_CV_ARROW = {"idx": pa.int32(), "type": pa.string(), "task": pa.string(), "image": HF_IMAGE_TYPE,
             "question": pa.string(), "choices": pa.list_(pa.string()), "answer": pa.string(),
             "prompt": pa.string(), "source": pa.string(), "source_dataset": pa.string(),
             "target_class": pa.string()}


def _png(scene: Scene, name: str) -> dict:
    buffer = io.BytesIO()
    draw(scene).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": name}


def _cv_pair(task: str, k: int, rng: random.Random) -> tuple[tuple[Scene, Scene], str, list[str], list[int]]:
    """(scenes, question, choices, gold choice index per scene) of the task's k-th pair."""
    if task == "Count":
        scenes = sample_pair(rng, "count")
        counts = [str(s.count) for s in scenes]
        gold = list(_LETTER_PAIRS[k % len(_LETTER_PAIRS)])
        distractors = rng.sample([c for c in q.CV_COUNT_CHOICES if c not in counts], 2)
        choices = [""] * 4
        for slot, count in zip(gold, counts):
            choices[slot] = count
        for slot in (i for i in range(4) if not choices[i]):
            choices[slot] = distractors.pop()
    else:  # Relation: the same scene on the opposite side
        scene = sample_scene(rng)
        scenes = (scene, replace(scene, position=_OPPOSITE[scene.position]))
        sides = sorted({scene.position, _OPPOSITE[scene.position]}, key=["left", "right", "top", "bottom"].index)
        choices = sides if k % 2 == 0 else sides[::-1]
        gold = [choices.index(s.position) for s in scenes]
    return scenes, q.question(scenes[0], CV_TASKS[task], "cv_bench"), choices, gold


def write_cv_bench(out: Path, seed: int = 0, pairs_per_task: int = 50) -> Path:
    out = _fresh(out)
    rows, labels = [], []
    for task, attribute in CV_TASKS.items():
        rng = _stream(f"cv_bench-{task.lower()}", seed)
        for k in range(pairs_per_task):
            scenes, text, choices, gold = _cv_pair(task, k, rng)
            source, source_dataset = CV_SOURCES[k % 2]
            pair = len(rows) // 2
            for scene, right in zip(scenes, gold):
                idx = len(rows)
                letter = "ABCD"[right]
                rows.append({"idx": idx, "type": "2D", "task": task, "image": _png(scene, f"{idx:06d}.png"),
                             "question": text, "choices": choices, "answer": f"({letter})",
                             "prompt": q.cv_bench_row_prompt(text, choices), "source": source,
                             "source_dataset": source_dataset, "target_class": scene.shape})
                labels.append(_label(idx, pair, attribute, scene, gold=letter, task=task))
    write_hf_parquet(out / "test_2d.parquet", rows, _CV_FEATURES, _CV_ARROW)
    write_hf_parquet(out / "test_3d.parquet", [], _CV_FEATURES, _CV_ARROW)  # the world has no 3D scenes
    _write_labels(out, labels)
    return out


def write_benchmarks(root: Path, seed: int = 0, pairs_per_attribute: int = 50) -> dict[str, Path]:
    """World MMVP-VLM (`pairs_per_attribute` pairs per attribute), MMVP (the official 150 pairs)
    and CV-Bench (`pairs_per_attribute` pairs per task) under `root`; zoo.data keys -> dirs."""
    root = Path(root)
    return {"mmvp_vlm": write_mmvp_vlm(root / "mmvp_vlm", seed, pairs_per_attribute),
            "mmvp": write_mmvp(root / "mmvp", seed),
            "cv_bench": write_cv_bench(root / "cv_bench", seed, pairs_per_attribute)}


# ---------------------------------------------------------------- per-attribute accuracy
def read_labels(data_dir: Path | str) -> list[dict]:
    path = Path(data_dir) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {data_dir} is not a world benchmark directory "
                                "(world.benchmarks.write_benchmarks writes one)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attribute_accuracy(results_dir: Path | str, data_dir: Path | str) -> dict[str, dict]:
    """Per attribute asked: question and pair accuracy (%) of a `python -m eval` results directory
    on the world benchmark in `data_dir` (MMVP-VLM: statements; a pair is right iff both are)."""
    labels = {row["id"]: row for row in read_labels(data_dir)}
    predictions = [json.loads(line) for line in (Path(results_dir) / "predictions.jsonl").read_text().splitlines()
                   if line.strip()]
    unknown = [p["id"] for p in predictions if p["id"] not in labels]
    if unknown:
        raise ValueError(f"predictions {unknown[:5]} of {results_dir} are not questions of {data_dir}")
    by_attribute: dict[str, dict[int, list[bool]]] = {}
    for p in predictions:
        label = labels[p["id"]]
        by_attribute.setdefault(label["attribute"], {}).setdefault(label["pair"], []).append(bool(p["correct"]))
    out = {}
    for attribute, pairs in by_attribute.items():
        flags = [f for members in pairs.values() for f in members]
        out[attribute] = {"questions": len(flags), "question_accuracy": 100.0 * sum(flags) / len(flags),
                          "pairs": len(pairs),
                          "pair_accuracy": 100.0 * sum(all(m) for m in pairs.values()) / len(pairs)}
    return {a: out[a] for a in (*VLM_TYPES, *sorted(set(out) - set(VLM_TYPES))) if a in out}


# ---------------------------------------------------------------- LLaVA training data
# Attribute weights of the instruction set's questions (among those a scene can be asked): the
# fine attributes twice as often, as the benchmarks weigh them.
ATTRIBUTE_WEIGHTS = {"colour": 1.0, "shape": 1.0, "count": 2.0, "orientation": 2.0, "position": 2.0}
FORMAT_WEIGHTS = {"mmvp": 0.35, "cv_bench": 0.35, "short": 0.15, "sentence": 0.15}
TEXT_ONLY = (  # world facts without an image (mix665k's ShareGPT part, in miniature)
    ("Which colours can the shapes have?", "Red, green, blue, yellow, purple or orange."),
    ("Which shapes are there?", "Circles, squares, triangles and arrows."),
    ("Which shapes point in a direction?", "Triangles and arrows point up, down, left or right."),
    ("How many shapes can an image show?", "One, two or three, all of the same kind."),
    ("Where can the shapes be?", "On the left, on the right, at the top or at the bottom of the image."),
)


def _pick_attributes(scene: Scene, n: int, rng: random.Random) -> list[str]:
    pool = list(q.askable(scene))
    chosen = []
    for _ in range(min(n, len(pool))):
        attribute = rng.choices(pool, weights=[ATTRIBUTE_WEIGHTS[a] for a in pool])[0]
        chosen.append(attribute)
        pool.remove(attribute)
    return chosen


def conversation(scene: Scene, rng: random.Random, rounds: int, formats: dict[str, float] | None = None) -> list[dict]:
    """`rounds` question/answer turns about `scene` (distinct attributes, formats drawn by
    `formats`, default FORMAT_WEIGHTS); `<image>` opens the first human turn, as in mix665k."""
    formats = formats or FORMAT_WEIGHTS
    turns = []
    for k, attribute in enumerate(_pick_attributes(scene, rounds, rng)):
        style = rng.choices(list(formats), weights=list(formats.values()))[0]
        human, answer = q.ask(scene, attribute, style, rng)
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + human},
                  {"from": "gpt", "value": answer}]
    return turns


def write_llava_pretrain(out: Path, seed: int = 0, samples: int = 4000) -> Path:
    """LCS-558K layout: `blip_laion_cc_sbu_558k.json` with `00000/<id>.jpg` images beside it; each
    caption is the scene's full caption (every fine attribute named)."""
    out = _fresh(out)
    rng = _stream("llava-pretrain", seed)
    records = []
    for i in range(samples):
        scene = sample_scene(rng)
        sample_id = f"{i:09d}"
        image = f"{sample_id[:5]}/{sample_id}.jpg"
        _save(scene, out / image)
        instruction = rng.choice(PRETRAIN_INSTRUCTIONS)
        human = f"<image>\n{instruction}" if rng.random() < 0.5 else f"{instruction}\n<image>"
        records.append({"id": sample_id, "image": image, "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": scene.full_caption}]})
    path = out / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def write_llava_finetune(out: Path, seed: int = 0, samples: int = 4000, single_turn: float = 0.5,
                         max_rounds: int = 3, text_only: float = 0.02, formats: dict[str, float] | None = None) -> Path:
    """mix665k layout: `llava_v1_5_mix665k.json` with `coco/train2017/<id>.jpg` images beside it.
    A record is text-only with probability `text_only`, else one question (`single_turn`) or
    2..`max_rounds` questions about its scene."""
    out = _fresh(out)
    rng = _stream("llava-finetune", seed)
    records = []
    for i in range(samples):
        if rng.random() < text_only:
            human, answer = TEXT_ONLY[rng.randrange(len(TEXT_ONLY))]
            records.append({"id": f"world_text_{i:06d}", "conversations": [
                {"from": "human", "value": human}, {"from": "gpt", "value": answer}]})
            continue
        scene = sample_scene(rng)
        image = f"coco/train2017/{i:012d}.jpg"
        _save(scene, out / image)
        rounds = 1 if rng.random() < single_turn else rng.randint(2, max_rounds)
        records.append({"id": f"{i:012d}", "image": image, "conversations": conversation(scene, rng, rounds, formats)})
    path = out / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def write_llava_data(root: Path, seed: int = 0, pretrain_samples: int = 4000, finetune_samples: int = 4000,
                     **finetune) -> dict[str, Path]:
    """The LLaVA pretrain and instruction sets under `root` (images beside each JSON, so the image
    folder is the JSON's directory); zoo.data keys -> paths. `finetune`: write_llava_finetune's
    keyword arguments."""
    root = Path(root)
    pretrain = write_llava_pretrain(root / "llava_pretrain", seed, pretrain_samples)
    instruct = write_llava_finetune(root / "llava_finetune", seed, finetune_samples, **finetune)
    return {"llava_pretrain": pretrain, "llava_pretrain_images": pretrain.parent,
            "llava_finetune": instruct, "llava_image_folder": instruct.parent}


__all__ = ["attribute_accuracy", "read_labels", "write_benchmarks", "write_cv_bench", "write_llava_data",
           "write_llava_finetune", "write_llava_pretrain", "write_mmvp", "write_mmvp_vlm"]
