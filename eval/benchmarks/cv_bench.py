"""CV-Bench: 2,638 vision-centric multiple-choice questions (2D Count/Relation on ADE20K and COCO,
3D Depth/Distance on Omni3D), answers like "(C)".

Data: a local copy of nyu-visionx/CV-Bench: `test_2d.parquet` + `test_3d.parquet` (the current
layout), or the older single `test.parquet`, or the repository's `test_2d.jsonl` + `test_3d.jsonl`
with the images under `img/`; each row has idx, type, task, image (HF Image struct of
bytes/path), question, choices, answer, prompt, source. The model sees each row's `prompt`
followed by "\n" + `PROMPT_SUFFIX` (LLaVA's letter instruction, which Cambrian-1's CV-Bench script
appends); `--prompt-suffix ""` sends the prompt alone.

Two parsers (named in metrics.json):
- `cambrian` (default, Cambrian-1's scorer, per source as its scripts do): lowercase, keep the text
  after the last "answer is"/"answer is:"/"answer:", strip spaces, a trailing `.` (Omni3D: `.:,`),
  a leading `(` and a trailing `)`, keep the first character; correct if it is the gold letter, or,
  on Omni3D only, equals the gold choice text (which matters for one-character choices).
- `lmms` (lmms-eval 0.7's cv_bench): a letter at the very start after optional `(`/spaces. It reads
  "The answer is (B)" as "T".

Scores: accuracy per task and per source; the official CV-Bench numbers 2D = mean(ADE20K, COCO),
3D = Omni3D, overall = mean(2D, 3D); and pooled accuracy over all questions (what lmms-eval
reports), which differs from the official one whenever sources are unbalanced.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from eval.benchmarks.base import GenerationBenchmark, field_resampling, register_benchmark
from eval.benchmarks.common import (
    DatasetLayoutError,
    mean,
    open_rgb,
    percent,
    problem_lists,
    read_jsonl,
    require_dir,
)

NAME = "cv_bench"
PARQUET_LAYOUTS = (("test_2d.parquet", "test_3d.parquet"), ("test.parquet",))
JSONL_LAYOUT = ("test_2d.jsonl", "test_3d.jsonl")
REQUIRED_COLUMNS = ("idx", "type", "task", "image", "question", "choices", "answer", "prompt", "source")
SOURCES_2D = ("ADE20K", "COCO")
SOURCE_3D = "Omni3D"
PARSERS = ("cambrian", "lmms")
LETTERS = "ABCDEFGH"
PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."
HEADLINE_SOURCES = {"2D_ADE20K": ("ADE20K",), "2D_COCO": ("COCO",), "3D": (SOURCE_3D,),
                    "overall": (*SOURCES_2D, SOURCE_3D)}  # the questions each headline metric scores


def build_prompt(row: dict, suffix: str = PROMPT_SUFFIX) -> str:
    return f"{row['prompt']}\n{suffix}" if suffix else row["prompt"]


def load(data_dir: Path | str) -> list[dict]:
    """Rows as dicts; `image` is the HF struct {bytes, path}, decoded by `row_image`. The parquet
    files are preferred; without them `test_2d.jsonl` + `test_3d.jsonl` with images under `img/`
    (their `filename`) are read. Raises naming the expected files."""
    import pyarrow.parquet as pq

    root = require_dir(NAME, Path(data_dir), "a local copy of nyu-visionx/CV-Bench")
    for layout in PARQUET_LAYOUTS:
        if all((root / name).is_file() for name in layout):
            rows = []
            for name in layout:
                table = pq.read_table(root / name)
                _check_columns(table.column_names, root / name)
                rows.extend(_checked_sources(table.to_pylist(), root / name))
            return rows
    if all((root / name).is_file() for name in JSONL_LAYOUT):
        rows = []
        for name in JSONL_LAYOUT:
            file_rows = read_jsonl(root / name, "CV-Bench questions")
            for row in file_rows:
                row["image"] = {"bytes": None, "path": str(root / row["filename"])}
                _check_columns(row, root / name)
            rows.extend(_checked_sources(file_rows, root / name))
        return rows
    expected = " or ".join(" + ".join(layout) for layout in (*PARQUET_LAYOUTS, JSONL_LAYOUT))
    raise DatasetLayoutError(
        NAME,
        expected,
        root,
        "download the dataset with `huggingface-cli download nyu-visionx/CV-Bench "
        "--repo-type dataset --local-dir DIR`",
    )


def _check_columns(columns, path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetLayoutError(NAME, f"columns {list(REQUIRED_COLUMNS)}", path, f"missing {missing}")


def _checked_sources(rows: list[dict], path: Path) -> list[dict]:
    """Every row's source has its Cambrian scoring rule: refused at load, not after generating the answers."""
    unknown = sorted({row["source"] for row in rows} - set(CAMBRIAN_RULES))
    if unknown:
        raise DatasetLayoutError(NAME, f"sources {sorted(CAMBRIAN_RULES)}", path, f"found {unknown}")
    return rows


