"""The built wheel carries every data file (presets, DeepSpeed JSON, templates, task YAML), builds without
setuptools warnings, and works installed on its own, away from the source tree."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llava_plugin", "enhance", "mllm_train", "eval", "world", "genfeedback")
DATA_SUFFIXES = (".yaml", ".json")


def _source_files(suffixes) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.suffix in suffixes and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build from a copy of the tree (a build writes build/ and *.egg-info next to pyproject.toml)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    # --no-isolation: the build tools come from the locked venv, so the test needs no network.
    # Byte-compiling on, whatever the caller's PYTHONDONTWRITEBYTECODE: distutils says "warning" when it is off.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, check=False, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp / "dist").glob("genfeedback-*.whl")
    return tmp, wheel, result.stdout + result.stderr


def test_build_prints_no_setuptools_warnings(built):
    _, _, log = built
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


def test_wheel_contains_every_module_and_data_file(built):
    _, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _source_files(DATA_SUFFIXES + (".py",))
    assert {"enhance/configs/diva.yaml", "llava_plugin/train/deepspeed/zero3.json", "llava_plugin/templates.yaml",
            "mllm_train/configs/llava15-7b-finetune.yaml", "eval/tasks/tasks.yaml",
            "eval/tasks/gqa/utils.py"} <= expected
    assert sorted(expected - names) == []


def test_installed_wheel_loads_presets_away_from_the_source_tree(built):
    tmp, wheel, _ = built
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    probe = (
        "import enhance, mllm_train, eval.lmms as lmms\n"
        "from enhance.config import load_config, presets\n"
        "from mllm_train.config import load_config as load_llava_config\n"
        f"assert enhance.__file__.startswith({str(site)!r}), enhance.__file__\n"
        "assert 'diva-openai-l14-224' in presets()\n"
        "cfg = load_config('diva-openai-l14-224')\n"
        "assert cfg.method_name == 'diva', cfg.method_name\n"
        "cfg = load_llava_config('llava15-7b-finetune', {'data': {'data_path': 'mix665k.json'}, 'output_dir': 'out'})\n"
        "assert cfg.template == 'vicuna_v1', cfg.template\n"
        "assert lmms.TASK_SPECS.is_file()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp, capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
