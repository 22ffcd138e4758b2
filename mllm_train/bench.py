"""Throughput and peak memory of LLaVA training steps, side by side:
gradient checkpointing off/on x random / length-grouped / length-grouped and packed micro-batches.

    python -m mllm_train bench --vision-tower SPEC --llm DIR --data JSON --image-folder DIR \\
        [--preset llava15-7b-finetune] [--steps 10] [--json OUT.json]

Each variant runs in its own process (so its peak memory is its own: CUDA max allocated; on
CPU the process's peak RSS, and `step_peak_growth_mb`, how far the training steps raised it
above the peak reached while loading) on the same model, data and micro-batch size: a finetune step
(LLM + projector train, plain AdamW, no DeepSpeed) on the first `--steps` micro-batches of
that batching. `random` cuts a seeded shuffle into micro-batches; `grouped` sorts megabatches
of `--group-mult` micro-batches by length first (mllm_train.data's sampler), so a micro-batch
holds similar lengths and carries less padding; `grouped_packed` concatenates those micro-batches
into one row each (mllm_train.packing), with no padding at all. tokens/s counts real (non-pad) positions,
image tokens included (`positions` adds the padding); the first step is warm-up and not timed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
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


def micro_batches(lengths: list[int], has_image: list[bool], batch: int, batching: str, count: int,
                  seed: int, group_mult: int) -> list[list[int]]:
    """The first `count` full micro-batches of one batching, each of one modality."""
    from mllm_train.data import ModalityLengthGroupedBatchSampler

    if batching in ("grouped", "grouped_packed"):
        sampler = ModalityLengthGroupedBatchSampler(lengths, has_image, batch, seed=seed, megabatch_mult=group_mult,
                                                    drop_last=True)
        batches = [step[0] for step in sampler.steps()]
    elif batching == "random":
        sampler = ModalityLengthGroupedBatchSampler(lengths, has_image, batch, seed=seed, megabatch_mult=1,
                                                    drop_last=True)
        batches = [step[0] for step in sampler.steps()]  # megabatch of one batch: a plain shuffle per modality
        rng = random.Random(seed)
        rng.shuffle(batches)
    else:
        raise ValueError(f"batching {batching!r}: expected one of {BATCHINGS}")
    if len(batches) < count:
        raise ValueError(f"the data gives {len(batches)} micro-batches of {batch}; the bench needs {count}")
    return batches[:count]


def run_variant(spec: dict) -> dict:
    """One variant, in the current process: build, run the micro-batches, measure."""
    import torch

    from mllm_train.config import TrainConfig, from_dict
    from mllm_train.conversation import get_template
    from mllm_train.data import Collator, LlavaDataset, default_pad_token_id
    from mllm_train.model import build_model, param_groups, unwrap
    from mllm_train.packing import PackedCollator, num_positions

    cfg = from_dict(TrainConfig, spec["config"])
    model, processor = build_model(cfg)
    llava = unwrap(model)
    dataset = LlavaDataset(cfg.data, processor.tokenizer, get_template(cfg.template), processor.image_processor,
                           image_token_id=llava.config.image_token_id, num_image_tokens=llava.config.image_seq_length)
    collate = (PackedCollator() if spec["batching"] == "grouped_packed"
               else Collator(default_pad_token_id(processor.tokenizer)))
    batches = micro_batches(dataset.lengths, dataset.has_image, cfg.batch.micro_batch_size, spec["batching"],
                            spec["steps"] + 1, cfg.data.seed, spec["group_mult"])
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim))
    dtype = next(model.parameters()).dtype
    losses, real, positions, seconds = [], 0, 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _max_rss_bytes()
    for i, indices in enumerate(batches):
        batch = collate([dataset[j] for j in indices])
        batch = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        losses.append(float(loss.detach()))
        if i == 0:
            continue  # warm-up
        seconds += time.perf_counter() - start
        batch_real, batch_positions = num_positions(batch)
        real += batch_real
        positions += batch_positions
    if device.type == "cuda":
        peak, growth = torch.cuda.max_memory_allocated(), None
    else:
        peak = _max_rss_bytes()
        growth = round((peak - rss_before) / 2 ** 20, 1)
    return {"gradient_checkpointing": spec["gradient_checkpointing"], "batching": spec["batching"],
            "steps": len(batches) - 1, "real_tokens": real, "positions": positions,
            "pad_fraction": round(1 - real / positions, 4), "seconds": round(seconds, 4),
            "tokens_per_s": round(real / seconds, 1), "peak_memory_mb": round(peak / 2 ** 20, 1),
            "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
            "step_peak_growth_mb": growth,
            "first_loss": losses[0], "device": device.type}


def _max_rss_bytes() -> int:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench(config: dict, steps: int, group_mult: int) -> list[dict]:
    """Every variant, each in a fresh process, in VARIANTS order."""
    context = multiprocessing.get_context("spawn")
    results = []
    for gc, batching in VARIANTS:
        variant_config = json.loads(json.dumps(config))
        variant_config.setdefault("precision", {})["gradient_checkpointing"] = gc
        spec = {"config": variant_config, "batching": batching, "gradient_checkpointing": gc, "steps": steps,
                "group_mult": group_mult}
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
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
        "stage": "finetune", "output_dir": "unused-by-bench",
        "model": {"vision_tower": args.vision_tower, "llm": args.llm},
        "data": {"data_path": args.data, "image_folder": args.image_folder},
        "lora": {"enabled": False},
    })
    if args.micro_batch:
        config["batch"] = {"micro_batch_size": args.micro_batch, "global_batch_size": args.micro_batch}
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
