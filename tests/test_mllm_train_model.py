"""mllm_train's model side without a training run: presets, freezing, LoRA merge, the step plan."""
import pytest
import torch

from llava_plugin.config import ConfigError
from mllm_train.config import load_config, presets


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: more than one intra-op thread per test process only adds contention
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REQUIRED = {"model": {"vision_tower": "v", "llm": "l"}, "data": {"data_path": "d.json"}, "output_dir": "o"}


@pytest.mark.parametrize("size, llm", [("7b", "lmsys/vicuna-7b-v1.5"), ("13b", "lmsys/vicuna-13b-v1.5")])
def test_published_llava_1_5_recipes(size, llm):
    pre = load_config(f"llava15-{size}-pretrain", REQUIRED | {"model": {"vision_tower": "v"}})
    assert (pre.stage, pre.template, pre.model.llm, pre.model.projector) == ("pretrain", "plain", llm, "mlp2x_gelu")
    assert (pre.optim.lr, pre.batch.global_batch_size, pre.schedule.epochs, pre.schedule.warmup_ratio,
            pre.schedule.kind) == (1e-3, 256, 1, 0.03, "cosine")
    assert (pre.deepspeed.config, pre.precision.dtype, pre.data.max_length, pre.precision.gradient_checkpointing) == (
        "zero2", "bf16", 2048, True)
    assert (pre.model.select_layer, pre.model.select_feature, pre.optim.weight_decay) == (-2, "patch", 0.0)
    assert pre.optim.grad_clip == 0.0  # upstream's DeepSpeed JSONs leave clipping off
    fine = load_config(f"llava15-{size}-finetune", REQUIRED | {"model": {"vision_tower": "v"}})
    assert (fine.stage, fine.template, fine.optim.lr, fine.batch.global_batch_size, fine.deepspeed.config) == (
        "finetune", "vicuna_v1", 2e-5, 128, "zero3")
    assert fine.data.group_by_modality_length and fine.data.image_aspect_ratio == "pad" and not fine.lora.enabled
    lora = load_config(f"llava15-{size}-finetune-lora", REQUIRED | {"model": {"vision_tower": "v"}})
    assert (lora.lora.enabled, lora.lora.r, lora.lora.alpha, lora.optim.lr, lora.optim.projector_lr) == (
        True, 128, 256, 2e-4, 2e-5)
    assert lora.batch.global_batch_size == 128 and lora.deepspeed.config == "zero3"
    assert fine.optim.grad_clip == lora.optim.grad_clip == 0.0


