"""Synthetic datasets for the tiny zoo, each written in the on-disk layout of the real
dataset it stands in for, so the real readers run on them unchanged. Everything lives
under `zoo.root / "data"`; `write_data` fills these `zoo.data` keys:

- `scenes`: dir with `images/NNN.jpg` + `captions.jsonl` (`{"image": "images/000.jpg", "caption": ...}`),
  64 images; `images/061.jpg` is grayscale (mode L), `images/062.png` is RGBA, `images/063.jpg` is CMYK:
  readers must convert to RGB.
- `scenes_corrupt`: the same 64 images and captions plus three broken files listed in its captions.jsonl:
  `images/empty.jpg` (0 bytes), `images/truncated.jpg` (half a JPEG), `images/not_an_image.jpg` (text).
- `wds`: dir of CC3M/img2dataset-style webdataset shards `00000.tar`, `00001.tar` (32 samples each;
  key `SSSSSIIII`; members `.jpg`, `.txt` caption, `.json` metadata); `wds_pattern` is the brace
  pattern `.../{00000..00001}.tar`.
- `llava_pretrain`: LCS-558K-style `blip_laion_cc_sbu_558k.json` (48 samples: `id`, `image` like
  `00000/000000003.jpg`, two-turn `conversations`; `<image>` before or after the instruction, as in the
  real file); `llava_pretrain_images`: its image folder.
- `llava_finetune`: mix665k-style `llava_v1_5_mix665k.json` (48 samples: single-turn short-answer VQA,
  single-turn multiple choice answered with the option's letter (as mix665k's A-OKVQA part),
  2-3 round conversations with `<image>` only in the first human turn, text-only samples without an
  `image` key); `llava_image_folder`: the image folder its `coco/train2017/...` paths are relative to.
- `mmvp_vlm`: the MMVP-VLM layout: `Questions.csv` (`Question ID,Type,Statement`, 270 rows, 9 Types x
  15 pairs x 2 in the official order) + `MLLM_VLM Images/<Type>/<qid>.jpg` (32x32).
- `mmvp`: the MMVP layout: `Questions.csv` (`lndex,Question,Options,Correct Answer`, 300 rows, options
  `(a) ... (b) ...`, answers `(a)`/`(b)`) + `MMVP Images/<n>.jpg`, n = 1..300. Like the ORIGINAL release,
  the labels of questions 99/100 and 279/280 are swapped (wrong for their images), so a reader's
  label-swap fix is observable.
- `cv_bench`: the nyu-visionx/CV-Bench layout: `test_2d.parquet`, `test_3d.parquet` (image as the HF
  `Image` feature) + `test_2d.jsonl`, `test_3d.jsonl` with `filename` pointing into `img/2D/...`,
  `img/3D/...`. 48 rows deliberately unbalanced by source: ADE20K 8, COCO 24, Omni3D 16.
- `zeroshot`: class-per-folder `<shape>/NN.jpg` (5 shape classes x 6 images).
- `vqa`: two parquet files for lmms-eval tasks, image as the HF `Image` feature (decoded to PIL):
  `vqa/shapes_vqa.parquet` (generation: `question_id`, `image`, `question`, `answer`, `answers`
  (list of accepted strings), `category`; 24 rows) and `vqa/shapes_mc.parquet` (multiple choice:
  `question_id`, `image`, `question`, `options` (list), `answer` (letter), `category`; 24 rows).
  Point a task at them with `dataset_path: parquet`,
  `dataset_kwargs: {data_files: {test: <path>}}`, `test_split: test`.
  `vqa_gen` and `vqa_mc` are the two file paths.

Same seed -> byte-identical files (fixed tar metadata, fixed JPEG settings).
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from llava_plugin.toy.scenes import (
    COLORS,
    NUMBER_WORDS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    Group,
    Pair,
    draw_pair,
    draw_scene,
    questions_about,
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
PRETRAIN_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short and clear explanation of the subsequent image.",
    "Write a terse but informative summary of the picture.",
    "Render a clear and concise summary of the photo.",
    "Share a concise interpretation of the image provided.",
)
SHORT_ANSWER = "Answer the question using a single word or phrase."
JPEG_QUALITY = 90


def write_data(zoo, seed: int) -> None:
    root = zoo.root / "data"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    writers = (
        _write_scenes,
        _write_wds,
        _write_llava_pretrain,
        _write_llava_finetune,
        _write_mmvp_vlm,
        _write_mmvp,
        _write_cv_bench,
        _write_zeroshot,
        _write_vqa,
    )
    for offset, writer in enumerate(writers):
        # one independent stream per dataset, so adding a dataset never changes the others
        zoo.data.update(writer(root, random.Random(seed * 1000 + offset)))


# ---------------------------------------------------------------- helpers
def _save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=JPEG_QUALITY)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _scene_size(rng: random.Random) -> tuple[int, int]:
    """Mostly landscape, sometimes portrait: never square, so pad-to-square is exercised."""
    return (64, 48) if rng.random() < 0.75 else (48, 64)


# HF `datasets` stores an Image feature as struct<bytes: binary, path: string> and records the
# feature types in the parquet schema metadata under b"huggingface".
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write_hf_parquet(path: Path, rows: list[dict], features: dict[str, dict], arrow_types: dict) -> None:
    columns = {name: pa.array([r[name] for r in rows], type=arrow_types[name]) for name in arrow_types}
    table = pa.table(columns)
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = table.replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _hf_image(image: Image.Image, name: str) -> dict:
    return {"bytes": _png_bytes(image), "path": name}


# ---------------------------------------------------------------- caption image folder
def _write_scenes(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "scenes"
    rows = []
    for i in range(64):
        scene = draw_scene(rng, _scene_size(rng))
        if i == 62:  # RGBA PNG with a transparent border
            rgba = scene.image.convert("RGBA")
            alpha = Image.new("L", rgba.size, 0)
            alpha.paste(255, (2, 2, rgba.size[0] - 2, rgba.size[1] - 2))
            rgba.putalpha(alpha)
            name = f"images/{i:03d}.png"
            (out / "images").mkdir(parents=True, exist_ok=True)
            rgba.save(out / name, format="PNG")
        else:
            name = f"images/{i:03d}.jpg"
            image = {61: scene.image.convert("L"), 63: scene.image.convert("CMYK")}.get(i, scene.image)
            _save_jpeg(image, out / name)
        rows.append({"image": name, "caption": scene.caption})
    _write_jsonl(out / "captions.jsonl", rows)

    corrupt = root / "scenes_corrupt"
    shutil.copytree(out, corrupt)
    good = (out / "images" / "000.jpg").read_bytes()
    (corrupt / "images" / "empty.jpg").write_bytes(b"")
    (corrupt / "images" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (corrupt / "images" / "not_an_image.jpg").write_text("this is a caption file, not a JPEG\n")
    bad = [
        {"image": f"images/{n}.jpg", "caption": "a broken file"}
        for n in ("empty", "truncated", "not_an_image")
    ]
    _write_jsonl(corrupt / "captions.jsonl", rows + bad)
    return {"scenes": out, "scenes_corrupt": corrupt}


# ---------------------------------------------------------------- webdataset shards
def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def _write_wds(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "wds"
    out.mkdir(parents=True)
    shards, per_shard = 2, 32
    for shard in range(shards):
        with tarfile.open(out / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                scene = draw_scene(rng, _scene_size(rng))
                width, height = scene.image.size
                meta = {
                    "key": key,
                    "caption": scene.caption,
                    "url": f"https://example.invalid/cc3m/{key}.jpg",
                    "status": "success",
                    "width": width,
                    "height": height,
                    "original_width": width,
                    "original_height": height,
                }
                _add_member(tar, f"{key}.jpg", _jpeg_bytes(scene.image))
                _add_member(tar, f"{key}.txt", scene.caption.encode())
                _add_member(tar, f"{key}.json", json.dumps(meta).encode())
    return {"wds": out, "wds_pattern": out / f"{{00000..{shards - 1:05d}}}.tar"}


# ---------------------------------------------------------------- LLaVA pretrain / finetune
def _write_llava_pretrain(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "llava_pretrain"
    records = []
    for i in range(48):
        scene = draw_scene(rng, _scene_size(rng))
        sample_id = f"{i * 7 + 3:09d}"
        image = f"{sample_id[:5]}/{sample_id}.jpg"
        _save_jpeg(scene.image, out / "images" / image)
        instruction = rng.choice(PRETRAIN_INSTRUCTIONS)
        human = f"<image>\n{instruction}" if rng.random() < 0.5 else f"{instruction}\n<image>"
        records.append(
            {
                "id": sample_id,
                "image": image,
                "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": scene.caption}],
            }
        )
    path = out / "blip_laion_cc_sbu_558k.json"
    _write_json(path, records)
    return {"llava_pretrain": path, "llava_pretrain_images": out / "images"}


TEXT_ONLY = (
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("Name the three primary colors of paint.", "Red, yellow and blue."),
    ("What shape has four equal sides and four right angles?", "A square."),
    ("Which is larger, four or two?", "Four is larger than two."),
)


MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
_ALTERNATIVES = {
    "count": [str(n) for n in NUMBER_WORDS],
    "color": [c.capitalize() for c in COLORS],
    "position": [p.capitalize() for p in POSITIONS],
    "presence": ["Yes", "No"],
}


def _multiple_choice(qa, rng: random.Random) -> tuple[str, str]:
    """(human turn, letter) asking `qa` with 2-4 options, the true answer among them, written as
    MMVP ("A. x") or CV-Bench ("(A) x") lists its options."""
    wrong = [a for a in _ALTERNATIVES[qa.kind] if a != qa.answer]
    options = [qa.answer] + rng.sample(wrong, min(len(wrong), rng.randint(1, 3)))
    rng.shuffle(options)
    letters = "ABCD"[: len(options)]
    style = rng.choice(("{}. {}", "({}) {}"))
    listed = "\n".join(style.format(letter, option) for letter, option in zip(letters, options))
    question = qa.question.split("?")[0] + "?"
    return f"<image>\n{question}\n{listed}\n{MULTIPLE_CHOICE}", letters[options.index(qa.answer)]


def _write_llava_finetune(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "llava_finetune"
    folder = out / "images"
    records = []
    for i in range(48):
        kind = ("single", "multi", "choice", "multi", "text", "choice")[i % 6]
        if kind == "text":
            question, answer = TEXT_ONLY[(i // 5) % len(TEXT_ONLY)]
            records.append(
                {
                    "id": f"sharegpt_{i:05d}",
                    "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                }
            )
            continue
        scene = draw_scene(rng, _scene_size(rng))
        image = f"coco/train2017/{i:012d}.jpg"
        _save_jpeg(scene.image, folder / image)
        qas = questions_about(scene, rng)
        rng.shuffle(qas)
        if kind == "single":
            qa = qas[0]
            turns = [(f"<image>\n{qa.question}\n{SHORT_ANSWER}", qa.answer)]
        elif kind == "choice":  # mix665k's multiple-choice format (A-OKVQA): the answer is the letter
            turns = [_multiple_choice(qas[0], rng)]
        else:
            rounds = qas[: rng.choice((2, 3))]
            turns = [
                (("<image>\n" if k == 0 else "") + qa.question, qa.sentence) for k, qa in enumerate(rounds)
            ]
        conversations = []
        for question, answer in turns:
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        records.append({"id": f"{i:012d}", "image": image, "conversations": conversations})
    path = out / "llava_v1_5_mix665k.json"
    _write_json(path, records)
    return {"llava_finetune": path, "llava_image_folder": folder}


# ---------------------------------------------------------------- MMVP-VLM and MMVP
def _write_mmvp_vlm(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "mmvp_vlm"
    rows = []
    qid = 1
    for type_name, pattern in zip(MMVP_VLM_TYPES, PATTERNS):
        for _ in range(MMVP_VLM_PAIRS_PER_TYPE):
            pair = draw_pair(rng, pattern)
            for scene, statement in zip(pair.scenes, pair.statements):
                _save_jpeg(scene.image, out / "MLLM_VLM Images" / type_name / f"{qid}.jpg")
                rows.append([qid, type_name, statement])
                qid += 1
    with open(out / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Question ID", "Type", "Statement"])
        writer.writerows(rows)
    return {"mmvp_vlm": out}


def _write_mmvp(root: Path, rng: random.Random) -> dict[str, Path]:
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
            _save_jpeg(scene.image, out / "MMVP Images" / f"{index}.jpg")
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
    "image": _IMAGE_TYPE,
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


def _write_cv_bench(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "cv_bench"
    by_type: dict[str, list[dict]] = {"2D": [], "3D": []}
    idx = 0
    for source, source_dataset, type_, tasks, count in CV_BENCH_SOURCES:
        for k in range(count):
            task = tasks[k % len(tasks)]
            groups, question, choices, right, target = _cv_question(task, rng)
            scene = draw_scene(rng, _scene_size(rng), groups)
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
                    "image": _hf_image(scene.image, Path(filename).name),
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
        _write_hf_parquet(out / f"{name}.parquet", rows, _CV_FEATURES, _CV_ARROW)
        _write_jsonl(out / f"{name}.jsonl", [{k: v for k, v in r.items() if k != "image"} for r in rows])
    paths["cv_bench"] = out
    return paths


# ---------------------------------------------------------------- zero-shot classification
def _write_zeroshot(root: Path, rng: random.Random) -> dict[str, Path]:
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
            scene = draw_scene(rng, _scene_size(rng), [group])
            _save_jpeg(scene.image, out / shape / f"{k:02d}.jpg")
    return {"zeroshot": out}


# ---------------------------------------------------------------- lmms-eval local tasks
def _write_vqa(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "vqa"
    gen, mc = [], []
    for i in range(24):
        scene = draw_scene(rng, _scene_size(rng))
        qa = rng.choice(questions_about(scene, rng))
        gen.append(
            {
                "question_id": f"gen_{i:03d}",
                "image": _hf_image(scene.image, f"gen_{i:03d}.png"),
                "question": qa.question,
                "answer": qa.answer,
                "answers": [qa.answer, qa.answer.lower()],
                "category": qa.kind,
            }
        )
    for i in range(24):
        pair = draw_pair(rng, PATTERNS[i % len(PATTERNS)], size=(64, 48))
        which = rng.randrange(2)
        options = list(pair.options)
        if rng.random() < 0.5:
            options.reverse()
        answer = "AB"[options.index(pair.options[pair.answers[which]])]
        mc.append(
            {
                "question_id": f"mc_{i:03d}",
                "image": _hf_image(pair.scenes[which].image, f"mc_{i:03d}.png"),
                "question": pair.question,
                "options": options,
                "answer": answer,
                "category": pair.pattern,
            }
        )
    string = {"dtype": "string", "_type": "Value"}
    strings = {"feature": string, "_type": "Sequence"}
    _write_hf_parquet(
        out / "shapes_vqa.parquet",
        gen,
        {
            "question_id": string,
            "image": {"_type": "Image"},
            "question": string,
            "answer": string,
            "answers": strings,
            "category": string,
        },
        {
            "question_id": pa.string(),
            "image": _IMAGE_TYPE,
            "question": pa.string(),
            "answer": pa.string(),
            "answers": pa.list_(pa.string()),
            "category": pa.string(),
        },
    )
    _write_hf_parquet(
        out / "shapes_mc.parquet",
        mc,
        {
            "question_id": string,
            "image": {"_type": "Image"},
            "question": string,
            "options": strings,
            "answer": string,
            "category": string,
        },
        {
            "question_id": pa.string(),
            "image": _IMAGE_TYPE,
            "question": pa.string(),
            "options": pa.list_(pa.string()),
            "answer": pa.string(),
            "category": pa.string(),
        },
    )
    return {"vqa": out, "vqa_gen": out / "shapes_vqa.parquet", "vqa_mc": out / "shapes_mc.parquet"}
