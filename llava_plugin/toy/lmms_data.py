"""The tiny zoo's data for local lmms-eval tasks (eval/tasks/shapes): short-answer VQA and two-way
multiple choice as parquet files with the HF Image feature (keys: llava_plugin/toy/data.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

from llava_plugin.toy.files import HF_IMAGE_TYPE, hf_image, scene_size, write_hf_parquet
from llava_plugin.toy.scenes import PATTERNS, draw_pair, draw_scene, questions_about


def write_vqa(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "vqa"
    gen, mc = [], []
    for i in range(24):
        scene = draw_scene(rng, scene_size(rng))
        qa = rng.choice(questions_about(scene, rng))
        gen.append(
            {
                "question_id": f"gen_{i:03d}",
                "image": hf_image(scene.image, f"gen_{i:03d}.png"),
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
                "image": hf_image(pair.scenes[which].image, f"mc_{i:03d}.png"),
                "question": pair.question,
                "options": options,
                "answer": answer,
                "category": pair.pattern,
            }
        )
    string = {"dtype": "string", "_type": "Value"}
    strings = {"feature": string, "_type": "Sequence"}
    write_hf_parquet(
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
            "image": HF_IMAGE_TYPE,
            "question": pa.string(),
            "answer": pa.string(),
            "answers": pa.list_(pa.string()),
            "category": pa.string(),
        },
    )
    write_hf_parquet(
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
            "image": HF_IMAGE_TYPE,
            "question": pa.string(),
            "options": pa.list_(pa.string()),
            "answer": pa.string(),
            "category": pa.string(),
        },
    )
    # vqa_root: what `eval vqa --data-root` takes (the task configs' files are relative to it)
    return {"vqa": out, "vqa_root": root, "vqa_gen": out / "shapes_vqa.parquet", "vqa_mc": out / "shapes_mc.parquet"}
