"""What the world asks about a scene, in the words and prompt formats of the real benchmarks.

One wording for everything that talks about scenes: the world benchmarks (world/benchmarks.py),
the LLaVA instruction set and the language model's corpus (world/language.py) all ask the same
questions, so a LLaVA trained on the world is asked at test time what it learned to answer.

Per attribute: the question (`question(scene, attribute, style)`), the words of a value
(`value_text`), and the values a distractor may take (`value_pool`). Counts are digits in
answers and options (as VQA and CV-Bench write them) and words in captions (as scenes.phrase does).

Prompt formats (the text after "<image>\\n"):
- `mmvp`: LLaVA-1.5's multiple choice as eval/benchmarks/mmvp.py sends it,
  "{question}\\nA. x\\nB. y\\nAnswer with the option's letter from the given choices directly.";
  answer: the letter ("A").
- `mmvp_original`: the MMVP repo's own prompt, as eval/benchmarks/mmvp.py's `original` style sends it,
  "{question} (a) x (b) y"; answer: the option's words ("up"), as the MMVP repo grades a free answer
  against the options (eval/benchmarks/mmvp.py's parsers accept an answer that is one option's text).
- `cv_bench`: CV-Bench's row prompt "{question} Select from the following choices.\\n(A) x\\n(B) y..."
  plus eval/benchmarks/cv_bench.py's suffix (the same letter instruction); answer "(A)".
- `short`: "{question}\\nAnswer the question using a single word or phrase." (LLaVA-1.5's VQA
  suffix); answer: the value ("Up", "2").
- `sentence`: the bare question; answer: a sentence ("The triangles point up.").
"""
from __future__ import annotations

import random

from world.scenes import ATTRIBUTES, COLOURS, COUNTS, DIRECTIONS, POSITIONS, SHAPES, Scene

LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5 / MMVP / CV-Bench
SHORT_SUFFIX = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA suffix
CV_BENCH_SELECT = "Select from the following choices."  # CV-Bench's row prompts
CV_COUNT_CHOICES = ("0", "1", "2", "3", "4")  # a count question's options: the world has 1-3 shapes
FORMATS = ("mmvp", "mmvp_original", "cv_bench", "short", "sentence")


def _noun(scene: Scene) -> str:
    return scene.shape + ("s" if scene.count > 1 else "")


def _subject(scene: Scene) -> str:
    """'the shape' / 'the shapes': what a question about colour, shape or position refers to."""
    return "the shapes" if scene.count > 1 else "the shape"


def question(scene: Scene, attribute: str, style: str = "mmvp") -> str:
    """The question about `attribute` of `scene` (identical for the two scenes of a pair, which
    share every other attribute). `style="cv_bench"` words count and position as CV-Bench's Count
    and Relation tasks do."""
    plural = scene.count > 1
    if attribute == "orientation":
        return f"Which way {'do' if plural else 'does'} the {_noun(scene)} point?"
    if attribute == "count":
        return f"How many {scene.shape}s are in the image?" if style == "cv_bench" else \
            f"How many {scene.shape}s are there?"
    if attribute == "position":
        if style == "cv_bench":
            a, b = ("left", "right") if scene.position in ("left", "right") else ("top", "bottom")
            where = f"on the {a} or on the {b}" if a == "left" else f"at the {a} or at the {b}"
            return f"{'Are' if plural else 'Is'} {_subject(scene)} {where} of the image?"
        return f"Which side of the image {'are' if plural else 'is'} {_subject(scene)} on?"
    if attribute == "colour":
        return f"What colour {'are' if plural else 'is'} {_subject(scene)}?"
    if attribute == "shape":
        return f"What shape {'are the objects' if plural else 'is the object'}?"
    raise ValueError(f"unknown attribute {attribute!r}")


def value_text(scene: Scene, attribute: str) -> str:
    """The answer word of `attribute` for `scene`: 'up', '2', 'left', 'red', 'triangle'."""
    value = scene.value(attribute)
    if value is None:
        raise ValueError(f"a {scene.shape} has no {attribute}")
    return str(value)


