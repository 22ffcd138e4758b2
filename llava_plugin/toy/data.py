"""Synthetic datasets for the tiny zoo, each written in the on-disk layout of the real
dataset it stands in for, so the real readers run on them unchanged. Everything lives
under `zoo.root / "data"`; `write_data` fills these `zoo.data` keys (writers in training_data.py:
scenes to llava_finetune; benchmark_data.py: mmvp_vlm to zeroshot; lmms_data.py: vqa; shared
file helpers in files.py):

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
  `vqa_gen` and `vqa_mc` are the two file paths, `vqa_root` the `eval vqa --data-root` they are under.

Same seed -> byte-identical files (fixed tar metadata, fixed JPEG settings).
"""

from __future__ import annotations

import random
import shutil

from llava_plugin.toy.benchmark_data import write_cv_bench, write_mmvp, write_mmvp_vlm, write_zeroshot
from llava_plugin.toy.lmms_data import write_vqa
from llava_plugin.toy.training_data import write_llava_finetune, write_llava_pretrain, write_scenes, write_wds


def write_data(zoo, seed: int) -> None:
    root = zoo.root / "data"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    writers = (
        write_scenes,
        write_wds,
        write_llava_pretrain,
        write_llava_finetune,
        write_mmvp_vlm,
        write_mmvp,
        write_cv_bench,
        write_zeroshot,
        write_vqa,
    )
    for offset, writer in enumerate(writers):
        # one independent stream per dataset, so adding a dataset never changes the others
        zoo.data.update(writer(root, random.Random(seed * 1000 + offset)))
