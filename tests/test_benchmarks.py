"""The peer benchmarks (benchmarks/): their bookkeeping, and the eval one end to end on the tiny
zoo. Speeds are results of a benchmark run (benchmarks/README.md), never asserted here."""
import importlib.util
import json
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llava_peer_ratio_is_the_timed_window_of_each_round():
    peer = load("llava_peer")
    rounds = [{"genfeedback": {"step_s": [9.0, 1.0, 1.0], "tokens": [5, 100, 100], "peak_rss_mb": 900, "wall_s": 20},
               "original": {"step_s": [9.0, 2.0, 2.0], "peak_rss_mb": 400, "wall_s": 30}},
              {"genfeedback": {"step_s": [9.0, 1.0, 1.0], "tokens": [5, 100, 100], "peak_rss_mb": 910, "wall_s": 21},
               "original": {"step_s": [9.0, 3.0, 3.0], "peak_rss_mb": 410, "wall_s": 31}}]
    summary = peer.summarize(rounds, skip=1)
    assert summary["ratio"] == {"median": 2.5, "min": 2.0, "max": 3.0, "rounds": 2}
    assert summary["genfeedback"]["tokens_per_s"] == 100  # 200 tokens in 2 s
    assert summary["original"]["tokens_per_s"] == pytest.approx((50 + 200 / 6) / 2)  # the same tokens in 4 s, 6 s
    assert summary["original"]["step_ms"] == 2500
    row = peer.table([{"procs": 1, "genfeedback_as": "a", "original_as": "b", "summary": summary}])
    assert "**2.50x** (2.00-3.00, 2 rounds)" in row.splitlines()[-1]


def test_llava_peer_gives_the_original_a_legacy_tokenizer_copy(tmp_path):
    peer = load("llava_peer")
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "tokenizer_config.json").write_text(json.dumps({"legacy": False, "model_max_length": 7}))
    (llm / "model.safetensors").write_bytes(b"w")
    copy = peer.legacy_tokenizer_copy(llm, tmp_path / "copy")
    assert json.loads((copy / "tokenizer_config.json").read_text()) == {"legacy": True, "model_max_length": 7}
    assert (copy / "model.safetensors").is_symlink()


def test_llava_peer_refuses_a_directory_that_is_not_a_llava_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load("llava_peer").main(["--llava", str(tmp_path), "--work", str(tmp_path / "w")])
    assert exit_info.value.code == 2 and "no llava/train/train.py" in capsys.readouterr().err


