"""VQA generation: genfeedback's batched lmms-eval model against lmms-eval's stock `llava_hf`.

    python benchmarks/eval_peer.py --model LLAVA_DIR --data-root DATA [--task shapes_vqa]
        [--batch-size 8] [--rounds 5] [--json OUT]

Both models answer the same questions of one local lmms-eval task (eval/tasks/tasks.yaml, rendered
by `eval.lmms.tasks.render_tasks`) on the same checkpoint, device and dtype, in requests built by
lmms-eval itself (`Task.build_all_requests`) in the form each model takes, as its evaluator does:
`llava_hf` is the chat model lmms-eval's CLI picks for that name, ours a simple one. Only `generate_until` is timed: each model is loaded once,
then the rounds alternate which model goes first. `genfeedback_llava` decodes `--batch-size`
prompts at a time (eval.mllm.generate); `llava_hf` runs as lmms-eval ships it, one prompt at a
time (its batch_size is 1 for generation). The prompts differ as the two APIs do (ours is
LLaVA-1.5's vicuna_v1 conversation, llava_hf's the processor's chat template), so the answers
need not match. Both decode up to the task's max_new_tokens; the time depends on how many they
generate, so compare on a checkpoint where both run to that cap (the tiny zoo's random LLaVA
does: 8 of 8 new tokens for every question with either prompt, checked with model.generate).

Without --model/--data-root the tiny zoo's LLaVA and VQA data are used (built with
`python -m llava_plugin.toy` into --work when missing).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_requests(lm, task: str, data_root: Path, work: Path):
    """lmms-eval's own requests for `task`, in the form `lm` takes (its `simple` or `chat` API, as
    lmms-eval's evaluator chooses), with the dataset the model reads images from set on it."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    from eval.lmms.tasks import render_tasks

    local_names, env = render_tasks([task], data_root, work / "lmms_tasks")
    os.environ.update(env)
    local = local_names[task]
    task_type = "simple" if lm.is_simple else "chat"
    task_obj = get_task_dict([local], TaskManager(include_path=str(work / "lmms_tasks")), task_type)[local]
    task_obj.build_all_requests(limit=None, rank=0, world_size=1)
    requests = [req for req in task_obj.instances if req.request_type == "generate_until"]
    if not requests:
        raise SystemExit(f"--task {task}: it has no generation requests (pick a generate_until task)")
    lm.task_dict = {local: task_obj.dataset}
    return requests


def load(name: str, model: Path, batch_size: int, device: str, dtype: str):
    """The model as lmms-eval's CLI makes it (`llava_hf` resolves to its chat implementation)."""
    from lmms_eval.models import get_model

    args = f"pretrained={model},device={device},dtype={dtype}"
    if name == "llava_hf":
        args += f",device_map={device}"
    return get_model(name).create_from_arg_string(args, {"batch_size": batch_size})


def timed_generation(lm, requests) -> tuple[float, list[str]]:
    start = time.perf_counter()
    answers = lm.generate_until(copy.deepcopy(requests))
    return time.perf_counter() - start, [str(a) for a in answers]


def tiny_zoo(work: Path) -> tuple[Path, Path]:
    """The tiny zoo's LLaVA and VQA data root (the zoo is built under `work` when missing)."""
    from llava_plugin.toy import open_zoo

    zoo = open_zoo(work / "zoo")
    return zoo.llava, zoo.data["vqa_root"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/eval_peer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an HF Llava dir (default: the tiny zoo's)")
    parser.add_argument("--data-root", type=Path, help="the VQA data root of --task (default: the tiny zoo's)")
    parser.add_argument("--task", default="shapes_vqa", help="a generation task of eval/tasks/tasks.yaml")
    parser.add_argument("--batch-size", type=int, default=8, help="genfeedback_llava's batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the same for both)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genfeedback-eval-peer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if bool(args.model) != bool(args.data_root):
        parser.error("pass both --model and --data-root, or neither (the tiny zoo's)")
    model, data_root = (args.model, args.data_root) if args.model else tiny_zoo(args.work)
    models = {"genfeedback_llava": load("genfeedback_llava", model, args.batch_size, args.device, args.dtype),
              "llava_hf": load("llava_hf", model, 1, args.device, args.dtype)}
    requests = {name: build_requests(lm, args.task, data_root, args.work) for name, lm in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    answers: dict[str, list[str]] = {}
    for i in range(args.rounds):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            took, answers[name] = timed_generation(models[name], requests[name])
            seconds[name].append(took)
            print(f"round {i + 1}/{args.rounds} {name}: {len(requests[name]) / took:.2f} samples/s", file=sys.stderr)
    n = len(requests["genfeedback_llava"])
    ratios = [b / a for a, b in zip(seconds["genfeedback_llava"], seconds["llava_hf"])]
    rate = {name: statistics.median(n / s for s in secs) for name, secs in seconds.items()}
    print(f"| task (requests) | genfeedback_llava (batch {args.batch_size}) samples/s | llava_hf (batch 1) samples/s "
          "| ratio (median, min-max over rounds) |")
    print("|---|---|---|---|")
    print(f"| {args.task} ({n}) | {rate['genfeedback_llava']:.2f} | {rate['llava_hf']:.2f} | "
          f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds) |")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "requests": n, "batch_size": args.batch_size,
                                         "seconds": seconds, "ratios": ratios, "answers": answers,
                                         "device": args.device, "dtype": args.dtype, "threads": args.threads,
                                         "model": str(model)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
