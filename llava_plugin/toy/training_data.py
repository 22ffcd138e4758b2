"""Training data of the tiny zoo (layouts and keys: llava_plugin/toy/data.py): a caption image
folder (and a corrupt copy), CC3M-style webdataset shards, and LLaVA's LCS-558K pretraining and
mix665k instruction-tuning JSONs with their image folders."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

from PIL import Image

from llava_plugin.toy.files import jpeg_bytes, save_jpeg, scene_size, write_json, write_jsonl
from llava_plugin.toy.scenes import COLORS, NUMBER_WORDS, POSITIONS, draw_scene, questions_about

PRETRAIN_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short and clear explanation of the subsequent image.",
    "Write a terse but informative summary of the picture.",
    "Render a clear and concise summary of the photo.",
    "Share a concise interpretation of the image provided.",
)
SHORT_ANSWER = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- caption image folder
def write_scenes(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "scenes"
    rows = []
    for i in range(64):
        scene = draw_scene(rng, scene_size(rng))
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
            save_jpeg(image, out / name)
        rows.append({"image": name, "caption": scene.caption})
    write_jsonl(out / "captions.jsonl", rows)

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
    write_jsonl(corrupt / "captions.jsonl", rows + bad)
    return {"scenes": out, "scenes_corrupt": corrupt}


# ---------------------------------------------------------------- webdataset shards
def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def write_wds(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "wds"
    out.mkdir(parents=True)
    shards, per_shard = 2, 32
    for shard in range(shards):
        with tarfile.open(out / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                scene = draw_scene(rng, scene_size(rng))
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
                _add_member(tar, f"{key}.jpg", jpeg_bytes(scene.image))
                _add_member(tar, f"{key}.txt", scene.caption.encode())
                _add_member(tar, f"{key}.json", json.dumps(meta).encode())
    return {"wds": out, "wds_pattern": out / f"{{00000..{shards - 1:05d}}}.tar"}


# ---------------------------------------------------------------- LLaVA pretrain / finetune
def write_llava_pretrain(root: Path, rng: random.Random) -> dict[str, Path]:
    out = root / "llava_pretrain"
    records = []
    for i in range(48):
        scene = draw_scene(rng, scene_size(rng))
        sample_id = f"{i * 7 + 3:09d}"
        image = f"{sample_id[:5]}/{sample_id}.jpg"
        save_jpeg(scene.image, out / "images" / image)
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
    write_json(path, records)
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


def write_llava_finetune(root: Path, rng: random.Random) -> dict[str, Path]:
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
        scene = draw_scene(rng, scene_size(rng))
        image = f"coco/train2017/{i:012d}.jpg"
        save_jpeg(scene.image, folder / image)
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
    write_json(path, records)
    return {"llava_finetune": path, "llava_image_folder": folder}
