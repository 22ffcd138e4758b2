"""enhance's stage config: presets, validation messages, CLI flags -> config, --help."""
import json
from dataclasses import fields

import pytest

from enhance.config import PRESET_DIR, STAGES_KEY, ConfigError, load_config, load_run, presets
from llava_plugin.config import load_yaml_preset
from llava_plugin.toy import Zoo


@pytest.fixture
def paper_zoo(tmp_path):
    """A zoo.json naming a path for every model field of the zoo, so a preset may refer to any part
    (no models needed to parse a config); the fields come from `Zoo` itself, so a new part is covered."""
    model_fields = [f.name for f in fields(Zoo) if f.name not in ("root", "data")]
    zoo = {"seed": 0, "root": str(tmp_path), **{name: str(tmp_path / name) for name in model_fields},
           "data": {"scenes": str(tmp_path / "scenes"), "enhance": str(tmp_path / "enhance" / "images.jsonl"),
                    "pairs": str(tmp_path / "pairs" / "pairs.jsonl")}}
    (tmp_path / "zoo.json").write_text(json.dumps(zoo))
    return tmp_path


def _single_stage(name):
    return STAGES_KEY not in load_yaml_preset(PRESET_DIR, name)


def _shared_base(name):
    """`base`, `world-base`: settings other presets inherit, with no method of their own."""
    return _single_stage(name) and not load_yaml_preset(PRESET_DIR, name).get("method", {}).get("name")


@pytest.mark.parametrize("name", [p for p in presets() if not _shared_base(p) and _single_stage(p)])
def test_every_preset_parses_with_its_methods_config(name, paper_zoo):
    cfg = load_config(preset=name, zoo=str(paper_zoo))
    assert type(cfg.method_config()).__name__.endswith("Config")  # the method section is the method's own
    assert cfg.batch.global_batch_size % cfg.batch.micro_batch_size == 0
    if name.startswith("tiny-"):
        assert cfg.vision_tower == str(paper_zoo / "clip")
        assert cfg.data.source == str(paper_zoo / "scenes")
        with pytest.raises(ConfigError, match="--zoo"):
            load_config(preset=name)


@pytest.mark.parametrize("name", [p for p in presets() if not _single_stage(p)])
def test_every_multi_stage_preset_chains_its_methods_stages(name, paper_zoo, tmp_path):
    from enhance.methods.base import get_method

    run = load_run(preset=name, overrides={"output_dir": str(tmp_path)}, zoo=str(paper_zoo))
    method = get_method(run[0][1].method_name)
    assert [stage for stage, _ in run] == list(method.stages) == ["stage1", "stage2"]
    (_, first), (_, second) = run
    assert (first.method["stage"], second.method["stage"]) == (1, 2)
    assert first.output_dir == str(tmp_path / "stage1") and second.output_dir == str(tmp_path)
    assert second.generator == first.output_dir and second.vision_tower == first.vision_tower
    with pytest.raises(ConfigError, match="output_dir is not set"):
        load_run(preset=name, zoo=str(paper_zoo))


def test_base_preset_names_no_method():
    assert "method" not in load_yaml_preset(PRESET_DIR, "base")
    with pytest.raises(ConfigError, match="method.name is not set"):
        load_config(preset="base")


def test_paper_numbers_in_presets():
    diva = load_config(preset="diva-openai-l14-224")
    assert (diva.optim.name, diva.optim.lr, diva.optim.momentum, diva.optim.weight_decay) == ("sgd", 1e-4, 0.9, 0.0)
    assert (diva.schedule.kind, diva.schedule.max_steps, diva.schedule.warmup_ratio) == ("cosine", 4600, 0.005)
    assert (diva.batch.global_batch_size, diva.precision.dtype) == (640, "bf16")
    assert diva.vision_tower == "openai/clip-vit-large-patch14"
    un2 = load_config(preset="un2clip-openclip-h14-224")
    assert (un2.optim.name, un2.optim.lr, un2.batch.global_batch_size, un2.schedule.epochs) == ("adamw", 3e-7, 32, 1.0)
    for backbone in ("openai-l14-224", "openai-l14-336", "openclip-h14-224", "siglip-so14-384"):
        assert load_config(preset=f"un2clip-{backbone}").method_name == "un2clip"
    s1 = load_config(preset="genhancer-openai-l14-224-stage1")
    s2 = load_config(preset="genhancer-openai-l14-224-stage2")
    assert (s1.method["stage"], s1.optim.lr, s1.optim.weight_decay, s1.batch.global_batch_size) == (1, 1e-4, 0.01, 256)
    assert (s2.method["stage"], s2.optim.lr, s2.schedule.kind, s2.schedule.warmup_steps) == (2, 1e-5, "constant", 10)


