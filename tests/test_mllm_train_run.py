"""LLaVA-1.5 training runs on the tiny zoo: pretrain -> finetune with several towers, what
changes in each stage, export/reload, loss, resume, the CLI, and ZeRO-3 across 2 processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("GENFEEDBACK_SKIP_SHM_OP", "1")  # skip DeepSpeed's ~80 s CPU shm op compile

from llava_plugin.llava import build_llava, read_mm_projector
from llava_plugin.registry import load_tower
from llava_plugin.train.checkpoint import METRICS_FILE
from mllm_train.config import load_config
from mllm_train.trainer import LlavaTrainer

PROJECTOR = "model.multi_modal_projector."
TOWER = "model.vision_tower."


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: extra intra-op threads only contend
    yield
    torch.set_num_threads(threads)


def subprocess_env() -> dict:
    """This environment minus the process-group variables an in-process run may have set
    (a child would otherwise try to join this process's group)."""
    group_vars = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in group_vars}
    return {**env, "OMP_NUM_THREADS": "1", "GENFEEDBACK_SKIP_SHM_OP": "1"}


def stage_config(zoo, out, stage, tower, *, preset=None, **extra):
    data = "llava_pretrain" if stage == "pretrain" else "llava_finetune"
    images = "llava_pretrain_images" if stage == "pretrain" else "llava_image_folder"
    overrides = {"model": {"vision_tower": tower, "llm": str(zoo.llm)},
                 "data": {"data_path": str(zoo.data[data]), "image_folder": str(zoo.data[images])},
                 "output_dir": str(out)}
    for key, value in extra.items():
        if isinstance(value, dict):
            overrides[key] = {**overrides.get(key, {}), **value}
        else:
            overrides[key] = value
    return load_config(preset or f"tiny-{stage}", overrides)


def tower_spec(zoo, name, tmp_path):
    if name == "enhanced":  # an `enhance` output dir: HF CLIP + genfeedback.json
        return str(load_tower(str(zoo.clip)).save_pretrained(tmp_path / "enhanced", {"method": "diva", "steps": 2}))
    return str(getattr(zoo, name))


def load_state(path):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path).state_dict()


def prompt_inputs(processor):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the star?"}]}],
        add_generation_prompt=True)
    return processor(images=[Image.new("RGB", (36, 30), (220, 40, 40))], text=[prompt], return_tensors="pt")


@pytest.mark.parametrize("tower_name", ["clip", "siglip", "enhanced"])
def test_pretrain_then_finetune(zoo, tmp_path, tower_name):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    spec = tower_spec(zoo, tower_name, tmp_path)
    start = build_llava(load_tower(spec), zoo.llm, seed=0)[0].state_dict()

    pre = LlavaTrainer(stage_config(zoo, tmp_path / "pre", "pretrain", spec, schedule={"max_steps": 3}))
    pre_dir = pre.fit()
    pre_state = load_state(pre_dir)
    changed = {k for k in start if not torch.equal(start[k], pre_state[k])}
    assert changed == {k for k in start if k.startswith(PROJECTOR)}  # pretraining trains the projector only
    projector_file = tmp_path / "pre" / "mm_projector.bin"
    for key, value in read_mm_projector(projector_file).items():
        assert torch.equal(value, pre_state[PROJECTOR + key])

    fine = LlavaTrainer(stage_config(zoo, tmp_path / "fine", "finetune", spec, schedule={"max_steps": 3},
                                model={"pretrained_projector": str(projector_file)}))
    fine_dir = fine.fit()
    fine_state = load_state(fine_dir)
    for key in start:
        if key.startswith(TOWER):
            assert torch.equal(fine_state[key], start[key]), f"finetuning changed the tower: {key}"
    changed = {k for k in start if not torch.equal(pre_state[k], fine_state[k])}
    assert any(k.startswith("model.language_model.layers.") for k in changed)
    assert any(k.startswith(PROJECTOR) for k in changed) and "lm_head.weight" in changed
    meta = json.loads((fine_dir / "genfeedback.json").read_text())
    assert (meta["stage"], meta["steps"], meta["vision_tower"]) == ("finetune", 3, spec)

    # the export reloads with plain transformers and greedy-generates like the in-memory (ZeRO-3) model
    reloaded = LlavaForConditionalGeneration.from_pretrained(fine_dir).eval()
    processor = AutoProcessor.from_pretrained(fine_dir)
    inputs = prompt_inputs(processor)
    in_memory = fine.engine.module.eval()
    with torch.no_grad():
        expected = in_memory.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
        assert torch.equal(reloaded.generate(**inputs, max_new_tokens=6, do_sample=False), expected)


