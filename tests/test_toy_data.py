"""The toy datasets load with the standard readers of the real datasets, have the documented
sizes and headers, contain the special images, and are byte-identical for a fixed seed."""

import csv
import json
import random
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageFile, UnidentifiedImageError

from llava_plugin.images import ImageDecodeError, decode_rgb
from llava_plugin.toy import build_zoo
from llava_plugin.toy.benchmark_data import MMVP_SWAPPED_QUESTIONS, MMVP_VLM_TYPES
from llava_plugin.toy.scenes import PATTERNS, draw_pair, draw_scene, questions_about


@pytest.fixture(scope="module")
def data_zoo(tmp_path_factory):
    start = time.perf_counter()
    zoo = build_zoo(tmp_path_factory.mktemp("datazoo"), seed=0, parts=["data"])
    zoo.seconds = time.perf_counter() - start
    return zoo


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_data_is_fast_and_deterministic(data_zoo, tmp_path):
    assert data_zoo.seconds < 15
    again = build_zoo(tmp_path / "same", seed=0, parts=["data"])
    assert _tree_bytes(data_zoo.root / "data") == _tree_bytes(again.root / "data")
    other = build_zoo(tmp_path / "other", seed=1, parts=["data"])
    first, second = _tree_bytes(data_zoo.root / "data"), _tree_bytes(other.root / "data")
    assert first.keys() == second.keys()
    assert first["scenes/images/000.jpg"] != second["scenes/images/000.jpg"]


def test_scenes_are_seeded_non_square_and_captioned():
    a, b = draw_scene(random.Random(3)), draw_scene(random.Random(3))
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
    assert a.image.size == (64, 48)
    for group in a.attributes["groups"]:
        assert group["color"] in a.caption and group["shape"] in a.caption and group["position"] in a.caption


def test_questions_answers_hold_for_the_scene():
    scene = draw_scene(random.Random(5))
    groups = scene.attributes["groups"]
    for qa in questions_about(scene, random.Random(0)):
        if qa.kind == "count":
            assert any(str(g["count"]) == qa.answer and g["color"] in qa.question for g in groups)
        elif qa.kind == "color":
            assert qa.answer.lower() in {g["color"] for g in groups}
        elif qa.kind == "position":
            assert qa.answer.lower() in {g["position"] for g in groups}
        elif qa.kind == "presence":
            shape = qa.question.split("Is there a ")[1].split(" in")[0]
            assert (qa.answer == "Yes") == (shape in {g["shape"] for g in groups})


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pairs_differ_in_their_pattern(pattern):
    pair = draw_pair(random.Random(0), pattern)
    assert pair.scenes[0].image.tobytes() != pair.scenes[1].image.tobytes()
    assert pair.statements[0] != pair.statements[1] and pair.options[0] != pair.options[1]


def test_scenes_folder_and_special_images(data_zoo):
    root = data_zoo.data["scenes"]
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and all(r["caption"] for r in rows)
    modes = {r["image"]: Image.open(root / r["image"]).mode for r in rows}
    assert (
        modes["images/061.jpg"] == "L"
        and modes["images/062.png"] == "RGBA"
        and modes["images/063.jpg"] == "CMYK"
    )
    assert sum(m == "RGB" for m in modes.values()) == 61
    assert Image.open(root / "images/063.jpg").convert("RGB").mode == "RGB"
    assert {Image.open(root / r["image"]).size for r in rows} <= {(64, 48), (48, 64)}