def test_eval_peer_times_both_models_on_lmms_evals_own_requests(zoo, tmp_path, capsys):
    data = zoo.data["vqa_root"]
    assert load("eval_peer").main(["--model", str(zoo.llava), "--data-root", str(data), "--rounds", "1",
                                   "--batch-size", "4", "--work", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["requests"] == 24 and set(result["seconds"]) == {"genfeedback_llava", "llava_hf"}
    assert "| shapes_vqa (24) |" in capsys.readouterr().out


def test_llava_peer_reports_a_failed_run_in_one_line(tmp_path, capsys, monkeypatch):
    peer = load("llava_peer")
    checkout = tmp_path / "LLaVA"
    (checkout / "llava" / "train").mkdir(parents=True)
    (checkout / "llava" / "train" / "train.py").write_text("")

    def failing(*args, **kwargs):
        raise RuntimeError("python ... exited 1; see run.log: boom")

    monkeypatch.setattr(peer, "tiny_zoo", failing)
    assert peer.main(["--llava", str(checkout), "--work", str(tmp_path / "w"), "--procs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: python ... exited 1; see run.log: boom" and "Traceback" not in err


def test_startup_times_a_run_to_its_line(tmp_path):
    import sys

    startup = load("startup")
    script = "import time; print('loading'); print('x ready to train 0.1 s', flush=True); time.sleep(0.5)"
    start = time.perf_counter()
    ready = startup.timed_run([sys.executable, "-c", script], {}, tmp_path / "ready.log", startup.READY)
    assert 0 < ready["wall_s"] < time.perf_counter() - start - 0.4 and ready["cpu_s"] >= 0
    assert "ready to train" in (tmp_path / "ready.log").read_text()
    with pytest.raises(RuntimeError, match="never printed 'ready to train'"):
        startup.timed_run([sys.executable, "-c", "print('no')"], {}, tmp_path / "no.log", startup.READY)
    with pytest.raises(RuntimeError, match="exited 3"):
        startup.timed_run([sys.executable, "-c", "print('ready to train'); raise SystemExit(3)"], {},
                          tmp_path / "fail.log", startup.READY)
    assert startup.timed_run(startup.TORCH, {}, tmp_path / "torch.log", startup.IMPORTED)["wall_s"] > 0


def test_startup_reports_each_rounds_difference_over_torch_and_over_the_imports():
    startup = load("startup")
    rounds = [{"finetune": {"wall_s": 6.0, "cpu_s": 5.0}, "imports": {"wall_s": 5.0, "cpu_s": 4.5},
               "torch": {"wall_s": 2.0, "cpu_s": 2.0}},
              {"finetune": {"wall_s": 9.0, "cpu_s": 5.5}, "imports": {"wall_s": 6.0, "cpu_s": 4.5},
               "torch": {"wall_s": 4.0, "cpu_s": 2.0}},
              {"finetune": {"wall_s": 5.0, "cpu_s": 4.0}, "imports": {"wall_s": 4.0, "cpu_s": 3.5},
               "torch": {"wall_s": 2.5, "cpu_s": 1.5}}]
    summary = startup.summarize(rounds, "finetune")
    assert summary["over"]["wall_s"] == {"median": 4.0, "min": 2.5, "max": 5.0, "n": 3}
    assert summary["over"]["cpu_s"]["median"] == 3.0 and summary["stage"]["wall_s"]["median"] == 6.0
    lines = startup.table(rounds, ["finetune", "imports"]).splitlines()
    assert lines[2] == "| finetune | 6.00 (5.00-9.00) | 2.50 (2.00-4.00) | **4.00 (2.50-5.00)** | 3.00 (2.50-3.50) | 0.50 (0.50-1.00) |"
    assert lines[3].startswith("| imports | 5.00 (4.00-6.00) |") and lines[3].endswith("|  |")


def test_startup_puts_the_original_over_its_own_torch_and_its_own_imports():
    startup = load("startup")
    times = {"torch": 2.0, "imports": 5.0, "finetune": 6.0, "original-torch": 1.0, "original-imports": 2.5,
             "original": 3.0}
    rounds = [{name: {"wall_s": t, "cpu_s": t} for name, t in times.items()}]
    assert startup.summarize(rounds, "original")["over"]["cpu_s"]["median"] == 2.0  # 3.0 - its torch's 1.0
    rows = {line.split(" | ")[0]: line for line in startup.table(
        rounds, ["finetune", "imports", "original", "original-imports"]).splitlines()}
    assert rows["| finetune"].endswith("| 1.00 (1.00-1.00) |")  # over genfeedback's imports row
    assert rows["| original"].endswith("| **2.00 (2.00-2.00)** | 2.00 (2.00-2.00) | 0.50 (0.50-0.50) |")
    assert rows["| original-imports"].startswith("| original-imports | 2.50 (2.50-2.50) | 1.00 (1.00-1.00) |")


def test_startup_needs_a_llava_checkout_for_the_originals_stages(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load("startup").main(["--stages", "finetune,original", "--work", str(tmp_path)])
    assert exit_info.value.code == 2 and "no --llava given: the original's stages need --llava PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        load("startup").main(["--stages", "original", "--llava", str(tmp_path), "--work", str(tmp_path)])
    assert exit_info.value.code == 2 and "no llava/train/train.py there" in capsys.readouterr().err
