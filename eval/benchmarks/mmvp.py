"""MMVP (MLLM): 150 pairs / 300 two-option questions on "CLIP-blind" image pairs.

Data (the official release, MMVP/MMVP): `Questions.csv` with header
`lndex,Question,Options,Correct Answer` (the typo is in the release), options written
`(a) X (b) Y`, answers `(a)`/`(b)`, and `MMVP Images/<lndex>.jpg`. Questions 2k-1 and 2k form
pair k; pair accuracy (both right) is the headline, question accuracy is reported too.

Prompt styles (`--prompt-style`):
- `llava` (default): LLaVA-1.5's multiple-choice format, `{question}\\nA. X\\nB. Y\\nAnswer with the
  option's letter from the given choices directly.`: short answers a deterministic matcher can read.
  It is also lmms-eval's MMVP prompt, character for character.
- `original`: the MMVP script's `{question} {options}` (e.g. `... (a) Yes (b) No`): draws long free
  text, which the original graded with GPT-4.

Parsers (`--parser`, named in metrics.json's config; `python -m eval rescore DIR --parser X` re-reads
saved answers). The original MMVP grades with a GPT-4 judge, which none of them is:
- `strict` (default, ours, `parse_answer`): a bare letter, `(a)`, `A.`, "the answer is B", or the
  option text itself. Free text is never searched for a stray letter.
- `lmms` (lmms-eval 0.7.2's mmvp task): the first of: the whole answer is a letter (`b`, `(B)`,
  `A.`); a letter at the start followed by `.` or a space (`(b) No`, "A dog ..." -> A); "answer is
  B"; "option B"; anywhere, an a/b followed by a space or the end, even inside a word ("It has a
  long tail" -> A, "The tab is open" -> B); the first character if it is a/b ("Above" -> A). Case
  is ignored; the option text is never matched.
- `cambrian` (Cambrian-1's mmvp_test.py): lowercase, keep what follows the last "answer is" (then
  "answer is:", then "answer:"), strip spaces, trailing `.:,`, a leading `(` and trailing `)`; the
  rest must be exactly the gold letter or exactly the gold option's text: "(b)", "B." and "No." are
  read, "(b) No", "B. No" and "The answer is: B" (the colon survives) are not.

Differences from upstream, all in the aggregation, none in the per-answer rule: both upstreams report
fractions of 1 where we report percent; lmms-eval leaves an incomplete pair out of pair accuracy, and
Cambrian's script reports as "accuracy" the pair accuracy counted by the order of its answer file,
where `score` refuses an incomplete pair (pairs come from `lndex`, not file order). Cambrian's letter
and text checks are gold-dependent; `parsed` records the letter they read (the letter first, then
option A's text, then B's), and `correct` applies Cambrian's rule itself, so the two can only
disagree on an option whose text is a single letter. Upstream's protocols around the parser, which
metrics.json records for ours: lmms-eval uses the corrected labels (our default `--fix-label-swap`),
the llava prompt, greedy decoding with max_new_tokens 16; Cambrian-1 grades the original labels
(`--no-fix-label-swap`), with its own prompt `{question} Options:\\nA. X\\nB. Y\\n` + LLaVA's letter
instruction (neither of our styles), vicuna_v1, temperature 0, max_new_tokens 512.

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
from llava_plugin.errors import GenfeedbackError

NAME = "mmvp"
HEADER = ["lndex", "Question", "Options", "Correct Answer"]
IMAGES_DIR = "MMVP Images"
QUESTIONS = 300
SWAPPED_PAIRS = ((99, 100), (279, 280))  # 1-based lndex
ORIGINAL_SWAPPED_LABELS = ("(a)", "(b)")  # what the original release says for each swapped pair
PROMPT_STYLES = ("llava", "original")
LLAVA_SUFFIX = "Answer with the option's letter from the given choices directly."
PARSERS = ("strict", "lmms", "cambrian")
DEFAULT_PARSER = "strict"
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


class UnknownParserError(GenfeedbackError, ValueError):
    """A parser name MMVP does not know (a flag or `rescore --parser` value the user can fix)."""


def check_parser(parser: str) -> str:
    if parser not in PARSERS:
        raise UnknownParserError(f"unknown MMVP parser {parser!r}; known parsers: {', '.join(PARSERS)}")
    return parser


# lmms-eval v0.7.2 (cb45ac4d4a667ea5ef89c7a148bff69b3489b981; the mmvp task is unchanged from v0.7 to
# 75571cfe) lmms_eval/tasks/mmvp/utils.py:32-67 (_extract_answer_letter), read from its behaviour:
# on the stripped answer, case ignored, the first rule that finds a letter wins; none -> "" (never right).
_LMMS_RULES = (  # utils.py:50-61
    re.compile(r"\(?([ab])\)?\.?", re.IGNORECASE).fullmatch,  # only a letter: b, (B), A.
    re.compile(r"\(?([ab])\)?[.\s]", re.IGNORECASE).match,  # opens the answer: "(b) No", "A dog"
    re.compile(r"answer\s+is\s+\(?([ab])", re.IGNORECASE).search,  # "... answer is (B)"
    re.compile(r"option\s+\(?([ab])", re.IGNORECASE).search,  # "Option B"
    # the first a/b (optionally with ")") before a space or the end, inside a word too: "a long", "tab is"
    re.compile(r"([ab])\)?(?:\s|$)", re.IGNORECASE).search,
)


def parse_lmms(text: str | None) -> str | None:
    """lmms-eval's MMVP reading: 'A'/'B' or None (its "")."""
    if text is None:
        return None
    t = text.strip()
    for find in _LMMS_RULES:
        hit = find(t)
        if hit:
            return hit[1].upper()
    # utils.py:63-65: at last, the first character if it is a letter a/b ("Above" -> A)
    return t[0].upper() if t[:1].lower() in ("a", "b") else None


