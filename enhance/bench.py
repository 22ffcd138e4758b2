"""`python -m enhance bench`: training speed and peak memory per method, side by side, for

    upstream         the per-step work of upstream DIVA's loop: the frozen generator cast to fp32
                     and the VAE latents encoded at every step (baaivision/DIVA
                     models/SD_with_OpenAICLIP.py:116-118), on our step otherwise
    plain            the loop as configured
    cache            latent cache on (targets read from disk instead of encode_targets each step)
    checkpointing    gradient checkpointing of the tower

Every variant runs through the real Trainer for `--warmup` steps, then `--steps` timed steps.
Defaults run every tiny-* preset on the tiny zoo (built in a temp dir unless --zoo is given);
pass --preset/--vision-tower/--generator/--data to bench real models.

Memory: on CUDA, torch.cuda.max_memory_allocated, reset per variant, in one process. On CPU
there is no allocator statistic, and a process keeps the memory earlier variants freed, so each
variant runs in a fresh process (`--isolate`, the default on CPU) and reports its peak resident
set size (VmHWM from /proc/self/status) during the warmup + timed steps, and that peak minus
what was resident once the models were loaded (+MB: activations, gradients, optimizer state).
Where /proc is unavailable, ru_maxrss (the process's lifetime peak) is reported, labelled so.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS: dict[str, dict] = {
    "upstream": {"cache": {"latents": False}},
    "plain": {},
    "cache": {"cache": {"latents": True}},
    "checkpointing": {"precision": {"gradient_checkpointing": True}},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", help="comma-separated presets to bench (default: every tiny-* preset)")
    p.add_argument("--preset", help="bench one preset on real models (with --vision-tower/--generator/--data)")
    p.add_argument("--vision-tower", help="tower spec (overrides the preset's)")
    p.add_argument("--generator", help="generator spec (overrides the preset's)")
    p.add_argument("--data", help="image source (overrides the preset's)")
    p.add_argument("--zoo", help="tiny-zoo dir for the tiny presets (default: build one in a temp dir)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {list(VARIANTS)}")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per variant (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--output", default="bench.json", help="JSON file to write (default bench.json)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="run each variant in a fresh process (default: yes on CPU, where peak RSS is per process)")


class PeakMemory:
    """Peak memory of the code between `reset()` and `peak_mb()`; `kind` says what is measured."""

    def __init__(self):
        if torch.cuda.is_available():
            self.kind = "torch.cuda.max_memory_allocated"
        elif Path("/proc/self/clear_refs").exists():
            self.kind = "VmHWM (peak RSS, reset per variant)"
        else:
            self.kind = "ru_maxrss (process lifetime peak, not resettable)"

    def reset(self) -> None:
        """Start a measurement; `baseline_mb` is what is already in use (models, libraries)."""
        gc.collect()
        self.baseline_mb = self.current_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        elif "VmHWM" in self.kind:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = "ru_maxrss (process lifetime peak, not resettable)"

    def current_mb(self) -> float:
        if torch.cuda.is_available():
            return torch.cuda.memory_allocated() / 2**20
        status = Path("/proc/self/status")
        if status.exists():
            return int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1)) / 1024
        return 0.0

    def peak_mb(self) -> float:
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        if "VmHWM" in self.kind:
            kb = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
            return kb / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def upstream_trainer_class():
    """EnhanceTrainer plus upstream DIVA's per-step casts (see `upstream` in the module doc)."""
    from enhance.trainer import EnhanceTrainer

    class UpstreamStepTrainer(EnhanceTrainer):
        def forward_backward_step(self, item: dict) -> dict[str, float]:
            for module in self.method.frozen.values():
                module.to(torch.float32)
            return super().forward_backward_step(item)

    return UpstreamStepTrainer


def bench_one(preset: str, variant: str, *, zoo: str | None, overrides: dict, steps: int, warmup: int,
              workdir: Path, memory: PeakMemory) -> dict:
    from enhance.config import ConfigError, load_config
    from enhance.trainer import EnhanceTrainer
    from llava_plugin.config import deep_merge

    run_dir = workdir / f"{preset}-{variant}"
    # no crop augmentation in any variant: a latent cache cannot hold one, so `cache` is only comparable without it
    fixed = {"output_dir": str(run_dir), "schedule": {"max_steps": warmup + steps}, "data": {"augment": "none"},
             "checkpointing": {"every_steps": 0, "resume": "none"},
             "logging": {"progress_bar": False}, "diagnose": {"images": 0}}
    cfg = load_config(preset=preset, overrides=deep_merge(deep_merge(overrides, VARIANTS[variant]), fixed), zoo=zoo)
    start = time.perf_counter()
    if variant == "upstream" and cfg.precision.dtype != "fp32":
        raise ConfigError(f"variant upstream runs the generator in fp32 as upstream DIVA does; bench it with "
                          f"--set precision.dtype=fp32 ({preset} trains in {cfg.precision.dtype})")
    trainer = (upstream_trainer_class() if variant == "upstream" else EnhanceTrainer)(cfg).setup()
    setup_s = time.perf_counter() - start
    memory.reset()  # models loaded: what the steps add on top is what the variants change
    trainer.train(warmup)
    start = time.perf_counter()
    trainer.train(steps)
    seconds = time.perf_counter() - start
    peak = memory.peak_mb()
    baseline = memory.baseline_mb
    images = steps * cfg.batch.global_batch_size
    result = {"preset": preset, "method": cfg.method_name, "variant": variant, "steps": steps,
              "images": images, "seconds": seconds, "images_per_s": images / seconds, "peak_mb": peak,
              "peak_over_baseline_mb": peak - baseline,
              "setup_s": setup_s, "final_loss": trainer.history[-1]["loss"]}
    del trainer
    gc.collect()
    return result


