"""The world report: what each method changed in the tower, against its matched control, over seeds.

Reads a study directory (see world/study.py) and writes `report/world.md`, `report/world.json` and
plots. Every number is a mean over seeds with its standard error; every claimed change is a
paired difference (same seed, same batches and steps) with its SE. A difference counts as an
effect only when it is above 2 SE with at least 3 seeds; with fewer seeds the report says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from world import scenes
from world.benchmarks import attribute_accuracy

# world MMVP-VLM category (its Type column) -> the world attribute it tests
MMVP_VLM_CATEGORIES = {
    "Orientation and Direction": "orientation",
    "Quantity and Count": "count",
    "Positional and Relational Context": "position",
    "Color and Appearance": "colour",
    "Structural Characteristics": "shape",
}
MIN_SEEDS_FOR_VERDICT = 3
UNUSED_BELOW = 0.01  # relative loss increase under which a generator is said to ignore an attribute


def mean_se(values: list[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (sample SD / sqrt n; nan for n < 2), n."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), n


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean ± SE of a - b over the seeds both have (a paired difference)."""
    return mean_se([a[s] - b[s] for s in sorted(set(a) & set(b))])


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------- collecting
def collect(out: Path) -> dict:
    """{metric: {tower: {seed: value}}} for every reading the study's finished jobs left on disk."""
    study = _read(out / "study.json") or {}
    seeds = study.get("seeds", [])
    table: dict[str, dict[str, dict[int, float]]] = {}

    def put(metric: str, tower: str, seed: int, value) -> None:
        if value is not None:
            table.setdefault(metric, {}).setdefault(tower, {})[seed] = float(value)

    for seed in seeds:
        root = out / f"seed-{seed}"
        for probe in sorted((root / "probe").glob("*.json")):
            data = _read(probe)
            if not data:
                continue
            tower = probe.stem
            for attribute, value in data["probe"].items():
                put(f"probe/{attribute}", tower, seed, 100 * value)
            for attribute, value in data["pair_cosine"].items():
                put(f"pair_cosine/{attribute}", tower, seed, value)
            put("zero_shot/colour_shape", tower, seed, 100 * data["zero_shot"]["colour_shape"])
        for metrics in sorted((root / "mmvp_vlm").glob("*/metrics.json")):
            data = _read(metrics)
            if not data:
                continue
            for category, value in (data.get("categories") or {}).items():
                if category in MMVP_VLM_CATEGORIES:
                    put(f"mmvp_vlm/{MMVP_VLM_CATEGORIES[category]}", metrics.parent.name, seed, value)
        zoo = _read(out / "world" / f"seed-{seed}" / "zoo.json") or {}
        for metrics in sorted((root / "llava").glob("*/eval/*/metrics.json")):
            data = _read(metrics)
            if not data:
                continue
            tower, bench = metrics.parent.parent.parent.name, metrics.parent.name
            for key, value in (data.get("headline") or {}).items():
                put(f"{bench}/{key}", tower, seed, value)
            data_dir = (zoo.get("data") or {}).get(bench.replace("-", "_"))
            if data_dir and (metrics.parent / "predictions.jsonl").is_file():
                for attribute, acc in attribute_accuracy(metrics.parent, data_dir).items():
                    put(f"{bench}/{attribute}", tower, seed, acc["question_accuracy"])
        for diagnosis in sorted((root / "towers").glob("*/diagnosis_pairs.json")):
            data = _read(diagnosis) or {}
            for when in ("start", "end"):
                for attribute, value in ((data.get(when) or {}).get("attributes") or {}).items():
                    put(f"method_gap_{when}/{attribute}", diagnosis.parent.name, seed, 100 * value["relative_gap"])
        reading = _read(out / "world" / f"seed-{seed}" / "reading.json") or {}
        for mode in ("described", "blind"):
            for style, values in (reading.get(mode) or {}).items():
                for attribute, value in values.items():
                    put(f"reading/{attribute}", f"{mode}/{style}", seed, 100 * value)
        for style, values in (reading.get("held_out") or {}).items():
            for split, value in values.items():
                put(f"reading_held_out/{split}", style, seed, 100 * value)
        sens = _read(out / "world" / f"seed-{seed}" / "sensitivity.json")
        for generator, values in (sens or {}).items():
            if generator == "settings":
                continue
            for attribute, value in values.items():
                put(f"sensitivity/{attribute}", generator, seed, 100 * value)
    return {"seeds": seeds, "study": study, "table": table}