def row_image(row: dict) -> Image.Image | None:
    """Decode the HF Image struct ({bytes, path}; a path is read when there are no bytes);
    None if it cannot be read."""
    image = row.get("image") or {}
    if image.get("bytes"):
        return open_rgb(image["bytes"])
    return open_rgb(image["path"]) if image.get("path") else None


# ---------------------------------------------------------------- parsers
# Cambrian-1 scores each source with its own script (cambrian-mllm/cambrian 539ffc3,
# eval/eval/{ade,coco,omni}/*_test.py, extract_mcq_answer and compute_metrics): ADE20K and COCO strip
# a trailing "." and accept the letter only; Omni3D strips ".:," and also accepts the gold choice's text.
CAMBRIAN_RULES = {"ADE20K": (".", False), "COCO": (".", False), SOURCE_3D: (".:,", True)}


def _cambrian_rule(source: str) -> tuple[str, bool]:
    try:
        return CAMBRIAN_RULES[source]
    except KeyError:
        raise ValueError(f"CV-Bench source {source!r} has no Cambrian scoring rule; known sources: "
                         f"{sorted(CAMBRIAN_RULES)}") from None


def parse_cambrian(text: str | None, source: str) -> str | None:
    """Cambrian-1's CV-Bench reading for `source`: the first character after the last
    'answer is'/'answer:'."""
    if text is None:
        return None
    strip, _ = _cambrian_rule(source)
    t = text.lower().strip()
    for keyword in ("answer is", "answer is:", "answer:"):
        if keyword in t:
            t = t.split(keyword)[-1]
    t = t.strip().rstrip(strip).lstrip("(").rstrip(")")
    return t[:1].upper() if t else None


def parse_lmms(text: str | None) -> str | None:
    """lmms-eval's CV-Bench reading: a letter at the very start (so 'The answer is (B)' -> 'T')."""
    if text is None:
        return None
    match = re.match(r"[\(\s]*([A-Z])[\)\.\s]*", text.strip(), flags=re.IGNORECASE)
    return match[1].upper() if match else None


def parse(text: str | None, parser: str, source: str) -> str | None:
    if parser == "cambrian":
        return parse_cambrian(text, source)
    if parser == "lmms":
        return parse_lmms(text)
    raise ValueError(f"unknown CV-Bench parser {parser!r}; known parsers: {PARSERS}")


def is_correct(parsed: str | None, gold: str, choices: list[str], parser: str, source: str) -> bool:
    if parsed is None:
        return False
    if parsed == gold:
        return True
    if parser != "cambrian" or not _cambrian_rule(source)[1]:
        return False
    # Omni3D also accepts the gold choice's text, compared as Cambrian does (its lowercased one-character
    # reading against the choice as written), so this only ever matches one-character choices
    gold_text = choices[LETTERS.index(gold)] if gold in LETTERS[: len(choices)] else None
    return gold_text is not None and parsed.lower() == str(gold_text)


def gold_letter(answer: str) -> str:
    letter = answer.strip().strip("()").upper()
    if len(letter) != 1 or letter not in LETTERS:
        raise ValueError(f"CV-Bench answer {answer!r} is not of the form '(C)'")
    return letter