@pytest.mark.parametrize("overrides, message", [
    ({"batch": {"global_batch_size": 10, "micro_batch_size": 4}}, r"batch.global_batch_size=10 .*multiple.*e.g. 2"),
    ({"optim": {"lr": 0}}, r"optim.lr=0"),
    ({"optim": {"name": "lamb"}}, r"optim.name='lamb': expected one of \['sgd', 'adamw'\]"),
    ({"optim": {"lrr": 1}}, r"unknown config key 'optim.lrr'; did you mean \['lr'\]"),
    ({"precision": {"dtype": "fp16"}}, r"precision.dtype='fp16'"),
    ({"deepspeed": {"config": "zero9"}}, r"deepspeed.config='zero9'.*zero2"),
    ({"method": {"name": "dvia"}}, r"method.name='dvia'.*known methods"),
    ({"method": {"name": "diva", "num_noise_drawz": 2}}, r"method.num_noise_drawz.*num_noise_draws"),
    ({"method": {"name": "diva", "num_noise_draws": 0}}, r"method.num_noise_draws=0"),
    ({"method": {}}, r"method.name is not set: pass --method"),
    ({"checkpointing": {"resume": "/no/such/dir"}}, r"checkpointing.resume='/no/such/dir'"),
    ({"diagnose": {"images": 1}}, r"diagnose.images=1"),
    ({"vision_tower": "zoo:clip"}, r"vision_tower='zoo:clip'.*--zoo"),
])
def test_config_errors_name_field_value_and_fix(overrides, message):
    base = {"method": {"name": "diva"}}
    data = {**base, **overrides}
    with pytest.raises(ConfigError, match=message):
        load_config(preset="base", overrides=data)


def test_deepspeed_json_with_optimizer_block_is_refused(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    cfg = load_config(preset="diva", overrides={"deepspeed": {"config": str(bad)}})
    with pytest.raises(ConfigError, match="'optimizer' block"):
        cfg.deepspeed.load()
    assert load_config(preset="diva", overrides={"deepspeed": {"config": "zero3"}}).deepspeed.load()[
        "zero_optimization"]["stage"] == 3


def test_run_fields_are_required_before_training():
    from enhance.trainer import EnhanceTrainer

    cfg = load_config(preset="diva-openai-l14-224")
    with pytest.raises(ConfigError, match="generator is not set: pass --generator"):
        EnhanceTrainer(cfg)


def test_cli_flags_map_to_config_fields(tmp_path):
    from enhance.__main__ import build_parser, config_from_args

    args = build_parser().parse_args([
        "train", "--method", "un2clip", "--vision-tower", "T", "--generator", "G", "--data", "D", "--output",
        str(tmp_path), "--deepspeed", "zero3", "--max-steps", "7", "--set", "optim.lr=2e-7",
        "--set", "method.noise_level=3", "--cache-latents"])
    cfg = config_from_args(args)
    assert cfg.cache.latents is True
    assert config_from_args(build_parser().parse_args(["train", "--method", "un2clip"])).cache.latents is False
    assert (cfg.vision_tower, cfg.generator, cfg.data.source, cfg.output_dir) == ("T", "G", "D", str(tmp_path))
    assert (cfg.deepspeed.config, cfg.schedule.max_steps, cfg.optim.lr) == ("zero3", 7, 2e-7)
    assert cfg.method == {"name": "un2clip", "noise_level": 3}
    assert cfg.optim.name == "adamw" and cfg.batch.global_batch_size == 32  # the method's preset by default


def test_help_documents_every_field(capsys):
    from enhance.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--method", "--vision-tower", "--generator", "--data", "--output", "--preset", "--deepspeed",
                 "--max-steps", "--set", "open_clip:ARCH@CHECKPOINT"):
        assert flag in text
    for key in ("batch.global_batch_size", "optim.lr", "schedule.warmup_ratio", "precision.gradient_checkpointing",
                "cache.latents", "checkpointing.keep_last", "diagnose.min_relative_gap"):
        assert key in text
    assert main(["presets"]) == 0
    assert "diva-openai-l14-224" in capsys.readouterr().out
    assert main(["presets", "--method", "diva"]) == 0
    assert "method.num_noise_draws (default 2)" in capsys.readouterr().out
    assert main(["presets", "--method", "nope"]) == 2
    assert "known methods" in capsys.readouterr().err