# ---------------------------------------------------------------- formatting
def _fmt(m: float, se: float, n: int, digits: int = 1) -> str:
    if n == 0 or math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if math.isnan(se) else f"{m:.{digits}f} ± {se:.{digits}f}"


def _verdict(m: float, se: float, n: int) -> str:
    if n == 0 or math.isnan(m):
        return ""
    if n < MIN_SEEDS_FOR_VERDICT or math.isnan(se):
        return f"(n={n}: no verdict)"
    if abs(m) > 2 * se:
        return "**effect**" if m > 0 else "**harm**"
    return "within noise"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _methods(study: dict) -> list[str]:
    return list((study.get("methods") or {}).keys())


def _variants(study: dict) -> list[str]:
    return list((study.get("variants") or {}).keys())


def tower_section(data: dict) -> str:
    table, study = data["table"], data["study"]
    towers = ["base"] + [f"{m}-{v}" for m in _methods(study) for v in _variants(study)]
    parts = []
    for family, label, attributes in (
        ("probe", "Linear probe accuracy (%) on the image embedding", scenes.ATTRIBUTES),
        ("mmvp_vlm", "World MMVP-VLM pair accuracy (%), the official pair rule, by attribute", scenes.ATTRIBUTES),
        ("pair_cosine", "Pair cosine (lower: the two images of a one-attribute pair are told apart more)",
         scenes.ATTRIBUTES),
    ):
        rows = []
        for tower in towers:
            cells = [_fmt(*mean_se(list(table.get(f"{family}/{a}", {}).get(tower, {}).values())),
                          digits=3 if family == "pair_cosine" else 1) for a in attributes]
            if family == "probe":
                cells.append(_fmt(*mean_se(list(table.get("zero_shot/colour_shape", {}).get(tower, {}).values()))))
            if any(c != "-" for c in cells):
                rows.append([tower, *cells])
        header = ["tower", *attributes] + (["zero-shot colour+shape"] if family == "probe" else [])
        parts.append(f"### {label}\n\nmean ± SE over seeds.\n\n" + _table(header, rows))
    return "\n\n".join(parts)


def effects_section(data: dict) -> tuple[str, dict]:
    """Paired differences: feedback - control, shuffled - control, pure - base; per attribute."""
    table, study = data["table"], data["study"]
    comparisons = []
    for method in _methods(study):
        for variant, reference, why in (("feedback", "control", "the method vs its matched control"),
                                        ("shuffled", "control", "shuffled condition vs the control"),
                                        ("pure", "base", "feedback alone vs the base tower")):
            if variant in _variants(study) and (reference == "base" or reference in _variants(study)):
                ref = "base" if reference == "base" else f"{method}-{reference}"
                comparisons.append((method, f"{method}-{variant}", ref, why))
    rows, verdicts = [], {}
    for method, tower, ref, why in comparisons:
        for family in ("probe", "mmvp_vlm"):
            for attribute in scenes.FINE + scenes.COARSE:
                metric = table.get(f"{family}/{attribute}", {})
                if tower not in metric or ref not in metric:
                    continue
                m, se, n = paired(metric[tower], metric[ref])
                verdict = _verdict(m, se, n)
                verdicts[f"{tower} - {ref}: {family}/{attribute}"] = {"diff": m, "se": se, "n": n, "verdict": verdict}
                rows.append([f"{tower} − {ref}", family, attribute, _fmt(m, se, n), str(n), verdict])
        zs = table.get("zero_shot/colour_shape", {})
        if tower in zs and ref in zs:
            m, se, n = paired(zs[tower], zs[ref])
            verdicts[f"{tower} - {ref}: zero_shot"] = {"diff": m, "se": se, "n": n}
            rows.append([f"{tower} − {ref}", "zero-shot", "colour+shape", _fmt(m, se, n), str(n),
                         "retained (within 1 point)" if abs(m) <= 1 else "changed by more than 1 point"])
    text = ("Paired over seeds (the same seed's world, batches and steps); an **effect** is a difference above "
            f"2 SE with at least {MIN_SEEDS_FOR_VERDICT} seeds.\n\n"
            + _table(["comparison", "reading", "attribute", "difference ± SE (points)", "seeds", "verdict"], rows))
    return text, verdicts


