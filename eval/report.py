"""Comparing runs: compare.md (one table of values with n and 95% intervals, one of deltas
against the first run with paired 95% intervals; benchmark headline metrics as rows, runs as
columns), the same numbers in compare.json, and a grouped bar chart with error bars.

A run is a directory holding one or more results directories (any depth), each with a
metrics.json carrying `benchmark` and `headline` ({metric: percent}); a results directory
itself is a run of one benchmark. Any benchmark that writes that contract (e.g. the lmms-eval
tasks) shows up without changes here. Intervals also need its predictions.jsonl and the
benchmark registered: every bootstrap redraw of the scored units is scored by the benchmark's
own `score` (eval/uncertainty.py, eval/stats.py). A value without them is shown bare, with a
footnote saying why.

Deltas are paired: both runs answered the same questions, so they are redrawn together over the
units they share (matched by id; by pair for MMVP and MMVP-VLM), which cancels what the runs
have in common. A delta whose interval contains 0 is marked `~` (within noise): with 24
questions, one answer more is +4.2 points and means nothing.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from eval import stats
from eval.benchmarks.base import benchmark_for
from eval.benchmarks.common import METRICS_FILE, PREDICTIONS_FILE, read_metrics, read_predictions
from eval.uncertainty import Units, group_units, shared_keys
from llava_plugin.errors import GenfeedbackError

NOISE_MARK = "~"


class CompareError(GenfeedbackError, ValueError):
    """Results that cannot be compared as they are (the message names the file and the fix)."""


class NoResultsError(GenfeedbackError, FileNotFoundError):
    """A run directory without any metrics.json."""


class CompareWarning(UserWarning):
    """Something left out of a comparison (e.g. a results directory without metrics.json)."""


# ---------------------------------------------------------------- loading
@dataclass
class Result:
    """One results directory of a run."""

    directory: Path
    benchmark: str  # metrics.json's `benchmark`
    headline: dict[str, float | None]
    config: dict
    predictions: list[dict] | None  # None: no predictions.jsonl, so no interval


def load_results(run_dir: Path | str) -> list[Result]:
    """Every results directory under `run_dir`; a directory with predictions.jsonl but no
    metrics.json is left out with a `CompareWarning` naming it."""
    root = Path(run_dir)
    for orphan in sorted(p.parent for p in root.rglob(PREDICTIONS_FILE)):
        if not (orphan / METRICS_FILE).is_file():
            warnings.warn(f"{orphan} has {PREDICTIONS_FILE} but no {METRICS_FILE}: left out of the comparison "
                          f"(`python -m eval rescore` needs it too; rerun that benchmark)", CompareWarning,
                          stacklevel=2)
    files = sorted(root.rglob(METRICS_FILE))
    if not files:
        raise NoResultsError(f"no {METRICS_FILE} under {root}: pass result directories of `python -m eval`")
    results: list[Result] = []
    seen: dict[str, Path] = {}
    for path in files:
        metrics = read_metrics(path.parent)
        if "benchmark" not in metrics or "headline" not in metrics:
            raise CompareError(f"{path} has no 'benchmark'/'headline' keys; it was not written by `python -m eval`")
        for name in metrics["headline"]:
            key = f"{metrics['benchmark']}/{name}"
            if key in seen:
                raise CompareError(f"{key} appears twice under {root} ({seen[key]} and {path}); "
                                   "compare one result per benchmark per run")
            seen[key] = path
        predictions = read_predictions(path.parent) if (path.parent / PREDICTIONS_FILE).is_file() else None
        results.append(Result(path.parent, metrics["benchmark"], dict(metrics["headline"]),
                              metrics.get("config", {}), predictions))
    return results


def load_run(run_dir: Path | str) -> dict[str, float | None]:
    """{"benchmark/metric": value} over every metrics.json under `run_dir`."""
    return {f"{r.benchmark}/{m}": v for r in load_results(run_dir) for m, v in r.headline.items()}


def run_names(run_dirs: list[Path]) -> list[str]:
    """Directory names, made unique with their parents where they collide."""
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in run_dirs]


# ---------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Value:
    """A headline number with its n and interval (None without predictions: see `note`)."""

    value: float | None
    n: int | None = None
    low: float | None = None
    high: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class Delta:
    """A run's number minus the reference's, with the paired interval over the units both scored."""

    delta: float
    low: float | None = None
    high: float | None = None
    n_shared: int | None = None
    note: str | None = None

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0; None without an interval."""
        return None if self.low is None else not (self.low <= 0.0 <= self.high)


