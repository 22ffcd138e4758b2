"""The chain as a graph of jobs: enhance each method -> LLaVA on every tower -> every benchmark -> compare.

Layout of a run directory (`python -m genfeedback run --output OUT`):

    OUT/zoo/                       the tiny zoo (recipe `zoo: toy`)
    OUT/enhance/<method>/          an enhance run; the tower is OUT/enhance/<method>/vision_tower
    OUT/llava/<tower>/pretrain/    mm_projector.bin; OUT/llava/<tower>/finetune/llava is the checkpoint
    OUT/eval/<tower>/<benchmark>/  predictions.jsonl + metrics.json (vqa: one directory per task)
    OUT/report/                    compare.md, compare.json, compare.png
    OUT/logs/, OUT/jobs.jsonl      each job's output and status (llava_plugin.jobs)

Every input is checked before the first job starts, each stage's own way (enhance resolves and
checks its whole run, as `enhance train --check` does), so a missing path never surfaces hours in.
"""
from __future__ import annotations

from pathlib import Path

from genfeedback.config import TOY_ZOO, PipelineConfig
from llava_plugin.config import ConfigError, resolve_zoo_refs
from llava_plugin.jobs import Job, launch_argv, python_module, set_flags

BASE = "base"  # the tower every method starts from, as a tower name
STAGES = ("pretrain", "finetune")


def resolve(cfg: PipelineConfig, zoo: Path | None) -> PipelineConfig:
    """`zoo:NAME` values as paths of the built zoo."""
    from llava_plugin.config import from_dict, to_dict

    return from_dict(PipelineConfig, resolve_zoo_refs(to_dict(cfg), str(zoo) if zoo else None))


def zoo_dir(cfg: PipelineConfig, out: Path) -> Path | None:
    if not cfg.zoo:
        return None
    return out / "zoo" if cfg.zoo == TOY_ZOO else Path(cfg.zoo)


def zoo_job(out: Path) -> Job:
    return Job("zoo", python_module("llava_plugin.toy", "--out", str(out / "zoo")), out / "zoo" / "zoo.json")


# ---------------------------------------------------------------- enhance
def enhance_args(cfg: PipelineConfig, method: str, output: Path, zoo: Path | None) -> list[str]:
    stage, run = cfg.enhance, cfg.methods[method]
    args = ["train", "--method", method, "--preset", stage.preset, "--output", str(output),
            "--vision-tower", cfg.vision_tower]
    if stage.preset == "paper":
        args += ["--backbone", stage.backbone]
    generator = run.generator
    if generator and "/" not in generator:  # a name of `generators` (a path has a slash)
        generator = cfg.generators.get(generator, "")
        if not generator:
            raise ConfigError(f"method {method} needs its generator: pass --{run.generator} DIR")
    for flag, value in (("--generator", generator), ("--data", stage.data), ("--zoo", str(zoo) if zoo else "")):
        if value:
            args += [flag, value]
    if stage.max_steps:
        args += ["--max-steps", str(stage.max_steps)]
    return args + set_flags({**stage.set, **run.set})


def check_enhance(args: list[str]) -> None:
    """What `enhance train --check` does, in this process: resolve every stage and check its inputs."""
    from enhance.__main__ import build_parser, run_from_args
    from enhance.config import check_inputs

    check_inputs(run_from_args(build_parser().parse_args(args)))


def enhance_jobs(cfg: PipelineConfig, out: Path, zoo: Path | None) -> tuple[list[Job], dict]:
    """One job per method; returns (jobs, towers: name -> (spec, the job that makes it or None))."""
    jobs, towers = [], {BASE: (cfg.vision_tower, None)}
    for method in cfg.methods:
        run = out / "enhance" / method
        args = enhance_args(cfg, method, run, zoo)
        jobs.append(Job(f"enhance/{method}", launch_argv("enhance", args, cfg.launch),
                        run / "vision_tower" / "genfeedback.json"))
        towers[method] = (str(run / "vision_tower"), f"enhance/{method}")
    return jobs, towers


# ---------------------------------------------------------------- LLaVA
def llava_jobs(cfg: PipelineConfig, tower: str, spec: str, out: Path, deps: list[str],
               stages: tuple[str, ...] = STAGES) -> list[Job]:
    """Pretrain (projector only) and instruction tuning on `spec`: the recipe is the same for every tower."""
    stage = cfg.llava
    common = ["--vision-tower", spec, "--llm", cfg.llm]
    if stage.max_steps:
        common += ["--max-steps", str(stage.max_steps)]
    if stage.skip_bad_samples:
        common.append("--skip-bad-samples")
    common += set_flags(stage.set)
    projector = out / "pretrain" / "mm_projector.bin"
    jobs = []
    if "pretrain" in stages:
        args = ["pretrain", "--preset", stage.pretrain, *common, "--data", stage.pretrain_data,
                "--image-folder", stage.pretrain_images, "--output", str(out / "pretrain")]
        jobs.append(Job(f"llava/{tower}/pretrain", launch_argv("mllm_train", args, cfg.launch), projector, list(deps)))
        deps = [jobs[-1].name]
    if "finetune" in stages:
        args = ["finetune", "--preset", stage.finetune, *common, "--pretrained-projector", str(projector),
                "--data", stage.finetune_data, "--image-folder", stage.finetune_images, "--output", str(out / "finetune")]
        if stage.lora:
            args.append("--lora")
        # genfeedback.json is written last, after the export is renamed into place
        jobs.append(Job(f"llava/{tower}/finetune", launch_argv("mllm_train", args, cfg.launch),
                        out / "finetune" / "llava" / "genfeedback.json", list(deps)))
    return jobs


