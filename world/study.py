"""The world study: every method and its controls, over seeds, through the real commands.

The recipe is data (world/configs/study*.yaml): which enhance presets each method runs, which
controls, which towers go downstream into LLaVA, and the commands' settings. This module turns it
into a graph of jobs (llava_plugin.jobs), each one CLI call (`python -m world build`, `python -m enhance train`,
`python -m world probe`, `python -m eval ...`, `python -m mllm_train ...`), and runs the graph
`jobs` at a time, one CPU thread per job. Stages meet only through files, as everywhere in the
toolkit. A job whose output already exists (its `done` file) is reused, so an interrupted study
resumes where it stopped; a failed job names its log and skips what depends on it.

Layout of a study directory:

    OUT/world/                   the world (data + seed-K models), reused across studies
    OUT/seed-K/towers/<name>/    enhance runs (vision_tower/ inside), `base` is the world CLIP
    OUT/seed-K/probe/<name>.json tower readings (world/probe.py) and OUT/seed-K/mmvp_vlm/<name>/
    OUT/seed-K/llava/<name>/     LLaVA pretrain + finetune on that tower, and its eval results
    OUT/logs/<job>.log           each job's output
    OUT/report/                  world.md, world.json and the plots (python -m world report)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llava_plugin import jobs as jobs_module
from llava_plugin.config import ConfigError, deep_merge, from_dict, load_yaml_preset, to_dict
from llava_plugin.config import documented as _help
from llava_plugin.jobs import Job, python_module, set_flags

logger = logging.getLogger("world")
PRESET_DIR = Path(str(resources.files("world") / "configs"))
BASE = "base"  # the world CLIP itself, as a tower name


@dataclass
class MethodRecipe:
    preset: str = _help("The enhance preset of the method's tower-training stage.", "")
    stage1: str = _help("A stage run once per seed before every variant (GenHancer's stage 1); its output "
                        "dir is each variant's --generator.", "")


@dataclass
class StudyConfig:
    world: str = _help("World spec preset (world/configs) that `world build` trains.", "world")
    seeds: list[int] = _help("Seeds; each seeds the world's models, the enhance runs and the LLaVA runs.",
                             factory=lambda: [0])
    methods: dict[str, MethodRecipe] = _help("Method name -> its presets.", factory=dict)
    variants: dict[str, dict[str, Any]] = _help(
        "Variant name -> enhance --set overrides applied to every method: `feedback` (the method as its "
        "preset), `control` (the same run without the feedback term), `shuffled` (each image gets "
        "another image's condition), `pure` (no regulariser) ...; a variant set to null is not run (a recipe "
        "that inherits one drops it).", factory=dict)
    downstream: list[str] = _help("Towers trained into LLaVA: `base` and/or <method> (its `feedback` variant) or "
                                  "<method>-<variant>.", factory=lambda: [BASE])
    enhance: dict[str, Any] = _help("Extra --set values for every enhance run (e.g. a smoke run's step counts).",
                                    factory=dict)
    llava: dict[str, Any] = _help("LLaVA presets and extra --set values: pretrain, finetune, set.", factory=dict)
    mmvp_vlm: dict[str, Any] = _help("Extra flags of `eval mmvp-vlm` for the world set.", factory=dict)
    mmvp: dict[str, Any] = _help("Extra flags of `eval mmvp` for world MMVP (e.g. prompt-style: original).",
                                 factory=dict)
    probe: dict[str, Any] = _help("Extra flags of `world probe` (n-train, n-test, n-pairs).", factory=dict)
    sensitivity: dict[str, Any] = _help("Extra flags of `world sensitivity` (n).", factory=dict)
    reading: dict[str, Any] = _help("Extra flags of `world reading` (n).", factory=dict)

    def validate(self) -> None:
        self.variants = {name: overrides for name, overrides in self.variants.items() if overrides is not None}
        self.methods = {name: r if isinstance(r, MethodRecipe) else from_dict(MethodRecipe, r, f"methods.{name}.")
                        for name, r in self.methods.items()}
        if not self.seeds:
            raise ConfigError("study.seeds is empty; e.g. --seeds 3")
        for name in self.downstream:
            if name != BASE and name.split("-")[0] not in self.methods:
                raise ConfigError(f"study.downstream names {name!r}, which is neither 'base' nor a study method "
                                  f"({sorted(self.methods)})")


def load_study(preset: str = "study", overrides: dict | None = None) -> StudyConfig:
    return from_dict(StudyConfig, deep_merge(load_yaml_preset(PRESET_DIR, preset), overrides or {}))


# ---------------------------------------------------------------- jobs
def _py(*args: str) -> list[str]:
    return python_module(*args)


def _flags(options: dict[str, Any]) -> list[str]:
    return [str(x) for key, value in options.items() for x in (f"--{key}", value)]


def plan_builds(cfg: StudyConfig, out: Path, jobs_per_build: int = 2) -> list[Job]:
    world = out / "world"
    return [Job(f"build/seed-{seed}", _py("world", "build", "--root", str(world), "--seed", str(seed), "--preset",
                                          cfg.world, "--jobs", str(jobs_per_build)), world / f"seed-{seed}" / "zoo.json")
            for seed in cfg.seeds]


def plan(cfg: StudyConfig, out: Path) -> list[Job]:
    """Every job after the builds, in a dependency order (needs each seed's zoo.json)."""
    world = out / "world"
    jobs: list[Job] = []
    for seed in cfg.seeds:
        zoo = world / f"seed-{seed}"
        root = out / f"seed-{seed}"
        build = f"build/seed-{seed}"
        jobs.append(Job(build, [], zoo / "zoo.json"))  # built by run_study's first phase
        clip = world / f"seed-{seed}" / "models" / "clip"
        towers = {BASE: (clip, build)}
        common = ["--zoo", str(zoo), *set_flags({"seed": seed, "data.seed": seed, **cfg.enhance})]
        sensitivity = world / f"seed-{seed}" / "sensitivity.json"
        jobs.append(Job(f"sensitivity/seed-{seed}", _py("world", "sensitivity", "--zoo", str(zoo), "--output",
                                                        str(sensitivity), *_flags(cfg.sensitivity)), sensitivity,
                        [build]))
        reading = world / f"seed-{seed}" / "reading.json"
        jobs.append(Job(f"reading/seed-{seed}", _py("world", "reading", "--zoo", str(zoo), "--output", str(reading),
                                                    *_flags(cfg.reading)), reading, [build]))
        for method, recipe in cfg.methods.items():
            generator: list[str] = []
            deps = [build]
            if recipe.stage1:
                stage1_dir = root / "towers" / f"{method}-stage1"
                name = f"enhance/seed-{seed}/{method}-stage1"
                jobs.append(Job(name, _py("enhance", "train", "--preset", recipe.stage1, "--output", str(stage1_dir),
                                          *common), stage1_dir / "generator" / "genhancer.json", [build]))
                generator, deps = ["--generator", str(stage1_dir)], [build, name]
            for variant, overrides in cfg.variants.items():
                tower = f"{method}-{variant}"
                run = root / "towers" / tower
                name = f"enhance/seed-{seed}/{tower}"
                jobs.append(Job(name, _py("enhance", "train", "--preset", recipe.preset, "--output", str(run), *common,
                                          *generator, *set_flags(overrides)), run / "vision_tower" / "genfeedback.json",
                                deps))
                towers[tower] = (run / "vision_tower", name)
        for tower, (path, dep) in towers.items():
            probe = root / "probe" / f"{tower}.json"
            jobs.append(Job(f"probe/seed-{seed}/{tower}", _py("world", "probe", "--vision-tower", str(path),
                                                              "--output", str(probe), *_flags(cfg.probe)), probe, [dep]))
            result = root / "mmvp_vlm" / tower
            flags = _flags(cfg.mmvp_vlm)
            jobs.append(Job(f"mmvp_vlm/seed-{seed}/{tower}",
                            _py("eval", "mmvp-vlm", "--vision-tower", str(path), "--data",
                                str(_zoo_data(zoo, "mmvp_vlm")), "--output", str(result), *flags),
                            result / "metrics.json", [dep]))
        for tower in cfg.downstream:
            key = tower if tower == BASE or tower.count("-") else f"{tower}-feedback"
            jobs += llava_jobs(cfg, key, towers[key], zoo, world, root, seed)
    return jobs


def llava_jobs(cfg: StudyConfig, tower: str, where: tuple[Path, str], zoo: Path, world: Path, root: Path,
               seed: int) -> list[Job]:
    """LLaVA pretrain + finetune on `tower`, then world MMVP and CV-Bench."""
    path, dep = where
    run = root / "llava" / tower
    sets = set_flags({"seed": seed, **cfg.llava.get("set", {})})
    base = ["--vision-tower", str(path), "--llm", str(_zoo_field(zoo, "llm"))]
    pre, fin = f"llava/seed-{seed}/{tower}/pretrain", f"llava/seed-{seed}/{tower}/finetune"
    llava_dir = run / "finetune" / "llava"
    jobs = [
        Job(pre, _py("mllm_train", "pretrain", *base, "--preset", cfg.llava["pretrain"],
                     "--data", str(_zoo_data(zoo, "llava_pretrain")), "--image-folder",
                     str(_zoo_data(zoo, "llava_pretrain").parent), "--output", str(run / "pretrain"), *sets),
            run / "pretrain" / "mm_projector.bin", [dep]),
        Job(fin, _py("mllm_train", "finetune", *base, "--preset", cfg.llava["finetune"],
                     "--pretrained-projector", str(run / "pretrain" / "mm_projector.bin"),
                     "--data", str(_zoo_data(zoo, "llava_finetune")), "--image-folder",
                     str(_zoo_data(zoo, "llava_finetune").parent), "--output", str(run / "finetune"), *sets),
            llava_dir / "genfeedback.json", [pre]),  # written last, after the export is complete
    ]
    for bench, flags in (("mmvp", ["--no-fix-label-swap", *_flags(cfg.mmvp)]), ("cv-bench", [])):
        result = run / "eval" / bench
        jobs.append(Job(f"{bench}/seed-{seed}/{tower}", _py("eval", bench, "--model", str(llava_dir), "--data",
                                                             str(_zoo_data(zoo, bench.replace("-", "_"))), "--output",
                                                             str(result), *flags),
                        result / "metrics.json", [fin]))
    return jobs


def _zoo_field(zoo: Path, key: str) -> Path:
    return Path(json.loads((zoo / "zoo.json").read_text())[key])


def _zoo_data(zoo: Path, key: str) -> Path:
    return Path(json.loads((zoo / "zoo.json").read_text())["data"][key])


# ---------------------------------------------------------------- running
def run_jobs(jobs: list[Job], out: Path, parallel: int = 2, desc: str = "world study") -> dict[str, str]:
    """The graph, `parallel` jobs at a time, one CPU thread each (llava_plugin.jobs)."""
    return jobs_module.run_jobs(jobs, out, parallel=parallel, desc=desc, threads=1)


def run_study(cfg: StudyConfig, out: Path, parallel: int = 2, after_seed=None) -> dict[str, str]:
    """Seed after seed: build its world (the later jobs' paths come from its zoo.json), then its jobs, then
    `after_seed(seed)` (the CLI rewrites the report), so a long study has a report after every seed."""
    import dataclasses

    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(to_dict(cfg), indent=2))
    status: dict[str, str] = {}
    for seed in cfg.seeds:
        one = dataclasses.replace(cfg, seeds=[seed])
        built = run_jobs(plan_builds(one, out, parallel), out, parallel=1, desc=f"world build, seed {seed}")
        status.update(built)
        if any(v == "failed" for v in built.values()):
            continue
        status.update(run_jobs(plan(one, out), out, parallel=parallel, desc=f"world study, seed {seed}"))
        if after_seed is not None:
            after_seed(seed)
    return status
