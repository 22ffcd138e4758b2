"""General VQA through lmms-eval 0.7.3: our LLaVA checkpoints as an lmms-eval model, and local
task configs so nothing is fetched from the hub at run time.

    python -m eval vqa --model DIR --tasks pope,gqa --data-root DATA --output OUT

This package is the lmms-eval model plugin (below); beside it:
- `eval.lmms.tasks`: the task list (eval/tasks/tasks.yaml) rendered to local lmms-eval configs;
- `eval.lmms.run`: running the lmms-eval CLI and checking what it wrote;
- `eval.lmms.results`: lmms-eval's logged samples -> our predictions.jsonl / metrics.json.
Their public names are re-exported here (`eval.lmms.evaluate`, `eval.lmms.score`, ...).

**The model.** `GenfeedbackLlava` is registered as `genfeedback_llava` through the
`lmms_eval.models` entry point (pyproject). lmms-eval 0.7.3 reads that group when
`lmms_eval.models` is first imported and expects each entry to be a `ModelManifest` (or a
callable returning one), not the model class: the entry point names `lmms_eval_models` below.
`--model` is an HF Llava dir or an original LLaVA-1.5 dir (`llava_plugin.convert_llava.load_llava`).
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
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Sequence

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from eval.lmms.results import make_prediction, rejudge, score
from eval.lmms.run import (
    MODEL_NAME,
    LmmsEvalFailed,
    check_against_lmms_eval,
    evaluate,
    run_lmms_eval,
    run_vqa,
)
from eval.lmms.tasks import (
    GQA_IMAGES_ENV,
    LOCAL_SUFFIX,
    TASK_SPECS,
    TASKS_DIR,
    headline_aggregations,
    render_tasks,
    task_includes,
    task_specs,
)
from eval.mllm import IMAGE_TOKEN, format_prompt, generate, load_mllm, mean_color
from llava_plugin.images import pad_to_square

DEFAULT_MAX_NEW_TOKENS = 128  # when a task sets none; answers end at EOS long before
IMAGE_CHUNK_BATCHES = 16  # batches whose images are decoded at once (POPE's 9k images would need ~8 GB)

# the plugin's names and, re-exported, those of eval.lmms.{tasks,run,results}
__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "GQA_IMAGES_ENV",
    "IMAGE_CHUNK_BATCHES",
    "LOCAL_SUFFIX",
    "MODEL_NAME",
    "TASKS_DIR",
    "TASK_SPECS",
    "GenfeedbackLlava",
    "LmmsEvalFailed",
    "check_against_lmms_eval",
    "continuation_length",
    "cut_at",
    "evaluate",
    "greedy_settings",
    "headline_aggregations",
    "lmms_eval_models",
    "make_prediction",
    "rejudge",
    "render_tasks",
    "run_lmms_eval",
    "run_vqa",
    "score",
    "score_continuations",
    "task_includes",
    "task_specs",
]


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
                    [format_prompt(requests[i].args[0], processor=self.processor) for i in chunk],
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
        prompts = [format_prompt(contexts[i], processor=processor) for i in batch]
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
