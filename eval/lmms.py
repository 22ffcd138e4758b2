"""General VQA through lmms-eval 0.7.3: our LLaVA checkpoints as an lmms-eval model, and local
task configs so nothing is fetched from the hub at run time.

    python -m eval vqa --model DIR --tasks pope,gqa --data-root DATA --output OUT

**The model.** `GenfeedbackLlava` is registered as `genfeedback_llava` through the
`lmms_eval.models` entry point (pyproject). lmms-eval 0.7.3 reads that group when
`lmms_eval.models` is first imported and expects each entry to be a `ModelManifest` (or a
callable returning one), not the model class: the entry point names `lmms_eval_models` below.
`--model` is an HF Llava dir or an original LLaVA-1.5 dir (`llava_plugin.llava.load_llava`).
Prompts and image preprocessing are LLaVA-1.5's (eval.mllm: vicuna_v1, pad to square).
One process, one device (`--device cuda` for a GPU); a multi-rank launch is refused.
- `generate_until`: batched greedy decoding, cut at the task's `until` strings.
- `loglikelihood` (multiple-choice tasks): the image is passed with the prompt, and only the
  continuation's tokens are scored. Two 0.7.3 facts shape what is returned: its
  multiple_choice scoring picks `argmin` of the returned values (it treats them as losses), so
  we return the summed negative log-likelihood of the continuation; and its evaluator turns any
  response that is not a string or `GenerationResult` into `str(response)`, which destroys the
  (value, is_greedy) pairs (lmms-eval's own llava_hf loses them this way, besides scoring
  without the image), so each pair travels inside a `GenerationResult`.

**The tasks.** `eval/tasks/tasks.yaml` lists them: the tiny local `shapes_vqa` (generation) and
`shapes_mc` (multiple choice) the tests use, and local copies of pope, gqa, scienceqa_img,
textvqa_val and mme. For those, lmms-eval's own config (prompts, answer parsing, metrics) is
used unchanged; only the data source is replaced by local parquet files. `run_vqa` renders one
small YAML per task (`<name>_local`: includes + `dataset_path: parquet` + absolute
`data_files`) under OUT/lmms_tasks and passes that folder to lmms-eval as `--include_path`.

Preparing the data (once, on a machine with hub access): download each dataset repository in
its hub layout under one DATA root, e.g.

    huggingface-cli download lmms-lab/POPE --repo-type dataset --local-dir DATA/POPE --include "data/*"
    huggingface-cli download lmms-lab/GQA --repo-type dataset --local-dir DATA/GQA \\
        --include "testdev_balanced_instructions/*" "testdev_balanced_images/*"
    huggingface-cli download lmms-lab/ScienceQA --repo-type dataset --local-dir DATA/ScienceQA \\
        --include "ScienceQA-IMG/*"
    huggingface-cli download lmms-lab/textvqa --repo-type dataset --local-dir DATA/textvqa \\
        --include "data/validation-*"
    huggingface-cli download lmms-lab/MME --repo-type dataset --local-dir DATA/MME

giving DATA/POPE/data/test-*.parquet, DATA/GQA/testdev_balanced_{instructions,images}/testdev-*.parquet,
DATA/ScienceQA/ScienceQA-IMG/test-*.parquet, DATA/textvqa/data/validation-*.parquet and
DATA/MME/data/test-*.parquet (the globs in tasks.yaml). The tiny zoo's `data/` folder is a
DATA root for shapes_vqa and shapes_mc (`vqa/shapes_vqa.parquet`, `vqa/shapes_mc.parquet`).

**Failures.** lmms-eval's CLI prints a traceback and exits 0 when a run fails. `run_vqa`
runs it as a subprocess (its log goes to OUT/lmms_eval.log) and fails with the log's tail
unless a new results JSON lists every requested task.

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

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from eval.benchmarks.common import write_results
from eval.mllm import IMAGE_TOKEN, format_prompt, generate, load_mllm, mean_color
from llava_plugin.distributed import child_environment
from llava_plugin.images import pad_to_square

MODEL_NAME = "genfeedback_llava"
TASKS_DIR = Path(__file__).parent / "tasks"
TASK_SPECS = TASKS_DIR / "tasks.yaml"
LOCAL_SUFFIX = "_local"
GQA_IMAGES_ENV = "GENFEEDBACK_GQA_IMAGES"  # read by tasks/gqa/utils.py
DEFAULT_MAX_NEW_TOKENS = 128  # when a task sets none; answers end at EOS long before
IMAGE_CHUNK_BATCHES = 16  # batches whose images are decoded at once (POPE's 9k images would need ~8 GB)


def lmms_eval_models():
    """The `lmms_eval.models` entry point: lmms-eval 0.7.3 wants a manifest, not the class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.GenfeedbackLlava")


