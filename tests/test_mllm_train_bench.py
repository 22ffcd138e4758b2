"""mllm_train bench: the batchings it compares, one measured variant, and the full CLI table."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from mllm_train.bench import run_variant, table, variant_config


def _padding(batches, lengths):
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)


def test_grouped_batches_carry_less_padding():
    """What the bench's `grouped` variant runs: LLaVA's grouping with length-sorted megabatches."""
    from llava_plugin.train.plan import modality_length_steps, shuffled_steps

    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(400)]
    has_image = [rng.random() < 0.8 for _ in range(400)]
    grouped = [b for step in modality_length_steps(lengths, has_image, 4, 1, seed=1, epoch=0, megabatch_mult=8,
                                                   drop_last=True) for b in step]
    plain = [b for step in shuffled_steps(400, 4, 4, seed=1, epoch=0) for b in step]
    assert all(len({has_image[i] for i in b}) == 1 for b in grouped)  # one modality per micro-batch
    assert _padding(grouped, lengths) < 0.5 * _padding(plain, lengths)


def test_variant_config_is_the_trainers_with_one_micro_batch_per_step():
    config = {"batch": {"global_batch_size": 128, "micro_batch_size": 16}, "data": {"data_path": "d.json"}}
    cfg = variant_config(config, gradient_checkpointing=True, batching="grouped_packed", steps=3, group_mult=8,
                         output_dir="out")
    assert cfg["batch"] == {"global_batch_size": 16, "micro_batch_size": 16}
    assert cfg["schedule"]["max_steps"] == 4 and cfg["precision"]["gradient_checkpointing"] is True
    assert cfg["data"] == {"data_path": "d.json", "group_by_modality_length": True, "pack_sequences": True,
                           "length_group_megabatches": 8}
    with pytest.raises(ValueError, match="batching 'sorted'"):
        variant_config(config, gradient_checkpointing=False, batching="sorted", steps=1, group_mult=1, output_dir="o")


def test_checkpointing_and_packing_change_speed_not_math(zoo):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = {"stage": "finetune", "template": "vicuna_v1",
              "model": {"vision_tower": str(zoo.clip), "llm": str(zoo.llm)},
              "data": {"data_path": str(zoo.data["llava_finetune"]), "image_folder": str(zoo.data["llava_image_folder"]),
                       "max_length": 256, "num_workers": 0},
              "batch": {"global_batch_size": 2, "micro_batch_size": 2}, "precision": {"dtype": "fp32"}}
    try:
        results = {}
        for gc, batching in ((False, "grouped"), (True, "grouped"), (False, "grouped_packed")):
            spec = {"config": config, "batching": batching, "gradient_checkpointing": gc, "steps": 2, "group_mult": 4}
            results[gc, batching] = run_variant(spec)
    finally:
        torch.set_num_threads(threads)
    off, on, packed = results[False, "grouped"], results[True, "grouped"], results[False, "grouped_packed"]
    assert (off["real_tokens"], off["positions"]) == (on["real_tokens"], on["positions"]) and off["real_tokens"] > 0
    assert off["first_loss"] == pytest.approx(on["first_loss"], abs=1e-6)
    # packing: same samples and loss, no padding
    assert packed["real_tokens"] == packed["positions"] == off["real_tokens"]
    assert packed["pad_fraction"] == 0 and packed["first_loss"] == pytest.approx(off["first_loss"], abs=1e-5)
    assert off["tokens_per_s"] > 0 and off["peak_memory_mb"] > 0 and off["steps"] == 2
    rendered = table(list(results.values())).splitlines()
    assert rendered[0].startswith("| batching") and len(rendered) == 5


@pytest.mark.slow
def test_bench_cli_runs_every_variant(zoo, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mllm_train", "bench", "--preset", "tiny-finetune", "--vision-tower", str(zoo.clip),
           "--llm", str(zoo.llm), "--data", str(zoo.data["llava_finetune"]),
           "--image-folder", str(zoo.data["llava_image_folder"]), "--steps", "2", "--group-mult", "4",
           "--json", str(out)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    variants = {(r["batching"], r["gradient_checkpointing"]) for r in payload["results"]}
    assert variants == {(b, gc) for b in ("random", "grouped", "grouped_packed") for gc in (False, True)}
    assert "| batching" in result.stdout
