"""Pure scoring, parsing, prompts and data loading of the benchmarks, on hand-made cases whose
right answers are known."""

import csv
import json
import shutil

import pytest

from eval import mllm
from eval.benchmarks import common, cv_bench, mmvp, mmvp_vlm, zeroshot
from llava_plugin.errors import GenfeedbackError
from llava_plugin.toy import build_zoo


@pytest.fixture(scope="module")
def data_zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("eval_data"), seed=0, parts=["data"])


# ---------------------------------------------------------------- MMVP-VLM
def _vlm(pair, category, qid, correct):
    gold = "img1" if qid % 2 else "img2"
    wrong = "img2" if gold == "img1" else "img1"
    return {
        "id": qid,
        "prompt": "",
        "raw_answer": 0.9,
        "parsed": gold if correct else wrong,
        "gold": gold,
        "correct": correct,
        "pair": pair,
        "category": category,
        "missing_image": False,
    }


def test_mmvp_vlm_headline_is_mean_of_category_pair_accuracies():
    a, b = mmvp_vlm.CATEGORIES[0], mmvp_vlm.CATEGORIES[1]
    predictions = [
        _vlm(0, a, 1, True),
        _vlm(0, a, 2, True),  # pair right
        _vlm(1, a, 3, True),
        _vlm(1, a, 4, False),  # one statement wrong -> pair wrong
        _vlm(2, b, 5, True),
        _vlm(2, b, 6, True),  # pair right
    ]
    metrics = mmvp_vlm.score(predictions, {})
    assert metrics["categories"][a] == 50.0 and metrics["categories"][b] == 100.0
    assert metrics["average"] == 75.0 == metrics["headline"]["average"]
    assert metrics["pair_accuracy"] == pytest.approx(200 / 3)  # pooled over pairs differs from the headline
    assert metrics["statement_accuracy"] == pytest.approx(500 / 6)
    assert metrics["categories"][mmvp_vlm.CATEGORIES[2]] is None


def test_mmvp_vlm_decision_rule_ties_go_to_image_two():
    assert mmvp_vlm.judge(0.5) == "img2"
    assert mmvp_vlm.judge(0.5000001) == "img1"
    assert mmvp_vlm.judge(0.2) == "img2"
    assert mmvp_vlm.judge(None) is None


