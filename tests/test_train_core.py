"""llava_plugin.train: the pieces both training stages share (plan, schedule, metrics log, LoRA merge)."""
import math

import pytest
import torch

from llava_plugin.config import ConfigError
from llava_plugin.errors import BadFileError
from llava_plugin.train.checkpoint import (
    append_metrics,
    check_run_record,
    files_bytes,
    files_fingerprint,
    read_metrics,
    truncate_metrics,
    write_run_record,
)
from llava_plugin.train.plan import (
    BatchPlan,
    EpochOrder,
    PlanSampler,
    StreamOrder,
    modality_length_steps,
    shuffled_steps,
)
from llava_plugin.train.schedule import build_scheduler, warmup_steps


# ---- the plan ------------------------------------------------------------------------------
def _stream_by_step(world, steps, shuffle=True):
    """{step: dataset indices of the global batch, in global micro-batch order} over all ranks."""
    order = StreamOrder(20, micro_batch=2, seed=3, shuffle=shuffle)
    out = {}
    for rank in range(world):
        plan = BatchPlan(global_batch=8, micro_batch=2, world_size=world, rank=rank)
        plan.check()
        for step in range(steps):
            for micro in plan.rank_micro_indices(step):
                out.setdefault(step, {})[micro] = order.micro_batch_items(micro)
    return {s: [i for m in sorted(v) for i in v[m]] for s, v in out.items()}


def test_stream_order_gives_every_world_size_the_same_global_batches():
    one = _stream_by_step(1, 6)
    assert _stream_by_step(2, 6) == one == _stream_by_step(4, 6)
    epoch0 = one[0] + one[1] + one[2][:4]  # 20 images = 2.5 steps of 8
    assert sorted(epoch0) == list(range(20))  # each image once per epoch
    assert one[2][4:] + one[3] != epoch0[:12]  # the next epoch is reshuffled
    assert _stream_by_step(1, 6) == one  # deterministic
    assert _stream_by_step(1, 1, shuffle=False)[0] == list(range(8))


@pytest.mark.parametrize("grouped", [False, True])
def test_epoch_order_is_world_size_invariant(grouped):
    lengths = [5 + (i * 7) % 13 for i in range(22)]
    has_image = [i % 5 != 0 for i in range(22)]

    def steps_for(epoch):
        if grouped:
            return modality_length_steps(lengths, has_image, 2, 4, seed=0, epoch=epoch)
        return shuffled_steps(22, 8, 2, seed=0, epoch=epoch)

    order = EpochOrder(steps_for)
    plan0 = steps_for(1)
    assert plan0 == steps_for(1) != steps_for(2)
    assert {i for step in plan0 for batch in step for i in batch} == set(range(22))
    assert all(len(step) == 4 for step in plan0)
    for world in (1, 2, 4):  # one global step = the same samples whatever the world size
        seen = {}
        for rank in range(world):
            plan = BatchPlan(global_batch=8, micro_batch=2, world_size=world, rank=rank)
            for step in range(order.steps_per_epoch, 2 * order.steps_per_epoch):  # epoch 1
                for g in plan.rank_micro_indices(step):
                    seen.setdefault(step, []).extend(order.micro_batch_items(g, plan.micro_per_step))
        for k, step in enumerate(plan0):
            assert sorted(seen[order.steps_per_epoch + k]) == sorted(i for batch in step for i in batch)
    if grouped:
        assert all(len({has_image[i] for batch in step for i in batch}) == 1 for step in plan0)


def test_sampler_resumes_at_a_step():
    plan = BatchPlan(global_batch=8, micro_batch=2, world_size=2, rank=1)
    full = list(PlanSampler(plan, 0, 5))
    assert list(PlanSampler(plan, 3, 5)) == full[3 * plan.accumulation:]
    assert len(PlanSampler(plan, 3, 5)) == 2 * plan.accumulation
    assert full[:2] == [1, 3]  # rank 1 takes micro-batches 1 and 3 of step 0


def test_plan_check_keeps_the_global_batch_and_suggests_a_micro_batch():
    with pytest.raises(ConfigError, match=r"not divisible by world size 3: no micro batch splits 8 over 3 ranks"):
        BatchPlan(global_batch=8, micro_batch=2, world_size=3).check("batch.")
    with pytest.raises(ConfigError, match=r"world size 8: set batch.micro_batch_size=4"):
        BatchPlan(global_batch=32, micro_batch=8, world_size=8).check("batch.")  # un2CLIP's 32 on 8 GPUs
    BatchPlan(global_batch=32, micro_batch=4, world_size=8).check()


# ---- the schedule --------------------------------------------------------------------------
def _lrs(kind, max_steps, warmup, min_lr_ratio=0.0):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, kind=kind, max_steps=max_steps, warmup=warmup, min_lr_ratio=min_lr_ratio)
    out = []
    for _ in range(max_steps + 1):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def _reference_lrs(name, max_steps, warmup, **kwargs):
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps, **kwargs)
    out = []
    for _ in range(max_steps + 1):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out, scheduler


