"""The lmms-eval tasks, rendered to local configs so nothing is fetched from the hub at run time.

**The tasks.** `eval/tasks/tasks.yaml` lists them: the tiny local `shapes_vqa` (generation) and
`shapes_mc` (multiple choice) the tests use, and local copies of pope, gqa, scienceqa_img,
textvqa_val and mme. For those, lmms-eval's own config (prompts, answer parsing, metrics) is
used unchanged; only the data source is replaced by local parquet files. `run_vqa` renders one
small YAML per task (`<name>_local`: includes + `dataset_path: parquet` + absolute
`data_files`) under OUT/lmms_tasks and passes that folder to lmms-eval as `--include_path`.

Preparing the data (once, on a machine with hub access): download each dataset repository in
its hub layout under one DATA root, e.g.

    huggingface-cli download lmms-lab/POPE --repo-type dataset --local-dir DATA/POPE --include "data/*"
    huggingface-cli download lmms-lab/GQA --repo-type dataset --local-dir DATA/GQA \\
        --include "testdev_balanced_instructions/*" "testdev_balanced_images/*"
    huggingface-cli download lmms-lab/ScienceQA --repo-type dataset --local-dir DATA/ScienceQA \\
        --include "ScienceQA-IMG/*"
    huggingface-cli download lmms-lab/textvqa --repo-type dataset --local-dir DATA/textvqa \\
        --include "data/validation-*"
    huggingface-cli download lmms-lab/MME --repo-type dataset --local-dir DATA/MME

giving DATA/POPE/data/test-*.parquet, DATA/GQA/testdev_balanced_{instructions,images}/testdev-*.parquet,
DATA/ScienceQA/ScienceQA-IMG/test-*.parquet, DATA/textvqa/data/validation-*.parquet and
DATA/MME/data/test-*.parquet (the globs in tasks.yaml). The tiny zoo's `data/` folder is a
DATA root for shapes_vqa and shapes_mc (`vqa/shapes_vqa.parquet`, `vqa/shapes_mc.parquet`).
"""

from __future__ import annotations

import copy
import functools
import glob
from collections.abc import Sequence
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"  # eval/tasks
TASK_SPECS = TASKS_DIR / "tasks.yaml"
LOCAL_SUFFIX = "_local"
GQA_IMAGES_ENV = "GENFEEDBACK_GQA_IMAGES"  # read by tasks/gqa/utils.py


def task_specs() -> dict[str, dict]:
    return copy.deepcopy(_task_specs())  # a copy: callers may edit theirs


@functools.cache
def _task_specs() -> dict[str, dict]:
    return yaml.safe_load(TASK_SPECS.read_text())  # package data: parsed once per process


def task_includes(spec: dict) -> list[str]:
    """The config files a task is built from, overlay first (lmms-eval: earlier includes win)."""
    import lmms_eval.tasks

    includes = [str(TASKS_DIR / spec["overlay"])] if "overlay" in spec else []
    return includes + (
        [str(Path(lmms_eval.tasks.__file__).parent / spec["stock"])] if "stock" in spec else []
    )


@functools.cache
def headline_aggregations(name: str) -> dict:
    """{headline metric: lmms-eval's aggregation function for it} from the task's own config (read
    once per process: `compare` scores thousands of redraws of a task)."""
    from lmms_eval.api.registry import get_aggregation, get_metric_aggregation
    from lmms_eval.utils import load_yaml_config

    spec = task_specs()[name]
    config = load_yaml_config(yaml_config={"include": task_includes(spec)}, yaml_dir=str(TASKS_DIR))
    listed = {m["metric"]: m.get("aggregation") for m in config["metric_list"]}
    functions = {}
    for metric in spec["headline"]:
        if metric not in listed:
            raise ValueError(
                f"{name}: headline metric {metric!r} is not in the task's metric_list {sorted(listed)}"
            )
        aggregation = listed[metric]
        functions[metric] = (
            get_metric_aggregation(metric)
            if aggregation is None
            else get_aggregation(aggregation)
            if isinstance(aggregation, str)
            else aggregation
        )
    return functions


def render_tasks(
    names: Sequence[str], data_root: Path, out_dir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """Write one lmms-eval config per task under `out_dir`, reading the local copy under
    `data_root`. Returns ({name: lmms-eval task name}, extra environment for the run)."""
    specs = task_specs()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown VQA task(s) {unknown}; known: {sorted(specs)} (eval/tasks/tasks.yaml)")
    out_dir.mkdir(parents=True, exist_ok=True)
    local_names, env = {}, {}
    for name in names:
        spec = specs[name]
        data_files = {
            split: _local_files(name, data_root, pattern) for split, pattern in spec["data_files"].items()
        }
        includes = task_includes(spec)
        local_names[name] = name + LOCAL_SUFFIX
        config = {
            "include": includes,
            "task": local_names[name],
            "dataset_path": "parquet",
            "dataset_kwargs": {"data_files": data_files},
        }
        (out_dir / f"{local_names[name]}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if "images" in spec:
            _local_files(name, data_root, spec["images"])
            env[GQA_IMAGES_ENV] = str(data_root / spec["images"])
    return local_names, env


def _local_files(name: str, data_root: Path, pattern: str) -> list[str]:
    files = sorted(glob.glob(str(data_root / pattern)))
    if not files:
        raise FileNotFoundError(
            f"{name}: no files match {data_root / pattern}; prepare the local copy as the "
            "eval.lmms module docstring says (hub layout under --data-root)"
        )
    return files
