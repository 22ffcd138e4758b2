"""compare (table + chart) and rescore on hand-made results directories."""

import json

import pytest
from PIL import Image

from eval.__main__ import main
from eval.benchmarks import cv_bench, mmvp, rescore
from eval.benchmarks.common import write_results
from eval.report import compare, compare_table, load_run


def _mmvp_run(out, answers):
    questions = [
        mmvp.Question(i, "Q?", "(a) Yes (b) No", ("Yes", "No"), "A" if i % 2 else "B", None)
        for i in range(1, 5)
    ]
    predictions = [
        mmvp.make_prediction(q, "prompt", a, missing_image=False) for q, a in zip(questions, answers)
    ]
    config = {"model": "m", "parser": mmvp.PARSER}
    write_results(out, predictions, mmvp.score(predictions, config))


def _cv_run(out, answers):
    rows = [
        {"idx": i, "answer": "(A)", "choices": ["x", "y"], "type": t, "task": task, "source": s}
        for i, (t, task, s) in enumerate(
            [
                ("2D", "Count", "ADE20K"),
                ("2D", "Count", "COCO"),
                ("2D", "Relation", "COCO"),
                ("3D", "Depth", "Omni3D"),
            ]
        )
    ]
    predictions = [
        cv_bench.make_prediction(r, "p", a, "cambrian", missing_image=False) for r, a in zip(rows, answers)
    ]
    write_results(out, predictions, cv_bench.score(predictions, {"parser": "cambrian"}))


def test_compare_table_and_chart(tmp_path):
    _mmvp_run(tmp_path / "base" / "mmvp", ["A", "B", "A", "A"])  # 3/4 questions, 1/2 pairs
    _cv_run(tmp_path / "base" / "cv_bench", ["A", "A", "B", "A"])
    _mmvp_run(tmp_path / "enhanced" / "mmvp", ["A", "B", "A", "B"])  # all right
    runs = {"base": load_run(tmp_path / "base"), "enhanced": load_run(tmp_path / "enhanced")}
    header, rows = compare_table(runs)
    assert header == [
        "run",
        "cv_bench/2D_ADE20K",
        "cv_bench/2D_COCO",
        "cv_bench/3D",
        "cv_bench/overall",
        "mmvp/pair_accuracy",
        "mmvp/question_accuracy",
    ]
    assert rows[0] == ["base", "100.0", "50.0", "100.0", "87.5", "50.0", "75.0"]
    assert rows[1] == ["enhanced", "-", "-", "-", "-", "100.0 (+50.0)", "100.0 (+25.0)"]

    assert (
        main(
            ["compare", str(tmp_path / "base"), str(tmp_path / "enhanced"), "--output", str(tmp_path / "cmp")]
        )
        == 0
    )
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert text == compare([tmp_path / "base", tmp_path / "enhanced"], tmp_path / "cmp2")
    assert text.splitlines()[2].startswith("| base | 100.0 | 50.0 |")
    with Image.open(tmp_path / "cmp" / "compare.png") as png:
        assert png.format == "PNG" and png.size[0] > 600


def test_compare_rejects_directories_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_run(tmp_path)


def test_rescore_reproduces_and_detects_tampering(tmp_path, capsys):
    out = tmp_path / "cv"
    _cv_run(out, ["The answer is (A)", "A", "B", "(A)"])
    assert main(["rescore", str(out)]) == 0
    # another parser changes the numbers: lmms-eval reads "The answer is (A)" as "T"
    assert rescore(out)["per_source"]["ADE20K"] == 100.0
    assert rescore(out, {"parser": "lmms"})["per_source"]["ADE20K"] == 0.0
    assert main(["rescore", str(out), "--parser", "lmms"]) == 0
    assert '"parser": "lmms"' in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["headline"]["overall"] = 99.0
    (out / "metrics.json").write_text(json.dumps(metrics))
    assert main(["rescore", str(out)]) == 1
    assert "headline" in capsys.readouterr().err
