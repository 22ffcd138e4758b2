"""Running the lmms-eval CLI on the local tasks, and checking what it wrote.

**Failures.** lmms-eval's CLI prints a traceback and exits 0 when a run fails. `run_vqa`
runs it as a subprocess (its log goes to OUT/lmms_eval.log) and fails with the log's tail
unless a new results JSON lists every requested task.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eval.benchmarks.common import write_results
from eval.lmms.results import make_prediction, score
from eval.lmms.tasks import render_tasks, task_specs
from llava_plugin.distributed import child_environment

# The name our model plugin (eval.lmms.GenfeedbackLlava) is registered under, through the
# `lmms_eval.models` entry point in pyproject.toml.
MODEL_NAME = "genfeedback_llava"


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
            "device": device,
            "dtype": (model_args or {}).get("dtype"),
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
