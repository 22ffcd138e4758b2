"""The contract of a benchmark, and the registry `python -m eval` is built from.

A benchmark is one module in `eval/benchmarks/` holding its data loader and pure scoring
functions, plus a `Benchmark` subclass decorated with `@register_benchmark`. Nothing else is
edited: `python -m eval` gets a subcommand per registered benchmark (`command`, `help`, the
flags of `add_arguments`), `rescore` finds the benchmark of a results directory by the
`benchmark` field of its metrics.json (`owns`), and `compare` reads the results contract
(eval/benchmarks/common.py) of any benchmark.

The steps `run` goes through, each overridable (torchtitan-style):

    data = self.load(args)                        # the published layout under --data, or a layout error
    predictions = self.predict(args, data)        # the model: prompts, answers, make_prediction per sample
    metrics = self.score(predictions, self.config(args, data))
    write_results(args.output, predictions, metrics)

`rejudge(prediction, config)` and `score(predictions, config)` are pure: `python -m eval
rescore DIR` re-parses every raw answer with `rejudge` and must reproduce metrics.json with
`score`. `EncoderBenchmark` (a tower and its text encoder) and `GenerationBenchmark` (a LLaVA
checkpoint answering prompts) supply the flags and model loading their kind shares.

`compare`'s intervals redraw a results directory's scored units and call `score` on each redraw
(eval/uncertainty.py), so no scoring rule is written twice; `resampling(config)` says what a unit
is (default: one prediction) and which groups a headline averages, `headline_n` what each
headline metric counts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar

from eval.benchmarks.common import write_results
from llava_plugin.errors import GenfeedbackError
from llava_plugin.registry_util import Registry

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Resampling:
    """How `compare` redraws a benchmark's predictions (eval/uncertainty.py)."""

    unit: Callable[[dict], Hashable] = itemgetter("id")  # predictions with one key score together
    # a headline that averages groups (CV-Bench's sources): units are redrawn within their group
    stratum: Callable[[dict], Hashable] | None = None
    # the prediction as a member of the `draw`-th unit of a redraw, so a unit drawn twice scores as
    # two (MMVP pairs by its `pair` field); None: predictions score as they are
    relabel: Callable[[dict, int], dict] | None = None


class ResamplingError(GenfeedbackError, ValueError):
    """Predictions that cannot be redrawn as the benchmark's units."""


def field_resampling(unit: str = "id", stratum: str | None = None) -> Resampling:
    """Units keyed by the prediction field `unit` (relabelled per draw unless it is `id`), strata
    by the field `stratum`."""
    relabel = None if unit == "id" else (lambda p, draw: {**p, unit: draw})
    return Resampling(itemgetter(unit), None if stratum is None else itemgetter(stratum), relabel)


class Benchmark:
    """Base class of a benchmark; subclasses register with `@register_benchmark`."""

    name: ClassVar[str] = ""  # the registry key and metrics.json's "benchmark"
    command: ClassVar[str] = ""  # the `python -m eval` subcommand; default: `name` with '-' for '_'
    help: ClassVar[str] = ""  # one line for `python -m eval --help`
    usage: ClassVar[str] = ""  # its main flags, for the overview in `python -m eval --help`
    data_flag: ClassVar[str] = "data"  # the flag of its data location (pipelines set it from `--<command>-data`)

    # -- the command line ----------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The subcommand's flags."""

    def run(self, args: argparse.Namespace) -> int:
        """The subcommand: evaluate, write predictions.jsonl + metrics.json, print a summary; 0 = success."""
        data = self.load(args)
        predictions = self.predict(args, data)
        metrics = self.score(predictions, self.config(args, data))
        write_results(args.output, predictions, metrics)
        summary = {"benchmark": metrics["benchmark"], "headline": metrics["headline"],
                   "missing_images": metrics["missing_images"]["count"],
                   "unparseable": metrics["unparseable"]["count"], "output": str(args.output)}
        print(json.dumps(summary, indent=2))
        return 0

    # -- the steps of `run` --------------------------------------------------------------
    def load(self, args: argparse.Namespace) -> Any:
        """The benchmark's samples from its published data layout (raise DatasetLayoutError)."""
        raise NotImplementedError

    def predict(self, args: argparse.Namespace, data: Any) -> list[dict]:
        """One predictions.jsonl record per sample (see eval/benchmarks/common.py)."""
        raise NotImplementedError

    def config(self, args: argparse.Namespace, data: Any) -> dict:
        """metrics.json's `config`: everything that shaped the predictions (and that `rejudge` reads)."""
        raise NotImplementedError

    # -- pure scoring (what `rescore` calls) ---------------------------------------------
    def rejudge(self, prediction: dict, config: dict) -> dict:
        """The record with `parsed`/`correct` recomputed from `raw_answer` under `config`."""
        raise NotImplementedError

    def score(self, predictions: list[dict], config: dict) -> dict:
        """metrics.json from the predictions alone."""
        raise NotImplementedError

    def metrics_files(self, output: Path, flags: dict[str, Any]) -> list[Path]:
        """The metrics.json files a run with these flags writes, the last one written last."""
        return [Path(output) / "metrics.json"]

    def owns(self, benchmark: str) -> bool:
        """Whether a metrics.json whose `benchmark` is this value was written by this benchmark."""
        return benchmark == self.name

    # -- resampling (what `compare`'s intervals redraw) ----------------------------------
    def resampling(self, config: dict) -> Resampling:
        """The scored units of the headline and the groups it averages (default: each prediction)."""
        return Resampling()

    def headline_n(self, metric: str, predictions: list[dict], config: dict) -> int:
        """How many scored units the headline `metric` counts (the n beside its interval)."""
        unit = self.resampling(config).unit
        return len({unit(p) for p in predictions})


