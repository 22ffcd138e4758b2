"""MMVP (MLLM): 150 pairs / 300 two-option questions on "CLIP-blind" image pairs.

Data (the official release, MMVP/MMVP): `Questions.csv` with header
`lndex,Question,Options,Correct Answer` (the typo is in the release), options written
`(a) X (b) Y`, answers `(a)`/`(b)`, and `MMVP Images/<lndex>.jpg`. Questions 2k-1 and 2k form
pair k; pair accuracy (both right) is the headline, question accuracy is reported too.

Prompt styles (`--prompt-style`):
- `llava` (default): LLaVA-1.5's multiple-choice format, `{question}\\nA. X\\nB. Y\\nAnswer with the
  option's letter from the given choices directly.`: short answers a deterministic matcher can read.
- `original`: the MMVP script's `{question} {options}` (e.g. `... (a) Yes (b) No`): draws long free
  text, which the original graded with GPT-4.

Answer matching is deterministic and strict (see `parse_answer`): a bare letter, `(a)`, `A.`,
"the answer is B", or the option text itself. Free text is never searched for a stray letter,
unlike lmms-eval's loose search, which reads "It has a long tail" as A.

Label swap: the original release has the labels of questions 99/100 and 279/280 swapped
(the images show the opposite; lmms-eval issue 1018, fixed in lmms-lab-eval/MMVP). We fix them by
default (`--fix-label-swap`), because scoring against labels known to be wrong measures nothing;
`--no-fix-label-swap` reproduces numbers graded on the original file. The fix checks that the
file still carries the original labels and refuses a file that is already corrected.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from eval.benchmarks.base import GenerationBenchmark, field_resampling, register_benchmark
from eval.benchmarks.common import (
    DatasetLayoutError,
    open_rgb,
    percent,
    problem_lists,
    read_csv_rows,
    require_dir,
    require_file,
)

NAME = "mmvp"
HEADER = ["lndex", "Question", "Options", "Correct Answer"]
IMAGES_DIR = "MMVP Images"
QUESTIONS = 300
SWAPPED_PAIRS = ((99, 100), (279, 280))  # 1-based lndex
ORIGINAL_SWAPPED_LABELS = ("(a)", "(b)")  # what the original release says for each swapped pair
PROMPT_STYLES = ("llava", "original")
LLAVA_SUFFIX = "Answer with the option's letter from the given choices directly."
PARSER = "strict"  # the only MMVP matcher; named in metrics
_OPTIONS = re.compile(r"^\s*\(a\)\s*(?P<a>.+?)\s*\(b\)\s*(?P<b>.+?)\s*$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Question:
    index: int  # the lndex column, 1-based
    question: str
    options_text: str  # as in the file: "(a) X (b) Y"
    options: tuple[str, str]
    gold: str  # "A" or "B" (after the optional label fix)
    image: Path

    @property
    def pair(self) -> int:
        return (self.index - 1) // 2


def parse_options(text: str) -> tuple[str, str]:
    match = _OPTIONS.match(text)
    if not match:
        raise ValueError(f"options {text!r} are not in the form '(a) X (b) Y'")
    return match["a"], match["b"]


def load(data_dir: Path | str, fix_label_swap: bool = True) -> list[Question]:
    root = Path(data_dir)
    csv_path = require_file(
        NAME,
        root / "Questions.csv",
        "the MMVP question file Questions.csv",
        "Download the MMVP/MMVP dataset and pass its root directory as --data",
    )
    images = require_dir(NAME, root / IMAGES_DIR, f"the image folder '{IMAGES_DIR}' with 1.jpg ... 300.jpg")
    body = read_csv_rows(NAME, csv_path, HEADER, QUESTIONS, header_note=" (with the release's 'lndex' typo)")
    labels = {}
    questions = []
    for line, row in enumerate(body, start=2):
        if len(row) != 4:
            raise DatasetLayoutError(
                NAME, "4 columns per row", csv_path, f"line {line} has {len(row)}: {row}"
            )
        index, question, options_text, answer = int(row[0]), row[1].strip(), row[2], row[3].strip()
        if index != line - 1:
            raise DatasetLayoutError(
                NAME, f"lndex {line - 1} on line {line} (rows in order)", csv_path, f"found {index}"
            )
        try:
            options = parse_options(options_text)
        except ValueError as err:
            raise DatasetLayoutError(NAME, "options '(a) X (b) Y'", csv_path, f"line {line}: {err}") from err
        if answer.lower() not in ("(a)", "(b)"):
            raise DatasetLayoutError(NAME, "answers '(a)' or '(b)'", csv_path, f"line {line}: {answer!r}")
        labels[index] = answer.lower()
        questions.append(
            Question(
                index,
                question,
                options_text,
                options,
                "A" if answer.lower() == "(a)" else "B",
                images / f"{index}.jpg",
            )
        )
    if fix_label_swap:
        questions = _fix_label_swap(questions, labels, csv_path)
    return questions


def _fix_label_swap(questions: list[Question], labels: dict[int, str], csv_path: Path) -> list[Question]:
    for pair in SWAPPED_PAIRS:
        found = tuple(labels[i] for i in pair)
        if found != ORIGINAL_SWAPPED_LABELS:
            raise DatasetLayoutError(
                NAME,
                f"the original release's labels {ORIGINAL_SWAPPED_LABELS} for questions {pair}",
                csv_path,
                f"found {found}: this file looks already corrected; pass --no-fix-label-swap",
            )
    swapped = {i for pair in SWAPPED_PAIRS for i in pair}
    flip = {"A": "B", "B": "A"}
    return [
        Question(q.index, q.question, q.options_text, q.options, flip[q.gold], q.image)
        if q.index in swapped
        else q
        for q in questions
    ]


# ---------------------------------------------------------------- prompts and answers
def build_prompt(q: Question, style: str) -> str:
    """The question text sent to the model (the chat template is applied by eval.mllm)."""
    if style == "llava":
        return f"{q.question}\nA. {q.options[0]}\nB. {q.options[1]}\n{LLAVA_SUFFIX}"
    if style == "original":
        return f"{q.question} {q.options_text}"
    raise ValueError(f"unknown MMVP prompt style {style!r}; known styles: {PROMPT_STYLES}")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def parse_answer(text: str | None, options: tuple[str, str]) -> str | None:
    """'A'/'B' or None. Accepted, in order: the whole answer is a letter (`B`, `(b)`, `b.`); it starts
    with a marked letter (`(a) ...`, `A. ...`, `B) ...`, `A: ...`); it states "answer is B" /
    "answer: (b)"; it is, or starts with, exactly one option's text. Anything else is unparseable."""
    if text is None:
        return None
    t = text.strip()
    whole = re.fullmatch(r"\(?([ab])\)?[.:]?", t, re.IGNORECASE)
    if whole:
        return whole[1].upper()
    marked = re.match(r"\(([ab])\)|([ab])[.):](?:\s|$)", t, re.IGNORECASE)
    if marked:
        return (marked[1] or marked[2]).upper()
    stated = re.search(r"answer\s*(?:is|:)\s*:?\s*\(?([ab])\)?(?![a-z])", t, re.IGNORECASE)
    if stated:
        return stated[1].upper()
    said = _norm(t)
    hits = [
        letter
        for letter, option in zip("AB", options)
        if _norm(option) and (said == _norm(option) or said.startswith(_norm(option) + " "))
    ]
    return hits[0] if len(hits) == 1 else None


