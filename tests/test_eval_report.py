"""compare (tables with intervals, compare.json, chart) and rescore on hand-made results directories."""

import json

import pytest
from PIL import Image

from eval.__main__ import main
from eval.benchmarks import cv_bench, mmvp, rescore, zeroshot
from eval.benchmarks.common import write_results
from eval.report import (
    CompareWarning,
    compare,
    compare_table,
    delta_table,
    load_results,
    load_run,
    measure,
    render,
    to_json,
)


def _mmvp_run(out, answers):
    questions = [
        mmvp.Question(i, "Q?", "(a) Yes (b) No", ("Yes", "No"), "A" if i % 2 else "B", None)
        for i in range(1, 5)
    ]
    predictions = [
        mmvp.make_prediction(q, "prompt", a, missing_image=False) for q, a in zip(questions, answers)
    ]
    config = {"model": "m", "parser": mmvp.DEFAULT_PARSER}
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


def _zeroshot_run(out, correct, ids=None):
    """A zero-shot results directory whose i-th image is right iff correct[i]."""
    classes = ["cat", "dog"]
    ids = ids if ids is not None else [f"cat/{i}.jpg" for i in range(len(correct))]
    predictions = [zeroshot.make_prediction(i, "cat", [1.0, 0.0] if ok else [0.0, 1.0], classes)
                   for i, ok in zip(ids, correct)]
    write_results(out, predictions, zeroshot.score(predictions, {"classes": classes}))


def _row(table, metric):
    header, rows = table
    return dict(zip(header, next(r for r in rows if r[0] == metric)))


def _measure(tmp_path, *run_dirs, resamples=500):
    return measure({p.name: load_results(p) for p in run_dirs}, resamples=resamples)


def test_compare_tables_json_and_chart(tmp_path):
    _mmvp_run(tmp_path / "base" / "mmvp", ["A", "B", "A", "A"])  # 3/4 questions, 1/2 pairs
    _cv_run(tmp_path / "base" / "cv_bench", ["A", "A", "B", "A"])
    _mmvp_run(tmp_path / "enhanced" / "mmvp", ["A", "B", "A", "B"])  # all right
    comparison = _measure(tmp_path, tmp_path / "base", tmp_path / "enhanced")
    values, deltas = compare_table(comparison), delta_table(comparison)
    assert values[0] == ["metric", "n", "base", "enhanced"]
    assert [r[0] for r in values[1]] == ["cv_bench/2D_ADE20K", "cv_bench/2D_COCO", "cv_bench/3D",
                                         "cv_bench/overall", "mmvp/pair_accuracy", "mmvp/question_accuracy"]
    # n counts pairs for pair accuracy, questions for question accuracy, a source's questions per source
    assert _row(values, "mmvp/pair_accuracy") == {"metric": "mmvp/pair_accuracy", "n": "2",
                                                  "base": "50.0 [0.0, 100.0]", "enhanced": "100.0 [100.0, 100.0]"}
    assert _row(values, "mmvp/question_accuracy")["n"] == "4"
    assert _row(values, "cv_bench/2D_COCO") == {"metric": "cv_bench/2D_COCO", "n": "2",
                                                "base": "50.0 [0.0, 100.0]", "enhanced": "-"}
    # overall = mean(2D, 3D), redrawn within sources: ADE20K and Omni3D (one right answer each) stay 100
    assert _row(values, "cv_bench/overall")["base"] == "87.5 [75.0, 100.0]"
    assert _row(deltas, "mmvp/pair_accuracy") == {"metric": "mmvp/pair_accuracy", "n shared": "2",
                                                  "enhanced": "+50.0 [+0.0, +100.0] ~"}
    assert _row(deltas, "cv_bench/overall")["enhanced"] == "-"

    argv = ["compare", str(tmp_path / "base"), str(tmp_path / "enhanced"), "--output", str(tmp_path / "cmp")]
    assert main(argv) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert text == compare([tmp_path / "base", tmp_path / "enhanced"], tmp_path / "cmp2")
    assert "| mmvp/pair_accuracy | 2 | +50.0 [+0.0, +100.0] ~ |" in text and "~ within noise" in text
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report == json.loads((tmp_path / "cmp2" / "compare.json").read_text())  # seeded: deterministic
    assert report["runs"]["base"]["mmvp/pair_accuracy"] == {"value": 50.0, "n": 2, "ci_low": 0.0,
                                                            "ci_high": 100.0}
    assert report["deltas"]["enhanced"]["mmvp/question_accuracy"] == {
        "delta": 25.0, "ci_low": 0.0, "ci_high": 50.0, "n_shared": 4, "significant": False}
    with Image.open(tmp_path / "cmp" / "compare.png") as png:
        assert png.format == "PNG" and png.size[0] > 600


