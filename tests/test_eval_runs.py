"""The benchmarks end to end through the CLI on the tiny zoo: the official MMVP-VLM rule checked
against an independent literal re-implementation, broken images counted instead of crashing,
LLaVA generation batched like one-by-one, and every run rescored exactly from its predictions."""

import csv
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from eval import mllm
from eval.__main__ import main
from eval.benchmarks import mmvp_vlm


def _run(argv):
    assert main([str(a) for a in argv]) == 0


def _predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _reference_mmvp_vlm(model_dir, benchmark_dir):
    """A literal reading of the official script's loop (pairs of CSV rows, first row's Type folder,
    logits_per_text softmax over the two images, parity ground truth, categories by position),
    using the HF CLIPModel forward instead of our tower code."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    image_dir = os.path.join(benchmark_dir, "MLLM_VLM Images")
    hits = {c: 0 for c in mmvp_vlm.CATEGORIES}
    scores, num_pairs = {}, 0
    with open(os.path.join(benchmark_dir, "Questions.csv")) as f:
        reader = csv.reader(f)
        next(reader)
        for qid1, qtype1, statement1 in reader:
            qid2, _, statement2 = next(reader)
            images = [Image.open(os.path.join(image_dir, qtype1, f"{q}.jpg")) for q in (qid1, qid2)]
            texts = ["a photo of " + statement1, "a photo of " + statement2]
            inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
            with torch.no_grad():
                probs = model(**inputs).logits_per_text.softmax(
                    dim=-1
                )  # row k: statement k over the 2 images
            preds = []
            for k, qid in enumerate((int(qid1), int(qid2))):
                scores[qid] = float(probs[k, 0])
                pred = "img1" if probs[k, 0] > 0.5 else "img2"
                preds.append(pred == ("img1" if qid % 2 == 1 else "img2"))
            hits[mmvp_vlm.CATEGORIES[num_pairs // 15]] += all(preds)
            num_pairs += 1
    return {c: 100.0 * h / (num_pairs // 9) for c, h in hits.items()}, scores


def test_mmvp_vlm_matches_the_official_rule(zoo, tmp_path):
    out = tmp_path / "mmvp_vlm"
    _run(
        [
            "mmvp-vlm",
            "--vision-tower",
            zoo.clip,
            "--data",
            zoo.data["mmvp_vlm"],
            "--output",
            out,
            "--batch-size",
            64,
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = _predictions(out)
    assert len(predictions) == 270 and metrics["n_pairs"] == 135
    categories, scores = _reference_mmvp_vlm(zoo.clip, zoo.data["mmvp_vlm"])
    for p in predictions:
        assert p["raw_answer"] == pytest.approx(scores[p["id"]], abs=1e-4)
    assert metrics["categories"] == pytest.approx(categories)
    assert metrics["average"] == pytest.approx(sum(categories.values()) / 9)
    assert main(["rescore", str(out)]) == 0


def test_mmvp_vlm_counts_broken_images_as_wrong(zoo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(zoo.data["mmvp_vlm"], data)
    (data / "MLLM_VLM Images" / "Orientation" / "1.jpg").unlink()
    broken = data / "MLLM_VLM Images" / "Color" / "152.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    out = tmp_path / "out"
    _run(["mmvp-vlm", "--vision-tower", zoo.clip, "--data", data, "--output", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing_images"] == {"count": 4, "ids": [1, 2, 151, 152]}
    missing = [p for p in _predictions(out) if p["missing_image"]]
    assert all(not p["correct"] and p["raw_answer"] is None for p in missing)


@pytest.mark.parametrize("tower", ["clip", "siglip", "open_clip"])
def test_zeroshot_runs_for_every_tower_family(zoo, tmp_path, tower):
    out = tmp_path / "zeroshot"
    _run(["zeroshot", "--vision-tower", getattr(zoo, tower), "--data", zoo.data["zeroshot"], "--output", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 30 and 0.0 <= metrics["top1"] <= 100.0
    assert metrics["config"]["classes"] == ["arrow", "circle", "square", "star", "triangle"]
    assert main(["rescore", str(out)]) == 0


def test_batched_generation_matches_one_by_one(zoo):
    model, processor = mllm.load_mllm(str(zoo.llava))
    images = [Image.open(zoo.data["mmvp"] / "MMVP Images" / f"{n}.jpg").convert("RGB") for n in (1, 2, 3)]
    images.insert(1, None)  # a missing image is skipped, not answered blind
    prompts = [
        mllm.format_prompt(q)
        for q in (
            "What is this?",
            "Is it red?",
            "Which way does it point?",
            "How many shapes are there in the picture?",
        )
    ]
    one = mllm.generate(model, processor, images, prompts, batch_size=1, max_new_tokens=6)
    four = mllm.generate(model, processor, images, prompts, batch_size=4, max_new_tokens=6)
    assert one == four and one[1] is None and all(isinstance(a, str) for a in one[:1] + one[2:])


def test_mmvp_and_cv_bench_with_tiny_llava(zoo, tmp_path):
    out = tmp_path / "mmvp"
    _run(
        [
            "mmvp",
            "--model",
            zoo.llava,
            "--data",
            zoo.data["mmvp"],
            "--output",
            out,
            "--batch-size",
            32,
            "--max-new-tokens",
            4,
            "--prompt-style",
            "original",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = _predictions(out)
    assert len(predictions) == 300 and metrics["n_pairs"] == 150
    assert metrics["config"]["fix_label_swap"] is True and metrics["config"]["prompt_style"] == "original"
    with open(zoo.data["mmvp"] / "Questions.csv", newline="") as f:
        first = next(iter(csv.DictReader(f)))
    assert predictions[0]["prompt"] == mllm.format_prompt(f"{first['Question']} {first['Options']}")
    assert metrics["unparseable"]["count"] == sum(p["parsed"] is None for p in predictions)
    assert main(["rescore", str(out)]) == 0

    out = tmp_path / "cv_bench"
    _run(
        [
            "cv-bench",
            "--model",
            zoo.llava,
            "--data",
            zoo.data["cv_bench"],
            "--output",
            out,
            "--batch-size",
            16,
            "--max-new-tokens",
            4,
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_questions"] == 48 and metrics["parser"] == "cambrian"
    assert set(metrics["per_source"]) == {"ADE20K", "COCO", "Omni3D"}
    assert set(metrics["per_task"]) == {"Count", "Relation", "Depth", "Distance"}
    assert main(["rescore", str(out)]) == 0


def test_wrong_layout_is_a_clear_cli_error(zoo, tmp_path, capsys):
    assert (
        main(
            ["cv-bench", "--model", str(zoo.llava), "--data", str(tmp_path), "--output", str(tmp_path / "o")]
        )
        == 2
    )
    assert "test_2d.parquet" in capsys.readouterr().err
    assert (
        main(
            [
                "mmvp-vlm",
                "--vision-tower",
                str(zoo.clip),
                "--data",
                str(zoo.data["mmvp"]),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "MLLM_VLM Images" in capsys.readouterr().err


def test_eval_prompt_matches_the_checkpoint_chat_template(zoo):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(zoo.llava)
    for question in ("What is it?", "Which way is the arrow pointing?\nA. Up\nB. Down"):
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        assert processor.apply_chat_template(message, add_generation_prompt=True) == mllm.format_prompt(
            question
        )


def test_original_llava_checkpoint_runs(zoo, tmp_path):
    out = tmp_path / "cv_bench"
    _run(
        [
            "cv-bench",
            "--model",
            zoo.llava_original,
            "--vision-tower",
            zoo.clip,
            "--data",
            zoo.data["cv_bench"],
            "--output",
            out,
            "--batch-size",
            16,
            "--max-new-tokens",
            2,
            "--parser",
            "lmms",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["vision_tower"] == str(zoo.clip) and metrics["parser"] == "lmms"
    assert main(["rescore", str(out)]) == 0


def test_unknown_tower_spec_is_a_clear_cli_error(zoo, tmp_path, capsys):
    argv = [
        "zeroshot",
        "--vision-tower",
        str(tmp_path / "no_such_tower"),
        "--data",
        str(zoo.data["zeroshot"]),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "no_such_tower" in capsys.readouterr().err