def value_pool(scene: Scene, attribute: str) -> tuple[str, ...]:
    """Every answer word `attribute` can take (the options a question may list)."""
    return {"orientation": DIRECTIONS, "count": tuple(str(c) for c in COUNTS), "position": POSITIONS,
            "colour": tuple(COLOURS), "shape": SHAPES}[attribute]


def sentence(scene: Scene, attribute: str) -> str:
    """A one-sentence free answer: 'The triangles point up.', 'There are 2 circles.'."""
    subject = _subject(scene).capitalize()
    plural = scene.count > 1
    if attribute == "orientation":
        return f"The {_noun(scene)} {'point' if plural else 'points'} {scene.orientation}."
    if attribute == "count":
        return f"There {'are' if plural else 'is'} {scene.count} {_noun(scene)}."
    if attribute == "position":
        where = f"on the {scene.position}" if scene.position in ("left", "right") else f"at the {scene.position}"
        return f"{subject} {'are' if plural else 'is'} {where} of the image."
    if attribute == "colour":
        return f"{subject} {'are' if plural else 'is'} {scene.colour}."
    if attribute == "shape":
        return f"{'They are' if plural else 'It is a'} {_noun(scene)}."
    raise ValueError(f"unknown attribute {attribute!r}")


# ---------------------------------------------------------------- prompt formats
def mmvp_prompt(text: str, options: list[str]) -> str:
    """eval/benchmarks/mmvp.py's `llava` prompt style."""
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip("AB", options))
    return f"{text}\n{listed}\n{LETTER_SUFFIX}"


def mmvp_original_prompt(text: str, options: list[str]) -> str:
    """eval/benchmarks/mmvp.py's `original` prompt style: the question, then Questions.csv's options."""
    return f"{text} {mmvp_options(options)}"


def mmvp_options(options: list[str]) -> str:
    """The `Options` column of MMVP's Questions.csv: "(a) x (b) y"."""
    return f"(a) {options[0]} (b) {options[1]}"


def cv_bench_row_prompt(text: str, choices: list[str]) -> str:
    """A CV-Bench row's `prompt` column (the reader appends "\\n" + the letter instruction)."""
    listed = "\n".join(f"({letter}) {choice}" for letter, choice in zip("ABCDEFGH", choices))
    return f"{text} {CV_BENCH_SELECT}\n{listed}"


def ask(scene: Scene, attribute: str, style: str, rng: random.Random) -> tuple[str, str]:
    """(human words, gold answer) of one question about `scene` in `style` (see FORMATS); options
    are the true value and random distractors in random order."""
    truth = value_text(scene, attribute)
    if style == "short":
        return f"{question(scene, attribute)}\n{SHORT_SUFFIX}", truth
    if style == "sentence":
        return question(scene, attribute), sentence(scene, attribute)
    if style in ("mmvp", "mmvp_original"):
        wrong = rng.choice([v for v in value_pool(scene, attribute) if v != truth])
        options = [truth, wrong] if rng.random() < 0.5 else [wrong, truth]
        if style == "mmvp_original":
            return mmvp_original_prompt(question(scene, attribute), options), truth
        return mmvp_prompt(question(scene, attribute), options), "AB"[options.index(truth)]
    if style == "cv_bench":
        if attribute == "count":
            pool = list(CV_COUNT_CHOICES)
        elif attribute == "position":  # CV-Bench's Relation: the two sides the question names
            pool = ["left", "right"] if scene.position in ("left", "right") else ["top", "bottom"]
        else:
            pool = list(value_pool(scene, attribute))
        n = len(pool) if attribute == "position" else rng.randint(2, min(4, len(pool)))
        choices = [truth] + rng.sample([v for v in pool if v != truth], n - 1)
        rng.shuffle(choices)
        text = cv_bench_row_prompt(question(scene, attribute, "cv_bench"), choices)
        return f"{text}\n{LETTER_SUFFIX}", f"({'ABCDEFGH'[choices.index(truth)]})"
    raise ValueError(f"unknown question format {style!r}; known: {FORMATS}")


def askable(scene: Scene) -> tuple[str, ...]:
    """The attributes a question can ask about `scene` (orientation only if its shape points)."""
    return tuple(a for a in ATTRIBUTES if scene.value(a) is not None)