def test_every_preset_loads():
    for name in presets():
        cfg = load_config(name, REQUIRED)
        assert cfg.batch.global_batch_size % cfg.batch.micro_batch_size == 0


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="did you mean.*'lr'"):
        load_config("tiny-pretrain", REQUIRED | {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="vision_tower and model.llm are required"):
        load_config("tiny-pretrain", {"data": {"data_path": "d"}, "output_dir": "o"})
    with pytest.raises(ConfigError, match="lora.enabled is for the finetune stage"):
        load_config("tiny-pretrain", REQUIRED | {"lora": {"enabled": True}})
    from llava_plugin.train.plan import BatchPlan

    cfg = load_config("tiny-finetune", REQUIRED)
    plan = lambda world: BatchPlan(cfg.batch.global_batch_size, cfg.batch.micro_batch_size, world_size=world)
    with pytest.raises(ConfigError, match="not divisible by world size 3"):
        plan(3).check("batch.")
    assert plan(2).accumulation == 1 and plan(1).accumulation == 2


def test_cli_preset_resolution(tmp_path):
    from mllm_train.__main__ import build_parser, train_config

    base = ["--vision-tower", "v", "--llm", "l", "--data", "d.json", "--output", str(tmp_path)]
    args = build_parser().parse_args(["finetune", "--lora", *base, "--set", "optim.projector_lr=1e-5"])
    cfg = train_config(args, "finetune")
    assert cfg.lora.enabled and cfg.optim.lr == 2e-4 and cfg.optim.projector_lr == 1e-5
    args = build_parser().parse_args(["finetune", "--preset", "tiny-finetune", "--lora", "--max-steps", "3", *base])
    cfg = train_config(args, "finetune")
    assert cfg.lora.enabled and cfg.lora.r == 8 and cfg.schedule.max_steps == 3
    args = build_parser().parse_args(["pretrain", "--preset", "tiny-finetune", *base])
    with pytest.raises(ConfigError, match="'finetune' preset but the command is 'pretrain'"):
        train_config(args, "pretrain")


@pytest.fixture(scope="module")
def tiny_cfg(zoo, tmp_path_factory):
    def make(preset, **extra):
        return load_config(preset, {"model": {"vision_tower": str(zoo.clip), "llm": str(zoo.llm)},
                                    "data": {"data_path": str(zoo.data["llava_finetune"]),
                                             "image_folder": str(zoo.data["llava_image_folder"])},
                                    "output_dir": str(tmp_path_factory.mktemp("out")), **extra})
    return make


def test_freeze_for_each_stage(tiny_cfg):
    from mllm_train.model import build_model, param_groups

    def trainable(model):
        return {n.removeprefix("base_model.model.").split(".")[1] if n.startswith(("model.", "base_model.model.model."))
                else n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}

    model, _ = build_model(tiny_cfg("tiny-pretrain"))
    assert trainable(model) == {"multi_modal_projector"}
    model, _ = build_model(tiny_cfg("tiny-finetune"))
    assert trainable(model) == {"multi_modal_projector", "language_model", "lm_head"}
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    cfg = tiny_cfg("tiny-finetune-lora")
    model, _ = build_model(cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "multi_modal_projector" in n for n in names)
    assert any("self_attn.q_proj.lora_A" in n for n in names) and any("mlp.down_proj.lora_B" in n for n in names)
    assert not any("vision_tower" in n or "lm_head" in n for n in names)
    groups = {g["name"]: g for g in param_groups(model, cfg.optim)}
    assert groups["projector"]["lr"] == cfg.optim.projector_lr and groups["llm"]["lr"] == cfg.optim.lr
    assert len(groups["projector"]["params"]) == 4


def test_lora_merge_matches_peft(tiny_cfg):
    from mllm_train.export import materialize, merge_lora_state

    model, _ = build_model_with_random_lora(tiny_cfg("tiny-finetune-lora"))
    lora_state = {k: v.clone() for k, v in model.state_dict().items()}
    merged_state = merge_lora_state(lora_state, scaling=16 / 8)
    reference = model.merge_and_unload()  # peft's own merge (in place)
    assert sorted(merged_state) == sorted(reference.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(merged_state[key], value, rtol=1e-5, atol=1e-6)
    rebuilt = materialize(reference.config, merged_state)
    ids = torch.tensor([[1, 306, 959, 547]])
    torch.testing.assert_close(rebuilt(input_ids=ids).logits, reference(input_ids=ids).logits)
    bad = {k: v for k, v in lora_state.items() if "layers.0.self_attn.q_proj.lora_B" not in k}
    with pytest.raises(ValueError, match="layers.0.self_attn.q_proj' is incomplete"):
        merge_lora_state(bad, scaling=2.0)


def build_model_with_random_lora(cfg):
    from mllm_train.model import build_model

    model, processor = build_model(cfg)
    with torch.no_grad():  # peft initialises lora_B to zero: make the merge visible
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return model.eval(), processor


def test_epoch_steps_follow_the_config():
    """The LLaVA stage's plan: LLaVA's grouping when configured, else a seeded shuffle (both are
    tested for world-size invariance in test_train_core.py)."""
    from mllm_train.trainer import epoch_steps

    lengths = [5 + (i * 7) % 13 for i in range(22)]
    has_image = [i % 5 != 0 for i in range(22)]
    for grouped in (False, True):
        cfg = load_config("tiny-finetune", REQUIRED | {"batch": {"global_batch_size": 8, "micro_batch_size": 2},
                                                       "data": {"data_path": "d.json",
                                                                "group_by_modality_length": grouped}})
        plan = epoch_steps(lengths, has_image, cfg, epoch=1)
        assert plan == epoch_steps(lengths, has_image, cfg, epoch=1) != epoch_steps(lengths, has_image, cfg, epoch=2)
        assert {i for step in plan for batch in step for i in batch} == set(range(22))
        assert all(len(step) == 4 for step in plan)
        single_modality = all(len({has_image[i] for batch in step for i in batch}) == 1 for step in plan)
        assert single_modality if grouped else not single_modality


def test_attn_implementation_resolution():
    from mllm_train.model import resolve_attn_implementation

    assert resolve_attn_implementation("eager") == "eager"
    expected = "flash_attention_2" if torch.cuda.is_available() and _has_flash() else "sdpa"
    assert resolve_attn_implementation("auto") == expected


def _has_flash() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def test_inspect_subcommand_delegates(zoo, capsys):
    from mllm_train.__main__ import main

    status = main(["inspect", "--data", str(zoo.data["llava_pretrain"]), "--tokenizer", str(zoo.llm),
                   "--template", "plain", "--limit", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0 and len(lines) == 2 and '"labels"' in lines[0]


def test_checkpoint_chat_template_renders_the_training_template(zoo):
    """What eval sends through the saved processor's chat template == what vicuna_v1 training saw."""
    from transformers import AutoProcessor

    from mllm_train.conversation import get_template
    from mllm_train.data import parse_record, read_records

    processor = AutoProcessor.from_pretrained(zoo.llava)
    template = get_template("vicuna_v1")
    roles = {"human": "user", "gpt": "assistant"}
    records = read_records(zoo.data["llava_finetune"])
    for index, record in enumerate(records):
        turns = list(parse_record(record, index).turns)
        messages = [{"role": roles[turn.role], "content": turn.text} for turn in turns]
        assert processor.apply_chat_template(messages) == template.render(turns).text, record["id"]
        open_prompt = processor.apply_chat_template(messages[:-1], add_generation_prompt=True)
        assert open_prompt == template.render(turns[:-1], add_generation_prompt=True).text, record["id"]
    assert len(records) > 0


def test_deepspeed_json_is_filled_in_and_checked(tmp_path):
    from llava_plugin.train.deepspeed import fill

    cfg = load_config("llava15-7b-finetune", REQUIRED | {"model": {"vision_tower": "v"}})
    ds = fill(cfg.deepspeed.load(), global_batch=cfg.batch.global_batch_size, micro_batch=cfg.batch.micro_batch_size,
              accumulation=2, bf16=cfg.precision.dtype == "bf16", grad_clip=cfg.optim.grad_clip)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True}
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        128, 16, 2)
    custom = tmp_path / "ds.json"
    custom.write_text('{"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}')
    cfg = load_config("tiny-pretrain", REQUIRED | {"deepspeed": {"config": str(custom)}})
    with pytest.raises(ConfigError, match="remove it"):
        cfg.deepspeed.load()
    with pytest.raises(ConfigError, match="deepspeed.config='zero4'"):
        load_config("tiny-pretrain", REQUIRED | {"deepspeed": {"config": "zero4"}})


@pytest.mark.skipif(_has_flash(), reason="flash-attn is installed")
def test_flash_attention_without_flash_attn_is_an_error():
    from mllm_train.model import resolve_attn_implementation

    with pytest.raises(ImportError, match="genfeedback\\[flash\\]"):
        resolve_attn_implementation("flash_attention_2")