@dataclass
class Comparison:
    runs: list[str]  # the first is the reference of the deltas
    columns: list[str]  # "benchmark/metric"
    values: dict[str, dict[str, Value]]  # run -> column -> value (absent: the run lacks that benchmark)
    deltas: dict[str, dict[str, Delta]]  # run after the first -> column -> delta
    resamples: int
    seed: int
    level: float
    warnings: list[str] = field(default_factory=list)


def _units(result: Result) -> Units | str:
    """The result's units for the bootstrap, or why it gets no interval."""
    if result.predictions is None:
        return f"no {PREDICTIONS_FILE} in {result.directory}: no interval"
    try:
        benchmark = benchmark_for(result.benchmark)
    except ValueError:
        return f"{result.benchmark} is not a registered benchmark, so its redraws cannot be scored: no interval"
    try:
        units = group_units(str(result.directory), benchmark, result.predictions, result.config)
        recomputed = units.headline(units.keys)
    except ImportError as err:
        return f"scoring {result.benchmark} needs {err.name}, which is not installed: no interval"
    differing = {m: (v, recomputed.get(m)) for m, v in result.headline.items() if recomputed.get(m) != v}
    if differing:
        metric, (recorded, again) = next(iter(differing.items()))
        raise CompareError(f"{result.directory}: {metric} is {recorded} in {METRICS_FILE} but {again} from "
                           f"{PREDICTIONS_FILE}; check with `python -m eval rescore {result.directory}`")
    return units


def measure(runs: dict[str, list[Result]], *, resamples: int = stats.RESAMPLES, seed: int = 0,
            level: float = stats.LEVEL) -> Comparison:
    """Every run's headline values with bootstrap intervals, and every later run's paired deltas
    against the first."""
    names = list(runs)
    by_benchmark = {name: {r.benchmark: r for r in results} for name, results in runs.items()}
    units = {(name, b): _units(r) for name, results in by_benchmark.items() for b, r in results.items()}
    columns = sorted({f"{r.benchmark}/{m}" for results in runs.values() for r in results for m in r.headline})
    values: dict[str, dict[str, Value]] = {}
    for name in names:
        values[name] = {}
        for benchmark, result in by_benchmark[name].items():
            u = units[(name, benchmark)]
            samples = u.samples(u.keys, resamples=resamples, seed=seed) if isinstance(u, Units) else {}
            for metric, value in result.headline.items():
                if isinstance(u, str) or value is None:
                    values[name][f"{benchmark}/{metric}"] = Value(value, note=u if isinstance(u, str) else None)
                    continue
                low, high = stats.percentile_interval(samples[metric], level)
                values[name][f"{benchmark}/{metric}"] = Value(value, u.n(metric, u.keys), low, high)
    reference = names[0]
    deltas = {name: {} for name in names[1:]}
    for name in names[1:]:
        for column in columns:
            base, other = values[reference].get(column), values[name].get(column)
            if base is None or other is None or base.value is None or other.value is None:
                continue
            benchmark, metric = column.split("/", 1)
            deltas[name][column] = _delta(units[(reference, benchmark)], units[(name, benchmark)], metric,
                                          other.value - base.value, resamples=resamples, seed=seed, level=level)
    return Comparison(names, columns, values, deltas, resamples, seed, level)


