"""The real methods through the shared loop, from the tiny presets, via the CLI entry point:
each trains, exports a tower HF and `load_tower` read, and keeps its generator frozen;
DIVA's VAE-latent cache reproduces the uncached losses; GenHancer's stage 1 output feeds
stage 2, whose LoRA run resumes exactly (dropout included)."""
import json
import os

import pytest
import torch

os.environ.setdefault("GENFEEDBACK_SKIP_SHM_OP", "1")

from enhance.__main__ import main


@pytest.fixture(scope="module")
def recipe_zoo(tmp_path_factory):
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("enhance-recipe-zoo"), seed=0, parts=["vision", "diffusion", "data"])


def train(zoo, preset, out, *extra):
    code = main(["train", "--preset", preset, "--zoo", str(zoo.root), "--output", str(out),
                 "--set", "logging.progress_bar=false", *extra])
    assert code == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_change(export, base) -> float:
    from transformers import CLIPVisionModel

    a = CLIPVisionModel.from_pretrained(export).state_dict()
    b = CLIPVisionModel.from_pretrained(base).state_dict()
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("preset", ["tiny-diva", "tiny-un2clip"])
def test_tiny_recipe_trains_and_exports(recipe_zoo, tmp_path, preset):
    from llava_plugin.registry import load_tower, read_metadata

    rows = train(recipe_zoo, preset, tmp_path, "--max-steps", "2")
    assert rows[0]["event"] == "diagnosis" and [r["step"] for r in rows[1:]] == [1, 2]
    export = tmp_path / "vision_tower"
    assert max_change(export, recipe_zoo.clip) > 1e-5
    tower = load_tower(str(export))
    assert tower.has_text_encoder  # the full CLIPModel came along, text tower untouched
    meta = read_metadata(export)
    assert meta["method"] == preset.removeprefix("tiny-") and meta["steps"] == 2
    assert meta["generator"] == str(getattr(recipe_zoo, "sd21" if preset == "tiny-diva" else "unclip"))
    assert meta["condition_gap_at_start"]["tower_trains"] is True


