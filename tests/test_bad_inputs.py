"""Bad inputs, one table: every case is a CLI call on a broken file or flag that must end with exit
code 2, a one-line `error:` naming the file or flag, and no traceback."""
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
    ("genfeedback run: unknown recipe",
     lambda t: ["genfeedback", "run", "--preset", "nope", "--output", str(t / "run")], "preset 'nope' not found"),
    ("genfeedback llava: finetune without its pretraining",
     lambda t: ["genfeedback", "llava", "--vision-tower", "t", "--llm", "x", "--output", str(t / "run"), "--stage",
                "finetune", "--finetune-data", str(t), "--finetune-images", str(t)], "pretrained projector not found"),
    ("genfeedback eval: model without config.json",
     lambda t: ["genfeedback", "eval", "--model", str(t), "--mmvp-data", str(t), "--output", str(t / "o")],
     "LLaVA checkpoint (--model) not found"),
]


@pytest.mark.parametrize("name,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(name, argv, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", *argv(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**child_environment(), "HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