# ---------------------------------------------------------------- the model
class GenfeedbackLlava(lmms):
    """A LLaVA checkpoint (HF Llava dir or original LLaVA-1.5 dir) for lmms-eval: one image per
    prompt, LLaVA-1.5 chat format, greedy generation, continuation scoring with the image."""

    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int | str = 1,
        vision_tower: str | None = None,
        max_batch_size: int | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"{MODEL_NAME}: unknown model_args {sorted(unknown)}; "
                "known: pretrained, device, dtype, batch_size, vision_tower"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                f"{MODEL_NAME} runs in one process (no request sharding across ranks); launch lmms-eval "
                "without accelerate/torchrun, e.g. through `python -m eval vqa`"
            )
        if max_batch_size is not None:
            raise ValueError(f"{MODEL_NAME}: automatic batch sizing is not supported; pass --batch_size N")
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"{MODEL_NAME}: dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16)")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"{MODEL_NAME}: batch_size must be >= 1, got {batch_size}")
        # vision_tower: where an original LLaVA-1.5 checkpoint's mm_vision_tower lives (a tower spec)
        self.model, self.processor = load_mllm(
            pretrained, device=device, dtype=getattr(torch, dtype), vision_tower=vision_tower
        )

    def _images(self, requests: Sequence[Instance], visual_index: int) -> list[Image.Image]:
        """The single image of each request's document (LLaVA-1.5 takes exactly one)."""
        images = []
        for request in requests:
            args = request.args
            doc_to_visual, doc_id, task, split = args[visual_index : visual_index + 4]
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
                raise ValueError(
                    f"{MODEL_NAME}: {task} doc {doc_id} has {len(visuals)} visuals "
                    f"({[type(v).__name__ for v in visuals]}); LLaVA-1.5 takes exactly one image"
                )
            if IMAGE_TOKEN in args[0]:
                raise ValueError(
                    f"{MODEL_NAME}: {task} doc {doc_id}: the task text already contains "
                    f"{IMAGE_TOKEN!r}; the model adds it itself"
                )
            images.append(visuals[0].convert("RGB"))
        return images

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, batched per (task, generation kwargs), cut at the first `until` string."""
        answers: list[str | None] = [None] * len(requests)
        groups = collections.defaultdict(list)
        for i, request in enumerate(requests):
            _, gen_kwargs, _, _, task, _ = request.args
            groups[(task, json.dumps(gen_kwargs, sort_keys=True, default=str))].append(i)
        for (task, _), indices in groups.items():
            until, max_new_tokens = greedy_settings(task, dict(requests[indices[0]].args[1]))
            for chunk in self._chunks(indices):
                texts = generate(
                    self.model,
                    self.processor,
                    self._images([requests[i] for i in chunk], 2),
                    [format_prompt(requests[i].args[0]) for i in chunk],
                    batch_size=self.batch_size,
                    max_new_tokens=max_new_tokens,
                    desc=f"{task} generate",
                )
                for i, text in zip(chunk, texts):
                    answers[i] = cut_at(text, until)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request, (summed negative log-likelihood of the continuation, is it the greedy
        continuation), wrapped in a GenerationResult so lmms-eval 0.7.3 keeps the pair."""
        contexts, continuations = [], []
        for request in requests:
            context, target, _, doc_id, task, split = request.args
            continuations.append(
                target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            )
            contexts.append(context)
        scores = []
        for chunk in self._chunks(range(len(requests))):
            scores += score_continuations(
                self.model,
                self.processor,
                self._images([requests[i] for i in chunk], 2),
                [contexts[i] for i in chunk],
                [continuations[i] for i in chunk],
                batch_size=self.batch_size,
            )
        return [GenerationResult(text=score) for score in scores]

    def _chunks(self, indices: Sequence[int]):
        """Requests a few batches at a time, so only their images are decoded in memory."""
        size = self.batch_size * IMAGE_CHUNK_BATCHES
        for start in range(0, len(indices), size):
            yield indices[start : start + size]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            f"{MODEL_NAME}: multi-round generation is not supported (LLaVA-1.5 eval is single-turn)"
        )


