"""A full disk during a checkpoint, an export or a results write is named ("no space left on <path>:
need about N MB"), the partial write is removed, and what was complete before stays: simulated by
writers that fail as torch, safetensors and the OS do, and for real on a tiny tmpfs where mounting is
permitted."""
import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from llava_plugin import errors
from llava_plugin.distributed import child_environment
from llava_plugin.errors import DiskFullError, naming_disk_full

ROOT = Path(__file__).resolve().parents[1]


def torch_save_failure() -> RuntimeError:
    """What torch.save raises on a full disk: no errno, the stream error only in the context."""
    try:
        raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        except RuntimeError as err:
            return err


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_enospc_is_named_with_the_size_and_the_partial_write_removed(tmp_path, failure):
    partial = tmp_path / ".incomplete-x"
    named = pytest.raises(DiskFullError, match=rf"^no space left on {tmp_path}: need about 3\.0 MB \(")
    with named, naming_disk_full(tmp_path, 3 * 2**20, cleanup=[partial]):
        partial.mkdir()
        (partial / "half.bin").write_bytes(b"0" * 100)
        raise failure
    assert not partial.exists()


def test_a_write_failure_without_a_reason_is_disk_full_only_when_the_disk_is(tmp_path, monkeypatch):
    monkeypatch.setattr(errors, "_free_bytes", lambda path: 10)
    with pytest.raises(DiskFullError, match="need about 0.5 MB"), naming_disk_full(tmp_path, 2**19):
        raise torch_save_failure()
    monkeypatch.setattr(errors, "_free_bytes", lambda path: 2**40)
    with pytest.raises(RuntimeError, match="unexpected pos"), naming_disk_full(tmp_path, 2**19):
        raise torch_save_failure()
    with pytest.raises(KeyError), naming_disk_full(tmp_path, 1):  # other errors pass through untouched
        raise KeyError("x")


def test_llava_export_on_a_full_disk_keeps_the_earlier_export(zoo, tmp_path, monkeypatch):
    from llava_plugin.llava import build_llava, save_llava
    from llava_plugin.registry import load_tower

    model, processor = build_llava(load_tower(str(zoo.clip)), zoo.llm, seed=0)
    out = save_llava(model, processor, tmp_path / "llava", metadata={"stage": "earlier"})
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def full_disk(directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    with pytest.raises(DiskFullError, match=rf"no space left on {tmp_path}: need about {need / 2**20:.1f} MB"):
        save_llava(model, processor, tmp_path / "llava", metadata={"stage": "later"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llava"]
    assert json.loads((out / "genfeedback.json").read_text())["stage"] == "earlier"


def test_checkpoint_on_a_full_disk_keeps_the_earlier_checkpoint(zoo, tmp_path, monkeypatch):
    from mllm_train.config import load_config
    from mllm_train.trainer import LlavaTrainer

    cfg = load_config("tiny-pretrain", {
        "model": {"vision_tower": str(zoo.clip), "llm": str(zoo.llm)}, "output_dir": str(tmp_path),
        "data": {"data_path": str(zoo.data["llava_pretrain"]), "image_folder": str(zoo.data["llava_pretrain_images"])},
        "schedule": {"max_steps": 4}, "checkpointing": {"every_steps": 1, "keep_last": 2}})
    trainer = LlavaTrainer(cfg).setup()
    trainer.train(1)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a partial file, then the failure torch reports
        raise torch_save_failure()

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(errors, "_free_bytes", lambda path: 0)
    with pytest.raises(DiskFullError, match=rf"no space left on {tmp_path / 'checkpoints'}: need about"):
        trainer.train(1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    monkeypatch.undo()
    assert LlavaTrainer(cfg).setup().step == 1  # resumes from the complete one


def test_results_write_on_a_full_disk_leaves_no_stale_metrics(tmp_path, monkeypatch):
    from eval.benchmarks.common import write_results

    write_results(tmp_path, [{"id": 1}], {"headline": {"accuracy": 100.0}})
    real_write = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        if self.name.endswith("predictions.jsonl"):
            real_write(self, text[:5])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(DiskFullError, match=f"no space left on {tmp_path}"):
        write_results(tmp_path, [{"id": 1}, {"id": 2}], {"headline": {"accuracy": 50.0}})
    # no metrics.json that the predictions beside it do not match, no partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KB tmpfs (mounting needs root or CAP_SYS_ADMIN: skipped where not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): the simulated "
                    "full-disk tests above still run")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_and_the_run_resumes_after_space_is_freed(zoo, tiny_tmpfs):
    """mllm_train on a 512 KB disk: the step-1 checkpoint fits, the LLaVA export (~1 MB) does not. The
    run ends with one error line naming the disk, leaves no partial export, and once the disk is larger
    the same command resumes from the checkpoint and exports."""
    run = tiny_tmpfs / "run"
    cmd = [sys.executable, "-m", "mllm_train", "pretrain", "--preset", "tiny-pretrain", "--vision-tower",
           str(zoo.clip), "--llm", str(zoo.llm), "--data", str(zoo.data["llava_pretrain"]), "--image-folder",
           str(zoo.data["llava_pretrain_images"]), "--output", str(run), "--max-steps", "2",
           "--set", "checkpointing.every_steps=1"]
    env = {**child_environment(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GENFEEDBACK_SKIP_SHM_OP": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on {run}: need about "), proc.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "run.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]

    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_tmpfs)], check=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stderr and (run / "llava" / "config.json").is_file()
    assert [row["step"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]


@pytest.mark.slow
def test_a_full_disk_on_two_processes_stops_every_rank_without_a_traceback(zoo, tiny_tmpfs):
    """The same disk under torchrun with 2 ranks: rank 0 fails the export and names the disk; rank 1, waiting
    for it in a barrier, stops with a line saying so instead of gloo's traceback; nothing hangs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mllm_train", "pretrain", "--preset", "tiny-pretrain", "--vision-tower", str(zoo.clip), "--llm",
           str(zoo.llm), "--data", str(zoo.data["llava_pretrain"]), "--image-folder",
           str(zoo.data["llava_pretrain_images"]), "--output", str(tiny_tmpfs / "run"), "--max-steps", "2",
           "--set", "checkpointing.every_steps=1"]
    env = {**child_environment(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GENFEEDBACK_SKIP_SHM_OP": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert [line for line in errors if "no space left" in line] == [
        line for line in errors if line.startswith(f"error: no space left on {tiny_tmpfs / 'run'}: need about ")]
    assert len(errors) in (1, 2) and "no space left" in errors[0], proc.stderr[-3000:]
    # rank 1's line, when the launcher's SIGTERM does not come first
    assert all("stopped because another rank stopped first" in line for line in errors[1:]), errors
    assert not re.search(r"^\[rank\d+\]: Traceback", proc.stderr, re.MULTILINE), proc.stderr[-3000:]