def test_one_different_answer_of_24_is_within_noise(tmp_path):
    base = [i % 2 == 0 for i in range(24)]
    _zeroshot_run(tmp_path / "base", base)
    _zeroshot_run(tmp_path / "changed", [not base[0], *base[1:]])
    delta = _measure(tmp_path, tmp_path / "base", tmp_path / "changed").deltas["changed"]["zeroshot/top1"]
    assert delta.delta == pytest.approx(-100 / 24) and delta.n_shared == 24
    assert delta.significant is False
    cell = _row(delta_table(_measure(tmp_path, tmp_path / "base", tmp_path / "changed")), "zeroshot/top1")
    assert cell["changed"].endswith(" ~")


def test_large_identical_runs_give_zero_delta_and_a_real_gain_is_significant(tmp_path):
    answers = [i % 3 != 0 for i in range(1200)]
    _zeroshot_run(tmp_path / "base", answers)
    _zeroshot_run(tmp_path / "same", answers)
    _zeroshot_run(tmp_path / "better", [True if i % 5 == 0 else a for i, a in enumerate(answers)])
    comparison = _measure(tmp_path, tmp_path / "base", tmp_path / "same", tmp_path / "better")
    value = comparison.values["base"]["zeroshot/top1"]
    assert value.n == 1200 and value.high - value.low < 6  # +-2.7 points at n=1200
    same = comparison.deltas["same"]["zeroshot/top1"]
    assert (same.delta, same.low, same.high, same.significant) == (0.0, 0.0, 0.0, False)
    better = comparison.deltas["better"]["zeroshot/top1"]
    assert better.delta == pytest.approx(100 * 80 / 1200) and better.significant is True
    assert not _row(delta_table(comparison), "zeroshot/top1")["better"].endswith("~")


def test_results_dir_without_metrics_json_warns_naming_it(tmp_path, capsys):
    _zeroshot_run(tmp_path / "base" / "zeroshot", [True, False])
    _mmvp_run(tmp_path / "base" / "mmvp", ["A", "B", "A", "A"])
    _zeroshot_run(tmp_path / "other" / "zeroshot", [True, True])
    _mmvp_run(tmp_path / "other" / "mmvp", ["A", "B", "A", "B"])
    (tmp_path / "other" / "mmvp" / "metrics.json").unlink()
    with pytest.warns(CompareWarning, match=str(tmp_path / "other" / "mmvp")):
        text = compare([tmp_path / "base", tmp_path / "other"], tmp_path / "cmp", resamples=200)
    assert f"warning: {tmp_path / 'other' / 'mmvp'} has predictions.jsonl but no metrics.json" in text
    assert "| mmvp/pair_accuracy | 2 | 50.0 [0.0, 100.0] | - |" in text
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["warnings"]
    argv = ["compare", str(tmp_path / "base"), str(tmp_path / "other"), "--output", str(tmp_path / "cmp"),
            "--resamples", "200"]
    assert main(argv) == 0
    assert f"warning: {tmp_path / 'other' / 'mmvp'} has predictions.jsonl" in capsys.readouterr().err


def test_values_without_predictions_or_shared_units_have_no_interval_and_a_note(tmp_path):
    _zeroshot_run(tmp_path / "base", [True, False, True])
    _zeroshot_run(tmp_path / "bare", [True, True, True])
    (tmp_path / "bare" / "predictions.jsonl").unlink()
    _zeroshot_run(tmp_path / "elsewhere", [True, True, True], ids=["a.jpg", "b.jpg", "c.jpg"])
    comparison = _measure(tmp_path, tmp_path / "base", tmp_path / "bare", tmp_path / "elsewhere")
    bare = comparison.values["bare"]["zeroshot/top1"]
    assert (bare.value, bare.n, bare.low) == (100.0, None, None) and "no predictions.jsonl" in bare.note
    assert comparison.deltas["bare"]["zeroshot/top1"].significant is None
    elsewhere = comparison.deltas["elsewhere"]["zeroshot/top1"]
    assert elsewhere.low is None and "share no scored units" in elsewhere.note
    text = render(comparison)
    assert "| zeroshot/top1 | 3 | 66.7 [0.0, 100.0] | 100.0 [1] | 100.0 [100.0, 100.0] |" in text
    assert f"[1] no predictions.jsonl in {tmp_path / 'bare'}: no interval" in text
    assert "+33.3 [2]" in text and "share no scored units: no interval" in text
    report = to_json(comparison)
    assert report["runs"]["bare"]["zeroshot/top1"]["ci_low"] is None
    assert report["deltas"]["elsewhere"]["zeroshot/top1"]["significant"] is None


