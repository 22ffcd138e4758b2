"""LLaVA-1.5 instruction tuning: genfeedback's trainer against the original LLaVA's, side by side.

    python benchmarks/llava_peer.py --llava PATH/TO/LLaVA [--procs 1,2] [--rounds 5] [--json OUT]

Both trainers run the finetune stage (LLM + projector train, tower frozen) on the same tiny zoo
model and data (built with `python -m llava_plugin.toy` unless --zoo is given), with the same
batch (global 4 = micro 2 x accumulation 2 on one process, micro 2 x 2 processes), max length,
template (vicuna_v1), padding to square, grouping by modality and length, fp32, and no gradient
checkpointing. Each round runs both, alternating which goes first, each pinned to the same cores
with one thread per process.

- **genfeedback**: `python -m mllm_train finetune --preset tiny-finetune` (the trainer users run:
  DeepSpeed, its optimizer and data plan). One process trains at ZeRO stage 0 (the trainer's rule
  for one process); 2 processes run ZeRO-3 under the `deepspeed` launcher, on gloo.
- **original**: the user's checkout of haotian-liu/LLaVA, never copied, imported from PYTHONPATH by
  `benchmarks/peer_runner.py`, which only adds a step clock. It runs in side venvs with
  LLaVA's pinned stack (transformers 4.37.2, tokenizers 0.15.1, sentencepiece 0.1.99,
  accelerate 0.21.0) and torch 2.13.0; one process runs `llava/train/train.py` as released (no
  DeepSpeed), 2 processes under the `deepspeed` launcher with the checkout's scripts/zero3.json.
  LLaVA's DeepSpeed pin (0.12.6) does not import with torch 2.13 and accelerate 0.21.0 hard-codes
  NCCL for DeepSpeed, so the 2-process venv has deepspeed 0.14.5 and accelerate 0.30.1, the oldest
  that run on a CPU. With `--ddp`, 2-process rounds also run the original under torchrun (DDP),
  against genfeedback under torchrun at ZeRO stage 0 (DeepSpeed's data parallelism).

The timed window is steps `--skip`+1 .. `--steps` (default 13..120: the toy data's 48 samples make
12 steps an epoch, so the window is 9 whole epochs and both trainers see exactly the same samples
in it). A step's time is from the end of the one before to its own end, data loading included.
tokens/s counts real (non-pad) positions, image tokens included: genfeedback's metrics log them
per step; the original sees the same samples in the window, so it gets the same count.
Peak memory is each run's largest process's peak RSS (os.wait4).

The tokenizer of the tiny LLM says `"legacy": false`; LLaVA's `preprocess_v1` then miscounts
every multi-round sample by one token and masks it entirely ("tokenization mismatch", 16 of 48
samples). The original gets a copy of the model dir whose tokenizer config says `"legacy": true`,
so it trains on the same supervision; nothing else differs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("peer_runner.py")
# LLaVA-1.5's pyproject pins (haotian-liu/LLaVA pyproject.toml), with the torch that lies on this disk
PEER_STACK = ["transformers==4.37.2", "tokenizers==0.15.1", "sentencepiece==0.1.99", "accelerate==0.21.0",
              "einops", "pillow", "protobuf"]
# the oldest DeepSpeed / accelerate that import with torch 2.13 and run DeepSpeed on a CPU (see above)
PEER_DEEPSPEED = ["deepspeed==0.14.5", "accelerate==0.30.1"]
PEER_TORCH = "torch==2.13.0"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the peer's side venvs
def side_venv(path: Path, deepspeed: bool) -> Path:
    """A venv with the original's stack (built once; reused when its python exists)."""
    python = path / "bin" / "python"
    if python.exists():
        return python
    log(f"building the original LLaVA's venv in {path} (about 1-2 min)")
    subprocess.run(["python3", "-m", "venv", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, PEER_TORCH], check=True)
    subprocess.run([*pip, *PEER_STACK], check=True)
    if deepspeed:
        subprocess.run([*pip, "--no-build-isolation", PEER_DEEPSPEED[0]], check=True, env={**os.environ,
                                                                                          "DS_BUILD_OPS": "0"})
        subprocess.run([*pip, PEER_DEEPSPEED[1]], check=True)
    return python