# ---------------------------------------------------------------- pure scoring
def make_prediction(q: Question, prompt: str, raw: str | None, missing_image: bool) -> dict:
    parsed = parse_answer(raw, q.options)
    return {
        "id": q.index,
        "prompt": prompt,
        "raw_answer": raw,
        "parsed": parsed,
        "gold": q.gold,
        "correct": parsed == q.gold,
        "pair": q.pair,
        "question": q.question,
        "options": list(q.options),
        "missing_image": missing_image,
    }


def rejudge(prediction: dict, config: dict) -> dict:
    parsed = parse_answer(prediction["raw_answer"], tuple(prediction["options"]))
    return {**prediction, "parsed": parsed, "correct": parsed == prediction["gold"]}


def score(predictions: list[dict], config: dict) -> dict:
    pairs: dict[int, list[bool]] = {}
    for p in predictions:
        pairs.setdefault(p["pair"], []).append(p["correct"])
    incomplete = sorted(i for i, members in pairs.items() if len(members) != 2)
    if incomplete:
        raise ValueError(
            f"MMVP pairs {incomplete[:10]} do not have exactly 2 questions; pair accuracy needs both"
        )
    pair_accuracy = percent(all(members) for members in pairs.values())
    question_accuracy = percent(p["correct"] for p in predictions)
    return {
        "benchmark": NAME,
        "config": config,
        "headline": {"pair_accuracy": pair_accuracy, "question_accuracy": question_accuracy},
        "pair_accuracy": pair_accuracy,
        "question_accuracy": question_accuracy,
        "n_pairs": len(pairs),
        "n_questions": len(predictions),
        **problem_lists(predictions),
    }


# ---------------------------------------------------------------- model
@register_benchmark
class MMVP(GenerationBenchmark):
    name = NAME
    help = "MMVP (150 pairs / 300 questions) with a LLaVA model"

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--prompt-style",
            choices=PROMPT_STYLES,
            default="llava",
            help="llava: '{q}\\nA. ..\\nB. ..\\nAnswer with the option's letter...' (default); "
            "original: the MMVP script's '{q} (a) .. (b) ..'",
        )
        parser.add_argument(
            "--fix-label-swap",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="correct the swapped labels of questions 99/100 and 279/280 of the original release "
            "(default: on; use --no-fix-label-swap for an already corrected file or to reproduce "
            "numbers graded on the original labels)",
        )

    def load(self, args) -> list[Question]:
        if args.prompt_style not in PROMPT_STYLES:
            style = args.prompt_style
            raise ValueError(f"unknown MMVP prompt style {style!r}; known styles: {PROMPT_STYLES}")
        return load(args.data, fix_label_swap=args.fix_label_swap)

    def predict(self, args, questions: list[Question]) -> list[dict]:
        images = [open_rgb(q.image) for q in questions]
        texts = [build_prompt(q, args.prompt_style) for q in questions]
        prompts, answers = self.answer(args, images, texts, desc="mmvp")
        return [
            make_prediction(q, p, a, missing_image=im is None)
            for q, p, a, im in zip(questions, prompts, answers, images)
        ]

    def options(self, args, questions: list[Question]) -> dict:
        return {"prompt_style": args.prompt_style, "fix_label_swap": args.fix_label_swap, "parser": PARSER}

    rejudge = staticmethod(rejudge)
    score = staticmethod(score)

    def resampling(self, config):
        # the pair is the unit for both headlines: pair accuracy needs both questions, and the two
        # questions of a pair (one image pair) are not independent samples for question accuracy
        return field_resampling("pair")

    def headline_n(self, metric, predictions, config) -> int:
        return len(predictions) if metric == "question_accuracy" else len({p["pair"] for p in predictions})
