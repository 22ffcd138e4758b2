"""lmms-eval's `--log_samples` records -> our results contract (eval/benchmarks/common.py).

**Results.** Per task, OUT/<name>/ gets `predictions.jsonl` (from lmms-eval's
`--log_samples`: id, prompt, raw_answer, parsed, gold, correct, plus lmms-eval's per-sample
scores) and `metrics.json` (`benchmark` = `vqa_<name>`, `headline` in percent where the
metric is a fraction, and the plain accuracy of `correct`), so `python -m eval compare` shows
VQA columns. `score(predictions, config)` computes metrics.json from the predictions alone by
applying the task's own lmms-eval aggregations to the per-sample scores; a run fails if that
does not reproduce lmms-eval's results file (whose path is in `config`). Every lmms-eval
metric, stderr included, stays in that file.
"""

from __future__ import annotations

from eval.lmms.tasks import headline_aggregations, task_specs


def make_prediction(sample: dict, spec: dict) -> dict:
    """One predictions.jsonl line from one lmms-eval `--log_samples` record. Multiple-choice
    records hold one (NLL, is_greedy) pair per option, as strings; the parsed answer is the
    index of the lowest NLL (lmms-eval's own rule) and the gold is the option index."""
    parsed = sample["filtered_resps"]
    raw = sample.get("resps", parsed)
    gold = sample.get("target")
    if _is_choice_scores(parsed):
        raw = [[float(nll), str(greedy) == "True"] for nll, greedy in map(_flatten, parsed)]
        parsed = min(range(len(raw)), key=lambda i: raw[i][0])
        gold = int(gold)
    # the first headline metric the sample carries (mme logs perception or cognition per sample);
    # correct stays None when that per-sample score is not 0/1 (e.g. textvqa's soft VQA accuracy)
    score = next((sample[m] for m in spec["headline"] if m in sample), None)
    if isinstance(score, dict):  # e.g. pope, mme: {"question_id", "score", ...}
        score = score.get("score")
    correct = bool(score) if score in (0, 1, True, False) else None
    scores = {k: v for k, v in sample.items() if k not in _SAMPLE_BOOKKEEPING}
    return {
        "id": sample["doc_id"],
        "prompt": sample.get("input"),
        "raw_answer": raw,
        "parsed": parsed,
        "gold": gold,
        "correct": correct,
        "scores": scores,
    }


_SAMPLE_BOOKKEEPING = {
    "doc_id",
    "input",
    "input_media",
    "resps",
    "filtered_resps",
    "target",
    "doc_hash",
    "prompt_hash",
    "task_hash",
    "token_counts",
    "filter",
    "metrics",
}


def _flatten(value):
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    return value


def _is_choice_scores(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(_flatten(v), list) and len(_flatten(v)) == 2 for v in value)
    )


def rejudge(prediction: dict, config: dict) -> dict:
    """VQA predictions keep lmms-eval's per-sample scores (its process_results needs the dataset
    document, which is not stored): rescoring re-aggregates them, it does not re-parse."""
    return prediction


def score(predictions: list[dict], config: dict) -> dict:
    """metrics.json from the predictions alone: each headline metric is lmms-eval's own
    aggregation of the per-sample scores, scaled per tasks.yaml; plus the plain accuracy of the
    `correct` flags where the task has 0/1 per-sample scores."""
    name = config["vqa_task"]
    factors = task_specs()[name]["headline"]
    headline = {}
    for metric, aggregate in headline_aggregations(name).items():
        values = [p["scores"][metric] for p in predictions if metric in p["scores"]]
        value = aggregate(values) if values else None
        headline[metric] = None if value is None else float(value) * factors[metric]
    judged = [p["correct"] for p in predictions if p["correct"] is not None]
    return {
        "benchmark": f"vqa_{name}",
        "config": config,
        "headline": headline,
        "samples": len(predictions),
        "accuracy_from_predictions": 100.0 * sum(judged) / len(judged) if judged else None,
    }