def test_loss_falls_on_a_fixed_set(zoo, tmp_path):
    trainer = LlavaTrainer(stage_config(zoo, tmp_path, "finetune", str(zoo.clip), schedule={"epochs": 3}))
    trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    steps = trainer.steps_per_epoch
    assert len(lines) == 3 * steps and steps >= 12  # 48 samples, global batch 4 (+ padded partial steps)
    by_epoch = [sum(line["loss"] for line in lines if line["epoch"] == e) / steps for e in range(3)]
    assert by_epoch[0] > by_epoch[1] > by_epoch[2] and by_epoch[2] < by_epoch[0] - 1.0, by_epoch


def test_lora_finetune_resumes_exactly(zoo, tmp_path):
    """Interrupted after 2 steps and resumed == uninterrupted: weights, optimizer, data position,
    RNG (LoRA dropout draws) all come back."""
    def config(out):
        return stage_config(zoo, out, "finetune", str(zoo.clip), preset="tiny-finetune-lora", schedule={"max_steps": 5})

    straight = LlavaTrainer(config(tmp_path / "straight"))
    straight_dir = straight.fit()

    first = LlavaTrainer(config(tmp_path / "resumed"))
    assert first.fit(stop_after=2) is None
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002"]
    second = LlavaTrainer(config(tmp_path / "resumed"))
    second.setup()
    assert second.step == 2
    resumed_dir = second.fit()

    a, b = load_state(straight_dir), load_state(resumed_dir)
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [[json.loads(line)["loss"] for line in (out / METRICS_FILE).read_text().splitlines()]
              for out in (tmp_path / "straight", tmp_path / "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 5


def test_resume_refuses_a_different_run(zoo, tmp_path):
    from llava_plugin.config import ConfigError

    LlavaTrainer(stage_config(zoo, tmp_path, "pretrain", str(zoo.clip), schedule={"max_steps": 4})).fit(stop_after=1)
    with pytest.raises(ConfigError, match=r"another run \(max_steps: 4 -> 6\)"):
        LlavaTrainer(stage_config(zoo, tmp_path, "pretrain", str(zoo.clip), schedule={"max_steps": 6})).setup()


def test_cli_pretrain_and_import_original(zoo, tmp_path):
    env = subprocess_env()
    cmd = [sys.executable, "-m", "mllm_train", "pretrain", "--preset", "tiny-pretrain",
           "--vision-tower", f"open_clip:{zoo.open_clip}", "--llm", str(zoo.llm),
           "--data", str(zoo.data["llava_pretrain"]), "--image-folder", str(zoo.data["llava_pretrain_images"]),
           "--output", str(tmp_path / "run"), "--max-steps", "2", "--set", "optim.lr=1e-3"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"export": str(tmp_path / "run" / "llava"), "step": 2, "total_steps": 2}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optim"]["lr"] == 1e-3 and config["model"]["vision_tower"] == f"open_clip:{zoo.open_clip}"

    bad = subprocess.run(cmd[:-2] + ["--set", "optim.lrr=1"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "did you mean" in bad.stderr

    from mllm_train.__main__ import main

    assert main(["import-original", str(zoo.llava_original), str(tmp_path / "imported")]) == 0
    imported, reference = load_state(tmp_path / "imported"), load_state(zoo.llava)
    assert all(torch.equal(imported[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_zero3_two_processes_match_one(zoo, tmp_path):
    """ZeRO-3 finetune on 2 ranks (1 micro-batch each) == 1 rank (2 accumulated micro-batches)."""
    env = subprocess_env()

    def run(nproc):
        out = tmp_path / f"world{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "mllm_train", "finetune", "--preset", "tiny-finetune", "--deepspeed", "zero3",
               "--vision-tower", str(zoo.clip), "--llm", str(zoo.llm), "--data", str(zoo.data["llava_finetune"]),
               "--image-folder", str(zoo.data["llava_image_folder"]), "--output", str(out), "--max-steps", "3"]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
        return out

    one, two = run(1), run(2)
    a, b = load_state(one / "llava"), load_state(two / "llava")
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    loss = [[json.loads(line)["loss"] for line in (out / METRICS_FILE).read_text().splitlines()] for out in (one, two)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)


def test_finetune_from_an_original_llava_checkpoint(zoo, tmp_path):
    """model.init_from: continue from an original LLaVA-1.5 dir (converted on load)."""
    cfg = stage_config(zoo, tmp_path, "finetune", "", schedule={"max_steps": 2}, model={"init_from": str(zoo.llava_original),
                                                                         "llm": ""})
    out = LlavaTrainer(cfg).fit()
    start, trained = load_state(zoo.llava), load_state(out)
    assert sorted(start) == sorted(trained)
    assert all(torch.equal(trained[k], start[k]) for k in start if k.startswith(TOWER))
    assert not torch.equal(trained["lm_head.weight"], start["lm_head.weight"])


def test_bf16_with_gradient_checkpointing(zoo, tmp_path):
    """The paper-scale settings (bf16, gradient checkpointing) on the tiny model."""
    cfg = stage_config(zoo, tmp_path, "pretrain", str(zoo.siglip), schedule={"max_steps": 2}, precision={"dtype": "bf16", "gradient_checkpointing": True})
    trainer = LlavaTrainer(cfg)
    out = trainer.fit()
    assert unwrap_dtype(trainer) == torch.bfloat16
    assert trainer.engine.module.is_activation_checkpointing
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(line["loss"])) for line in lines)
    state = load_state(out)
    assert state[PROJECTOR + "linear_1.weight"].dtype == torch.bfloat16


def unwrap_dtype(trainer):
    return next(trainer.engine.module.parameters()).dtype


def test_packed_micro_batches_train_like_padded_ones(zoo, tmp_path):
    losses = []
    for pack in (False, True):
        out = tmp_path / f"pack{pack}"
        LlavaTrainer(stage_config(zoo, out, "finetune", str(zoo.clip), schedule={"max_steps": 3}, data={"pack_sequences": pack})).fit()
        lines = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
        losses.append([line["loss"] for line in lines])
        assert [line["samples"] for line in lines] == [4, 4, 4]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_zero3_keeps_the_frozen_tower_whole_and_trains_as_without_zero(zoo, tmp_path, caplog):
    """ZeRO-3 partitions the LLM and projector, never the frozen tower (FrozenOutside), and a
    1-process run, which drops to stage 0, follows the same loss curve and exports the same model."""
    runs = {}
    for name, keep in (("zero3", True), ("stage0", False)):
        cfg = stage_config(zoo, tmp_path / name, "finetune", str(zoo.clip), schedule={"max_steps": 2},
                           deepspeed={"config": "zero3", "keep_zero_on_one_process": keep})
        with caplog.at_level("INFO", logger="genfeedback"):
            trainer = LlavaTrainer(cfg).setup()
        assert trainer.zero_stage == (3 if keep else 0)
        assert ("has nothing to partition" in caplog.text) is not keep
        assert "ready to train" in caplog.text
        caplog.clear()
        llava = trainer.engine.module
        if keep:
            assert not any(n.startswith("model.vision_tower.") for n, _ in llava.named_parameters())
            assert all(not hasattr(p, "ds_id") for p in llava.model.vision_tower.parameters())
            assert all(hasattr(p, "ds_id") for p in llava.model.language_model.parameters())
        trainer.train()
        runs[name] = ([r["loss"] for r in trainer.history], load_state(trainer.finish()))
    assert runs["zero3"][0] == pytest.approx(runs["stage0"][0], rel=1e-5)
    a, b = runs["zero3"][1], runs["stage0"][1]
    assert sorted(a) == sorted(b) and any(k.startswith(TOWER) for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_bad_image_found_mid_run_is_one_line_or_a_counted_skip(zoo, tmp_path):
    """An image truncated after its header passes the start-up checks (verify: header) and is met only
    in training: without skip_bad_samples, a one-line error naming it; with it, a replacement and
    `skipped_samples` in metrics.jsonl, counted once over two epochs; past max_skip_fraction, an error."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(zoo.data["llava_image_folder"], images)
    records = json.loads(Path(zoo.data["llava_finetune"]).read_text())
    broken = records[0]["image"]
    jpeg = (images / broken).read_bytes()
    (images / broken).write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 20])  # cut 20 bytes into the scan
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))

    def run(out, *extra):
        cmd = [sys.executable, "-m", "mllm_train", "finetune", "--preset", "tiny-finetune", "--vision-tower",
               str(zoo.clip), "--llm", str(zoo.llm), "--data", str(data), "--image-folder", str(images),
               "--output", str(tmp_path / out), "--max-steps", "24", "--set", "logging.progress_bar=false", *extra]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, env=subprocess_env(), timeout=600)

    failed = run("strict")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    [error] = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert f"sample '{records[0]['id']}'" in error and broken in error and "skip_bad_samples" in error

    skipped = run("skip", "--skip-bad-samples", "--set", "data.max_skip_fraction=0.5")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "skip" / METRICS_FILE).read_text().splitlines()]
    assert len(rows) == 24 and rows[-1]["skipped_samples"] == 1  # met in both epochs, counted once
    assert rows[0]["skipped_samples"] <= 1

    capped = run("capped", "--skip-bad-samples", "--set", "data.max_skip_fraction=0")
    assert capped.returncode == 2 and "Traceback" not in capped.stderr, capped.stderr[-3000:]
    assert "more than data.max_skip_fraction=0.0" in capped.stderr
