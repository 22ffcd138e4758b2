"""The shell entry points: every flag documented, bad input stopped before any work, and the
toy pipeline end to end (slow)."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from llava_plugin.distributed import child_environment

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["enhance.sh", "train_llava.sh", "eval.sh", "pipeline.sh"]


def run(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = child_environment()  # in-process training tests left a 1-rank rendezvous in os.environ
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**env, "HF_HUB_OFFLINE": "1"})


def parsed_flags(script: str) -> set[str]:
    """Every --flag the script's argument loop accepts (its `case` labels)."""
    source = (ROOT / "scripts" / script).read_text()
    loop = source[source.index('while [[ $# -gt 0 ]]'):source.index("done", source.index('while [[ $# -gt 0 ]]'))]
    return set(re.findall(r"(--[a-z][a-z0-9-]*)(?=[|)])", loop))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_flag(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    flags = parsed_flags(script)
    assert len(flags) >= 5
    undocumented = sorted(f for f in flags if f not in result.stdout)
    assert not undocumented, f"{script} --help does not mention {undocumented}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_stops_with_a_message(script):
    result = run(script, "--no-such-flag")
    assert result.returncode == 2
    assert "unknown flag: --no-such-flag" in result.stderr


@pytest.mark.parametrize("script,args,message", [
    ("enhance.sh", ["--method", "diva", "--output", "/tmp/x", "--data", "/nonexistent/images"],
     "training data (--data) not found: /nonexistent/images"),
    ("enhance.sh", ["--method", "dreambooth", "--output", "/tmp/x"], "unknown method 'dreambooth'; known methods"),
    ("enhance.sh", ["--method", "diva", "--output", "/tmp/x", "--gpus", "two"], "--gpus must be a positive"),
    ("enhance.sh", ["--method", "diva", "--output", "/tmp/x", "--preset", "toy"], "--preset toy needs --zoo"),
    ("train_llava.sh", ["--vision-tower", "/nonexistent/tower", "--llm", "x", "--output", "/tmp/x"],
     "vision tower not found: /nonexistent/tower"),
    ("train_llava.sh", ["--vision-tower", "openai/clip-vit-large-patch14", "--llm", "x", "--output", "/tmp/x",
                        "--pretrain-data", "/nonexistent/558k.json", "--pretrain-images", "/tmp"],
     "pretraining data not found: /nonexistent/558k.json"),
    ("eval.sh", ["--output", "/tmp/x", "--vision-tower", "t", "--mmvp-vlm-data", "/nonexistent/MMVP_VLM"],
     "MMVP-VLM data not found: /nonexistent/MMVP_VLM"),
    ("eval.sh", ["--output", "/tmp/x", "--model", "m", "--benchmarks", "pope"], "unknown benchmark 'pope'"),
    ("pipeline.sh", ["--preset", "paper", "--no-setup"], "--preset paper needs --llm"),
    ("pipeline.sh", ["--methods", "diva,nope", "--no-setup"], "unknown method 'nope'"),
])
def test_bad_input_stops_before_any_work(script, args, message, tmp_path):
    result = run(script, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not re.search(r"^\[\d\d:\d\d:\d\d\] ", result.stderr, re.MULTILINE)  # no stage was launched


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