def check_llava(cfg: PipelineConfig, stages: tuple[str, ...] = STAGES, tower: str | None = None) -> None:
    stage = cfg.llava
    for what, value in (("vision tower", tower if tower is not None else cfg.vision_tower), ("LLM (--llm)", cfg.llm)):
        if not value:
            raise ConfigError(f"the {what} is not set")
        if value.startswith(("/", "./", "../")) and not Path(value).exists():
            raise ConfigError(f"{what} not found: {value}")
    needed = {"pretrain": (("pretraining data", "--pretrain-data", stage.pretrain_data),
                           ("pretraining images", "--pretrain-images", stage.pretrain_images)),
              "finetune": (("finetuning data", "--finetune-data", stage.finetune_data),
                           ("finetuning images", "--finetune-images", stage.finetune_images))}
    for name in stages:
        for what, flag, value in needed[name]:
            if not value:
                raise ConfigError(f"the {what} is not set: pass {flag}")
            if not Path(value).exists():
                raise ConfigError(f"{what} not found: {value}")


# ---------------------------------------------------------------- eval
def benchmark(command: str):
    """The registered benchmark whose `python -m eval` subcommand is `command`."""
    from eval.benchmarks.base import BENCHMARKS

    by_command = {b.command: b for b in BENCHMARKS.values()}
    if command not in by_command:
        raise ConfigError(f"unknown benchmark {command!r} (known: {', '.join(sorted(by_command))})")
    return by_command[command]


def scores_tower(command: str) -> bool:
    from eval.benchmarks.base import EncoderBenchmark

    return isinstance(benchmark(command), EncoderBenchmark)


def eval_jobs(cfg: PipelineConfig, out: Path, tower: tuple[str, str | None] | None,
              model: tuple[str, str | None] | None, only: list[str] | None = None) -> list[Job]:
    """Every benchmark of the recipe that has its input: an encoder benchmark needs the tower, a
    generation benchmark the LLaVA checkpoint. `tower`/`model`: (path, the job that makes it)."""
    jobs = []
    for command, flags in cfg.eval.items():
        if only is not None and command not in only:
            continue
        on_tower = scores_tower(command)
        source = tower if on_tower else model
        if source is None:
            continue
        path, dep = source
        result = out / command
        args = [command, "--vision-tower" if on_tower else "--model", path, "--output", str(result)]
        for key, value in flags.items():
            args += [f"--{key}", str(value)]
        written = benchmark(command).metrics_files(result, flags)
        if not written:
            raise ConfigError(f"eval.{command}: these flags run nothing ({flags})")
        jobs.append(Job(f"eval/{out.name}/{command}", python_module("eval", *args), written[-1], [dep] if dep else []))
    return jobs


def check_eval(cfg: PipelineConfig, only: list[str] | None = None) -> None:
    for command in only or []:
        benchmark(command)
    for command, flags in cfg.eval.items():
        benchmark(command)
        for key, value in flags.items():
            if key.startswith("data") and not Path(str(value)).exists():
                raise ConfigError(f"{command} data not found: {value} (--{command}-data, or the recipe's "
                                  f"eval.{command}.{key})")


# ---------------------------------------------------------------- the chain
def plan_chain(cfg: PipelineConfig, out: Path, zoo: Path | None) -> tuple[list[Job], list[Path]]:
    """Every job of `run` after the zoo, and the eval directories `compare` reads (base first)."""
    jobs, towers = enhance_jobs(cfg, out, zoo)
    eval_dirs = []
    for name, (spec, dep) in towers.items():
        run = out / "llava" / name
        trained = llava_jobs(cfg, name, spec, run, [dep] if dep else [])
        model = (str(run / "finetune" / "llava"), trained[-1].name)
        jobs += trained + eval_jobs(cfg, out / "eval" / name, (spec, dep), model)
        eval_dirs.append(out / "eval" / name)
    evals = [j.name for j in jobs if j.name.startswith("eval/")]
    report = out / "report"
    jobs.append(Job("compare", python_module("eval", "compare", *map(str, eval_dirs), "--output", str(report)),
                    report / "compare.json", evals))
    return jobs, eval_dirs


def check_chain(cfg: PipelineConfig, out: Path, zoo: Path | None) -> None:
    from enhance.methods.base import METHODS

    for method in cfg.methods:
        if method not in METHODS.names():
            raise ConfigError(f"unknown method {method!r} (known: {', '.join(METHODS.names())})")
    check_llava(cfg)
    if cfg.enhance.preset == "paper" and cfg.methods and not cfg.enhance.data:
        raise ConfigError("the enhancement images are not set: pass --enhance-data (e.g. CC3M shards)")
    for method in cfg.methods:
        check_enhance(enhance_args(cfg, method, out / "enhance" / method, zoo))
    check_eval(cfg)
