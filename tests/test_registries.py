"""One registry style everywhere: a tower family, an enhance method and an eval benchmark are each
one new module in their package. Each test drops a throwaway module into a temporary directory
added to the package's `__path__` (as if the file sat in the package), triggers discovery through
the ordinary entry points, and uses the new entry; the registry is restored afterwards."""
import importlib
import json
import sys
import textwrap

import pytest
import torch
from PIL import Image

from llava_plugin.registry_util import Registry, UnknownNameError


@pytest.fixture
def drop_in(monkeypatch, tmp_path):
    """drop_in(registry, module_name, source): the module appears in the registry's package."""
    added = []

    def drop(registry: Registry, module_name: str, source: str) -> None:
        package = importlib.import_module(registry.package)
        folder = tmp_path / registry.package.replace(".", "_")
        folder.mkdir(exist_ok=True)
        (folder / f"{module_name}.py").write_text(textwrap.dedent(source))
        registry.discover()  # the package's own entries, then a copy that the test may add to
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        importlib.invalidate_caches()
        added.append(f"{registry.package}.{module_name}")

    yield drop
    for name in added:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------- the shared helper
def test_registry_discovers_its_package_lists_known_names_and_refuses_duplicates(tmp_path, monkeypatch):
    package = tmp_path / "widgets"
    package.mkdir()
    (package / "__init__.py").write_text("from llava_plugin.registry_util import Registry\n"
                                         "WIDGETS = Registry('widget', 'widgets')\n")
    (package / "base.py").write_text("raise AssertionError('the contract module is not discovered')\n")
    (package / "_private.py").write_text("raise AssertionError('private modules are not discovered')\n")
    (package / "b.py").write_text("from widgets import WIDGETS\nWIDGETS.add('b', 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = importlib.import_module("widgets").WIDGETS
        assert registry.names() == ["b"]  # found by discovery alone
        (package / "a.py").write_text("from widgets import WIDGETS\nWIDGETS.add('a', 1)\n")
        importlib.invalidate_caches()
        assert registry.names() == ["a", "b"] and registry["a"] == 1
        assert "b" in registry and len(registry) == 2
        with pytest.raises(UnknownNameError) as info:
            registry.get("c")
        assert str(info.value) == "unknown widget 'c'; known widgets: ['a', 'b']"
        assert isinstance(info.value, KeyError)  # callers that catch KeyError keep working
        with pytest.raises(ValueError, match="widget 'a' registered twice"):
            registry.add("a", 3)
    finally:
        for name in [m for m in sys.modules if m == "widgets" or m.startswith("widgets.")]:
            del sys.modules[name]


# ---------------------------------------------------------------- a tower family
FAMILY_MODULE = '''
    """A throwaway tower family: a random tiny CLIP vision tower of the size in the spec."""
    from llava_plugin.families.base import register_family
    from llava_plugin.towers import VisionTower


    @register_family("test_tiny", forms=(("test_tiny:SIZE", "a random tiny CLIP tower for SIZE px images"),))
    def load(spec, location):
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        size = int(location)
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=size, patch_size=size // 4)
        processor = CLIPImageProcessor(size={"shortest_edge": size},
                                       crop_size={"height": size, "width": size})
        return VisionTower(CLIPVisionModel(config), processor, family="test_tiny", spec=spec, has_cls=True)
'''


def test_a_tower_family_is_one_module(drop_in):
    from llava_plugin.families.base import FAMILIES, spec_help
    from llava_plugin.registry import TowerSpecError, list_families, load_tower

    drop_in(FAMILIES, "test_tiny_family", FAMILY_MODULE)
    assert "test_tiny" in list_families()
    assert "test_tiny:SIZE" in spec_help()  # every --vision-tower help and error lists its form
    tower = load_tower("test_tiny:16")
    assert tower.family == "test_tiny" and tower.sizes.num_patches == 16
    out = tower(tower.preprocess([Image.new("RGB", (20, 24), (10, 200, 30))]))
    assert len(out.hidden_states) == 3
    known = r"unknown tower family 'nosuch'; known families: \[.*'test_tiny'"
    with pytest.raises(TowerSpecError, match=known) as info:
        load_tower("nosuch:1")
    assert "test_tiny:SIZE" in str(info.value)


# ---------------------------------------------------------------- an enhance method
METHOD_MODULE = '''
    """A throwaway method: the tower's global embedding, projected, should be small."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from enhance.methods.base import Method, register_method
    from llava_plugin.config import documented


    @dataclass
    class ShrinkConfig:
        width: int = documented("projection width", 4)


    @register_method
    class Shrink(Method):
        name = "test-shrink"
        config_cls = ShrinkConfig

        def __init__(self, cfg, tower, generator):
            super().__init__(cfg, tower, generator)
            self.project = nn.Linear(tower.sizes.embed_dim, cfg.width)

        def preprocess(self, images):
            return {"pixels": self.tower.preprocess(images)}

        def encode_condition(self, batch):
            return {"embedding": self.project(self.tower.image_embeds(batch["pixels"]))}

        def denoising_loss(self, batch, condition, rng=None, timesteps=None):
            return condition["embedding"].pow(2).mean(dim=-1)

        def timestep_range(self):
            return (0.0, 1.0)
'''


def test_an_enhance_method_is_one_module(drop_in, capsys):
    from enhance.__main__ import main
    from enhance.methods.base import METHODS, get_method
    from llava_plugin.families.base import FAMILIES
    from llava_plugin.registry import load_tower

    drop_in(METHODS, "test_shrink_method", METHOD_MODULE)
    assert "test-shrink" in METHODS.names()
    cls = get_method("test-shrink")
    assert main(["presets", "--method", "test-shrink"]) == 0  # the CLI lists its config fields
    assert "method.width" in capsys.readouterr().out
    drop_in(FAMILIES, "test_tiny_family", FAMILY_MODULE)
    method = cls(cls.config_cls(), load_tower("test_tiny:16"), generator="none")
    batch = method.preprocess([Image.new("RGB", (16, 16), colour) for colour in ((0, 0, 0), (255, 9, 0))])
    output = method(batch)
    output.loss.backward()
    assert torch.isfinite(output.loss) and method.project.weight.grad is not None
    with pytest.raises(KeyError, match="known methods: .*'test-shrink'"):
        get_method("test-shrunk")


# ---------------------------------------------------------------- an eval benchmark
BENCHMARK_MODULE = '''
    """A throwaway benchmark: guess each number's parity (no model); data = numbers.json in --data."""
    import json
    from pathlib import Path

    from eval.benchmarks.base import Benchmark, add_data_arguments, register_benchmark
    from eval.benchmarks.common import percent, problem_lists, require_file


    def make_prediction(number, raw):
        parsed = raw if raw in ("even", "odd") else None
        gold = "even" if number % 2 == 0 else "odd"
        return {"id": number, "prompt": "parity?", "raw_answer": raw, "parsed": parsed, "gold": gold,
                "correct": parsed == gold}


    @register_benchmark
    class Parity(Benchmark):
        name = "test_parity"
        help = "parity of numbers (a test double)"
        usage = "--data DIR"

        def add_arguments(self, parser):
            add_data_arguments(parser, batch_size=1)

        def load(self, args):
            path = require_file(self.name, Path(args.data) / "numbers.json", "numbers.json")
            return json.loads(path.read_text())

        def predict(self, args, numbers):
            return [make_prediction(n, "even" if n < 10 else "?") for n in numbers]

        def config(self, args, numbers):
            return {"data": str(args.data)}

        def rejudge(self, prediction, config):
            return make_prediction(prediction["id"], prediction["raw_answer"])

        def score(self, predictions, config):
            accuracy = percent(p["correct"] for p in predictions)
            return {"benchmark": self.name, "config": config, "headline": {"accuracy": accuracy},
                    **problem_lists(predictions)}
'''


def test_an_eval_benchmark_is_one_module(drop_in, tmp_path, capsys):
    from eval.__main__ import build_parser, main
    from eval.benchmarks import BENCHMARKS, rescore

    drop_in(BENCHMARKS, "test_parity_benchmark", BENCHMARK_MODULE)
    assert "test-parity" in build_parser().format_help()  # its subcommand, named from `name`
    assert main(["benchmarks", "--names"]) == 0
    assert "test-parity" in capsys.readouterr().out.split()
    data = tmp_path / "data"
    data.mkdir()
    (data / "numbers.json").write_text(json.dumps([2, 3, 4, 12]))
    out = tmp_path / "run" / "parity"
    assert main(["test-parity", "--data", str(data), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["headline"] == {"accuracy": 50.0} and metrics["unparseable"]["ids"] == [12]
    assert rescore(out) == metrics and main(["rescore", str(out)]) == 0
    assert main(["compare", str(tmp_path / "run"), "--output", str(tmp_path / "cmp")]) == 0
    assert "test_parity/accuracy" in capsys.readouterr().out
    assert main(["test-parity", "--data", str(tmp_path), "--output", str(out)]) == 2  # layout error
    assert "numbers.json" in capsys.readouterr().err


# ---------------------------------------------------------------- every registered benchmark
def test_every_benchmark_has_a_subcommand_and_pure_scoring():
    from eval.__main__ import build_parser
    from eval.benchmarks import BENCHMARKS, Benchmark

    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert BENCHMARKS.names() == ["cv_bench", "mmvp", "mmvp_vlm", "vqa", "zeroshot"]
    for benchmark in BENCHMARKS.values():
        assert benchmark.command in subcommands and benchmark.help and benchmark.usage, benchmark.name
        for step in ("rejudge", "score"):
            assert getattr(type(benchmark), step) is not getattr(Benchmark, step), (benchmark.name, step)
        if type(benchmark).run is Benchmark.run:  # the default run needs every step
            for step in ("load", "predict", "config"):
                assert getattr(type(benchmark), step) is not getattr(Benchmark, step), (benchmark.name, step)
    assert [b.name for b in BENCHMARKS.values() if b.owns("vqa_pope")] == ["vqa"]