def _write_vlm_csv(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / mmvp_vlm.IMAGES_DIR).mkdir(exist_ok=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(mmvp_vlm.HEADER)
        writer.writerows(rows)


def test_mmvp_vlm_load_pairs_by_position_and_first_rows_type(tmp_path):
    rows = [[q, "Orientation" if q != 2 else "Oops Wrong Type", f"s{q}"] for q in range(1, 271)]
    _write_vlm_csv(tmp_path, rows)
    statements = mmvp_vlm.load(tmp_path)
    assert len(statements) == 270
    # both images of pair 0 come from the first row's Type folder
    assert statements[1].image == tmp_path / "MLLM_VLM Images" / "Orientation" / "2.jpg"
    assert statements[1].text == "a photo of s2"
    # category by pair index // 15, whatever the Type column says
    assert statements[29].category == "Orientation and Direction"
    assert statements[30].category == "Presence of Specific Features"
    assert statements[269].category == "Viewpoint and Perspective"
    assert [s.gold for s in statements[:4]] == ["img1", "img2", "img1", "img2"]


def test_mmvp_vlm_layout_errors_name_the_expected_file(tmp_path):
    with pytest.raises(common.DatasetLayoutError, match="Questions.csv"):
        mmvp_vlm.load(tmp_path)
    _write_vlm_csv(tmp_path, [[1, "Orientation", "x"], [2, "Orientation", "y"]])
    with pytest.raises(common.DatasetLayoutError, match="270 question rows"):
        mmvp_vlm.load(tmp_path)


def test_mmvp_vlm_type_categories_come_from_each_pairs_first_row_and_accept_any_even_count(tmp_path):
    rows = [[1, "Quantity and Count", "two dots"], [2, "Oops Wrong Type", "three dots"],
            [3, "My Own Category", "a dot on the left"], [4, "My Own Category", "a dot on the right"]]
    _write_vlm_csv(tmp_path, rows)
    with pytest.raises(common.DatasetLayoutError, match="270 question rows"):
        mmvp_vlm.load(tmp_path)  # the official rule is the default and is unchanged
    statements = mmvp_vlm.load(tmp_path, categories="type")
    assert [s.category for s in statements] == ["Quantity and Count"] * 2 + ["My Own Category"] * 2
    assert statements[1].image == tmp_path / "MLLM_VLM Images" / "Quantity and Count" / "2.jpg"
    assert [s.gold for s in statements] == ["img1", "img2", "img1", "img2"]
    _write_vlm_csv(tmp_path, rows[:3])
    with pytest.raises(common.DatasetLayoutError, match="even"):
        mmvp_vlm.load(tmp_path, categories="type")
    with pytest.raises(ValueError, match="category rule"):
        mmvp_vlm.load(tmp_path, categories="by-name")


def test_mmvp_vlm_type_rule_scores_the_categories_present_in_file_order():
    predictions = [
        _vlm(0, "Zeta", 1, True), _vlm(0, "Zeta", 2, True),  # Zeta: 1/1 pairs
        _vlm(1, "Alpha", 3, True), _vlm(1, "Alpha", 4, False),
        _vlm(2, "Alpha", 5, True), _vlm(2, "Alpha", 6, True),  # Alpha: 1/2 pairs
    ]
    metrics = mmvp_vlm.score(predictions, {"categories": "type"})
    assert list(metrics["categories"]) == ["Zeta", "Alpha"]
    assert metrics["categories"] == {"Zeta": 100.0, "Alpha": 50.0}
    assert metrics["average"] == 75.0 == metrics["headline"]["average"]
    # without the option (and in metrics.json written before it existed) the official 9 categories
    official = mmvp_vlm.score(predictions, {})
    assert list(official["categories"]) == list(mmvp_vlm.CATEGORIES) and official["average"] is None


def test_mmvp_vlm_categories_flag_defaults_to_official_and_is_recorded_in_the_config():
    from eval.__main__ import build_parser

    base = ["mmvp-vlm", "--vision-tower", "t", "--data", "d", "--output", "o"]
    benchmark = mmvp_vlm.MMVPVLM()
    official = build_parser().parse_args(base)
    assert official.categories == "positional"
    assert benchmark.options(official, [])["categories"] == "positional"
    derived = build_parser().parse_args([*base, "--categories", "type"])
    assert benchmark.options(derived, [])["categories"] == "type"
    assert "first row's Type" in benchmark.options(derived, [])["rule"]


# ---------------------------------------------------------------- MMVP
YES_NO = ("Yes", "No")


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("A", YES_NO, "A"),
        ("b", YES_NO, "B"),
        ("(b)", YES_NO, "B"),
        ("B.", YES_NO, "B"),
        ("(a) Yes", YES_NO, "A"),
        ("A. Yes", YES_NO, "A"),
        ("B) No", YES_NO, "B"),
        ("The answer is (B).", YES_NO, "B"),
        ("Answer: a", YES_NO, "A"),
        ("Yes", YES_NO, "A"),
        ("No, the feet are not visible.", YES_NO, "B"),
        ("Up.", ("Up", "Down"), "A"),
        # free text must not be mined for a stray letter (lmms-eval's loose search reads these as A)
        ("It has a long tail", ("Long", "Short"), None),
        ("A dog is sitting on the grass", YES_NO, None),
        ("", YES_NO, None),
        (None, YES_NO, None),
    ],
)
def test_mmvp_parse_answer(text, options, expected):
    assert mmvp.parse_answer(text, options) == expected


LONG_SHORT = ("Long", "Short")