def _delta(base: Units | str, other: Units | str, metric: str, difference: float, *, resamples: int,
           seed: int, level: float) -> Delta:
    if isinstance(base, str) or isinstance(other, str):
        return Delta(difference, note=base if isinstance(base, str) else other)
    keys = shared_keys(base, other)
    if not keys:
        return Delta(difference, note=f"{base.source} and {other.source} share no scored units: no interval")
    on_shared = base.headline(keys).get(metric), other.headline(keys).get(metric)
    if None in on_shared:
        return Delta(difference, note=f"no unit that {base.source} and {other.source} share scores {metric}: "
                                      "no interval")
    samples = (other.samples(keys, resamples=resamples, seed=seed)[metric]
               - base.samples(keys, resamples=resamples, seed=seed)[metric])
    low, high = stats.percentile_interval(samples, level)
    note = None
    if len(keys) < max(len(base.members), len(other.members)):
        note = (f"over the {len(keys)} units both runs scored ({len(base.members)} in {base.source}, "
                f"{len(other.members)} in {other.source})")
    return Delta(on_shared[1] - on_shared[0], low, high, base.n(metric, keys), note)


# ---------------------------------------------------------------- rendering
class _Notes:
    """Numbered footnotes, one per distinct text."""

    def __init__(self):
        self.texts: list[str] = []

    def mark(self, text: str | None) -> str:
        if text is None:
            return ""
        if text not in self.texts:
            self.texts.append(text)
        return f" [{self.texts.index(text) + 1}]"


def _n_column(cells: list[Value | Delta | None], attr: str) -> tuple[str, bool]:
    """The n shown in the n column, and whether cells must state their own (the runs differ)."""
    ns = sorted({getattr(c, attr) for c in cells if c is not None and getattr(c, attr) is not None})
    return (str(ns[0]) if len(ns) == 1 else "" if not ns else "varies"), len(ns) > 1