def test_un2clip_diagnose_reports_timestep_bands(recipe_zoo, tmp_path, capsys):
    out = tmp_path / "diag.json"
    assert main(["diagnose", "--method", "un2clip", "--vision-tower", str(recipe_zoo.clip), "--generator",
                 str(recipe_zoo.unclip), "--data", str(recipe_zoo.data["scenes"]), "--num-images", "4",
                 "--bands", "2", "--batch-size", "4", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(b["t_low"], b["t_high"]) for b in result["bands"]] == [(0.0, 500.0), (500.0, 1000.0)]
    assert result["method"] == "un2clip" and result["generator"] == str(recipe_zoo.unclip)
    assert all(b["loss_own"] > 0 and b["loss_shuffled"] > 0 for b in result["bands"])
    assert "rel gap" in capsys.readouterr().out


def test_diva_latent_cache_matches_uncached(recipe_zoo, tmp_path):
    uncropped = ("--set", "diagnose.images=0", "--set", "data.augment=none")  # a cache holds no crops
    plain = train(recipe_zoo, "tiny-diva", tmp_path / "plain", "--max-steps", "2", *uncropped)
    cached = train(recipe_zoo, "tiny-diva", tmp_path / "cached", "--max-steps", "2", *uncropped,
                   "--set", "cache.latents=true")
    manifest = json.loads((tmp_path / "cached" / "latent_cache" / "manifest.json").read_text())
    assert manifest["method"] == "diva" and manifest["generator"] == str(recipe_zoo.sd21)
    assert [r["loss"] for r in cached] == pytest.approx([r["loss"] for r in plain], rel=1e-4)


@pytest.mark.parametrize("preset", ["tiny-genhancer-stage1",
                                    pytest.param("tiny-genhancer-discrete-stage1", marks=pytest.mark.slow)])
def test_genhancer_stage1_feeds_stage2_and_stage2_resumes_exactly(recipe_zoo, tmp_path, preset):
    from safetensors.torch import load_file

    train(recipe_zoo, preset, tmp_path / "stage1", "--max-steps", "2", "--set", "optim.lr=1e-3")
    assert (tmp_path / "stage1" / "generator").is_dir()  # save_extras: stage 2's generator
    assert max_change(tmp_path / "stage1" / "vision_tower", recipe_zoo.clip) == 0.0  # tower frozen in stage 1

    stage2 = ["--generator", str(tmp_path / "stage1"), "--set", "method.stage=2", "--set", "optim.lr=1e-2",
              "--set", "schedule.warmup_steps=0", "--max-steps", "4", "--set", "checkpointing.every_steps=2",
              "--set", "diagnose.images=0", "--set", "precision.dtype=bf16",
              "--set", "export.at_steps=[1]", "--set", "export.every_steps=2"]
    full = train(recipe_zoo, preset, tmp_path / "full", *stage2)
    # the merged tower at steps 1 and 2 too (upstream saves it at chosen steps); step 4 is the final export
    exports = tmp_path / "full" / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["step-00000001", "step-00000002"]
    assert [json.loads((exports / n / "genfeedback.json").read_text())["steps"] for n in sorted(
        p.name for p in exports.iterdir())] == [1, 2]
    step1, step2 = (exports / "step-00000001", exports / "step-00000002")
    assert max_change(step1, recipe_zoo.clip) > 1e-5 and max_change(step2, step1) > 1e-5
    assert max_change(tmp_path / "full" / "vision_tower", step2) > 1e-5
    assert max_change(tmp_path / "full" / "vision_tower", recipe_zoo.clip) > 1e-5  # merged LoRA
    # bf16 run, fp32 export: weights LoRA does not touch keep their exact original values
    exported = load_file(str(tmp_path / "full" / "vision_tower" / "model.safetensors"))
    original = load_file(str(recipe_zoo.clip / "model.safetensors"))
    untouched = [k for k in exported if "embeddings" in k or k.startswith("text_model")]
    assert untouched and all(torch.equal(exported[k], original[k]) for k in untouched)

    from enhance.__main__ import build_parser, config_from_args
    from enhance.trainer import EnhanceTrainer

    args = build_parser().parse_args(["train", "--preset", preset, "--zoo", str(recipe_zoo.root), "--output",
                                      str(tmp_path / "resumed"), "--set", "logging.progress_bar=false", *stage2])
    stopped = EnhanceTrainer(config_from_args(args)).setup()
    stopped.train(num_steps=2)
    del stopped
    resumed = train(recipe_zoo, preset, tmp_path / "resumed", *stage2)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    a = load_file(str(tmp_path / "full" / "vision_tower" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "vision_tower" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # the stopped run wrote its step-1 and step-2 exports; the resumed one kept them
    assert sorted(p.name for p in (tmp_path / "resumed" / "exports").iterdir()) == ["step-00000001", "step-00000002"]
    assert max_change(tmp_path / "resumed" / "exports" / "step-00000002", step2) <= 1e-6


def test_genhancer_runs_both_stages_in_one_command(recipe_zoo, tmp_path):
    """The method declares its stages: one `enhance train` runs stage 1, hands its generator to
    stage 2 and exports the LoRA-merged tower; each stage's artefacts stay in the run dir."""
    from llava_plugin.registry import read_metadata

    rows = train(recipe_zoo, "tiny-genhancer", tmp_path, "--max-steps", "2", "--set", "diagnose.images=0")
    assert [r["step"] for r in rows] == [1, 2]  # stage 2's log; stage 1 keeps its own
    assert [r["step"] for r in (json.loads(line) for line in
                                (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert (tmp_path / "stage1" / "generator").is_dir() and (tmp_path / "stage1" / "vision_tower").is_dir()
    assert max_change(tmp_path / "stage1" / "vision_tower", recipe_zoo.clip) == 0.0  # stage 1: tower frozen
    assert max_change(tmp_path / "vision_tower", recipe_zoo.clip) > 1e-5  # stage 2: LoRA merged
    meta = read_metadata(tmp_path / "vision_tower")
    assert meta["generator"] == str(tmp_path / "stage1") and meta["config"]["method"]["stage"] == 2
    assert meta["config"]["optim"]["lr"] == 1e-3  # tiny-genhancer-stage2's recipe, from YAML


@pytest.mark.slow  # ~60 s: three fresh processes, each a full trainer setup
def test_bench_measures_every_variant_side_by_side(recipe_zoo, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--presets", "tiny-genhancer-stage1", "--zoo", str(recipe_zoo.root), "--steps", "1",
                 "--warmup", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == ["upstream", "plain", "cache", "checkpointing"]
    assert result["memory_measure"].startswith(("VmHWM", "torch.cuda", "ru_maxrss"))
    assert result["isolated_processes"] is True  # CPU: one fresh process per variant
    for row in result["rows"]:
        assert row["images_per_s"] > 0 and row["peak_mb"] >= row["peak_over_baseline_mb"] >= 0
        assert row["images"] == 8 and row["final_loss"] == row["final_loss"]
    table = capsys.readouterr().out
    assert "x plain" in table and "x upstream" in table and "tiny-genhancer-stage1" in table and "VmHWM" in table