# What each parser reads (None: nothing); strict is ours, lmms is lmms-eval 0.7.2's loose letter search,
# cambrian is Cambrian-1's whole-answer comparison with the letter or the option text.
@pytest.mark.parametrize(
    "text, options, strict, lmms, cambrian",
    [
        ("A", YES_NO, "A", "A", "A"),
        ("b", YES_NO, "B", "B", "B"),  # case is ignored by all three
        ("(b)", YES_NO, "B", "B", "B"),
        ("B.", YES_NO, "B", "B", "B"),
        ("b)", YES_NO, "B", "B", "B"),
        ("The answer is (B).", YES_NO, "B", "B", "B"),
        ("Answer: (a)", YES_NO, "A", "A", "A"),
        # Cambrian compares the whole rest of the answer: a letter with its option text is not read
        ("(b) No", YES_NO, "B", "B", None),
        ("B. No", YES_NO, "B", "B", None),
        # Cambrian keeps what follows "answer is", so the colon stays and the letter is not read
        ("The answer is: B", YES_NO, "B", "B", None),
        # the option text alone: lmms-eval never matches it
        ("Yes", YES_NO, "A", None, "A"),
        ("No.", YES_NO, "B", None, "B"),
        ("Short.", LONG_SHORT, "B", None, "B"),
        # ... and where it starts with a/b, lmms-eval's last resort reads its first letter
        ("Above", ("Below", "Above"), "B", "A", "B"),
        # free text: only lmms-eval's search finds a stray letter, even inside a word
        ("It has a long tail", LONG_SHORT, None, "A", None),
        ("A dog is sitting on the grass", YES_NO, None, "A", None),
        ("The tab is open", ("Open", "Closed"), None, "B", None),
        ("Option B", YES_NO, None, "B", None),
        ("No, the feet are not visible.", YES_NO, "B", None, None),
        ("", YES_NO, None, None, None),
        (None, YES_NO, None, None, None),
    ],
)
def test_mmvp_parsers_differ(text, options, strict, lmms, cambrian):
    for parser, expected in (("strict", strict), ("lmms", lmms), ("cambrian", cambrian)):
        assert mmvp.parse(text, parser, options) == expected, parser
        for gold in "AB":
            q = mmvp.Question(1, "Q?", "", options, gold, None)
            assert mmvp.make_prediction(q, "p", text, False, parser)["correct"] == (expected == gold), parser


def test_mmvp_cambrian_correctness_is_the_gold_letter_or_the_gold_text():
    # Cambrian's rule is gold-dependent: a reading that is one option's letter and the other's text is right
    # either way, whatever letter `parsed` records
    for gold in "AB":
        q = mmvp.Question(1, "Q?", "", ("X", "a"), gold, None)
        prediction = mmvp.make_prediction(q, "p", "A.", False, "cambrian")
        assert prediction["parsed"] == "A" and prediction["correct"]
        assert mmvp.make_prediction(q, "p", "A.", False, "lmms")["correct"] == (gold == "A")


def test_mmvp_unknown_parser_is_a_user_error():
    with pytest.raises(GenfeedbackError, match="unknown MMVP parser 'gpt4'; known parsers: strict, lmms, cambrian"):
        mmvp.parse("A", "gpt4", YES_NO)
    from eval.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["mmvp", "--model", "m", "--data", "d", "--output", "o", "--parser", "gpt4"])
    args = build_parser().parse_args(["mmvp", "--model", "m", "--data", "d", "--output", "o", "--parser", "lmms"])
    assert args.parser == "lmms"


class _FakeProcessor:
    """What GenerationBenchmark.answer asks of a checkpoint's processor: its chat template and mean colour."""

    image_processor = type("ImageProcessor", (), {"image_mean": [0.5, 0.25, 0.0]})()

    def apply_chat_template(self, messages, add_generation_prompt):
        return mllm.format_prompt(messages[0]["content"][1]["text"])


