"""Writing the tiny zoo's data files byte-identically for a seed: JPEG/PNG at fixed settings, JSON,
JSONL, and parquet files with HF `datasets` feature metadata (the Image feature as `datasets` stores it)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

JPEG_QUALITY = 90


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=JPEG_QUALITY)


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def scene_size(rng: random.Random) -> tuple[int, int]:
    """Mostly landscape, sometimes portrait: never square, so pad-to-square is exercised."""
    return (64, 48) if rng.random() < 0.75 else (48, 64)


# HF `datasets` stores an Image feature as struct<bytes: binary, path: string> and records the
# feature types in the parquet schema metadata under b"huggingface".
HF_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_hf_parquet(path: Path, rows: list[dict], features: dict[str, dict], arrow_types: dict) -> None:
    columns = {name: pa.array([r[name] for r in rows], type=arrow_types[name]) for name in arrow_types}
    table = pa.table(columns)
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = table.replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def hf_image(image: Image.Image, name: str) -> dict:
    return {"bytes": png_bytes(image), "path": name}