def format_table(rows: list[dict], memory_kind: str) -> str:
    header = (f"{'preset':<28} {'variant':<14} {'img/s':>9} {'x upstream':>10} {'x plain':>8} {'peak MB':>9} "
              f"{'+MB':>8} {'x plain':>8} {'setup s':>8}")
    lines = [header]
    plain = {r["preset"]: r for r in rows if r["variant"] == "plain"}
    upstream = {r["preset"]: r for r in rows if r["variant"] == "upstream"}

    def speedup(row: dict, base: dict | None) -> str:
        return f"{row['images_per_s'] / base['images_per_s']:.2f}" if base else "-"

    for r in rows:
        base = plain.get(r["preset"])
        extra, base_extra = r["peak_over_baseline_mb"], base["peak_over_baseline_mb"] if base else 0.0
        mem = f"{extra / base_extra:.2f}" if base and base_extra > 0 else "-"
        lines.append(f"{r['preset']:<28} {r['variant']:<14} {r['images_per_s']:>9.2f} "
                     f"{speedup(r, upstream.get(r['preset'])):>10} {speedup(r, base):>8} "
                     f"{r['peak_mb']:>9.1f} {extra:>8.1f} {mem:>8} {r['setup_s']:>8.1f}")
    lines.append(f"memory: {memory_kind}; +MB = peak minus what was resident once the models were loaded "
                 "(the ratio compares those); setup s includes building the latent cache")
    return "\n".join(lines)


def main(args) -> int:
    from enhance.config import ConfigError, presets
    from llava_plugin import distributed
    from llava_plugin.config import deep_merge, parse_overrides

    overrides = parse_overrides(args.set)
    for flag, key in (("vision_tower", "vision_tower"), ("generator", "generator")):
        if getattr(args, flag):
            overrides[key] = getattr(args, flag)
    if args.data:
        overrides = deep_merge(overrides, {"data": {"source": args.data}})
    chosen = [args.preset] if args.preset else (
        args.presets.split(",") if args.presets else [p for p in presets() if p.startswith("tiny-")])
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"--variants {unknown}: known variants are {list(VARIANTS)}")
    isolate = (not torch.cuda.is_available()) if args.isolate is None else args.isolate
    if isolate and distributed.world_size() > 1:
        raise ConfigError("bench --isolate runs single-process children; launch it without torchrun/deepspeed")
    if not isolate:
        distributed.init()
    memory = PeakMemory()
    rows = []
    with tempfile.TemporaryDirectory(prefix="enhance-bench-") as tmp:
        zoo = args.zoo
        if zoo is None and any(p.startswith("tiny-") for p in chosen):
            from llava_plugin.toy import build_zoo

            zoo = str(build_zoo(Path(tmp) / "zoo", seed=0, parts=["vision", "diffusion", "data"]).root)
        for preset in chosen:
            for variant in variants:
                if isolate:
                    row = _bench_in_child(args, preset, variant, zoo, Path(tmp))
                else:
                    row = bench_one(preset, variant, zoo=zoo, overrides=overrides, steps=args.steps,
                                    warmup=args.warmup, workdir=Path(tmp), memory=memory)
                rows.append(row)
                print(f"  {preset} {variant}: {row['images_per_s']:.2f} img/s, peak {row['peak_mb']:.0f} MB",
                      flush=True)
    result = {"memory_measure": memory.kind, "isolated_processes": isolate, "device": str(distributed.device()),
              "world_size": distributed.world_size(), "rows": rows}
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(format_table(rows, memory.kind))
    print(f"wrote {args.output}")
    return 0


def _bench_in_child(args, preset: str, variant: str, zoo: str | None, workdir: Path) -> dict:
    """One (preset, variant) in a fresh `python -m enhance bench` process; returns its row."""
    out = workdir / f"child-{preset}-{variant}.json"
    cmd = [sys.executable, "-m", "enhance", "bench", "--presets", preset, "--variants", variant, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--output", str(out), "--no-isolate"]
    for flag in ("vision_tower", "generator", "data", "zoo"):
        value = zoo if flag == "zoo" else getattr(args, flag)
        if value:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    for pair in args.set:
        cmd += ["--set", pair]
    launcher_env = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_env}  # each child is its own 1-process run
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        from llava_plugin.errors import GenfeedbackError

        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise GenfeedbackError(f"bench of {preset}/{variant} failed (exit {proc.returncode}): {last}")
    return json.loads(out.read_text())["rows"][0]
