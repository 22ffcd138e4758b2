"""The `deepspeed` launcher starts every training stage (slow): enhance, pretrain and finetune, each
as a 2-process CPU run (gloo) through the same argv that `scripts/pipeline.sh --launcher deepspeed`
and a multi-node `--hostfile` build (`llava_plugin.jobs.launch_argv`).

The launcher passes `--local_rank=N` to each rank, which a plain argparse CLI refuses; LLaVA's own
route is this launcher, so each stage must start, train both ranks and export once.
"""
import json
import socket
import subprocess
from pathlib import Path

import pytest

from llava_plugin.distributed import child_environment
from llava_plugin.jobs import Launch, launch_argv

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def launcher_zoo(tmp_path_factory):
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("launcher-zoo"), seed=0, parts=["vision", "diffusion", "llm", "data"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_under_deepspeed(module: str, args: list[str], out: Path) -> subprocess.CompletedProcess:
    argv = launch_argv(module, args, Launch(gpus=2, launcher="deepspeed"))
    assert Path(argv[0]).name == "deepspeed"
    argv[1:1] = ["--master_port", str(_free_port())]
    env = {**child_environment(), "OMP_NUM_THREADS": "1", "GENFEEDBACK_SKIP_SHM_OP": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "dist_world_size=2" in proc.stdout + proc.stderr  # the launcher itself started both ranks
    return proc


def checkpoint_state(out: Path) -> dict:
    """The trainer state of the run's last checkpoint: what the ranks agreed on."""
    states = sorted((out / "checkpoints").glob("step-*/trainer_state.json"))
    assert states, f"no checkpoint under {out}"
    return json.loads(states[-1].read_text())


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_enhance_starts_under_the_deepspeed_launcher(launcher_zoo, tmp_path):
    out = tmp_path / "diva"
    run_under_deepspeed("enhance", [
        "train", "--preset", "tiny-diva", "--zoo", str(launcher_zoo.root), "--output", str(out),
        "--max-steps", "2", "--set", "logging.progress_bar=false", "--set", "checkpointing.every_steps=2",
        "--set", "diagnose.images=0"], out)
    assert [r["step"] for r in rows(out)] == [1, 2]
    meta = json.loads((out / "vision_tower" / "genfeedback.json").read_text())
    assert meta["world_size"] == 2 and meta["method"] == "diva"
    assert checkpoint_state(out)["world_size"] == 2


@pytest.mark.slow
def test_pretrain_then_finetune_start_under_the_deepspeed_launcher(launcher_zoo, tmp_path):
    zoo = launcher_zoo
    # 3 steps, a checkpoint at step 2 (the LLaVA trainer writes none at the end, its export is the result)
    common = ["--vision-tower", str(zoo.clip), "--llm", str(zoo.llm), "--max-steps", "3",
              "--set", "logging.progress_bar=false", "--set", "checkpointing.every_steps=2"]
    pre = tmp_path / "pretrain"
    run_under_deepspeed("mllm_train", [
        "pretrain", "--preset", "tiny-pretrain", "--data", str(zoo.data["llava_pretrain"]),
        "--image-folder", str(zoo.data["llava_pretrain_images"]), "--output", str(pre), *common], pre)
    assert [r["step"] for r in rows(pre)] == [1, 2, 3]
    assert checkpoint_state(pre)["world_size"] == 2
    assert (pre / "mm_projector.bin").is_file()

    fine = tmp_path / "finetune"
    # ZeRO-3 across the two ranks: the finetune preset's own stage, as in LLaVA's finetune.sh
    run_under_deepspeed("mllm_train", [
        "finetune", "--preset", "tiny-finetune", "--data", str(zoo.data["llava_finetune"]),
        "--image-folder", str(zoo.data["llava_image_folder"]), "--output", str(fine),
        "--pretrained-projector", str(pre / "mm_projector.bin"), *common], fine)
    assert [r["step"] for r in rows(fine)] == [1, 2, 3]
    assert checkpoint_state(fine)["world_size"] == 2
    meta = json.loads((fine / "llava" / "genfeedback.json").read_text())
    assert meta["stage"] == "finetune" and meta["pretrained_projector"] == str(pre / "mm_projector.bin")
