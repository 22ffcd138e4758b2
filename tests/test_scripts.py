"""The shell entry points: every flag documented, bad input stopped before any work, and the
toy pipeline end to end (slow)."""
import json
import subprocess
from pathlib import Path

import pytest

from llava_plugin.distributed import child_environment

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["enhance.sh", "train_llava.sh", "eval.sh", "pipeline.sh"]


def run(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = child_environment()  # in-process training tests left a 1-rank rendezvous in os.environ
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**env, "HF_HUB_OFFLINE": "1"}, check=False)


# Each script's main flags: its --help (the Python entry point's) must list them.
MAIN_FLAGS = {
    "enhance.sh": ["--method", "--output", "--preset", "--gpus", "--hostfile", "--launcher", "--set"],
    "train_llava.sh": ["--vision-tower", "--llm", "--output", "--preset", "--pretrain-data", "--lora", "--stage",
                       "--gpus", "--max-steps", "--set"],
    "eval.sh": ["--vision-tower", "--model", "--output", "--benchmarks", "--mmvp-data", "--cv-bench-data",
                "--mmvp-vlm-data", "--device", "--dtype", "--set"],
    "pipeline.sh": ["--preset", "--output", "--methods", "--enhance-steps", "--llava-steps", "--gpus", "--seeds",
                    "--llm", "--sd", "--set"],
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_the_main_flags(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    missing = [f for f in MAIN_FLAGS[script] if f not in result.stdout]
    assert not missing, f"{script} --help does not mention {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_launchers_without_recipes_or_names(script):
    """A script picks the Python and calls one entry point: no method, benchmark or preset names,
    no recipe values (those live in the registries and the YAML recipes)."""
    from enhance.methods.base import METHODS
    from eval.benchmarks.base import BENCHMARKS

    source = (ROOT / "scripts" / script).read_text()
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    names = [*METHODS.names(), *(b.command for b in BENCHMARKS.values()), "tiny-", "llava15-", "paper-7b", "--set"]
    assert not [n for n in names if n in code], script
    assert code.count("-m genfeedback") == 1 and len(code.splitlines()) <= 20


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_stops_with_a_message(script):
    result = run(script, "--no-such-flag", "--no-setup")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("script,args,message", [
    ("enhance.sh", ["--method", "diva", "--output", "/tmp/x", "--data", "/nonexistent/images"],
     "training data (--data) not found: /nonexistent/images"),
    ("enhance.sh", ["--method", "dreambooth", "--output", "/tmp/x"], "unknown method 'dreambooth'; known methods"),
    ("enhance.sh", ["--method", "diva", "--output", "/tmp/x", "--gpus", "two"], "--gpus: invalid int value"),
    ("enhance.sh", ["--method", "diva", "--output", "/tmp/x", "--preset", "toy"], "--preset toy needs --zoo"),
    ("enhance.sh", ["--method", "diva"], "--output is required"),
    ("train_llava.sh", ["--vision-tower", "/nonexistent/tower", "--llm", "x", "--output", "/tmp/x"],
     "vision tower not found: /nonexistent/tower"),
    ("train_llava.sh", ["--vision-tower", "openai/clip-vit-large-patch14", "--llm", "x", "--output", "/tmp/x",
                        "--pretrain-data", "/nonexistent/558k.json", "--pretrain-images", "/tmp"],
     "pretraining data not found: /nonexistent/558k.json"),
    ("train_llava.sh", ["--vision-tower", "openai/clip-vit-large-patch14", "--llm", "x", "--output", "/tmp/x",
                        "--preset", "toy"], "refers to the tiny zoo: pass --zoo DIR"),
    ("train_llava.sh", ["--vision-tower", "t", "--llm", "x", "--output", "/tmp/nowhere", "--stage", "finetune",
                        "--finetune-data", "/tmp", "--finetune-images", "/tmp"], "pretrained projector not found"),
    ("eval.sh", ["--output", "/tmp/x", "--vision-tower", "t", "--mmvp-vlm-data", "/nonexistent/MMVP_VLM"],
     "mmvp-vlm data not found: /nonexistent/MMVP_VLM"),
    ("eval.sh", ["--output", "/tmp/x", "--model", "m", "--benchmarks", "pope"], "unknown benchmark 'pope'"),
    ("eval.sh", ["--output", "/tmp/x", "--vision-tower", "t"], "nothing to run"),
    ("pipeline.sh", ["--preset", "paper", "--no-setup"], "the LLM (--llm) is not set"),
    ("pipeline.sh", ["--preset", "paper", "--no-setup", "--llm", "/tmp"], "pass --pretrain-data"),
    ("pipeline.sh", ["--preset", "paper", "--no-setup", "--llm", "/tmp", "--pretrain-data", "/tmp",
                     "--pretrain-images", "/tmp", "--finetune-data", "/tmp", "--finetune-images", "/tmp"],
     "pass --enhance-data"),
    ("pipeline.sh", ["--methods", "diva,nope", "--no-setup"], "unknown method 'nope'"),
    ("pipeline.sh", ["--preset", "nope", "--no-setup"], "preset 'nope' not found"),
    ("pipeline.sh", ["--preset", "world", "--no-setup", "--llm", "x"], "--preset world takes --output, --seeds"),
])
def test_bad_input_stops_before_any_work(script, args, message, tmp_path):
    result = run(script, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "$ " not in result.stderr and not (tmp_path / "logs").exists()  # no stage was launched


@pytest.mark.slow
def test_toy_pipeline_end_to_end(zoo, tmp_path):
    """scripts/pipeline.sh --preset toy with the shortest settings: every method, every stage."""
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    from llava_plugin.registry import load_tower

    out = tmp_path / "pipeline"
    out.mkdir()
    (out / "zoo").symlink_to(zoo.root)  # reuse the session's zoo instead of building another
    result = run("pipeline.sh", "--preset", "toy", "--no-setup", "--output", str(out),
                 "--enhance-steps", "1", "--llava-steps", "1", timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    towers = ["base", "diva", "un2clip", "genhancer", "genhancer-discrete"]
    for method in towers[1:]:
        tower_dir = out / "enhance" / method / "vision_tower"
        assert json.loads((tower_dir / "genfeedback.json").read_text())["method"] == method
        CLIPVisionModel.from_pretrained(tower_dir)
        assert load_tower(str(tower_dir)).sizes.num_patches == 16
    for name in towers:
        LlavaForConditionalGeneration.from_pretrained(out / "llava" / name / "finetune" / "llava")
        assert (out / "llava" / name / "pretrain" / "mm_projector.bin").is_file()
        for bench in ("mmvp-vlm", "zeroshot", "mmvp", "cv-bench"):
            assert (out / "eval" / name / bench / "metrics.json").is_file()
    table = (out / "report" / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in towers)
    assert (out / "report" / "compare.png").stat().st_size > 10_000
    assert "| metric | n | base |" in result.stdout  # the tables are printed
    rows = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    # 4 enhance runs, 2 LLaVA stages and 5 benchmarks per tower, compare (the zoo was there: reused)
    assert {r["status"] for r in rows} == {"done"} and len(rows) == 4 + 5 * 2 + 5 * 5 + 1
    # a rerun reuses every finished job
    again = run("pipeline.sh", "--preset", "toy", "--no-setup", "--output", str(out),
                "--enhance-steps", "1", "--llava-steps", "1", timeout=600)
    assert again.returncode == 0 and len((out / "jobs.jsonl").read_text().splitlines()) == len(rows)
