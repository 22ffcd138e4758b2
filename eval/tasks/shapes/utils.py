"""Pure functions of the tiny local tasks (shapes_vqa, shapes_mc): documents in, prompt text,
choices, targets and per-sample scores out."""

from __future__ import annotations

import string

LETTERS = string.ascii_uppercase


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def vqa_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: 'Two.' and 'two' match."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def vqa_process_results(doc: dict, results: list[str]) -> dict:
    """exact_match = 1.0 iff the answer equals one of the accepted answers after normalization."""
    if len(results) != 1:
        raise ValueError(f"shapes_vqa {doc['question_id']}: expected one answer, got {len(results)}")
    accepted = {normalize_answer(a) for a in doc["answers"]}
    return {"exact_match": float(normalize_answer(results[0]) in accepted)}


def mc_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """LLaVA-1.5's multiple-choice prompt: question, lettered options, answer instruction."""
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(doc["options"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def mc_doc_to_choice(doc: dict) -> list[str]:
    return list(LETTERS[: len(doc["options"])])


def mc_doc_to_target(doc: dict) -> int:
    """Index of the gold letter among the choices."""
    choices = mc_doc_to_choice(doc)
    if doc["answer"] not in choices:
        raise ValueError(f"shapes_mc {doc['question_id']}: answer {doc['answer']!r} is not one of {choices}")
    return choices.index(doc["answer"])