def compare_table(comparison: Comparison, notes: _Notes | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the values table: 'value [low, high]' per run and metric."""
    notes = notes or _Notes()
    rows = []
    for column in comparison.columns:
        cells = [comparison.values[name].get(column) for name in comparison.runs]
        n, per_cell = _n_column(cells, "n")
        row = [column, n]
        for cell in cells:
            if cell is None or cell.value is None:
                row.append("-")
                continue
            text = f"{cell.value:.1f}"
            if cell.low is not None:
                text += f" [{cell.low:.1f}, {cell.high:.1f}]" + (f" n={cell.n}" if per_cell else "")
            row.append(text + notes.mark(cell.note))
        rows.append(row)
    return ["metric", "n", *comparison.runs], rows


def delta_table(comparison: Comparison, notes: _Notes | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the deltas table: 'delta [low, high]' per later run, `~` within noise."""
    notes = notes or _Notes()
    later = comparison.runs[1:]
    rows = []
    for column in comparison.columns:
        cells = [comparison.deltas[name].get(column) for name in later]
        n, per_cell = _n_column(cells, "n_shared")
        row = [column, n]
        for cell in cells:
            if cell is None:
                row.append("-")
                continue
            text = f"{cell.delta:+.1f}"
            if cell.low is not None:
                text += f" [{cell.low:+.1f}, {cell.high:+.1f}]" + (f" n={cell.n_shared}" if per_cell else "")
                text += "" if cell.significant else f" {NOISE_MARK}"
            row.append(text + notes.mark(cell.note))
        rows.append(row)
    return ["metric", "n shared", *later], rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(comparison: Comparison) -> str:
    """compare.md: the values table, the deltas table (with more than one run), the legend and notes."""
    notes = _Notes()
    level = f"{100 * comparison.level:.0f}%"
    bootstrap = f"{comparison.resamples} bootstrap redraws of the scored units, seed {comparison.seed}"
    tables = [compare_table(comparison, notes)]
    text = (f"Values with {level} intervals ({bootstrap}; n = scored units: questions, or pairs for "
            "pair metrics):\n\n" + markdown(*tables[0]))
    if len(comparison.runs) > 1:
        tables.append(delta_table(comparison, notes))
        text += (f"\nDeltas against {comparison.runs[0]} with paired {level} intervals (both runs redrawn "
                 "over the units they share):\n\n" + markdown(*tables[1]))
        text += f"\n{NOISE_MARK} within noise: the delta's {level} interval contains 0.\n"
    if any(cell == "-" for _, rows in tables for row in rows for cell in row):
        text += "- no result for that metric in the run (or in the reference, for a delta).\n"
    for k, note in enumerate(notes.texts, start=1):
        text += f"[{k}] {note}\n"
    for warning in comparison.warnings:
        text += f"warning: {warning}\n"
    return text


def to_json(comparison: Comparison) -> dict:
    """compare.json: per run and metric value, n, ci_low, ci_high; per delta delta, ci_low, ci_high,
    n_shared, significant (null where there is no interval; `note` says why)."""

    def entry(cell, names: dict[str, str]) -> dict:
        out = {key: getattr(cell, attr) for key, attr in names.items()}
        return {**out, "note": cell.note} if cell.note else out

    value_fields = {"value": "value", "n": "n", "ci_low": "low", "ci_high": "high"}
    delta_fields = {"delta": "delta", "ci_low": "low", "ci_high": "high", "n_shared": "n_shared",
                    "significant": "significant"}
    return {
        "reference": comparison.runs[0],
        "bootstrap": {"resamples": comparison.resamples, "seed": comparison.seed, "level": comparison.level,
                      "interval": "percentile; deltas paired over the shared units"},
        "runs": {name: {c: entry(v, value_fields) for c, v in comparison.values[name].items()}
                 for name in comparison.runs},
        "deltas": {name: {c: entry(d, delta_fields) for c, d in comparison.deltas[name].items()}
                   for name in comparison.runs[1:]},
        "warnings": comparison.warnings,
    }


def plot_compare(comparison: Comparison, out_png: Path | str) -> Path:
    """Grouped bars with interval error bars: one group per metric, one bar per run (missing values
    are left out). Value labels stand vertically above the error bars, and are dropped when the
    bars are too narrow for them (the table has the numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, names = comparison.columns, comparison.runs
    width = 0.8 / len(names)
    fig_width = min(16.0, 3.0 + len(columns) * (0.6 + 0.3 * len(names)))
    fig, ax = plt.subplots(figsize=(fig_width, 4.8))
    bar_points = 72 * 0.75 * fig_width * width / max(1, len(columns))  # ~ the axes' share of the width
    labels = bar_points >= 9  # a vertical 7 pt label needs about that much
    tops = []
    for k, name in enumerate(names):
        cells = [(i, comparison.values[name].get(c)) for i, c in enumerate(columns)]
        cells = [(i, v) for i, v in cells if v is not None and v.value is not None]
        xs = [i + (k - (len(names) - 1) / 2) * width for i, _ in cells]
        ys = [v.value for _, v in cells]
        errors = [[v.value - v.low if v.low is not None else 0 for _, v in cells],
                  [v.high - v.value if v.high is not None else 0 for _, v in cells]]
        ax.bar(xs, ys, width=width, label=name, yerr=errors, capsize=2, error_kw={"elinewidth": 0.8})
        for x, (_, v) in zip(xs, cells):
            top = v.high if v.high is not None else v.value
            tops.append(top)
            if labels:
                ax.annotate(f"{v.value:.1f}", (x, top), xytext=(0, 2), textcoords="offset points",
                            rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (% unless the benchmark's own scale)")
    top = max(tops, default=100.0)
    ax.set_ylim(0, max(100.0, top) * 1.2)  # room for the labels above the highest error bar
    level = f"{100 * comparison.level:.0f}%"
    ax.set_title(f"benchmark headline metrics, {level} bootstrap intervals"
                 + ("" if labels else " (values: compare.md)"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def compare(run_dirs: list[Path | str], output: Path | str, *, resamples: int = stats.RESAMPLES,
            seed: int = 0) -> str:
    """Write compare.md, compare.json and compare.png to `output`; return the markdown. The
    `CompareWarning`s of loading are raised again to the caller and listed in compare.md."""
    paths = [Path(p) for p in run_dirs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompareWarning)
        runs = dict(zip(run_names(paths), (load_results(p) for p in paths)))
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    comparison = measure(runs, resamples=resamples, seed=seed)
    comparison.warnings = [str(w.message) for w in caught if issubclass(w.category, CompareWarning)]
    text = render(comparison)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(json.dumps(to_json(comparison), indent=2) + "\n")
    plot_compare(comparison, out / "compare.png")
    return text