# ---------------------------------------------------------------- pure scoring
def make_prediction(row: dict, prompt: str, raw: str | None, parser: str, missing_image: bool) -> dict:
    gold = gold_letter(row["answer"])
    parsed = parse(raw, parser, row["source"])
    return {
        "id": row["idx"],
        "prompt": prompt,
        "raw_answer": raw,
        "parsed": parsed,
        "gold": gold,
        "correct": is_correct(parsed, gold, list(row["choices"]), parser, row["source"]),
        "type": row["type"],
        "task": row["task"],
        "source": row["source"],
        "choices": list(row["choices"]),
        "missing_image": missing_image,
    }


def rejudge(prediction: dict, config: dict) -> dict:
    parser = config["parser"]
    parsed = parse(prediction["raw_answer"], parser, prediction["source"])
    return {
        **prediction,
        "parsed": parsed,
        "correct": is_correct(parsed, prediction["gold"], prediction["choices"], parser, prediction["source"]),
    }


def score(predictions: list[dict], config: dict) -> dict:
    def by(field: str) -> dict[str, float | None]:
        groups = sorted({p[field] for p in predictions})
        return {g: percent(p["correct"] for p in predictions if p[field] == g) for g in groups}

    sources = by("source")
    missing_sources = [s for s in (*SOURCES_2D, SOURCE_3D) if s not in sources]
    acc_2d = mean(sources.get(s) for s in SOURCES_2D)
    acc_3d = sources.get(SOURCE_3D)
    overall = mean([acc_2d, acc_3d])
    pooled = percent(p["correct"] for p in predictions)
    return {
        "benchmark": NAME,
        "config": config,
        "parser": config["parser"],
        "headline": {
            "2D_ADE20K": sources.get("ADE20K"),
            "2D_COCO": sources.get("COCO"),
            "3D": acc_3d,
            "overall": overall,
        },
        "official": {
            "2D": acc_2d,
            "3D": acc_3d,
            "overall": overall,
            "note": "2D = mean(ADE20K, COCO), 3D = Omni3D, overall = mean(2D, 3D)",
        },
        "pooled_accuracy": pooled,
        "per_source": sources,
        "per_task": by("task"),
        "per_type": by("type"),
        "missing_sources": missing_sources,
        "n_questions": len(predictions),
        **problem_lists(predictions),
    }


# ---------------------------------------------------------------- model
@register_benchmark
class CVBench(GenerationBenchmark):
    name = NAME
    help = "CV-Bench (2D/3D) with a LLaVA model"

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--parser",
            choices=PARSERS,
            default="cambrian",
            help="answer parser: cambrian (official scorer, default) or lmms "
            "(lmms-eval's start-of-text regex)",
        )
        parser.add_argument(
            "--prompt-suffix",
            default=None,
            help="text appended to each row's prompt after a newline (default: LLaVA's "
            '"Answer with the option\'s letter from the given choices directly.", as Cambrian-1 does; '
            '"" for the bare prompt)',
        )

    @staticmethod
    def suffix(args) -> str:
        return PROMPT_SUFFIX if args.prompt_suffix is None else args.prompt_suffix

    def load(self, args) -> list[dict]:
        if args.parser not in PARSERS:
            raise ValueError(f"unknown CV-Bench parser {args.parser!r}; known parsers: {PARSERS}")
        return load(args.data)

    def predict(self, args, rows: list[dict]) -> list[dict]:
        images = [row_image(r) for r in rows]
        texts = [build_prompt(r, self.suffix(args)) for r in rows]
        prompts, answers = self.answer(args, images, texts, desc="cv-bench")
        return [
            make_prediction(r, p, a, args.parser, missing_image=im is None)
            for r, p, a, im in zip(rows, prompts, answers, images)
        ]

    def options(self, args, rows: list[dict]) -> dict:
        return {"parser": args.parser, "prompt_suffix": self.suffix(args)}

    rejudge = staticmethod(rejudge)
    score = staticmethod(score)

    def resampling(self, config):
        return field_resampling(stratum="source")  # the official numbers are means of per-source accuracies

    def headline_n(self, metric, predictions, config) -> int:
        return sum(p["source"] in HEADLINE_SOURCES[metric] for p in predictions)
