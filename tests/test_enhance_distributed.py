"""Multi-process enhance runs (slow): 2 ranks under ZeRO-2 and ZeRO-3 follow the 1-process
loss curve at the same global batch, and the ZeRO-3 export (gathered, fp32 masters) matches.

Each run is a subprocess (`python -m torch.distributed.run --nproc_per_node N`) of
tests/enhance_double.py, i.e. `python -m enhance` with the test double registered.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def dist_zoo(tmp_path_factory):
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("enhance-dist-zoo"), seed=0, parts=["vision", "data"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_enhance(zoo, out: Path, nproc: int, zero: str, *extra: str) -> list[dict]:
    args = ["train", "--method", "test-reconstruct", "--preset", "base", "--vision-tower", str(zoo.clip),
            "--generator", "none", "--data", str(zoo.data["scenes"]), "--output", str(out), "--deepspeed", zero,
            "--max-steps", "3", "--set", "batch.global_batch_size=8", "--set", "batch.micro_batch_size=2",
            "--set", "data.num_workers=0", "--set", "optim.lr=1e-2", "--set", "diagnose.images=0",
            "--set", "logging.every_steps=1", "--set", "logging.progress_bar=false",
            "--set", "checkpointing.every_steps=2", *extra]
    if nproc == 1:
        cmd = [sys.executable, str(HERE / "enhance_double.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), str(HERE / "enhance_double.py"), *args]
    # an in-process run earlier in this session set RANK/MASTER_PORT...; each run here is its own group
    launcher_env = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_env}
    env.update(GENFEEDBACK_SKIP_SHM_OP="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path):
    from safetensors.torch import load_file

    return load_file(str(out / "vision_tower" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_follow_the_one_rank_loss_curve(dist_zoo, tmp_path, zero):
    one = run_enhance(dist_zoo, tmp_path / "one", 1, "zero2", "--set", "precision.dtype=fp32")
    # an export mid-run (step 1) gathers the weights and puts the working copies back: the curve is unchanged
    two = run_enhance(dist_zoo, tmp_path / "two", 2, zero, "--set", "precision.dtype=fp32",
                      "--set", "export.at_steps=[1]")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert json.loads((tmp_path / "two" / "exports" / "step-00000001" / "genfeedback.json").read_text())["steps"] == 1
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["lr"] for r in two] == pytest.approx([r["lr"] for r in one])
    # the global gradient norm (before clipping) is over all ranks' partitions: the 1-rank run's
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    assert all(r["grad_norm_clipped"] == min(r["grad_norm"], 1.0) for r in two)
    assert two[-1]["images_tried"] == one[-1]["images_tried"] == 24  # each image read once, by one rank
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    base = _weights_base(dist_zoo)
    moved = max(float((a[k] - base[k]).abs().max()) for k in a)
    apart = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-3 and apart < moved / 50, (moved, apart)
    meta = json.loads((tmp_path / "two" / "vision_tower" / "genfeedback.json").read_text())
    assert meta["world_size"] == 2 and meta["config"]["deepspeed"]["config"] == zero
    # a checkpoint written by 2 ranks (step 2) resumes on 2 ranks to the same end
    resumed_dir = tmp_path / "two-resumed"
    import shutil

    shutil.copytree(tmp_path / "two" / "checkpoints", resumed_dir / "checkpoints")
    assert sorted(p.name for p in (resumed_dir / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    shutil.rmtree(resumed_dir / "checkpoints" / "step-00000003")
    resumed = run_enhance(dist_zoo, resumed_dir, 2, zero, "--set", "precision.dtype=fp32")
    assert [r["step"] for r in resumed] == [3]
    assert resumed[0]["loss"] == pytest.approx(two[-1]["loss"], rel=1e-6)


def _weights_base(zoo):
    from safetensors.torch import load_file

    return load_file(str(zoo.clip / "model.safetensors"))


@pytest.mark.slow
def test_zero3_bf16_exports_fp32_master_weights(dist_zoo, tmp_path):
    rows = run_enhance(dist_zoo, tmp_path / "bf16", 2, "zero3", "--set", "precision.dtype=bf16",
                       "--set", "diagnose.images=4")  # the start-of-run gap check on partitioned params
    assert rows[0]["event"] == "diagnosis" and rows[0]["loss"] > 0
    rows = rows[1:]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    weights = _weights(tmp_path / "bf16")
    assert {str(v.dtype) for v in weights.values()} == {"torch.float32"}
    base = _weights_base(dist_zoo)
    # fp32 masters: values that are not bf16-representable survive the export
    rounded = {k: v.bfloat16().float() for k, v in weights.items()}
    assert any(float((weights[k] - rounded[k]).abs().max()) > 0 for k in weights)
    assert max(float((weights[k] - base[k]).abs().max()) for k in weights) > 1e-3
