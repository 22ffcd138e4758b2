"""Throughput and peak memory of the LLaVA trainer users run, side by side:
gradient checkpointing off/on x random / length-grouped / length-grouped and packed micro-batches.

    python -m mllm_train bench --vision-tower SPEC --llm DIR --data JSON --image-folder DIR \\
        [--preset llava15-7b-finetune] [--steps 10] [--json OUT.json]

Each variant runs the real `LlavaTrainer` (DeepSpeed with the preset's ZeRO config, its optimizer,
schedule and data plan) in its own process, so its peak memory is its own (CUDA max allocated; on
CPU the process's peak RSS, and `step_peak_growth_mb`, how far the timed steps raised it above
what setup and the warm-up step reached), on the same model, data and micro-batch size, with one
micro-batch per optimizer step. `random` is the trainer's seeded shuffle (LLaVA without grouping);
`grouped` is LLaVA's grouping by modality and length with `--group-mult` micro-batches per
length-sorted megabatch (data.length_group_megabatches), so a micro-batch holds similar lengths and
carries less padding; `grouped_packed` also concatenates each micro-batch into one row
(data.pack_sequences), with no padding at all. tokens/s counts real (non-pad) positions, image
tokens included (`positions` adds the padding); the first step is warm-up and not timed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

BATCHINGS = ("random", "grouped", "grouped_packed")
VARIANTS = [(gc, batching) for batching in BATCHINGS for gc in (False, True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llava_plugin.registry import SPEC_HELP

    parser.add_argument("--vision-tower", required=True, help=f"tower spec;{SPEC_HELP}")
    parser.add_argument("--llm", required=True, help="language model directory")
    parser.add_argument("--data", required=True, help="LLaVA JSON file")
    parser.add_argument("--image-folder", default=None, help="image folder of the data")
    parser.add_argument("--preset", default="llava15-7b-finetune", help="config preset (template, lengths, ...)")
    parser.add_argument("--steps", type=int, default=10, help="timed micro-batches per variant (+1 warm-up)")
    parser.add_argument("--micro-batch", type=int, default=None, help="micro-batch size (default: the preset's)")
    parser.add_argument("--group-mult", type=int, default=8, help="micro-batches per length-sorted megabatch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--json", default=None, help="also write the results here")


def variant_config(config: dict, *, gradient_checkpointing: bool, batching: str, steps: int, group_mult: int,
                   output_dir: str) -> dict:
    """The trainer config of one variant: one micro-batch per step, `steps` timed + 1 warm-up."""
    from llava_plugin.config import deep_merge

    if batching not in BATCHINGS:
        raise ValueError(f"batching {batching!r}: expected one of {BATCHINGS}")
    micro = config.get("batch", {}).get("micro_batch_size", 16)
    return deep_merge(config, {
        "output_dir": output_dir,
        "batch": {"global_batch_size": micro, "micro_batch_size": micro},
        "schedule": {"max_steps": steps + 1, "warmup_steps": 0, "warmup_ratio": 0.0},
        "precision": {"gradient_checkpointing": gradient_checkpointing},
        "data": {"group_by_modality_length": batching != "random", "pack_sequences": batching == "grouped_packed",
                 "length_group_megabatches": group_mult if batching != "random" else 1},
        "checkpointing": {"every_steps": 0, "resume": "none"},
        "logging": {"every_steps": 1, "progress_bar": False},
    })


def run_variant(spec: dict) -> dict:
    """One variant, in the current process: the real trainer's setup, 1 warm-up step, timed steps."""
    import tempfile

    import torch

    from mllm_train.config import TrainConfig, from_dict
    from mllm_train.trainer import LlavaTrainer

    with tempfile.TemporaryDirectory() as out:
        cfg = from_dict(TrainConfig, variant_config(spec["config"], gradient_checkpointing=spec["gradient_checkpointing"],
                                                    batching=spec["batching"], steps=spec["steps"],
                                                    group_mult=spec["group_mult"], output_dir=out))
        trainer = LlavaTrainer(cfg).setup()
        cuda = torch.cuda.is_available()
        warm = trainer.train(1)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = _max_rss_bytes()
        start = time.perf_counter()
        rows = trainer.train(spec["steps"])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    real, positions = sum(r["tokens"] for r in rows), sum(r["positions"] for r in rows)
    if cuda:
        peak, growth = torch.cuda.max_memory_allocated(), None
    else:
        peak = _max_rss_bytes()
        growth = round((peak - rss_before) / 2 ** 20, 1)
    return {"gradient_checkpointing": spec["gradient_checkpointing"], "batching": spec["batching"],
            "steps": len(rows), "real_tokens": real, "positions": positions,
            "pad_fraction": round(1 - real / positions, 4), "seconds": round(seconds, 4),
            "tokens_per_s": round(real / seconds, 1), "peak_memory_mb": round(peak / 2 ** 20, 1),
            "memory_kind": "cuda_max_allocated" if cuda else "cpu_peak_rss", "step_peak_growth_mb": growth,
            "zero_stage": trainer.engine.zero_optimization_stage(),
            "first_loss": warm[0]["loss"], "device": "cuda" if cuda else "cpu"}


def _max_rss_bytes() -> int:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _own_process_group() -> None:
    """In a variant's worker: forget any rendezvous this process inherited (a launcher's, or the
    1-process group an earlier in-process run set up), so the trainer makes a 1-process group."""
    import os

    from llava_plugin.distributed import RENDEZVOUS_ENV

    for key in RENDEZVOUS_ENV:
        os.environ.pop(key, None)


def bench(config: dict, steps: int, group_mult: int) -> list[dict]:
    """Every variant, each in a fresh process, in VARIANTS order."""
    context = multiprocessing.get_context("spawn")
    results = []
    for gc, batching in VARIANTS:
        spec = {"config": config, "batching": batching, "gradient_checkpointing": gc, "steps": steps,
                "group_mult": group_mult}
        with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_own_process_group) as pool:
            results.append(pool.submit(run_variant, spec).result())
    return results


def table(results: list[dict]) -> str:
    columns = ["batching", "gradient_checkpointing", "tokens_per_s", "peak_memory_mb", "step_peak_growth_mb",
               "pad_fraction", "real_tokens", "seconds", "first_loss"]
    rows = [[str(r[c]) for c in columns] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) + " |"
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def run(args: argparse.Namespace) -> int:
    from llava_plugin.config import deep_merge, parse_overrides
    from mllm_train.config import preset_data

    config = deep_merge(preset_data(args.preset), {
        "stage": "finetune",
        "model": {"vision_tower": args.vision_tower, "llm": args.llm},
        "data": {"data_path": args.data, "image_folder": args.image_folder},
        "lora": {"enabled": False},
    })
    if args.micro_batch:
        config["batch"] = {"micro_batch_size": args.micro_batch}
    config = deep_merge(config, parse_overrides(args.set))
    results = bench(config, args.steps, args.group_mult)
    print(table(results))
    payload = {"preset": args.preset, "micro_batch_size": config["batch"]["micro_batch_size"], "results": results}
    print(json.dumps(payload))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m mllm_train.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
