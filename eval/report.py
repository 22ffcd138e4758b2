"""Comparing runs: a markdown table (runs as rows, benchmark headline metrics as columns,
deltas against the first run) and a grouped bar chart.

A run is a directory holding one or more results directories (any depth), each with a
metrics.json carrying `benchmark` and `headline` ({metric: percent}); a results directory
itself is a run of one benchmark. Any benchmark that writes that contract (e.g. the lmms-eval
tasks) shows up without changes here.
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.benchmarks.common import METRICS_FILE


def load_run(run_dir: Path | str) -> dict[str, float | None]:
    """{"benchmark/metric": value} over every metrics.json under `run_dir`."""
    root = Path(run_dir)
    files = sorted(root.rglob(METRICS_FILE))
    if not files:
        raise FileNotFoundError(
            f"no {METRICS_FILE} under {root}: pass result directories of `python -m eval`"
        )
    values: dict[str, float | None] = {}
    for path in files:
        metrics = json.loads(path.read_text())
        if "benchmark" not in metrics or "headline" not in metrics:
            raise ValueError(
                f"{path} has no 'benchmark'/'headline' keys; it was not written by `python -m eval`"
            )
        for name, value in metrics["headline"].items():
            key = f"{metrics['benchmark']}/{name}"
            if key in values:
                raise ValueError(
                    f"{key} appears twice under {root} (second time in {path}); "
                    "compare one result per benchmark per run"
                )
            values[key] = value
    return values


def run_names(run_dirs: list[Path]) -> list[str]:
    """Directory names, made unique with their parents where they collide."""
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in run_dirs]


def compare_table(runs: dict[str, dict[str, float | None]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the markdown table; each cell is 'value (+delta vs the first run)'."""
    columns = sorted({key for values in runs.values() for key in values})
    names = list(runs)
    baseline = runs[names[0]]
    rows = []
    for k, name in enumerate(names):
        cells = [name]
        for column in columns:
            value = runs[name].get(column)
            if value is None:
                cells.append("-")
                continue
            cell = f"{value:.1f}"
            base = baseline.get(column)
            if k > 0 and base is not None:
                cell += f" ({value - base:+.1f})"
            cells.append(cell)
        rows.append(cells)
    return ["run", *columns], rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_compare(runs: dict[str, dict[str, float | None]], out_png: Path | str) -> Path:
    """Grouped bars: one group per metric, one bar per run (missing values are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({key for values in runs.values() for key in values})
    names = list(runs)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(min(16.0, 2.0 + len(columns) * (0.6 + 0.3 * len(names))), 4.5))
    for k, name in enumerate(names):
        xs = [
            i + (k - (len(names) - 1) / 2) * width
            for i, c in enumerate(columns)
            if runs[name].get(c) is not None
        ]
        ys = [runs[name][c] for c in columns if runs[name].get(c) is not None]
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (% unless the benchmark's own scale)")
    top = max((v for values in runs.values() for v in values.values() if v is not None), default=100.0)
    ax.set_ylim(0, max(105.0, 1.1 * top))  # percentages, or a larger native scale (e.g. MME)
    ax.set_title("benchmark headline metrics")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def compare(run_dirs: list[Path | str], output: Path | str) -> str:
    """Write compare.md and compare.png to `output`; return the markdown."""
    paths = [Path(p) for p in run_dirs]
    runs = dict(zip(run_names(paths), (load_run(p) for p in paths)))
    text = markdown(*compare_table(runs))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    plot_compare(runs, out / "compare.png")
    return text