def test_corrupt_folder_has_the_three_broken_files(data_zoo):
    root = data_zoo.data["scenes_corrupt"]
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 67
    assert (root / "images/empty.jpg").stat().st_size == 0
    for name in ("empty", "not_an_image"):
        with pytest.raises(UnidentifiedImageError):
            Image.open(root / f"images/{name}.jpg")
    # truncated: decodes only partially (PIL's global LOAD_TRUNCATED_IMAGES, which lmms-eval sets on
    # import, would hide it); our shared decoder rejects all three whatever that flag says
    for name in ("empty", "not_an_image", "truncated"):
        with pytest.raises(ImageDecodeError):
            decode_rgb(root / f"images/{name}.jpg")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_rgb(root / "images/truncated.jpg")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def test_webdataset_shards(data_zoo):
    import webdataset as wds

    shards = sorted(str(p) for p in data_zoo.data["wds"].glob("*.tar"))
    assert [Path(s).name for s in shards] == ["00000.tar", "00001.tar"]
    samples = list(
        wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "txt", "json")
    )
    assert len(samples) == 64
    key, image, caption, meta = samples[0]
    assert key == "000000000" and image.mode == "RGB" and caption == meta["caption"]
    pattern = str(data_zoo.data["wds_pattern"])
    assert len(list(wds.WebDataset(pattern, shardshuffle=False))) == 64


def test_llava_pretrain_layout(data_zoo):
    records = json.loads(data_zoo.data["llava_pretrain"].read_text())
    assert len(records) == 48
    for r in records:
        assert set(r) == {"id", "image", "conversations"}
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].count("<image>") == 1 and "<image>" not in gpt["value"]
        assert (data_zoo.data["llava_pretrain_images"] / r["image"]).is_file()
    assert any(r["conversations"][0]["value"].startswith("<image>\n") for r in records)