def test_schedule_is_upstreams_linear_warmup_then_cosine_or_constant():
    cosine = _lrs("cosine", 10, 2)
    assert cosine[:3] == [0.0, 0.5, 1.0]  # the first step trains at lr 0, as the HF Trainer does
    assert cosine[6] == pytest.approx(0.5) and cosine[10] == pytest.approx(0.0)
    assert _lrs("constant", 10, 2)[:4] == [0.0, 0.5, 1.0, 1.0]
    assert _lrs("cosine", 10, 0, min_lr_ratio=0.1)[10] == pytest.approx(0.1)
    assert warmup_steps(max_steps=50, ratio=0.03) == math.ceil(0.03 * 50) == 2
    assert warmup_steps(max_steps=50, steps=7, ratio=0.5) == 7


@pytest.mark.parametrize("max_steps,warmup", [(50, 2), (4600, 138), (7, 0), (3, 3), (1, 1), (12, 20)])
def test_schedule_lrs_equal_transformers_get_scheduler_at_every_step(max_steps, warmup):
    """Our LambdaLR multipliers give exactly (==) the lrs of the transformers schedulers the upstream
    trainers use, and the same scheduler state_dict."""
    pairs = [(("cosine", 0.0), ("cosine", {})), (("constant", 0.0), ("constant_with_warmup", {})),
             (("cosine", 0.1), ("cosine_with_min_lr", {"scheduler_specific_kwargs": {"min_lr_rate": 0.1}}))]
    for (kind, min_lr_ratio), (name, kwargs) in pairs:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ours = build_scheduler(optimizer, kind=kind, max_steps=max_steps, warmup=warmup, min_lr_ratio=min_lr_ratio)
        reference, theirs = _reference_lrs(name, max_steps, warmup, **kwargs)
        assert _lrs(kind, max_steps, warmup, min_lr_ratio=min_lr_ratio) == reference, (kind, min_lr_ratio)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert ours.state_dict()["lr_lambdas"] == theirs.state_dict()["lr_lambdas"]  # partials' (empty) __dict__


# ---- metrics.jsonl -------------------------------------------------------------------------
def test_metrics_log_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_metrics(path, {"step": step, "loss": 1.0 / step})
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    truncate_metrics(path, 2)  # what a resume from step 2 does: the torn row goes with the unsaved ones
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    append_metrics(path, {"step": 3, "loss": 0.3})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')
    append_metrics(path, {"step": 4, "loss": 0.25})  # never glued to a torn line
    assert path.read_text().splitlines()[-2:] == ['{"step": 4, "lo', '{"step": 4, "loss": 0.25}']
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(BadFileError, match=r"metrics.jsonl:2 is not valid JSON"):
        read_metrics(path)
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_one_process_trains_without_zero_unless_kept_or_offloading(caplog):
    from llava_plugin.train import deepspeed as ds

    zero3 = ds.load_json("zero3")
    with caplog.at_level("INFO", logger="genfeedback"):
        single = ds.for_world(zero3, 1)
    assert ds.zero_stage(single) == 0 and "has nothing to partition" in caplog.text
    assert ds.for_world(zero3, 2) is zero3  # more ranks: the preset's stage
    assert ds.for_world(zero3, 1, keep=True) is zero3
    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    assert ds.for_world(offload, 1) is offload  # ZeRO-Offload is worth its hooks on one GPU
    assert ds.zero_stage(ds.for_world(ds.load_json("zero2"), 1)) == 0


def test_run_record_refuses_a_fresh_start_over_another_run(tmp_path):
    hint = "use a new --output"
    check_run_record(tmp_path, {"seed": 1}, hint)  # no record yet: a new run
    write_run_record(tmp_path, {"seed": 1, "optim.lr": 0.01, "data": tmp_path})
    check_run_record(tmp_path, {"seed": 1, "optim.lr": 0.01, "data": tmp_path}, hint)  # the same run: restart
    with pytest.raises(ConfigError, match=r"holds another run \(optim.lr: 0.01 -> 0.5\) .*: use a new --output"):
        check_run_record(tmp_path, {"seed": 1, "optim.lr": 0.5, "data": tmp_path}, hint)
    (tmp_path / "run.json").write_text('{"seed": ')
    with pytest.raises(BadFileError, match="run record .*run.json is not valid JSON"):
        check_run_record(tmp_path, {"seed": 1}, hint)


def test_local_files_behind_a_spec(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 1000)
    (model / "notes.txt").write_text("not a model file")
    (model / ".cache").mkdir()
    (model / ".cache" / "x.bin").write_bytes(b"hidden")
    assert files_bytes(str(model)) == 1002 and files_bytes(f"hf_clip:{model}") == 1002
    assert files_bytes(None) == 0 and files_fingerprint(str(tmp_path / "absent")) is None
    before = files_fingerprint(str(model))
    (model / "model.safetensors").write_bytes(b"y" * 1001)  # re-exported in place
    assert files_fingerprint(str(model)) != before
