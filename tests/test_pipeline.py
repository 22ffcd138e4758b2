"""The chain's recipes as job graphs (genfeedback.plan): what runs, with which presets, after what."""
from pathlib import Path

import pytest

from genfeedback.__main__ import build_parser, run_config
from genfeedback.config import load_recipe
from genfeedback.plan import enhance_args, plan_chain
from llava_plugin.config import ConfigError
from llava_plugin.jobs import Launch, launch_argv


def paper(*flags: str):
    argv = ["run", "--preset", "paper", "--llm", "/m/vicuna", "--enhance-data", "/d/cc3m/{0..3}.tar",
            "--sd", "/m/sd21", "--flux", "/m/flux", "--unclip", "/m/unclip", "--mmvp-data", "/d/mmvp", *flags]
    return run_config(build_parser().parse_args(argv))


def by_name(jobs):
    return {j.name: j for j in jobs}


def test_paper_chain_runs_every_method_and_tower_in_dependency_order(tmp_path):
    jobs, eval_dirs = plan_chain(paper(), tmp_path, None)
    named = by_name(jobs)
    methods = ["diva", "un2clip", "genhancer"]
    assert [d.name for d in eval_dirs] == ["base", *methods]
    for method in methods:
        assert named[f"llava/{method}/pretrain"].deps == [f"enhance/{method}"]
        assert named[f"llava/{method}/finetune"].deps == [f"llava/{method}/pretrain"]
        assert named[f"eval/{method}/mmvp"].deps == [f"llava/{method}/finetune"]
        argv = named[f"enhance/{method}"].argv
        assert argv[argv.index("--preset") + 1] == "paper" and argv[argv.index("--backbone") + 1] == "openai-l14-336"
    assert named["llava/base/pretrain"].deps == []  # the base tower needs no enhance run
    # each method gets its own generator; the LLaVA recipe is the same for every tower
    generator = {m: named[f"enhance/{m}"].argv[named[f"enhance/{m}"].argv.index("--generator") + 1] for m in methods}
    assert generator == {"diva": "/m/sd21", "un2clip": "/m/unclip", "genhancer": "/m/flux"}
    finetunes = [named[f"llava/{t}/finetune"].argv for t in ["base", *methods]]
    strip = [[a for a in argv if "vision_tower" not in a and "clip-vit" not in a and "/llava/" not in a]
             for argv in finetunes]
    assert all(s == strip[0] for s in strip)
    assert "llava15-7b-finetune" in finetunes[0]
    assert set(named["compare"].deps) == {n for n in named if n.startswith("eval/")}


def test_paper_chain_runs_at_llava15s_resolution():
    """LLaVA-1.5 uses CLIP L/14@336 (576 image tokens): every tower the paper chain trains LLaVA on is @336."""
    from enhance.__main__ import build_parser as enhance_parser
    from enhance.__main__ import run_from_args

    cfg = paper()
    assert cfg.vision_tower == "openai/clip-vit-large-patch14-336"
    for method in cfg.methods:
        stages = run_from_args(enhance_parser().parse_args(enhance_args(cfg, method, Path("/tmp/x"), None)))
        for _stage, config in stages:
            assert config.vision_tower == "openai/clip-vit-large-patch14-336", method


def test_flags_and_overrides_reach_the_jobs(tmp_path):
    cfg = paper("--methods", "diva", "--gpus", "8", "--llava-steps", "5", "--set", "llava.lora=true",
                "--set", "methods.diva.set.optim.lr=2e-5")
    jobs, _ = plan_chain(cfg, tmp_path, None)
    named = by_name(jobs)
    assert {n.split("/")[1] for n in named if n.startswith("enhance/")} == {"diva"}
    enhance = named["enhance/diva"].argv
    assert "torch.distributed.run" in enhance and enhance[enhance.index("--nproc_per_node") + 1] == "8"
    assert "optim.lr=2e-05" in enhance or "optim.lr=2e-5" in enhance
    finetune = named["llava/diva/finetune"].argv
    assert "--lora" in finetune and finetune[finetune.index("--max-steps") + 1] == "5"


def test_a_method_without_its_generator_is_refused_naming_the_flag():
    cfg = load_recipe("paper", {"llm": "/m", "enhance": {"data": "/d"}})
    with pytest.raises(ConfigError, match="method diva needs its generator: pass --sd DIR"):
        enhance_args(cfg, "diva", Path("/tmp/x"), None)


def test_launchers():
    assert launch_argv("enhance", ["train"], Launch())[1:] == ["-m", "enhance", "train"]
    deepspeed = launch_argv("mllm_train", ["finetune"], Launch(gpus=8, hostfile="/h"))
    assert Path(deepspeed[0]).name == "deepspeed" and deepspeed[1:5] == ["--num_gpus", "8", "--hostfile", "/h"]
    assert launch_argv("enhance", ["train"], Launch(gpus=2, launcher="deepspeed"))[-3:] == ["--module", "enhance",
                                                                                              "train"]


def test_toy_recipe_resolves_against_a_zoo(zoo, tmp_path):
    from genfeedback.plan import resolve

    cfg = resolve(load_recipe("toy"), zoo.root)
    assert cfg.vision_tower == str(zoo.clip) and cfg.llm == str(zoo.llm)
    assert cfg.eval["vqa"]["data-root"] == str(zoo.data["vqa_root"])
    jobs, _ = plan_chain(cfg, tmp_path, zoo.root)
    named = by_name(jobs)
    assert named["eval/base/vqa"].done == tmp_path / "eval" / "base" / "vqa" / "shapes_mc" / "metrics.json"
    assert named["eval/diva/mmvp-vlm"].deps == ["enhance/diva"]  # an encoder benchmark scores the tower


def test_world_preset_runs_the_world_study(monkeypatch, tmp_path):
    import genfeedback.__main__ as cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda argv: calls.append(argv) or 0)
    assert cli.main(["run", "--preset", "world", "--seeds", "3", "--output", str(tmp_path)]) == 0
    assert calls[0][1:] == ["-m", "world", "study", "--preset", "study-quick", "--out", str(tmp_path), "--jobs", "2",
                            "--seeds", "3"]
    assert cli.main(["run", "--preset", "world-full"]) == 0  # the full study, the README's measured table
    assert calls[1][1:] == ["-m", "world", "study", "--preset", "study", "--out", "runs/world-full", "--jobs", "2"]
    assert cli.main(["run", "--preset", "world", "--llm", "x"]) == 2  # a flag the world recipe does not take


def test_every_world_preset_names_a_study_recipe_whose_world_loads():
    """`run --preset world | world-full` and the recipes list agree with world/configs."""
    import genfeedback.__main__ as cli
    from world.build import load_spec
    from world.study import load_study

    for preset, recipe in cli.WORLD.items():
        study = load_study(recipe)
        assert study.methods and study.seeds, preset
        load_spec(study.world)  # the world spec it builds validates
    # the quick tier inherits the full study and drops two of its variants (null = not run)
    assert set(load_study("study-quick").variants) == {"feedback", "control"}
    assert set(load_study("study").variants) == {"feedback", "control", "shuffled", "pure"}