def test_partly_shared_units_pair_on_the_shared_ones(tmp_path):
    _zeroshot_run(tmp_path / "base", [True, False, True, False], ids=["a", "b", "c", "d"])
    _zeroshot_run(tmp_path / "more", [True, True, True, False, True], ids=["a", "b", "c", "d", "e"])
    delta = _measure(tmp_path, tmp_path / "base", tmp_path / "more").deltas["more"]["zeroshot/top1"]
    assert (delta.delta, delta.n_shared) == (25.0, 4)  # a-d: 3/4 vs 2/4, not 4/5 vs 2/4
    assert "over the 4 units both runs scored" in delta.note


def test_compare_refuses_a_headline_its_predictions_do_not_give(tmp_path, capsys):
    _zeroshot_run(tmp_path / "run", [True, False])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics["headline"]["top1"] = 99.0
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    assert main(["compare", str(tmp_path / "run"), "--output", str(tmp_path / "cmp")]) == 2
    assert "top1 is 99.0 in metrics.json but 50.0 from predictions.jsonl" in capsys.readouterr().err


def test_mme_redraws_whole_images_within_categories():
    """MME's aggregation needs both questions of an image (it asserts so) and sums categories."""
    from eval.benchmarks.base import BENCHMARKS
    from eval.uncertainty import group_units

    predictions = []
    for category, images in (("color", 3), ("OCR", 2)):
        for image in range(images):
            for question in range(2):
                score = {"question_id": f"{category}/{image}.png", "category": category,
                         "score": (image + question) % 2 == 0}
                predictions.append({"id": len(predictions), "correct": score["score"],
                                    "scores": {"mme_perception_score": score}})
    vqa = BENCHMARKS.get("vqa")
    units = group_units("mme", vqa, predictions, {"vqa_task": "mme"})
    assert len(units.members) == 5 and set(units.strata.values()) == {"color", "OCR"}
    assert units.n("mme_perception_score", units.keys) == 5
    samples = units.samples(units.keys, resamples=50, seed=0)["mme_perception_score"]
    assert samples.shape == (50,) and samples.min() >= 0 and samples.max() <= 400


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


def test_mmvp_rescore_with_another_parser(tmp_path, capsys):
    out = tmp_path / "mmvp"
    # gold A, B, A, B; options Yes/No
    _mmvp_run(out, ["It has a long tail", "B", "A", "(b) No"])
    recorded = (out / "metrics.json").read_bytes()
    assert main(["rescore", str(out)]) == 0
    strict = rescore(out)
    assert (strict["question_accuracy"], strict["pair_accuracy"]) == (75.0, 50.0)
    lmms = rescore(out, {"parser": "lmms"})  # reads the stray "a" of "a long tail" as the answer A
    assert (lmms["question_accuracy"], lmms["pair_accuracy"]) == (100.0, 100.0)
    assert lmms["config"]["parser"] == "lmms" and lmms["unparseable"]["count"] == 0
    cambrian = rescore(out, {"parser": "cambrian"})  # "(b) No" is not exactly a letter nor an option
    assert (cambrian["question_accuracy"], cambrian["pair_accuracy"]) == (50.0, 0.0)
    capsys.readouterr()
    assert main(["rescore", str(out), "--parser", "lmms"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == lmms and printed["headline"] == {"pair_accuracy": 100.0, "question_accuracy": 100.0}
    assert (out / "metrics.json").read_bytes() == recorded  # printed, never written
    assert main(["rescore", str(out)]) == 0  # the recorded (strict) metrics still reproduce


def test_rescore_parser_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "mmvp"
    _mmvp_run(out, ["A", "B", "A", "B"])
    capsys.readouterr()
    assert main(["rescore", str(out), "--parser", "gpt4"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown MMVP parser 'gpt4'; known parsers: strict, lmms, cambrian\n"
    zs = tmp_path / "zeroshot"
    _zeroshot_run(zs, [True, False])
    assert main(["rescore", str(zs), "--parser", "lmms"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--parser applies to benchmarks with several answer parsers" in err
