"""Bad inputs, one table: every case is a CLI call on a broken file or flag that must end with exit
code 2, a one-line `error:` naming the file or flag, and no traceback."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llava_plugin.distributed import child_environment

ROOT = Path(__file__).resolve().parents[1]
TRUNCATED = '{"benchmark": "mmvp", "headline": {'


GOOD = '{"benchmark": "mmvp", "headline": {"pair_accuracy": 50.0}, "config": {"parser": "strict"}}'


def results_dir(tmp: Path, metrics: str = GOOD,
                predictions: str | None = None) -> Path:
    out = tmp / "results"
    out.mkdir()
    (out / "metrics.json").write_text(metrics)
    if predictions is not None:
        (out / "predictions.jsonl").write_text(predictions)
    return out


def cv_bench_jsonl(tmp: Path) -> Path:
    root = tmp / "cvb"
    (root / "img").mkdir(parents=True)
    (root / "test_2d.jsonl").write_text('{"idx": 0, "filename": "img/0.png"}\n{"idx": 1, "filen')
    (root / "test_3d.jsonl").write_text("")
    return root


def mmvp_truncated(tmp: Path) -> Path:
    root = tmp / "mmvp"
    (root / "MMVP Images").mkdir(parents=True)
    (root / "Questions.csv").write_text('lndex,Question,Options,Correct Answer\n1,Is it?,"(a) Yes (b')
    return root


# (name, command line given tmp_path, what the message must contain)
CASES = [
    ("compare: truncated metrics.json",
     lambda t: ["eval", "compare", str(results_dir(t, TRUNCATED)), "--output", str(t / "rep")],
     "metrics.json is not valid JSON (line 1"),
    ("rescore: truncated metrics.json",
     lambda t: ["eval", "rescore", str(results_dir(t, TRUNCATED))], "is not valid JSON"),
    ("rescore: metrics.json is not an object",
     lambda t: ["eval", "rescore", str(results_dir(t, "[1, 2]"))], "is not a JSON object"),
    ("rescore: truncated predictions.jsonl",
     lambda t: ["eval", "rescore", str(results_dir(t, predictions='{"id": 1}\n{"id": '))],
     "predictions.jsonl:2 is not valid JSON"),
    ("rescore: metrics.json of an unknown benchmark",
     lambda t: ["eval", "rescore", str(results_dir(t, '{"benchmark": "pope", "headline": {}, "config": {}}'))],
     "benchmark 'pope' of a metrics.json is unknown"),
    ("rescore: metrics.json without its config",
     lambda t: ["eval", "rescore", str(results_dir(t, '{"benchmark": "mmvp", "headline": {}}'))], "has no 'config'"),
    ("rescore: no predictions.jsonl",
     lambda t: ["eval", "rescore", str(results_dir(t))], "no predictions.jsonl in"),
    ("cv-bench: truncated questions jsonl",
     lambda t: ["eval", "cv-bench", "--model", str(t), "--data", str(cv_bench_jsonl(t)), "--output", str(t / "o")],
     "test_2d.jsonl:2 is not valid JSON"),
    ("eval mmvp: truncated Questions.csv",
     lambda t: ["eval", "mmvp", "--model", str(t), "--data", str(mmvp_truncated(t)), "--output", str(t / "o")],
     "expected 300 question rows"),
    ("eval mmvp-vlm: no Questions.csv",
     lambda t: ["eval", "mmvp-vlm", "--vision-tower", str(t), "--data", str(t), "--output", str(t / "o")],
     "expected the MMVP-VLM question file Questions.csv"),
    ("mllm_train: a tower that does not exist",
     lambda t: ["mllm_train", "pretrain", "--preset", "tiny-pretrain", "--vision-tower", "/nonexistent/tower",
                "--llm", "/nonexistent/llm", "--data", str(t / "x.json"), "--image-folder", str(t), "--output",
                str(t / "o")], "/nonexistent"),
    ("mllm_train: an explicit-family tower path that does not exist",
     lambda t: ["mllm_train", "pretrain", "--preset", "tiny-pretrain", "--vision-tower", "hf_clip:/nonexistent/tower",
                "--llm", "/nonexistent/llm", "--data", str(t / "x.json"), "--image-folder", str(t), "--output",
                str(t / "o")], "no such file or directory: /nonexistent/tower"),
    ("mllm_train finetune: --init-from a directory that does not exist",
     lambda t: ["mllm_train", "finetune", "--preset", "tiny-finetune", "--init-from", "/nonexistent/llava", "--data",
                str(t / "x.json"), "--image-folder", str(t), "--output", str(t / "o")],
     "LLaVA checkpoint /nonexistent/llava does not exist"),
    ("mllm_train import-original: a directory that does not exist",
     lambda t: ["mllm_train", "import-original", "/nonexistent/llava", str(t / "o")],
     "LLaVA checkpoint /nonexistent/llava does not exist"),
    ("genfeedback run: unknown recipe",
     lambda t: ["genfeedback", "run", "--preset", "nope", "--output", str(t / "run")], "preset 'nope' not found"),
    ("genfeedback llava: finetune without its pretraining",
     lambda t: ["genfeedback", "llava", "--vision-tower", "t", "--llm", "x", "--output", str(t / "run"), "--stage",
                "finetune", "--finetune-data", str(t), "--finetune-images", str(t)], "pretrained projector not found"),
    ("genfeedback eval: model without config.json",
     lambda t: ["genfeedback", "eval", "--model", str(t), "--mmvp-data", str(t), "--output", str(t / "o")],
     "LLaVA checkpoint (--model) not found"),
]


def run_module(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**child_environment(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GENFEEDBACK_SKIP_SHM_OP": "1"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


@pytest.mark.parametrize("name,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(name, argv, message, tmp_path):
    assert_one_line_error(run_module(["-m", *argv(tmp_path)]), message)


# ---- cases on the tiny zoo's models and data ----------------------------------------------------------
def pretrain(zoo, t: Path, *extra: str, tower: str | None = None, llm: str | None = None) -> list[str]:
    return ["mllm_train", "pretrain", "--preset", "tiny-pretrain", "--vision-tower", tower or str(zoo.clip),
            "--llm", llm or str(zoo.llm), "--data", str(zoo.data["llava_pretrain"]), "--image-folder",
            str(zoo.data["llava_pretrain_images"]), "--output", str(t / "run"), "--max-steps", "3", *extra]


def finetune(zoo, t: Path, projector: Path, tower: str) -> list[str]:
    return ["mllm_train", "finetune", "--preset", "tiny-finetune", "--vision-tower", tower, "--llm", str(zoo.llm),
            "--pretrained-projector", str(projector), "--data", str(zoo.data["llava_finetune"]), "--image-folder",
            str(zoo.data["llava_image_folder"]), "--output", str(t / "fine"), "--max-steps", "1"]


def clip_projector(zoo, t: Path) -> Path:
    """An mm_projector.bin (with its tower record) as pretraining with the CLIP tower writes it."""
    from llava_plugin.llava import build_llava, write_mm_projector
    from llava_plugin.registry import load_tower

    return write_mm_projector(build_llava(load_tower(str(zoo.clip)), zoo.llm)[0], t / "pre" / "mm_projector.bin",
                              str(zoo.clip))


def truncated_projector(zoo, t: Path) -> Path:
    path = clip_projector(zoo, t)
    path.write_bytes(path.read_bytes()[:300])
    return path


def enhance(zoo, t: Path, *extra: str) -> list[str]:
    return ["enhance", "train", "--preset", "toy", "--method", "diva", "--zoo", str(zoo.root), "--output",
            str(t / "enh"), "--max-steps", "1", *extra]


def clip_run_stopped_after_one_step(zoo, t: Path) -> None:
    """A CLIP pretraining run with a checkpoint at step 1 (of 3), to resume."""
    proc = run_module(["-m", *pretrain(zoo, t, "--stop-after", "1")], timeout=600)
    assert proc.returncode == 0 and (t / "run" / "checkpoints" / "step-00000001").is_dir(), proc.stderr[-2000:]


def finished_clip_run(zoo, t: Path) -> None:
    """A CLIP pretraining run trained to its end: it keeps no checkpoint (tiny-pretrain: every_steps 0), only
    its export and run.json."""
    proc = run_module(["-m", *pretrain(zoo, t)], timeout=600)
    assert proc.returncode == 0 and not (t / "run" / "checkpoints").exists(), proc.stderr[-2000:]
    (t / "projector-before").write_bytes((t / "run" / "mm_projector.bin").read_bytes())


def compare_with_an_empty_run(t: Path) -> list[str]:
    (t / "empty").mkdir()
    return ["eval", "compare", str(results_dir(t)), str(t / "empty"), "--output", str(t / "rep")]


# (name, command line given (tmp_path, zoo), what the message must contain)
ZOO_CASES = [
    ("open_clip spec with the wrong architecture",
     lambda t, z: pretrain(z, t, tower=f"open_clip:ViT-B-32@{z.open_clip_checkpoint}"),
     "does not fit open_clip architecture 'ViT-B-32'"),
    ("mllm_train: an --llm that does not exist",
     lambda t, z: pretrain(z, t, llm="/nonexistent/llm"),
     "language model (--llm / model.llm) /nonexistent/llm does not exist"),
    ("mllm_train: an --llm that is not a language model",
     lambda t, z: pretrain(z, t, llm=str(z.clip)), "cannot load the language model (--llm / model.llm)"),
    ("mllm_train: TowerSpecError (an LLM as --vision-tower)",
     lambda t, z: pretrain(z, t, tower=str(z.llm)), "config model_type 'llama' is not a supported tower"),
    ("enhance: TowerSpecError (an LLM as --vision-tower)",
     lambda t, z: enhance(z, t, "--vision-tower", str(z.llm)), "config model_type 'llama' is not a supported tower"),
    ("enhance: GeneratorError (an LLM as --generator)",
     lambda t, z: enhance(z, t, "--generator", str(z.llm)), "is not a diffusers pipeline directory"),
    ("finetune: a SigLIP tower with a CLIP-trained projector of the same width",
     lambda t, z: finetune(z, t, clip_projector(z, t), str(z.siglip)),
     "was trained with another tower (family 'clip' -> 'siglip'; see mm_projector.json)"),
    ("finetune: a truncated mm_projector.bin",
     lambda t, z: finetune(z, t, truncated_projector(z, t), str(z.clip)), "cannot read pretrained projector"),
    ("compare: a run directory without metrics.json",
     lambda t, z: compare_with_an_empty_run(t), "no metrics.json under"),
    pytest.param("mllm_train: a CLIP run resumed with a SigLIP tower and another lr",
                 lambda t, z: clip_run_stopped_after_one_step(z, t) or pretrain(
                     z, t, "--set", "optim.lr=0.5", tower=str(z.siglip)),
                 "belongs to another run (optim.lr: 0.01 -> 0.5; model.vision_tower: ", marks=pytest.mark.slow),
    pytest.param("mllm_train: a finished run's directory started again with another lr",
                 lambda t, z: finished_clip_run(z, t) or pretrain(z, t, "--set", "optim.lr=0.5"),
                 "holds another run (optim.lr: 0.01 -> 0.5) and no checkpoint to resume", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,argv,message", ZOO_CASES,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in ZOO_CASES])
def test_bad_input_on_the_zoo_is_one_line_and_exit_2(name, argv, message, tmp_path, zoo):
    assert_one_line_error(run_module(["-m", *argv(tmp_path, zoo)], timeout=600), message)
    if "resumed" in name:  # the refused resume left the run as it was
        config = json.loads((tmp_path / "run" / "config.json").read_text())
        assert config["model"]["vision_tower"] == str(zoo.clip) and config["optim"]["lr"] == 0.01
    if "finished" in name:  # its export was not overwritten
        assert (tmp_path / "run" / "mm_projector.bin").read_bytes() == (tmp_path / "projector-before").read_bytes()


# ---- kill and resume -----------------------------------------------------------------------------------
# A run SIGKILLed by itself at a chosen point: the n-th call of `target` kills the process instead.
KILLER = """
import os, signal, sys
import {module} as where
from mllm_train.__main__ import main
calls = []
real = where.{target}
def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
where.{target} = killing
sys.exit(main(sys.argv[1:]))
"""
# (point, module, target, n, what the kill leaves half-written)
KILL_POINTS = [
    ("mid-checkpoint", "llava_plugin.train.checkpoint", "rng_state", 2,  # step 2's save: engine state, no RNG
     "checkpoints/.incomplete-step-00000002/engine"),
    ("mid-export", "transformers", "LlavaProcessor.save_pretrained", 1,  # weights written, no processor
     ".incomplete-llava/model.safetensors"),
]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(zoo, tmp_path):
    """SIGKILL mid-checkpoint and mid-export: the rerun of the same command resumes from the last complete
    checkpoint and ends with the same weights and the same metrics rows (each step once) as a run never killed."""
    from safetensors.torch import load_file

    def rows(out: Path) -> list[dict]:
        return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]

    straight = tmp_path / "straight"
    assert run_module(["-m", *pretrain(zoo, straight, "--set", "checkpointing.every_steps=1")]).returncode == 0
    expected = load_file(str(straight / "run" / "llava" / "model.safetensors"))
    for point, module, target, n, left in KILL_POINTS:
        out = tmp_path / point
        argv = pretrain(zoo, out, "--set", "checkpointing.every_steps=1")[1:]
        killed = run_module(["-c", KILLER.format(module=module, target=target, n=n), *argv])
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        assert (out / "run" / left).exists() and not (out / "run" / "llava").exists(), point
        resumed = run_module(["-m", "mllm_train", *argv])
        assert resumed.returncode == 0 and "resumed from" in resumed.stderr, (point, resumed.stderr[-2000:])
        weights = load_file(str(out / "run" / "llava" / "model.safetensors"))
        assert weights.keys() == expected.keys() and all(weights[k].equal(expected[k]) for k in weights), point
        assert [r["step"] for r in rows(out)] == [1, 2, 3], point
        assert [r["loss"] for r in rows(out)] == [r["loss"] for r in rows(straight)], point