def test_mmvp_metrics_record_the_parser_and_the_protocol(data_zoo, tmp_path, monkeypatch, capsys):
    """A run (the model faked: every answer is free text) records the parser and how the answers were
    made; `rescore` reproduces it, and `rescore --parser` re-reads the same answers differently."""
    from eval.__main__ import main

    monkeypatch.setattr(mllm, "load_mllm", lambda *a, **k: (None, _FakeProcessor()))
    monkeypatch.setattr(mllm, "generate", lambda model, processor, images, prompts, **k: ["It has a long tail"] * len(prompts))
    out = tmp_path / "mmvp"
    argv = ["mmvp", "--model", "m", "--data", str(data_zoo.data["mmvp"]), "--output", str(out), "--device", "cpu"]
    assert main([*argv, "--parser", "lmms", "--max-new-tokens", "16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    golds = [p["gold"] for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())]
    assert metrics["question_accuracy"] == 100.0 * golds.count("A") / 300  # lmms-eval reads "a long" as A
    config = metrics["config"]
    assert {k: config[k] for k in ("parser", "prompt_style", "fix_label_swap", "max_new_tokens", "decoding",
                                   "temperature", "num_beams", "dtype", "device")} == {
        "parser": "lmms", "prompt_style": "llava", "fix_label_swap": True, "max_new_tokens": 16,
        "decoding": "greedy", "temperature": 0, "num_beams": 1, "dtype": "float32", "device": "cpu"}
    assert config["chat_format"] == mllm.format_prompt("{prompt}")  # the system prompt and conversation
    assert config["chat_format"].startswith("A chat between") and "USER: <image>\n{prompt} ASSISTANT:" in config["chat_format"]
    assert config["pad_color"] == [127, 63, 0] and "pad to square" in config["image_padding"]
    assert main(["rescore", str(out)]) == 0
    capsys.readouterr()
    assert main(["rescore", str(out), "--parser", "strict"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["question_accuracy"] == 0.0 and strict["unparseable"]["count"] == 300
    assert strict["config"]["parser"] == "strict"


def test_mmvp_pair_accuracy_differs_from_question_accuracy():
    def pred(index, correct):
        return {
            "id": index,
            "prompt": "",
            "raw_answer": "A",
            "parsed": "A",
            "gold": "A" if correct else "B",
            "correct": correct,
            "pair": (index - 1) // 2,
            "missing_image": False,
        }

    metrics = mmvp.score([pred(1, True), pred(2, True), pred(3, True), pred(4, False)], {})
    assert metrics["question_accuracy"] == 75.0
    assert metrics["pair_accuracy"] == 50.0 == metrics["headline"]["pair_accuracy"]
    with pytest.raises(ValueError, match="exactly 2"):
        mmvp.score([pred(1, True), pred(2, True), pred(3, True)], {})


QUESTION = mmvp.Question(1, "Are the butterfly's feet visible?", "(a) Yes (b) No", ("Yes", "No"), "A", None)


def test_mmvp_prompt_snapshots():
    assert mmvp.build_prompt(QUESTION, "llava") == (
        "Are the butterfly's feet visible?\nA. Yes\nB. No\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert mmvp.build_prompt(QUESTION, "original") == "Are the butterfly's feet visible? (a) Yes (b) No"
    with pytest.raises(ValueError, match="known styles"):
        mmvp.build_prompt(QUESTION, "gpt")
    assert mllm.format_prompt("Q?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nQ? ASSISTANT:"
    )


def test_mmvp_options_parse():
    assert mmvp.parse_options("(a) Open (b) Closed") == ("Open", "Closed")
    assert mmvp.parse_options("(a) The front (b) The side view") == ("The front", "The side view")
    with pytest.raises(ValueError):
        mmvp.parse_options("Open or closed")


def test_mmvp_label_swap_switch(data_zoo, tmp_path):
    root = data_zoo.data["mmvp"]
    fixed = {q.index: q.gold for q in mmvp.load(root, fix_label_swap=True)}
    original = {q.index: q.gold for q in mmvp.load(root, fix_label_swap=False)}
    assert [original[i] for i in (99, 100, 279, 280)] == ["A", "B", "A", "B"]
    assert [fixed[i] for i in (99, 100, 279, 280)] == ["B", "A", "B", "A"]
    assert all(fixed[i] == original[i] for i in fixed if i not in (99, 100, 279, 280))
    # an already corrected file is refused by the fix rather than broken again
    corrected = tmp_path / "corrected"
    shutil.copytree(root, corrected)
    lines = (corrected / "Questions.csv").read_text().splitlines()
    for i in (99, 100, 279, 280):
        head, answer = lines[i].rsplit(",", 1)
        lines[i] = f"{head},{'(b)' if answer == '(a)' else '(a)'}"
    (corrected / "Questions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(common.DatasetLayoutError, match="no-fix-label-swap"):
        mmvp.load(corrected, fix_label_swap=True)
    assert mmvp.load(corrected, fix_label_swap=False)[98].gold == "B"


def test_mmvp_layout_errors(tmp_path):
    with pytest.raises(common.DatasetLayoutError, match="Questions.csv"):
        mmvp.load(tmp_path)
    (tmp_path / "MMVP Images").mkdir()
    (tmp_path / "Questions.csv").write_text("Index,Question,Options,Correct Answer\n")
    with pytest.raises(common.DatasetLayoutError, match="lndex"):
        mmvp.load(tmp_path)


# ---------------------------------------------------------------- CV-Bench
@pytest.mark.parametrize(
    "text, cambrian, lmms",
    [
        ("The answer is (B)", "B", "T"),
        ("(C) 3", "C", "C"),
        ("B", "B", "B"),
        ("Answer: c.", "C", "A"),
        # Cambrian splits on "answer is" before "answer is:", so the colon survives: a faithful quirk
        ("the correct answer is: (d)", ":", "T"),
        ("3", "3", None),
        ("", None, None),
    ],
)
def test_cv_bench_parsers(text, cambrian, lmms):
    for source in ("ADE20K", "COCO", "Omni3D"):
        assert cv_bench.parse_cambrian(text, source) == cambrian
    assert cv_bench.parse_lmms(text) == lmms


def test_cv_bench_cambrian_strips_per_source():
    """Cambrian's 2D scripts strip a trailing '.' only, its Omni3D script '.:,' (eval/eval/{ade,omni}/)."""
    assert cv_bench.parse_cambrian(",", "ADE20K") == ","
    assert cv_bench.parse_cambrian(",", "Omni3D") is None
    assert cv_bench.parse_cambrian("answer: :", "COCO") == ":"
    assert cv_bench.parse_cambrian("answer: :", "Omni3D") is None
    with pytest.raises(ValueError, match="no Cambrian scoring rule"):
        cv_bench.parse_cambrian("B", "KITTI")


def test_cv_bench_prompt_snapshot():
    row = {"prompt": "How many cars are in the image? Select from the following choices.\n(A) 3\n(B) 2"}
    assert cv_bench.build_prompt(row) == (
        "How many cars are in the image? Select from the following choices.\n(A) 3\n(B) 2\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert cv_bench.build_prompt(row, "") == row["prompt"]


def test_cv_bench_cambrian_accepts_the_choice_text_on_omni3d_only():
    choices = ["1", "2", "3", "0"]
    assert cv_bench.is_correct("3", "C", choices, "cambrian", "Omni3D")
    assert not cv_bench.is_correct("3", "C", choices, "cambrian", "ADE20K")  # 2D: the letter only
    assert not cv_bench.is_correct("3", "C", choices, "cambrian", "COCO")
    assert cv_bench.is_correct("C", "C", choices, "cambrian", "COCO")
    assert not cv_bench.is_correct("3", "C", choices, "lmms", "Omni3D")
    assert not cv_bench.is_correct(None, "C", choices, "cambrian", "Omni3D")
    # compared as Cambrian does: its lowercased reading against the choice as written
    assert cv_bench.is_correct("Y", "B", ["x", "y"], "cambrian", "Omni3D")
    assert not cv_bench.is_correct("Y", "B", ["X", "Y"], "cambrian", "Omni3D")
    assert cv_bench.gold_letter("(C)") == "C"
    with pytest.raises(ValueError):
        cv_bench.gold_letter("C) three")


def test_cv_bench_official_and_pooled_differ_on_unbalanced_sources():
    def pred(i, source, correct):
        type_ = "3D" if source == "Omni3D" else "2D"
        return {
            "id": i,
            "prompt": "",
            "raw_answer": "",
            "parsed": "A",
            "gold": "A" if correct else "B",
            "correct": correct,
            "type": type_,
            "task": "Depth" if type_ == "3D" else "Count",
            "source": source,
            "choices": ["x", "y"],
            "missing_image": False,
        }

    predictions = (
        [pred(0, "ADE20K", True), pred(1, "ADE20K", True)]
        + [pred(2 + k, "COCO", k == 0) for k in range(4)]
        + [pred(6, "Omni3D", True), pred(7, "Omni3D", False)]
    )
    metrics = cv_bench.score(predictions, {"parser": "cambrian"})
    assert metrics["per_source"] == {"ADE20K": 100.0, "COCO": 25.0, "Omni3D": 50.0}
    assert metrics["official"]["2D"] == 62.5 and metrics["official"]["3D"] == 50.0
    assert metrics["official"]["overall"] == 56.25 == metrics["headline"]["overall"]
    assert metrics["pooled_accuracy"] == 50.0
    assert metrics["parser"] == "cambrian"
    assert metrics["per_task"] == {"Count": pytest.approx(100 * 3 / 6), "Depth": 50.0}


def test_cv_bench_missing_source_makes_official_score_none():
    p = {
        "id": 0,
        "prompt": "",
        "raw_answer": "A",
        "parsed": "A",
        "gold": "A",
        "correct": True,
        "type": "2D",
        "task": "Count",
        "source": "COCO",
        "choices": ["a", "b"],
        "missing_image": False,
    }
    metrics = cv_bench.score([p], {"parser": "lmms"})
    assert metrics["official"]["overall"] is None and metrics["pooled_accuracy"] == 100.0
    assert metrics["missing_sources"] == ["ADE20K", "Omni3D"]


def test_cv_bench_loads_the_toy_copy(data_zoo, tmp_path):
    rows = cv_bench.load(data_zoo.data["cv_bench"])
    assert len(rows) == 48 and cv_bench.row_image(rows[0]).mode == "RGB"
    with pytest.raises(common.DatasetLayoutError, match="test_2d.parquet"):
        cv_bench.load(tmp_path)
    # the jsonl + img/ variant reads the same rows and pixels
    jsonl_only = tmp_path / "jsonl"
    shutil.copytree(data_zoo.data["cv_bench"], jsonl_only, ignore=shutil.ignore_patterns("*.parquet"))
    from_jsonl = cv_bench.load(jsonl_only)
    assert [r["idx"] for r in from_jsonl] == [r["idx"] for r in rows]
    assert cv_bench.row_image(from_jsonl[5]).tobytes() == cv_bench.row_image(rows[5]).tobytes()
    (jsonl_only / from_jsonl[0]["filename"]).unlink()
    assert cv_bench.row_image(from_jsonl[0]) is None
    # a source without a Cambrian scoring rule is refused at load, naming the file, before any answer
    lines = (jsonl_only / "test_2d.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "source": "KITTI"})
    (jsonl_only / "test_2d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(common.DatasetLayoutError, match=r"test_2d.jsonl. found \['KITTI'\]"):
        cv_bench.load(jsonl_only)


# ---------------------------------------------------------------- zero-shot and shared pieces
def test_zeroshot_prediction_and_score():
    classes = ["circle", "square"]
    right = zeroshot.make_prediction("circle/0.jpg", "circle", [2.0, 1.0], classes)
    wrong = zeroshot.make_prediction("square/0.jpg", "square", [3.0, 1.0], classes)
    missing = zeroshot.make_prediction("square/1.jpg", "square", None, classes)
    metrics = zeroshot.score([right, wrong, missing], {"classes": classes})
    assert metrics["top1"] == pytest.approx(100 / 3)
    assert metrics["per_class"] == {"circle": 100.0, "square": 0.0}
    assert metrics["missing_images"] == {"count": 1, "ids": ["square/1.jpg"]}
    assert zeroshot.class_prompt("traffic_light") == "a photo of a traffic light."


def test_open_rgb_never_raises_on_broken_files(data_zoo):
    root = data_zoo.data["scenes_corrupt"] / "images"
    for name in ("empty.jpg", "truncated.jpg", "not_an_image.jpg", "does_not_exist.jpg"):
        assert common.open_rgb(root / name) is None
    assert common.open_rgb(root / "063.jpg").mode == "RGB"  # CMYK converted
    assert common.open_rgb(root / "062.png").mode == "RGB"  # RGBA converted


def test_problem_lists_and_percent():
    preds = [
        {"id": 1, "parsed": None, "missing_image": True},
        {"id": 2, "parsed": None, "missing_image": False},
        {"id": 3, "parsed": "A", "missing_image": False},
    ]
    assert common.problem_lists(preds) == {
        "missing_images": {"count": 1, "ids": [1]},
        "unparseable": {"count": 1, "ids": [2]},
    }
    assert common.percent([]) is None and common.mean([1.0, None]) is None