class EncoderBenchmark(Benchmark):
    """A benchmark of a tower with its paired text encoder (`--vision-tower SPEC --data DIR`)."""

    usage = "--vision-tower SPEC --data DIR"
    default_batch_size: ClassVar[int] = 32

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vision-tower", required=True, help="tower spec (see llava_plugin.registry)")
        add_data_arguments(parser, self.default_batch_size)

    def config(self, args: argparse.Namespace, data: Any) -> dict:
        return {"tower": args.vision_tower, "dtype": args.dtype, "device": args.device,
                "data": str(Path(args.data).resolve()),
                **self.options(args, data)}

    def options(self, args: argparse.Namespace, data: Any) -> dict:
        """The benchmark's own entries of `config` (after tower, dtype, data)."""
        return {}

    @staticmethod
    def load_tower(args: argparse.Namespace):
        import torch

        from llava_plugin.registry import load_tower

        return load_tower(args.vision_tower, device=args.device, dtype=getattr(torch, args.dtype))


class GenerationBenchmark(Benchmark):
    """A benchmark of a LLaVA checkpoint answering prompts (`--model DIR --data DIR`)."""

    usage = "--model DIR --data DIR"
    default_batch_size: ClassVar[int] = 8

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        parser.add_argument("--max-new-tokens", type=int, default=64)
        add_original_tower_argument(parser)
        add_data_arguments(parser, self.default_batch_size)

    def config(self, args: argparse.Namespace, data: Any) -> dict:
        return {"model": args.model, "vision_tower": args.vision_tower,
                "data": str(Path(args.data).resolve()), **self.options(args, data),
                "max_new_tokens": args.max_new_tokens, "dtype": args.dtype, "device": args.device,
                "decoding": "greedy", "temperature": 0, "num_beams": 1,  # eval.mllm.generate: do_sample=False
                "image_padding": "pad to square (LLaVA-1.5 image_aspect_ratio=pad)",
                **getattr(args, "checkpoint_protocol", {})}

    def options(self, args: argparse.Namespace, data: Any) -> dict:
        """The benchmark's own entries of `config` (between data and max_new_tokens)."""
        return {}

    @staticmethod
    def answer(args: argparse.Namespace, images: list, prompts: list[str],
               desc: str) -> tuple[list[str], list[str | None]]:
        """(chat prompts, greedy answers) of the checkpoint `--model`: each benchmark prompt becomes
        one user turn with its image, rendered by the checkpoint's own chat template
        (`eval.mllm.format_prompt`): the text the model sees and predictions.jsonl records."""
        import torch

        from eval import mllm

        model, processor = mllm.load_mllm(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                                          vision_tower=args.vision_tower)
        chat = [mllm.format_prompt(prompt, processor=processor) for prompt in prompts]
        # what the checkpoint brings to the protocol, for `config` (which `run` calls after `predict`):
        # its conversation template and system prompt around a prompt, and the colour images are padded with
        args.checkpoint_protocol = {"chat_format": mllm.format_prompt("{prompt}", processor=processor),
                                    "pad_color": list(mllm.mean_color(processor))}
        return chat, mllm.generate(model, processor, images, chat, batch_size=args.batch_size,
                                   max_new_tokens=args.max_new_tokens, desc=desc)


def add_data_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="the benchmark's data directory (published layout)")
    parser.add_argument("--output", required=True, type=Path,
                        help="results directory (predictions.jsonl, metrics.json)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    add_device_arguments(parser)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights and activations dtype (default: float16 on GPU, as LLaVA evaluates; "
                             "float32 on CPU)")


def resolve_device(args: argparse.Namespace) -> None:
    """Fill in --device and --dtype left at their defaults: the GPU when there is one, in float16
    (LLaVA-1.5's evaluation dtype), else the CPU in float32. metrics.json records both."""
    if not hasattr(args, "device"):
        return
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if getattr(args, "dtype", "") is None:
        args.dtype = "float32" if args.device == "cpu" else "float16"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF Llava dir or original LLaVA-1.5 dir")


def add_original_tower_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vision-tower", default=None,
        help="original LLaVA-1.5 checkpoints only: tower spec to load its mm_vision_tower from",
    )


# Every module of eval/benchmarks/ but these two registers its Benchmark on import.
BENCHMARKS: Registry[Benchmark] = Registry("benchmark", "eval.benchmarks", skip=("base", "common"))


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: register (an instance of) a `Benchmark` subclass under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    if not cls.command:
        cls.command = cls.name.replace("_", "-")
    BENCHMARKS.add(cls.name, cls())
    return cls


def benchmark_for(recorded: str) -> Benchmark:
    """The registered benchmark that wrote a metrics.json whose `benchmark` is `recorded`."""
    owners = [b for b in BENCHMARKS.values() if b.owns(recorded)]
    if len(owners) != 1:
        claimed = ", ".join(b.name for b in owners)
        problem = f"is claimed by several benchmarks: {claimed}" if owners else "is unknown"
        raise ValueError(f"benchmark {recorded!r} of a metrics.json {problem}; registered benchmarks: "
                         f"{BENCHMARKS.names()}")
    return owners[0]