# Cambrian-1 (cambrian-mllm/cambrian 539ffc3254bba004e5d012b65c0ad6cb308897c5)
# eval/eval/mmvp/mmvp_test.py:22-30 (extract_mcq_answer), re-implemented: lowercase and strip; for
# "answer is", "answer is:", "answer:" in that order, when present keep what follows its last
# occurrence; strip, drop trailing ".:,", leading "(" and trailing ")"; the remaining text is compared whole.
_CAMBRIAN_KEYWORDS = ("answer is", "answer is:", "answer:")


def cambrian_reading(text: str | None) -> str | None:
    """What Cambrian-1's MMVP script compares with the gold letter and the gold option's text."""
    if text is None:
        return None
    t = text.lower().strip()
    for keyword in _CAMBRIAN_KEYWORDS:
        if keyword in t:
            t = t.rpartition(keyword)[2]
    return t.strip().rstrip(".:,").lstrip("(").rstrip(")")


def parse_cambrian(text: str | None, options: tuple[str, str]) -> str | None:
    """The letter Cambrian-1's reading names: the letter itself, else option A's, else B's text
    (the option texts of mmvp_eval.py:72-75, lowercased as mmvp_test.py:46 does)."""
    reading = cambrian_reading(text)
    if reading is None:
        return None
    if reading in ("a", "b"):
        return reading.upper()
    hits = [letter for letter, option in zip("AB", options) if reading == option.lower()]
    return hits[0] if hits else None


def parse(text: str | None, parser: str, options: tuple[str, str]) -> str | None:
    """'A'/'B' or None: the letter `parser` reads in the answer."""
    if check_parser(parser) == "strict":
        return parse_answer(text, options)
    if parser == "lmms":
        return parse_lmms(text)
    return parse_cambrian(text, options)


def is_correct(text: str | None, parsed: str | None, gold: str, options: tuple[str, str], parser: str) -> bool:
    """strict, lmms (utils.py:166-168): the letter read is the gold letter. cambrian
    (mmvp_test.py:45-49): the reading is the gold letter or exactly the gold option's text."""
    if check_parser(parser) != "cambrian":
        return parsed == gold
    reading = cambrian_reading(text)
    return reading is not None and reading in (gold.lower(), options["AB".index(gold)].lower())


# ---------------------------------------------------------------- pure scoring
def make_prediction(
    q: Question, prompt: str, raw: str | None, missing_image: bool, parser: str = DEFAULT_PARSER
) -> dict:
    parsed = parse(raw, parser, q.options)
    return {
        "id": q.index,
        "prompt": prompt,
        "raw_answer": raw,
        "parsed": parsed,
        "gold": q.gold,
        "correct": is_correct(raw, parsed, q.gold, q.options, parser),
        "pair": q.pair,
        "question": q.question,
        "options": list(q.options),
        "missing_image": missing_image,
    }


def rejudge(prediction: dict, config: dict) -> dict:
    parser, options = config["parser"], tuple(prediction["options"])
    parsed = parse(prediction["raw_answer"], parser, options)
    correct = is_correct(prediction["raw_answer"], parsed, prediction["gold"], options, parser)
    return {**prediction, "parsed": parsed, "correct": correct}


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
            "--parser",
            choices=PARSERS,
            default=DEFAULT_PARSER,
            help="answer parser: strict (ours: a letter, '(a)', 'A.', 'answer is B' or the option text; "
            "default), lmms (lmms-eval's loose letter search) or cambrian (Cambrian-1's: the letter or "
            "the option text, whole)",
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
        check_parser(args.parser)
        return load(args.data, fix_label_swap=args.fix_label_swap)

    def predict(self, args, questions: list[Question]) -> list[dict]:
        images = [open_rgb(q.image) for q in questions]
        texts = [build_prompt(q, args.prompt_style) for q in questions]
        prompts, answers = self.answer(args, images, texts, desc="mmvp")
        return [
            make_prediction(q, p, a, missing_image=im is None, parser=args.parser)
            for q, p, a, im in zip(questions, prompts, answers, images)
        ]

    def options(self, args, questions: list[Question]) -> dict:
        return {"prompt_style": args.prompt_style, "fix_label_swap": args.fix_label_swap, "parser": args.parser}

    rejudge = staticmethod(rejudge)
    score = staticmethod(score)

    def resampling(self, config):
        # the pair is the unit for both headlines: pair accuracy needs both questions, and the two
        # questions of a pair (one image pair) are not independent samples for question accuracy
        return field_resampling("pair")

    def headline_n(self, metric, predictions, config) -> int:
        return len(predictions) if metric == "question_accuracy" else len({p["pair"] for p in predictions})
