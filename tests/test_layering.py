"""Imports go one way: llava_plugin <- enhance, mllm_train, eval, world; none of those imports another;
genfeedback (the chain's entry points) sits on top."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llava_plugin", "enhance", "mllm_train", "eval", "world", "genfeedback")
ALLOWED = {
    "llava_plugin": set(),
    "enhance": {"llava_plugin"},
    "mllm_train": {"llava_plugin"},
    "eval": {"llava_plugin"},
    "world": {"llava_plugin"},  # the study runs the three stages as commands, never imports them
    # runs the stages as commands; imports enhance and eval only to check a run and list benchmarks
    "genfeedback": {"llava_plugin", "enhance", "eval"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{package} may import only {sorted(ALLOWED[package])}: {offenders}"



# ---------------------------------------------------------------- no import cycles inside a package
def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The repository modules `path` imports, at any depth of the file (function-level imports
    too: a lazy import still closes a circle). `from pkg import name` counts as importing the
    submodule pkg.name when there is one, else pkg itself; parent packages imported implicitly
    do not count."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b.c
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as a sorted list."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_import_cycle_finder_sees_lazy_imports(tmp_path):
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert import_cycles({"p.a": {"p.b"}, "p.b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_among_the_modules_of_a_package(package):
    paths = sorted((ROOT / package).rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, modules) & {m for m in modules if m.split(".")[0] == package}
             for p in paths}
    cycles = import_cycles(graph)
    assert not cycles, f"{package} has import cycles (lazy imports included): {cycles}"


# ---------------------------------------------------------------- heavy backends only where used
HEAVY = ("deepspeed", "transformers", "diffusers", "peft", "open_clip", "lmms_eval", "torchvision")
LIGHT_COMMANDS = [["mllm_train", "--help"], ["mllm_train", "finetune", "--help-config"], ["enhance", "--help"],
                  ["enhance", "presets", "--methods"]]  # the last discovers (imports) every method module


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_commands_that_train_nothing_import_no_heavy_backend(argv):
    """Help, config listings and the method registry import no training backend (STYLE 3): they
    would cost seconds of start-up (transformers alone brings torchvision and torch._dynamo)."""
    import subprocess
    import sys

    script = ("import runpy, sys\n"
              f"sys.argv = {argv!r}\n"
              "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
              f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "HEAVY []"
