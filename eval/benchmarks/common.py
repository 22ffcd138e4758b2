"""What every benchmark shares: the results files, image reading that never crashes a run,
layout errors that say which file was expected where, and accuracy arithmetic.

A results directory holds
- `predictions.jsonl`: one JSON line per sample with at least `id`, `prompt`, `raw_answer`,
  `parsed`, `gold`, `correct` (plus benchmark fields such as `category` or `source`);
- `metrics.json`: `benchmark`, `config` (model/tower spec, parser, options: everything that
  shaped the predictions), `headline` (the numbers `compare` tabulates, in percent), the full
  breakdown, and `missing_images` / `unparseable` (`count` + `ids`).

Metrics are a pure function of (predictions, config): `python -m eval rescore DIR` re-parses
the raw answers, rescores, and must reproduce metrics.json exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from PIL import Image

from llava_plugin.errors import BadFileError, GenfeedbackError, naming_disk_full, read_json, read_jsonl
from llava_plugin.images import ImageDecodeError, decode_rgb

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


class DatasetLayoutError(GenfeedbackError, FileNotFoundError):
    """The data directory is not in the benchmark's published layout."""

    def __init__(self, benchmark: str, expected: str, path: Path | str, hint: str = ""):
        message = f"{benchmark}: expected {expected} at {path}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


def require_file(benchmark: str, path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise DatasetLayoutError(benchmark, what, path, hint)
    return path


def require_dir(benchmark: str, path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(benchmark, what, path, hint)
    return path


def read_csv_rows(benchmark: str, csv_path: Path, header: list[str], n_rows: int | None, header_note: str = "",
                  rows_note: str = "") -> list[list[str]]:
    """The data rows of a benchmark CSV whose header and row count are fixed by the release
    (scoring is positional, so a different count is a layout error, not a smaller benchmark).
    `n_rows=None` accepts any count (a derived dataset whose scoring does not depend on it)."""
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != header:
        raise DatasetLayoutError(benchmark, f"the header row {','.join(header)}{header_note}", csv_path,
                                 f"found {rows[0] if rows else 'an empty file'}")
    if n_rows is not None and len(rows) - 1 != n_rows:
        raise DatasetLayoutError(benchmark, f"{n_rows} question rows{rows_note}", csv_path, f"found {len(rows) - 1}")
    return rows[1:]


def open_rgb(source: Path | str | bytes) -> Image.Image | None:
    """The image (a path or encoded bytes) as RGB, or None when it is missing, empty, truncated or
    not an image: the caller counts the sample as wrong and lists it, the run goes on."""
    try:
        return decode_rgb(source)
    except ImageDecodeError:
        return None


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def percent(flags: Iterable[bool]) -> float | None:
    """Accuracy in percent; None for an empty group (never a silent 0)."""
    flags = list(flags)
    return 100.0 * sum(bool(f) for f in flags) / len(flags) if flags else None


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values; None if any is None (a missing group must not vanish from an average)."""
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def problem_lists(predictions: list[dict]) -> dict:
    """`missing_images` and `unparseable` (ids in prediction order): both count as wrong."""
    missing = [p["id"] for p in predictions if p.get("missing_image")]
    unparseable = [p["id"] for p in predictions if not p.get("missing_image") and p["parsed"] is None]
    return {
        "missing_images": {"count": len(missing), "ids": missing},
        "unparseable": {"count": len(unparseable), "ids": unparseable},
    }


def write_results(out_dir: Path | str, predictions: list[dict], metrics: dict) -> Path:
    """predictions.jsonl, then metrics.json, each written whole or not at all (temp file, then rename),
    so a kill or a full disk never leaves metrics beside predictions they were not computed from."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {PREDICTIONS_FILE: "".join(json.dumps(p) + "\n" for p in predictions),
             METRICS_FILE: json.dumps(metrics, indent=2) + "\n"}
    (out / METRICS_FILE).unlink(missing_ok=True)  # stale metrics never sit beside new predictions
    for name, text in texts.items():
        tmp = out / f".incomplete-{name}"
        with naming_disk_full(out, len(text.encode()), cleanup=[tmp]):
            tmp.write_text(text)
        os.replace(tmp, out / name)
    return out


RERUN = "rerun the benchmark into that directory"


def read_predictions(results_dir: Path | str) -> list[dict]:
    path = Path(results_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise BadFileError(f"no {PREDICTIONS_FILE} in {results_dir}: is it a results directory of `python -m eval`?")
    return read_jsonl(path, "predictions", RERUN)


def read_metrics(results_dir: Path | str) -> dict:
    path = Path(results_dir) / METRICS_FILE
    if not path.is_file():
        raise BadFileError(f"no {METRICS_FILE} in {results_dir}: is it a results directory of `python -m eval`?")
    metrics = read_json(path, "metrics", RERUN)
    if not isinstance(metrics, dict):
        raise BadFileError(f"metrics {path} is not a JSON object; {RERUN}")
    return metrics
