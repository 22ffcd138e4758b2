"""A graph of command-line jobs: how the pipelines (toy, paper, the world study) run the stages.

Each job is one CLI call (`python -m enhance train ...`, `python -m mllm_train finetune ...`,
`python -m eval mmvp ...`); stages meet only through files, as everywhere in the toolkit. A job
whose `done` file exists is reused, so an interrupted pipeline resumes where it stopped (each
command writes its `done` file last, after its output is complete). A failed job prints its log's
last line (the command's one-line error) and skips what depends on it; independent jobs go on.

    jobs = [Job("enhance/diva", launch_argv("enhance", ["train", ...], Launch(gpus=8)), done=...),
            Job("llava/diva/pretrain", [...], done=..., deps=["enhance/diva"])]
    status = run_jobs(jobs, out, parallel=1)   # job -> reused | done | failed | skipped

Layout: OUT/logs/<job>.log (each job's output, its command line first) and OUT/jobs.jsonl (one row
per finished job: status, wall seconds and CPU seconds).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava_plugin.distributed import child_environment

LAUNCHERS = ("torchrun", "deepspeed")


@dataclass
class Job:
    name: str
    argv: list[str]
    done: Path  # exists when the job has finished (written last by the command itself)
    deps: list[str] = field(default_factory=list)


@dataclass
class Launch:
    """How each training stage starts: one process, torchrun on this node, or the deepspeed launcher
    (chosen, or implied by a multi-node hostfile)."""

    gpus: int = 1
    hostfile: str = ""
    launcher: str = "torchrun"


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def set_flags(values: dict[str, Any]) -> list[str]:
    """`--set KEY=VALUE` flags of a stage command from a (nested) dict of config overrides; nested
    keys become dotted ones, and lists, dicts and booleans are written as JSON (which YAML reads back)."""
    flags = []
    for key, value in _flatten(values):
        flags += ["--set", f"{key}={json.dumps(value) if isinstance(value, (list, dict, bool)) else value}"]
    return flags


def _flatten(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def launch_argv(module: str, args: list[str], launch: Launch) -> list[str]:
    """`python -m module args` in `launch.gpus` processes."""
    if launch.gpus <= 1 and not launch.hostfile:
        return python_module(module, *args)
    if launch.hostfile or launch.launcher == "deepspeed":
        hostfile = ["--hostfile", launch.hostfile] if launch.hostfile else []
        return [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(launch.gpus), *hostfile,
                "--module", module, *args]
    return python_module("torch.distributed.run", "--standalone", "--nproc_per_node", str(launch.gpus),
                         "-m", module, *args)


def run_jobs(jobs: list[Job], out: Path, parallel: int = 1, desc: str = "jobs",
             threads: int | None = None) -> dict[str, str]:
    """Run the graph, `parallel` jobs at a time; returns job -> reused | done | failed | skipped.

    Jobs run side by side share the CPU: each gets `threads` threads (default: cores / parallel when
    more than one job runs; else the libraries' own default). Every job is its own
    process group: a rendezvous this process inherited (a test session that ran a trainer in-process)
    would make each trainer try to bind or join that one group."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    by_name = {j.name: j for j in jobs}
    waiting = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float, Any, Path]] = {}
    env = {**child_environment(), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if threads is None and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    ready = ("reused", "done")
    with tqdm(total=len(jobs), desc=desc, unit="job") as bar:
        while waiting or running:
            for job in list(waiting):
                if any(status.get(d) in ("failed", "skipped") for d in job.deps):
                    status[job.name] = "skipped"
                elif not all(status.get(d) in ready for d in job.deps):
                    continue
                elif job.done.exists():
                    status[job.name] = "reused"
                elif len(running) < parallel:
                    log_path = logs / (job.name.replace("/", "__") + ".log")
                    log = log_path.open("w")
                    log.write("$ " + " ".join(job.argv) + "\n")
                    log.flush()
                    proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                    running[job.name] = (proc, time.perf_counter(), log, log_path)
                    waiting.remove(job)
                    bar.set_postfix_str(job.name)
                    continue
                else:
                    continue
                waiting.remove(job)
                bar.update(1)
            for name, (proc, start, log, log_path) in list(running.items()):
                ended, cpu = _reap(proc)
                if not ended:
                    continue
                log.close()
                del running[name]
                ok = proc.returncode == 0 and by_name[name].done.exists()
                status[name] = "done" if ok else "failed"
                _record(out, name, status[name], time.perf_counter() - start, cpu)
                if not ok:
                    tqdm.write(f"{desc}: {name} failed (exit {proc.returncode}): {last_line(log_path)}; "
                               f"its log: {log_path}", file=sys.stderr)
                bar.update(1)
            if running or waiting:
                time.sleep(0.2)
    return status


def last_line(log_path: Path) -> str:
    """The log's last non-blank line without progress-bar redraws: a CLI's one-line error, or a traceback's last line."""
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in log_path.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else "(empty log)"


def _reap(proc: subprocess.Popen) -> tuple[bool, float | None]:
    """(ended, CPU seconds): once `proc` has ended, its user + system time, its waited-for children
    included (a world build's part workers), which unlike the wall time does not grow when other
    processes share the core (None where the OS gives no per-child usage). Sets proc.returncode."""
    if not hasattr(os, "wait4"):
        return proc.poll() is not None, None
    pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return False, None
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return True, usage.ru_utime + usage.ru_stime


def _record(out: Path, name: str, status: str, seconds: float, cpu_seconds: float | None) -> None:
    row = {"job": name, "status": status, "seconds": round(seconds, 1),
           "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1), "time": time.time()}
    with (out / "jobs.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")