def sensitivity_section(data: dict) -> str:
    table = data["table"]
    generators = sorted({g for key, per in table.items() if key.startswith("sensitivity/") for g in per})
    rows = []
    for generator in generators:
        cells = []
        for attribute in scenes.ATTRIBUTES:
            m, se, n = mean_se(list(table.get(f"sensitivity/{attribute}", {}).get(generator, {}).values()))
            cell = _fmt(m, se, n)
            if n and m < 100 * UNUSED_BELOW:
                cell += " (unused)"
            cells.append(cell)
        rows.append([generator, *cells])
    return ("Relative loss increase (%) when one attribute of the generator's condition is corrupted, at the same "
            f"noise (world/sensitivity.py). Below {100 * UNUSED_BELOW:.0f}% the generator ignores the attribute, and "
            "feedback from it cannot teach that attribute.\n\n" + _table(["generator", *scenes.ATTRIBUTES], rows))


def method_gap_section(data: dict) -> str:
    """enhance's diagnose.pairs at the start and end of each run: what the method's generator reads from
    the tower's condition, per attribute (a pair partner's condition instead of the image's own)."""
    table = data["table"]
    runs = sorted({r for k in table if k.startswith("method_gap_") for r in table[k]})
    rows = []
    for run in runs:
        for when in ("start", "end"):
            cells = [_fmt(*mean_se(list(table.get(f"method_gap_{when}/{a}", {}).get(run, {}).values())))
                     for a in scenes.ATTRIBUTES]
            if any(c != "-" for c in cells):
                rows.append([run, when, *cells])
    if not rows:
        return "No run recorded diagnose.pairs."
    return ("Relative loss increase (%) when each image is denoised under the condition of its one-attribute "
            "partner instead of its own, through the method itself (tower, projector or light generator): "
            "`diagnose.pairs` at the start and the end of each run. It shows what the method's generator reads "
            "from the tower, so what the feedback can teach.\n\n"
            + _table(["run", "when", *scenes.ATTRIBUTES], rows))


READING_CHANCE = {"world_mmvp": "50", "world_cv_bench": "25-50",  # the benchmarks' own questions
                  "mmvp": "50", "cv_bench": "25-50", "short": "~0-33"}  # two options; 2-5 choices; a free word


def reading_section(data: dict) -> str:
    """The ceiling of LLaVA on the world LM: its answers with the scene described where the image would be."""
    table = data["table"]
    rows = []
    for mode in ("described", "blind"):
        for style, chance in READING_CHANCE.items():
            key = f"{mode}/{style}"
            cells = [_fmt(*mean_se(list(table.get(f"reading/{a}", {}).get(key, {}).values()))) for a in scenes.ATTRIBUTES]
            if any(c != "-" for c in cells):
                rows.append([mode, f"{style} (chance {chance})", *cells])
    if not rows:
        return "No reading check yet (`python -m world reading`)."
    splits = [[style, *(_fmt(*mean_se(list(table.get(f"reading_held_out/{split}", {}).get(style, {}).values())))
                        for split in ("seen", "unseen"))] for style in READING_CHANCE]
    splits = [row for row in splits if row[1:] != ["-", "-"]]
    return ("The world language model alone, before LLaVA: greedy answers (exact match, %) to world questions in each "
            "format, with the scene *described in words* where the image would be (a perfect projector in the LM's "
            "own words) and *blind* (no description): `world_mmvp` and `world_cv_bench` are every question of the "
            "world benchmarks, the others questions sampled in the benchmark and VQA formats about every attribute. "
            "This is where LLaVA's finetune starts, not its ceiling: the finetune trains the LM on answers about "
            "images (world MMVP is asked in the format `study.mmvp` names, which the LM corpus may not hold), so "
            "LLaVA can answer what its LM alone cannot read from a description (world/language.py "
            "`reading_check`).\n\n" + _table(["input", "format", *scenes.ATTRIBUTES], rows)
            + ("\n\nDescribed, on the scenes whose combination of attributes the LM corpus shows (`seen`) and on "
               "the combinations it never names (`unseen`, 20%): equal accuracy means the LM reads the description "
               "rather than recalling it.\n\n" + _table(["format", "seen", "unseen"], splits) if splits else ""))