def test_llava_finetune_layout(data_zoo):
    records = json.loads(data_zoo.data["llava_finetune"].read_text())
    assert len(records) == 48
    text_only = [r for r in records if "image" not in r]
    multi = [r for r in records if len(r["conversations"]) >= 4]
    assert text_only and multi and max(len(r["conversations"]) for r in multi) == 6
    for r in records:
        roles = [t["from"] for t in r["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
        tags = [t["value"].count("<image>") for t in r["conversations"]]
        if "image" in r:
            assert tags[0] == 1 and sum(tags) == 1
            assert (data_zoo.data["llava_image_folder"] / r["image"]).is_file()
        else:
            assert sum(tags) == 0


def test_mmvp_vlm_layout(data_zoo):
    root = data_zoo.data["mmvp_vlm"]
    assert (root / "Questions.csv").read_text().splitlines()[0] == "Question ID,Type,Statement"
    df = pd.read_csv(root / "Questions.csv")
    assert len(df) == 270 and list(df["Question ID"]) == list(range(1, 271))
    assert list(dict.fromkeys(df["Type"])) == list(MMVP_VLM_TYPES)
    assert (df["Type"].value_counts() == 30).all()
    for first in range(0, 270, 2):
        type_name = df["Type"][first]
        for qid in df["Question ID"][first : first + 2]:
            assert (root / "MLLM_VLM Images" / type_name / f"{qid}.jpg").is_file()


def test_mmvp_layout_and_original_label_swap(data_zoo):
    root = data_zoo.data["mmvp"]
    assert (root / "Questions.csv").read_text().splitlines()[0] == "lndex,Question,Options,Correct Answer"
    df = pd.read_csv(root / "Questions.csv")
    assert len(df) == 300 and list(df["lndex"]) == list(range(1, 301))
    assert set(df["Correct Answer"]) == {"(a)", "(b)"}
    assert df["Options"].str.fullmatch(r"\(a\) .+ \(b\) .+").all()
    assert all((root / "MMVP Images" / f"{n}.jpg").is_file() for n in range(1, 301))
    for start in range(0, 300, 2):  # a pair shares its question and has opposite answers
        assert df["Question"][start] == df["Question"][start + 1]
        assert df["Correct Answer"][start] != df["Correct Answer"][start + 1]


def _foreground_pixels(path: Path) -> int:
    image = Image.open(path).convert("RGB")
    background = image.getpixel((0, 0))
    return sum(max(abs(a - b) for a, b in zip(px, background)) > 60 for px in image.getdata())


def test_mmvp_labels_match_pixels_except_the_original_swaps(data_zoo):
    """Filled vs hollow and close-up vs far-away pairs are checkable from pixel counts: the image with
    more foreground must carry the "Filled"/"Close up" label, except in the two swapped pairs."""
    root = data_zoo.data["mmvp"]
    df = pd.read_csv(root / "Questions.csv")
    swapped = {q for pair in MMVP_SWAPPED_QUESTIONS for q in pair}
    checked = {True: 0, False: 0}
    for start in range(0, 300, 2):
        options = re.findall(r"\(([ab])\) ([^(]+?)(?= \(|$)", df["Options"][start])
        labels = dict(options)
        if set(labels.values()) not in ({"Filled", "Hollow"}, {"Close up", "Far away"}):
            continue
        big = labels.keys() - {k for k, v in labels.items() if v in ("Hollow", "Far away")}
        pixels = [_foreground_pixels(root / "MMVP Images" / f"{start + k + 1}.jpg") for k in (0, 1)]
        more = 0 if pixels[0] > pixels[1] else 1
        label_says_more = [df["Correct Answer"][start + k].strip("()") in big for k in (0, 1)].index(True)
        is_swapped = start + 1 in swapped
        assert (label_says_more == more) != is_swapped, (
            start + 1,
            pixels,
            df["Correct Answer"][start : start + 2],
        )
        checked[is_swapped] += 1
    assert checked[True] == 2 and checked[False] > 10
    # as in the original release file
    assert [df["Correct Answer"][q - 1] for pair in MMVP_SWAPPED_QUESTIONS for q in pair] == [
        "(a)",
        "(b)",
    ] * 2


def test_cv_bench_parquet_loads_with_datasets(data_zoo):
    datasets = pytest.importorskip("datasets")
    root = data_zoo.data["cv_bench"]
    ds = datasets.load_dataset(
        "parquet", data_files={"test": [str(root / "test_2d.parquet"), str(root / "test_3d.parquet")]}
    )["test"]
    assert len(ds) == 48
    assert {"idx", "type", "task", "image", "question", "choices", "answer", "prompt", "source"} <= set(
        ds.column_names
    )
    row = ds[0]
    assert isinstance(row["image"], Image.Image)
    assert row["answer"] in {f"({c})" for c in "ABCD"}
    assert row["prompt"].startswith(row["question"]) and row["prompt"].endswith(row["choices"][-1])
    sources = pd.Series(ds["source"]).value_counts().to_dict()
    assert sources == {"COCO": 24, "Omni3D": 16, "ADE20K": 8}
    assert set(zip(ds["type"], ds["task"])) == {
        ("2D", "Count"),
        ("2D", "Relation"),
        ("3D", "Depth"),
        ("3D", "Distance"),
    }
    jsonl = [json.loads(line) for line in (root / "test_3d.jsonl").read_text().splitlines()]
    assert len(jsonl) == 16 and all((root / r["filename"]).is_file() for r in jsonl)


def test_zeroshot_and_vqa(data_zoo):
    datasets = pytest.importorskip("datasets")
    folders = sorted(p.name for p in data_zoo.data["zeroshot"].iterdir())
    assert folders == ["arrow", "circle", "square", "star", "triangle"]
    assert all(len(list((data_zoo.data["zeroshot"] / f).glob("*.jpg"))) == 6 for f in folders)
    gen = datasets.load_dataset("parquet", data_files={"test": str(data_zoo.data["vqa_gen"])})["test"]
    mc = datasets.load_dataset("parquet", data_files={"test": str(data_zoo.data["vqa_mc"])})["test"]
    assert len(gen) == 24 and len(mc) == 24
    assert isinstance(gen[0]["image"], Image.Image) and gen[0]["answer"] in gen[0]["answers"]
    assert all(len(o) == 2 for o in mc["options"]) and set(mc["answer"]) <= {"A", "B"}


def test_csv_files_parse_with_the_csv_module(data_zoo):
    with open(data_zoo.data["mmvp_vlm"] / "Questions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert all(len(r) == 3 for r in rows)
