"""GQA from a local copy of lmms-lab/GQA: its questions (testdev_balanced_instructions) name an
`imageId` in a separate image table (testdev_balanced_images), which lmms-eval's own gqa task
downloads from the hub at run time. Here the table comes from the local parquet files whose
glob `python -m eval vqa` passes in the environment variable below."""

from __future__ import annotations

import glob
import os

IMAGES_ENV = "GENFEEDBACK_GQA_IMAGES"


def attach_local_images(dataset):
    """The questions with an `image` column looked up by `imageId` in the local image table."""
    import datasets

    pattern = os.environ.get(IMAGES_ENV)
    if not pattern:
        raise RuntimeError(
            f"gqa_local: set {IMAGES_ENV} to the glob of the testdev_balanced_images parquet files "
            "(python -m eval vqa sets it from --data-root)"
        )
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"gqa_local: no files match {IMAGES_ENV}={pattern}")
    table = datasets.load_dataset("parquet", data_files={"images": files}, split="images")
    row_of = {image_id: i for i, image_id in enumerate(table["id"])}
    missing = sorted(set(dataset["imageId"]) - row_of.keys())
    if missing:
        raise KeyError(f"gqa_local: {len(missing)} imageIds have no row in {pattern}, e.g. {missing[:5]}")
    return dataset.map(lambda doc: {"image": table[row_of[doc["imageId"]]]["image"].convert("RGB")})