def legacy_tokenizer_copy(llm: Path, out: Path) -> Path:
    """`llm` as symlinks, but with "legacy": true in tokenizer_config.json (see the module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    for item in llm.iterdir():
        target = out / item.name
        if item.name != "tokenizer_config.json" and not target.exists():
            target.symlink_to(item.resolve())
    config = json.loads((llm / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": True}, indent=2))
    return out


# ------------------------------------------------------------------ one run
def run_measured(argv: list[str], env: dict, log_file: Path, cwd: Path | None = None) -> dict:
    """Run `argv`; its wall seconds and its largest process's peak RSS (MB)."""
    start = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_file.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[0]} ... exited {code}; see {log_file}: {' | '.join(tail)}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024}


def thread_env() -> dict:
    """One thread per process, offline, CPU DeepSpeed; no rendezvous inherited from this process."""
    from llava_plugin.distributed import child_environment

    env = child_environment()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               DS_ACCELERATOR="cpu", LOCAL_SIZE="2", CUDA_VISIBLE_DEVICES="")
    return env


def genfeedback_run(zoo: dict, out: Path, procs: int, steps: int, cores: str, work: Path, launcher: str) -> dict:
    """`launcher` deepspeed: ZeRO-3 (the preset's); torchrun: ZeRO stage 0, DeepSpeed's plain data
    parallelism, the counterpart of the original under DDP."""
    args = ["finetune", "--preset", "tiny-finetune", "--vision-tower", zoo["clip"], "--llm", zoo["llm"],
            "--data", zoo["data"], "--image-folder", zoo["images"], "--output", str(out), "--max-steps", str(steps),
            "--set", "checkpointing.resume=none", "--set", "logging.progress_bar=false",
            "--set", "logging.every_steps=1"]
    if procs == 1:
        argv = [sys.executable, "-m", "mllm_train", *args]
    elif launcher == "deepspeed":
        argv = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(procs), "--master_port",
                "29631", "--module", "mllm_train", *args, "--deepspeed", "zero3"]
    else:
        stage0 = work / "zero0.json"
        stage0.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                "-m", "mllm_train", *args, "--deepspeed", str(stage0)]
    env = thread_env()
    env["TORCH_EXTENSIONS_DIR"] = str(work / "torch_extensions-genfeedback")
    measured = run_measured(["taskset", "-c", cores, *argv], env, out.with_suffix(".log"), cwd=REPO)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {**measured, "step_s": [r["seconds"] for r in rows], "tokens": [r["tokens"] for r in rows],
            "samples": [r["samples"] for r in rows], "first_loss": rows[0]["loss"]}