def downstream_section(data: dict) -> str:
    table = data["table"]
    metrics = sorted(k for k in table if k.split("/")[0] in ("mmvp", "cv-bench"))
    towers = sorted({t for k in metrics for t in table[k]}, key=lambda t: (t != "base", t))
    if not metrics:
        return "No LLaVA results yet."
    rows = []
    for metric in metrics:
        values = table[metric]
        cells = []
        for tower in towers:
            if tower not in values:
                cells.append("-")
                continue
            text = _fmt(*mean_se(list(values[tower].values())))
            if tower != "base" and "base" in values:
                m, se, n = paired(values[tower], values["base"])
                text += f" (Δ {_fmt(m, se, n)})"
            cells.append(text)
        rows.append([metric, *cells])
    return ("LLaVA (pretrain + finetune, the same recipe) on each tower; world MMVP and CV-Bench accuracy (%): the "
            "benchmarks' headlines and the question accuracy per attribute asked, mean ± SE over seeds, with the "
            "paired difference to the base tower's LLaVA (Δ). Chance: 50% of the questions with two options, 25% "
            "of MMVP's pairs (both questions of a pair right), CV-Bench 25-50% (2-5 choices).\n\n"
            + _table(["metric", *towers], rows) + _downstream_differences(table, metrics, towers))


def _downstream_differences(table: dict, metrics: list[str], towers: list[str]) -> str:
    """World MMVP of each enhanced tower's LLaVA against the base tower's and, where the study also sent the
    method's matched control downstream, against the control's: what the feedback term itself changed."""
    comparisons = []
    for tower in towers:
        if tower.endswith("-feedback"):
            comparisons.append((tower, "base"))
            control = tower[: -len("feedback")] + "control"
            if control in towers:
                comparisons += [(tower, control), (control, "base")]
    mmvp = [metric for metric in metrics if metric.startswith("mmvp/")]  # CV-Bench answers at its chance level
    rows = []
    for tower, ref in comparisons:
        for metric in mmvp:
            values = table[metric]
            if tower in values and ref in values:
                m, se, n = paired(values[tower], values[ref])
                rows.append([f"{tower} − {ref}", metric, _fmt(m, se, n), str(n), _verdict(m, se, n)])
    if not rows:
        return ""
    return ("\n\nPaired over seeds (the same seed's world and LLaVA data); a verdict needs a difference above 2 SE "
            f"with at least {MIN_SEEDS_FOR_VERDICT} seeds.\n\n"
            + _table(["comparison", "metric", "difference ± SE (points)", "seeds", "verdict"], rows))


