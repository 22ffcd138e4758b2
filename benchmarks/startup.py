"""Start-up: how long each training stage takes to be ready to train, over `import torch`.

    python benchmarks/startup.py [--zoo DIR] [--stages finetune,pretrain,enhance] [--rounds 5] [--json OUT]
    python benchmarks/startup.py --llava PATH/TO/LLaVA --stages finetune,imports,original,original-imports

What is measured. Every trainer logs "ready to train" once its engine is built, its data is
open and (on a fresh run) its start hook has run, just before the first step. A stage's
start-up is the wall time from spawning its 1-step command (one process, the tiny zoo) to that
line arriving on its output, and the process's CPU time (user + system, /proc) at that moment.
The yardstick, `import torch`, is timed the same way: `python -c "import torch; print(...)"` to
its line. Not to its exit: the interpreter's exit after `import torch` takes about another 0.5 s
of CPU, which a trainer's start-up does not include. Each round runs the yardstick and
every stage once, in an order rotated each round, and a figure is the round's difference, stage
minus yardstick; the table gives its median and range over the rounds. The CPU difference is the
steadier one on a shared machine: it does not count time spent waiting for a core.

The stages, one process each (the trainer then runs DeepSpeed at ZeRO stage 0):
- finetune: `python -m mllm_train finetune --preset tiny-finetune ... --max-steps 1`
- pretrain: `python -m mllm_train pretrain --preset tiny-pretrain ... --max-steps 1`
- enhance:  `python -m enhance train --preset tiny-diva --zoo ZOO ... --max-steps 1` (its start hook
  runs the condition-gap diagnostic before training, so that is part of its start-up)
- imports:  not a stage but the floor under the LLaVA stages: a process that only imports what
  they cannot train without (DeepSpeed; transformers with the CLIP, Llama and LLaVA classes, its
  image processor and tokenizers; that brings torchvision, torch._dynamo, scipy and accelerate),
  timed to its line. What a LLaVA stage takes beyond this row is genfeedback's own start-up.
- original: with --llava, the peer: the original LLaVA's `llava/train/train.py`, run from the user's
  checkout by benchmarks/peer_runner.py in benchmarks/llava_peer.py's side venv (its pinned stack,
  torch 2.13.0), with the finetune's arguments of that benchmark and 1 step, timed to the line the
  runner prints when the HF Trainer begins training (model, data and optimizer built). Its
  yardstick is `import torch` in that venv ("original-torch"), timed the same way.
- original-imports: the original's floor, in its venv: torch.distributed and what its train.py and
  CLIP tower take from transformers (the Trainer, the tokenizer, CLIP and Llama classes, the image
  processor).

Every command runs pinned to `--cores` (default core 1, as benchmarks/llava_peer.py), in
llava_peer.py's environment (one thread, offline, CPU; no rendezvous inherited), with the rest of
the environment as it is. The file cache is warm: one unmeasured run of each
command comes first.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark that runs the original
import llava_peer

REPO = Path(__file__).resolve().parents[1]
READY = "ready to train"
PEER_STAGES = ("original", "original-imports")
TRAINING = ("finetune", "pretrain", "enhance", "original")  # timed to "ready to train"; the rest to IMPORTED
STAGES = ("finetune", "pretrain", "enhance", "imports", *PEER_STAGES)
IMPORTED = "startup benchmark: imported"
TORCH = [sys.executable, "-c", f"import torch; print({IMPORTED!r}, flush=True)"]
# each stage's `import torch` (genfeedback's: "torch"), and the imports row under it
YARDSTICK = {stage: "original-torch" for stage in PEER_STAGES}
FLOOR = {"finetune": "imports", "pretrain": "imports", "enhance": "imports", "original": "original-imports"}
LIBRARY_IMPORTS = [sys.executable, "-c", ("import deepspeed, deepspeed.comm.torch, transformers; from transformers "
                                         "import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM, "
                                         f"LlavaForConditionalGeneration, LlavaProcessor; print({IMPORTED!r}, flush=True)")]
ORIGINAL_IMPORTS = ["-c", ("import torch.distributed, transformers; from transformers import AutoTokenizer, "
                           "CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM, Trainer; "
                           f"print({IMPORTED!r}, flush=True)")]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stage_command(stage: str, zoo, out: Path | None) -> list[str]:
    """A genfeedback stage's 1-step command writing to `out`; the imports row's, which writes nothing."""
    if stage == "imports":
        return LIBRARY_IMPORTS
    common = ["--output", str(out), "--max-steps", "1", "--set", "checkpointing.resume=none",
              "--set", "logging.progress_bar=false"]
    if stage == "enhance":
        return [sys.executable, "-m", "enhance", "train", "--preset", "tiny-diva", "--zoo", str(zoo.root), *common]
    data = {"finetune": ("llava_finetune", "llava_image_folder"),
            "pretrain": ("llava_pretrain", "llava_pretrain_images")}[stage]
    return [sys.executable, "-m", "mllm_train", stage, "--preset", f"tiny-{stage}", "--vision-tower", str(zoo.clip),
            "--llm", str(zoo.llm), "--data", str(zoo.data[data[0]]), "--image-folder", str(zoo.data[data[1]]),
            *common]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_run(argv: list[str], env: dict, log_file: Path, marker: str, cwd: Path = REPO) -> dict:
    """Spawn `argv` and time it to `marker`'s first appearance in its output: wall seconds, and the
    process's CPU seconds then. The run must go on to exit 0."""
    with open(log_file, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
        seen = None
        for line in proc.stdout:
            if seen is None and marker in line:
                seen = {"wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds(proc.pid)}
            out.write(line)
        _, status, _ = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or seen is None:
        tail = " | ".join(log_file.read_text().strip().splitlines()[-3:])
        why = f"exited {code}" if code else f"never printed {marker!r}"
        raise RuntimeError(f"{' '.join(argv[:4])} ... {why}; see {log_file}: {tail}")
    return seen


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rounds: list[dict], stage: str, base: str | None = None) -> dict:
    """Rounds of {name: {wall_s, cpu_s}}: `stage`'s and `base`'s (by default its `import torch`)
    medians and ranges, and the median and range of the per-round difference stage - base."""
    base = base or YARDSTICK.get(stage, "torch")
    return {"stage": {k: spread([r[stage][k] for r in rounds]) for k in ("wall_s", "cpu_s")},
            "base": {k: spread([r[base][k] for r in rounds]) for k in ("wall_s", "cpu_s")},
            "over": {k: spread([r[stage][k] - r[base][k] for r in rounds]) for k in ("wall_s", "cpu_s")}}


def _fmt(s: dict) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def table(rounds: list[dict], stages: list[str]) -> str:
    floors = {stage: FLOOR[stage] for stage in stages if FLOOR.get(stage) in stages}
    lines = ["| stage (1 process) | ready to train, s | `import torch`, s | over torch, wall s | over torch, CPU s |"
             + (" over its imports row, CPU s |" if floors else ""),
             "|---|---|---|---|---|" + ("---|" if floors else "")]
    for stage in stages:
        s = summarize(rounds, stage)
        cells = [stage, _fmt(s["stage"]["wall_s"]), _fmt(s["base"]["wall_s"]), f"**{_fmt(s['over']['wall_s'])}**",
                 _fmt(s["over"]["cpu_s"])]
        if floors:
            cells.append(_fmt(summarize(rounds, stage, floors[stage])["over"]["cpu_s"]) if stage in floors else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"median (min-max) over {len(rounds)} rounds of the differences within a round; `import torch` "
                 "and the imports rows are timed to a line printed after their imports"
                 + ("; original*: the original LLaVA's, in its own venv, over that venv's `import torch`"
                    if set(PEER_STAGES) & set(stages) else ""))
    return "\n".join(lines)


def measure(stages: list[str], zoo, rounds: int, work: Path, cores: str, llava: Path | None = None) -> list[dict]:
    """`rounds` rounds; each runs `import torch` and every stage once, in an order rotated each round.
    Every command gets llava_peer's environment: one thread, offline, CPU."""
    env = {**llava_peer.thread_env(), "TRANSFORMERS_OFFLINE": "1"}
    pin = ["taskset", "-c", cores] if cores else []
    outs = {stage: work / "runs" / stage for stage in stages if stage in TRAINING}
    runs = {"torch": pin + TORCH}
    envs, cwds = {}, {}
    if set(PEER_STAGES) & set(stages):
        paths = llava_peer.finetune_paths(zoo)
        peer = llava_peer.peer_side(llava, work / "peer", paths, deepspeed=False)
        runs["original-torch"] = pin + [peer["python"], *TORCH[1:]]
    for stage in stages:
        if stage == "original":
            argv, envs[stage] = llava_peer.original_command(peer, paths, outs[stage], 1, 1, work, "python")
            runs[stage], cwds[stage] = pin + argv, peer["checkout"]
        elif stage == "original-imports":
            runs[stage] = pin + [peer["python"], *ORIGINAL_IMPORTS]
        else:
            runs[stage] = pin + stage_command(stage, zoo, outs.get(stage))
    markers = {name: READY if name in TRAINING else IMPORTED for name in runs}

    def run(name: str, tag: str) -> dict:
        if name in outs:
            shutil.rmtree(outs[name], ignore_errors=True)
            outs[name].mkdir(parents=True)
        return timed_run(runs[name], envs.get(name, env), work / f"{name}-{tag}.log", markers[name],
                         cwds.get(name, REPO))

    for name in runs:  # warm the file cache; not measured
        run(name, "warmup")
    measured = []
    names = list(runs)
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        row = {name: run(name, str(i)) for name in order}
        log(f"round {i + 1}/{rounds}: " + ", ".join(f"{name} {row[name]['wall_s']:.2f} s" for name in names))
        measured.append(row)
    return measured


def tiny_zoo(path: Path | None, work: Path):
    from llava_plugin.toy import open_zoo

    return open_zoo(path or work / "zoo")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/startup.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, help="an existing tiny zoo (python -m llava_plugin.toy --out DIR)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genfeedback-startup",
                        help="zoo, run directories and logs")
    parser.add_argument("--stages", help=f"comma-separated, from {', '.join(STAGES)} (default: all; the "
                                         "original's only with --llava)")
    parser.add_argument("--llava", type=Path, help="your checkout of haotian-liu/LLaVA, to time the original too")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per stage")
    parser.add_argument("--cores", default="1", help="taskset core list for every command ('' for no pinning)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    stages = ([s for s in args.stages.split(",") if s] if args.stages is not None
              else [s for s in STAGES if s not in PEER_STAGES or args.llava])
    if not stages or set(stages) - set(STAGES):
        parser.error(f"--stages {args.stages!r}: expected a comma-separated subset of {', '.join(STAGES)}")
    if set(PEER_STAGES) & set(stages):
        if args.llava is None:
            parser.error("no --llava given: the original's stages need --llava PATH, a checkout of haotian-liu/LLaVA")
        if problem := llava_peer.checkout_problem(args.llava):
            parser.error(problem)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        rounds = measure(stages, tiny_zoo(args.zoo, args.work), args.rounds, args.work, args.cores, args.llava)
    except (RuntimeError, subprocess.CalledProcessError) as err:  # a run failed: its log says why
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(rounds, stages))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                         "summary": {stage: summarize(rounds, stage) for stage in stages}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