def original_command(peer: dict, zoo: dict, out: Path, procs: int, steps: int, work: Path,
                     launcher: str) -> tuple[list[str], dict]:
    """The original's training command (through peer_runner.py) and its environment; it runs in
    the checkout, and writes its step clock to `out`/times.json."""
    args = ["--model_name_or_path", peer["llm"], "--version", "v1", "--data_path", zoo["data"],
            "--image_folder", zoo["images"], "--vision_tower", zoo["clip"], "--mm_projector_type", "mlp2x_gelu",
            "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
            "--image_aspect_ratio", "pad", "--group_by_modality_length", "True", "--bf16", "False", "--fp16", "False",
            "--output_dir", str(out), "--num_train_epochs", "1", "--max_steps", str(steps),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", str(2 // procs),
            "--learning_rate", "2e-3", "--weight_decay", "0.", "--warmup_ratio", "0.03",
            "--lr_scheduler_type", "cosine", "--model_max_length", "256", "--gradient_checkpointing", "False",
            "--dataloader_num_workers", "0", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
            "--seed", "42"]
    python = peer["python_ds"] if launcher == "deepspeed" else peer["python"]
    if procs == 1:
        argv = [python, str(RUNNER), *args]
    elif launcher == "deepspeed":
        argv = [str(Path(python).with_name("deepspeed")), "--num_gpus", str(procs), "--master_port", "29632",
                str(RUNNER), "--deepspeed", str(peer["checkout"] / "scripts" / "zero3.json"), *args]
    else:
        argv = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", str(RUNNER),
                *args, "--ddp_backend", "gloo"]
    env = thread_env()
    env.update(PYTHONPATH=str(peer["checkout"]), PEER_TIMES=str(out / "times.json"),
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions-original"))
    return argv, env


def original_run(peer: dict, zoo: dict, out: Path, procs: int, steps: int, cores: str, work: Path,
                 launcher: str) -> dict:
    argv, env = original_command(peer, zoo, out, procs, steps, work, launcher)
    out.mkdir(parents=True, exist_ok=True)
    measured = run_measured(["taskset", "-c", cores, *argv], env, out.with_suffix(".log"), cwd=peer["checkout"])
    times = json.loads((out / "times.json").read_text())
    ends = [times["train_begin"], *times["step_ends"]]
    return {**measured, "step_s": [b - a for a, b in itertools.pairwise(ends)], "first_loss": times["losses"][0],
            "tower_dtype": times["tower_dtype"], "llm_dtype": times["llm_dtype"]}


# ------------------------------------------------------------------ rounds and the table
def summarize(rounds: list[dict], skip: int) -> dict:
    """Per side: median tokens/s, step time, peak RSS; the per-round ratio's median, min and max."""
    sides = {}
    for side in ("genfeedback", "original"):
        tokens = [sum(r["genfeedback"]["tokens"][skip:]) for r in rounds]
        seconds = [sum(r[side]["step_s"][skip:]) for r in rounds]
        steps = len(rounds[0][side]["step_s"][skip:])
        sides[side] = {"tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
                       "step_ms": statistics.median(1000 * s / steps for s in seconds),
                       "peak_rss_mb": statistics.median(r[side]["peak_rss_mb"] for r in rounds),
                       "wall_s": statistics.median(r[side]["wall_s"] for r in rounds)}
    ratios = [sum(r["original"]["step_s"][skip:]) / sum(r["genfeedback"]["step_s"][skip:]) for r in rounds]
    return {**sides, "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                               "rounds": len(ratios)}}


def table(results: list[dict]) -> str:
    header = ("| processes | genfeedback runs as | original runs as | genfeedback tokens/s | original tokens/s "
              "| genfeedback / original (median, min-max over rounds) | step ms (gf / orig) | peak RSS MB (gf / orig) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, ratio = r["summary"], r["summary"]["ratio"]
        gf, orig = s["genfeedback"], s["original"]
        lines.append(f"| {r['procs']} | {r['genfeedback_as']} | {r['original_as']} | {gf['tokens_per_s']:.0f} | {orig['tokens_per_s']:.0f} | "
                     f"**{ratio['median']:.2f}x** ({ratio['min']:.2f}-{ratio['max']:.2f}, {ratio['rounds']} rounds) | "
                     f"{gf['step_ms']:.1f} / {orig['step_ms']:.1f} | {gf['peak_rss_mb']:.0f} / "
                     f"{orig['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def tiny_zoo(path: Path | None, work: Path) -> dict:
    """The paths both trainers read: `path`'s zoo, or one built under `work` (vision, llm, data)."""
    from llava_plugin.toy import open_zoo

    return finetune_paths(open_zoo(path or work / "zoo", parts=["vision", "llm", "data"]))


def finetune_paths(zoo) -> dict:
    """A tiny zoo's (llava_plugin.toy) tower, LLM, finetune data and images, as both trainers take them."""
    return {"clip": str(zoo.clip), "llm": str(zoo.llm), "data": str(zoo.data["llava_finetune"]),
            "images": str(zoo.data["llava_image_folder"])}


def checkout_problem(checkout: Path) -> str | None:
    """Why `checkout` is not a checkout of haotian-liu/LLaVA that these benchmarks can run, or None."""
    if not (checkout / "llava" / "train" / "train.py").is_file():
        return f"--llava {checkout}: no llava/train/train.py there; pass a checkout of haotian-liu/LLaVA"
    return None


def peer_side(checkout: Path, work: Path, zoo: dict, deepspeed: bool) -> dict:
    """What the original's runs need: the checkout, its side venv(s) under `work`, and the LLM with
    a legacy tokenizer config."""
    peer = {"checkout": checkout.resolve(), "python": str(side_venv(work / "venv", deepspeed=False)),
            "llm": str(legacy_tokenizer_copy(Path(zoo["llm"]), work / "llm-legacy-tokenizer"))}
    if deepspeed:
        peer["python_ds"] = str(side_venv(work / "venv-deepspeed", deepspeed=True))
    return peer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/llava_peer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llava", required=True, type=Path, help="your checkout of haotian-liu/LLaVA")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genfeedback-llava-peer",
                        help="side venvs, zoo and run logs (kept between runs)")
    parser.add_argument("--zoo", type=Path, help="an existing tiny zoo (python -m llava_plugin.toy --out DIR)")
    parser.add_argument("--procs", default="1,2", help="process counts to measure, e.g. 1,2")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per process count")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=12, help="leading steps not timed (warm-up)")
    parser.add_argument("--ddp", action="store_true", help="2+ processes: also time the original under torchrun")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    if problem := checkout_problem(args.llava):
        parser.error(problem)
    args.work.mkdir(parents=True, exist_ok=True)
    procs = [int(p) for p in args.procs.split(",")]
    if max(procs) > (os.cpu_count() or 1):
        parser.error(f"--procs {args.procs}: this machine has {os.cpu_count()} cores (one per process)")
    try:
        return _measure(args, procs)
    except (RuntimeError, subprocess.CalledProcessError) as err:  # a run failed: its log says why
        print(f"error: {err}", file=sys.stderr)
        return 2


def _measure(args: argparse.Namespace, procs: list[int]) -> int:
    zoo = tiny_zoo(args.zoo, args.work)
    peer = peer_side(args.llava, args.work, zoo, deepspeed=max(procs) > 1)
    results = []
    for n in procs:
        cores = "1" if n == 1 else f"0-{n - 1}"
        launchers = ["python"] if n == 1 else ["deepspeed", *(["torchrun"] if args.ddp else [])]
        for launcher in launchers:
            rounds = []
            for i in range(args.rounds):
                runs_dir = args.work / "runs" / f"{n}proc-{launcher}-round{i}"
                shutil.rmtree(runs_dir, ignore_errors=True)
                runs_dir.mkdir(parents=True)
                order = ("genfeedback", "original") if i % 2 == 0 else ("original", "genfeedback")
                measured = {}
                for side in order:
                    log(f"{n} process(es), round {i + 1}/{args.rounds}: {side}")
                    if side == "genfeedback":
                        measured[side] = genfeedback_run(zoo, runs_dir / side, n, args.steps, cores, args.work,
                                                         launcher)
                    else:
                        measured[side] = original_run(peer, zoo, runs_dir / side, n, args.steps, cores, args.work,
                                                      launcher)
                rounds.append(measured)
            original_as = {"python": "llava/train/train.py, no DeepSpeed",
                           "deepspeed": "deepspeed launcher, its scripts/zero3.json",
                           "torchrun": "torchrun (DDP)"}[launcher]
            genfeedback_as = {"python": "ZeRO stage 0 (the 1-process rule)", "deepspeed": "deepspeed launcher, ZeRO-3",
                              "torchrun": "torchrun, ZeRO stage 0 (data parallel)"}[launcher]
            results.append({"procs": n, "original_as": original_as, "genfeedback_as": genfeedback_as,
                            "summary": summarize(rounds, args.skip), "rounds": rounds})
            log(table(results[-1:]))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