def plot(data: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, study = data["table"], data["study"]
    methods = _methods(study)
    paths = []
    for family, ylabel in (("probe", "linear probe accuracy (%)"), ("mmvp_vlm", "world MMVP-VLM pair accuracy (%)")):
        fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(4.2 * max(1, len(methods)), 3.6), sharey=True,
                                 squeeze=False)
        for ax, method in zip(axes[0], methods or ["-"]):
            towers = ["base", f"{method}-control", f"{method}-feedback", f"{method}-shuffled", f"{method}-pure"]
            width = 0.8 / len(towers)
            for k, tower in enumerate(towers):
                ms, ses = [], []
                for attribute in scenes.FINE:
                    m, se, _ = mean_se(list(table.get(f"{family}/{attribute}", {}).get(tower, {}).values()))
                    ms.append(m)
                    ses.append(0 if math.isnan(se) else se)
                if all(math.isnan(m) for m in ms):
                    continue
                xs = [i + (k - (len(towers) - 1) / 2) * width for i in range(len(scenes.FINE))]
                ax.bar(xs, ms, width, yerr=ses, capsize=2, label=tower.replace(f"{method}-", ""))
            ax.set_xticks(range(len(scenes.FINE)), scenes.FINE)
            ax.set_title(method)
            ax.legend(fontsize=7, loc="lower right")
        axes[0][0].set_ylabel(ylabel)
        fig.suptitle(f"{ylabel}: mean ± SE over {len(data['seeds'])} seed(s)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{family}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    # the paired differences: feedback - control per method and attribute, for both readings
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    for ax, family in zip(axes[0], ("probe", "mmvp_vlm")):
        width = 0.8 / max(1, len(methods))
        for k, method in enumerate(methods):
            ms, ses = [], []
            for attribute in scenes.ATTRIBUTES:
                metric = table.get(f"{family}/{attribute}", {})
                m, se, _ = paired(metric.get(f"{method}-feedback", {}), metric.get(f"{method}-control", {}))
                ms.append(m)
                ses.append(0 if math.isnan(se) else se)
            xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(scenes.ATTRIBUTES))]
            ax.bar(xs, ms, width, yerr=ses, capsize=2, label=method)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(scenes.ATTRIBUTES)), scenes.ATTRIBUTES, fontsize=8)
        ax.set_title(f"{family}: feedback − matched control (points)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"paired differences, mean ± SE over {len(data['seeds'])} seed(s)", fontsize=9)
    fig.tight_layout()
    path = out_dir / "effects.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    # what the generators use
    generators = sorted({g for key, per in table.items() if key.startswith("sensitivity/") for g in per})
    if generators:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        width = 0.8 / len(generators)
        for k, generator in enumerate(generators):
            ms, ses = [], []
            for attribute in scenes.ATTRIBUTES:
                m, se, _ = mean_se(list(table.get(f"sensitivity/{attribute}", {}).get(generator, {}).values()))
                ms.append(m)
                ses.append(0 if math.isnan(se) else se)
            xs = [i + (k - (len(generators) - 1) / 2) * width for i in range(len(scenes.ATTRIBUTES))]
            ax.bar(xs, ms, width, yerr=ses, capsize=2, label=generator)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xticks(range(len(scenes.ATTRIBUTES)), scenes.ATTRIBUTES, fontsize=8)
        ax.set_ylabel("loss increase when corrupted (%)", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "sensitivity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(out: Path) -> Path:
    out = Path(out)
    data = collect(out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    effects, verdicts = effects_section(data)
    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()] if (out / "jobs.jsonl").is_file() else []
    seconds = sum(j["seconds"] for j in jobs if j["status"] == "done")
    text = "\n\n".join([
        "# The shapes world: does generative feedback make the tower see better?",
        (f"Seeds: {data['seeds']} (each seeds the world's CLIP and generators, the enhance runs and the LLaVA runs). "
         f"Study recipe: `{out / 'study.json'}`. Job time (sum over jobs run in this directory): {seconds:.0f} s."),
        "## What the generators use\n\n" + sensitivity_section(data),
        "### Through each method\n\n" + method_gap_section(data),
        "## The towers\n\n" + tower_section(data),
        "## Effects\n\n" + effects,
        "## Downstream: LLaVA on the world\n\n" + downstream_section(data) + "\n\n### Does the language model read "
        "a scene?\n\n" + reading_section(data),
        ("Plots: `probe.png`, `mmvp_vlm.png` (fine attributes per tower), `effects.png` (feedback − control per "
         "attribute), `sensitivity.png` (what the generators use); error bars are SE over seeds."),
    ]) + "\n"
    (report / "world.md").write_text(text)
    (report / "world.json").write_text(json.dumps({"seeds": data["seeds"], "table": data["table"],
                                                    "verdicts": verdicts}, indent=2, default=str))
    plot(data, report)
    return report / "world.md"