def greedy_settings(task: str, gen_kwargs: dict) -> tuple[list[str], int]:
    """(until strings, max_new_tokens) of a task's generation kwargs; anything but greedy
    decoding is refused rather than silently replaced by it."""
    gen_kwargs = dict(gen_kwargs)
    until = gen_kwargs.pop("until", [])
    until = [until] if isinstance(until, str) else list(until)
    # tasks that give only `until` (textvqa) get DEFAULT_MAX_NEW_TOKENS
    max_new_tokens = int(gen_kwargs.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    sampling = gen_kwargs.pop("do_sample", False) or float(gen_kwargs.pop("temperature", 0) or 0) > 0
    beams = int(gen_kwargs.pop("num_beams", 1) or 1)
    gen_kwargs.pop("top_p", None)  # irrelevant without sampling
    gen_kwargs.pop("image_aspect_ratio", None)  # model-specific hint for lmms-eval's llava; we always pad
    if sampling or beams != 1:
        raise ValueError(
            f"{MODEL_NAME}: task {task} asks for sampling/beam search ({gen_kwargs}); only greedy "
            "decoding is implemented"
        )
    if gen_kwargs:
        raise ValueError(
            f"{MODEL_NAME}: task {task} has generation kwargs {sorted(gen_kwargs)} this model does not "
            "implement"
        )
    return until, max_new_tokens


def cut_at(text: str | None, until: Sequence[str]) -> str:
    """The text up to the first stop string (greedy decoding makes this equal to stopping there)."""
    if text is None:
        raise ValueError("generation returned no answer for a sample that has an image")
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


@torch.no_grad()
def score_continuations(
    model,
    processor,
    images: Sequence[Image.Image],
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """For each (image, context, continuation): the summed negative log-likelihood of the
    continuation's tokens after the LLaVA-1.5 prompt of the context (with the image), and
    whether greedy decoding would produce exactly those tokens."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # the continuation then ends every row at the same position
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    fill = mean_color(processor)
    device = next(model.parameters()).device
    results = []
    for start in tqdm(range(0, len(contexts), batch_size), desc="loglikelihood", unit="batch"):
        batch = range(start, min(start + batch_size, len(contexts)))
        prompts = [format_prompt(contexts[i]) for i in batch]
        texts = [prompt + continuations[i] for prompt, i in zip(prompts, batch)]
        lengths = [continuation_length(tokenizer, prompt, text) for prompt, text in zip(prompts, texts)]
        inputs = processor(
            images=[pad_to_square(images[i], fill) for i in batch],
            text=texts,
            return_tensors="pt",
            padding=True,
        ).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        logprobs = torch.log_softmax(model(**inputs).logits[:, :-1].float(), dim=-1)
        targets = inputs["input_ids"][:, 1:]
        for row, n in enumerate(lengths):
            row_logprobs, row_targets = logprobs[row, -n:], targets[row, -n:]
            token_logprobs = row_logprobs.gather(-1, row_targets[:, None]).squeeze(-1)
            results.append(
                (-float(token_logprobs.sum()), bool((row_logprobs.argmax(-1) == row_targets).all()))
            )
    return results


def continuation_length(tokenizer, prompt: str, text: str) -> int:
    """How many tokens the continuation adds to the prompt; the prompt's tokens must be a prefix
    of the full text's, otherwise the boundary is ambiguous and the score would be wrong."""
    prompt_ids = tokenizer(prompt).input_ids
    text_ids = tokenizer(text).input_ids
    n = len(text_ids) - len(prompt_ids)
    if n < 1 or text_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            f"continuation {text[len(prompt) :]!r} does not tokenize as a suffix of the prompt "
            f"ending {prompt[-40:]!r}: cannot tell which tokens to score"
        )
    return n


# ---------------------------------------------------------------- the tasks
def task_specs() -> dict[str, dict]:
    return yaml.safe_load(TASK_SPECS.read_text())


def task_includes(spec: dict) -> list[str]:
    """The config files a task is built from, overlay first (lmms-eval: earlier includes win)."""
    import lmms_eval.tasks

    includes = [str(TASKS_DIR / spec["overlay"])] if "overlay" in spec else []
    return includes + (
        [str(Path(lmms_eval.tasks.__file__).parent / spec["stock"])] if "stock" in spec else []
    )


def headline_aggregations(name: str) -> dict:
    """{headline metric: lmms-eval's aggregation function for it} from the task's own config."""
    from lmms_eval.api.registry import get_aggregation, get_metric_aggregation
    from lmms_eval.utils import load_yaml_config

    spec = task_specs()[name]
    config = load_yaml_config(yaml_config={"include": task_includes(spec)}, yaml_dir=str(TASKS_DIR))
    listed = {m["metric"]: m.get("aggregation") for m in config["metric_list"]}
    functions = {}
    for metric in spec["headline"]:
        if metric not in listed:
            raise ValueError(
                f"{name}: headline metric {metric!r} is not in the task's metric_list {sorted(listed)}"
            )
        aggregation = listed[metric]
        functions[metric] = (
            get_metric_aggregation(metric)
            if aggregation is None
            else get_aggregation(aggregation)
            if isinstance(aggregation, str)
            else aggregation
        )
    return functions


def render_tasks(
    names: Sequence[str], data_root: Path, out_dir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """Write one lmms-eval config per task under `out_dir`, reading the local copy under
    `data_root`. Returns ({name: lmms-eval task name}, extra environment for the run)."""
    specs = task_specs()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown VQA task(s) {unknown}; known: {sorted(specs)} (eval/tasks/tasks.yaml)")
    out_dir.mkdir(parents=True, exist_ok=True)
    local_names, env = {}, {}
    for name in names:
        spec = specs[name]
        data_files = {
            split: _local_files(name, data_root, pattern) for split, pattern in spec["data_files"].items()
        }
        includes = task_includes(spec)
        local_names[name] = name + LOCAL_SUFFIX
        config = {
            "include": includes,
            "task": local_names[name],
            "dataset_path": "parquet",
            "dataset_kwargs": {"data_files": data_files},
        }
        (out_dir / f"{local_names[name]}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if "images" in spec:
            _local_files(name, data_root, spec["images"])
            env[GQA_IMAGES_ENV] = str(data_root / spec["images"])
    return local_names, env


def _local_files(name: str, data_root: Path, pattern: str) -> list[str]:
    files = sorted(glob.glob(str(data_root / pattern)))
    if not files:
        raise FileNotFoundError(
            f"{name}: no files match {data_root / pattern}; prepare the local copy as the "
            "eval.lmms module docstring says (hub layout under --data-root)"
        )
    return files


# ---------------------------------------------------------------- running lmms-eval
class LmmsEvalFailed(RuntimeError):
    """lmms-eval ran but produced no (complete) results; its CLI still exited 0."""


def evaluate(
    model: str,
    tasks: Sequence[str],
    data_root: Path | str,
    output: Path | str,
    *,
    lmms_model: str = MODEL_NAME,
    model_args: dict | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    device: str = "cpu",
) -> dict[str, dict]:
    """Run lmms-eval on the local tasks and write OUT/<task>/{predictions.jsonl,metrics.json}.

    `lmms_model` selects the lmms-eval model (ours by default; e.g. `llava_hf` to check our
    checkpoints load in the stock one), `model_args` adds to pretrained/device (lmms-eval
    passes `batch_size` to the model itself).
    Returns {task: metrics}."""
    output, data_root = Path(output).resolve(), Path(data_root).resolve()
    local_names, env = render_tasks(list(tasks), data_root, output / "lmms_tasks")
    args = {"pretrained": str(Path(model).resolve()), "device": device, **(model_args or {})}
    for key, value in args.items():
        if any(c in str(value) for c in ",="):
            raise ValueError(f"lmms-eval model_args cannot carry ',' or '=' ({key}={value}); rename the path")
    command = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        lmms_model,
        "--model_args",
        ",".join(f"{k}={v}" for k, v in args.items()),
        "--tasks",
        ",".join(local_names.values()),
        "--include_path",
        str(output / "lmms_tasks"),
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(output / "lmms_eval"),
        "--log_samples",
    ]
    if limit is not None:
        command += ["--limit", str(limit)]
    results_file = run_lmms_eval(
        command, output / "lmms_eval", output / "lmms_eval.log", {**child_environment(), **env}
    )
    results = json.loads(results_file.read_text())
    missing = [t for t in local_names.values() if t not in results.get("results", {})]
    if missing:
        raise LmmsEvalFailed(
            f"lmms-eval results {results_file} lack task(s) {missing}; see {output / 'lmms_eval.log'}"
        )
    specs = task_specs()
    all_metrics = {}
    for name, local in local_names.items():
        samples_file = _one(
            results_file.parent.glob(
                f"{results_file.name.removesuffix('_results.json')}_samples_{local}.jsonl"
            ),
            f"samples of {local}",
        )
        samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
        config = {
            "model": args["pretrained"],
            "lmms_model": lmms_model,
            "vqa_task": name,
            "task": local,
            "data_files": results["configs"][local]["dataset_kwargs"]["data_files"],
            "limit": limit,
            "batch_size": batch_size,
            "lmms_eval_version": _lmms_eval_version(),
            "lmms_eval_results": str(results_file),
        }
        predictions = [make_prediction(sample, specs[name]) for sample in samples]
        metrics = score(predictions, config)
        check_against_lmms_eval(metrics, results["results"][local], specs[name]["headline"])
        write_results(output / name, predictions, metrics)
        all_metrics[name] = metrics
    return all_metrics


def run_lmms_eval(command: list[str], results_dir: Path, log_path: Path, env: dict) -> Path:
    """Run the lmms-eval CLI, tee its output to `log_path`, and return the results JSON it
    wrote. A run without a new results file is a failure, whatever the exit code."""
    results_dir.mkdir(parents=True, exist_ok=True)
    before = set(results_dir.rglob("*_results.json"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in process.stdout:
            log.write(line)
            sys.stdout.write(line)
        code = process.wait()
    new = sorted(set(results_dir.rglob("*_results.json")) - before)
    log_text = log_path.read_text()
    failed = code != 0 or len(new) != 1 or "Error during evaluation" in log_text
    if failed:
        tail = "\n".join(log_text.splitlines()[-25:])
        raise LmmsEvalFailed(
            f"lmms-eval failed (exit code {code}, {len(new)} new results files in {results_dir}, "
            f"{time.time() - start:.0f} s); full log: {log_path}\n--- last lines ---\n{tail}"
        )
    return new[0]


def _one(paths, what: str) -> Path:
    paths = sorted(paths)
    if len(paths) != 1:
        raise LmmsEvalFailed(f"expected exactly one file with the {what}, found {[str(p) for p in paths]}")
    return paths[0]


def _lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")


# ---------------------------------------------------------------- results in our contract
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


def check_against_lmms_eval(metrics: dict, task_results: dict, factors: dict) -> None:
    """Our re-aggregation must reproduce the numbers in lmms-eval's results file."""
    for metric, value in metrics["headline"].items():
        reported = task_results.get(f"{metric},none")
        expected = None if reported is None else float(reported) * factors[metric]
        if (value is None) != (expected is None) or (
            value is not None and abs(value - expected) > 1e-9 * max(1, abs(expected))
        ):
            raise LmmsEvalFailed(
                f"{metrics['benchmark']}: {metric} from the logged samples is {value}, lmms-eval "
                f"reported {expected} ({metrics['config']['lmms_eval_results']})"
            )


def run_vqa(args: argparse.Namespace) -> int:
    """`python -m eval vqa`: 0 on success; 1 with a message naming the log when lmms-eval failed."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model_args = {"dtype": args.dtype}
    if args.vision_tower is not None:
        model_args["vision_tower"] = args.vision_tower
    try:
        metrics = evaluate(
            args.model,
            tasks,
            args.data_root,
            args.output,
            model_args=model_args,
            batch_size=args.batch_size,
            limit=args.limit,
            device=args.device,
        )
    except (LmmsEvalFailed, FileNotFoundError, ValueError) as error:
        print(f"python -m eval vqa: {error}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {name: {"headline": m["headline"], "samples": m["samples"]} for name, m in metrics.items()},
            indent=2,
        )
    )
    return 0
