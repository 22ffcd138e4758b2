"""The shapes world end to end at its smallest settings, through the real commands.

`python -m world study --preset study-smoke` builds a smoke world (every part trained for a few
steps), runs DIVA and its matched control, probes and scores both towers, trains LLaVA on the
base and the enhanced tower, evaluates them, and writes the report. This checks the chain and
the report's structure; a method's effect is a result of the full study, not a unit test.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from world import scenes
from world.report import mean_se, paired

ROOT = Path(__file__).resolve().parents[1]


def test_scenes_are_deterministic_and_pairs_differ_in_one_attribute():
    a = [scenes.sample_scene(random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    assert scenes.draw(a[0]).tobytes() == scenes.draw(a[1]).tobytes()
    for attribute in scenes.ATTRIBUTES:
        for _ in range(20):
            x, y = scenes.sample_pair(random.Random(attribute + str(_)), attribute)
            differing = [k for k in scenes.ATTRIBUTES if x.value(k) != y.value(k)]
            assert differing == [attribute]
            assert scenes.draw(x).tobytes() != scenes.draw(y).tobytes()


def test_captions_mention_fine_attributes_only_when_asked():
    scene = scenes.Scene("red", "triangle", 2, "left", "up", 0)
    assert scene.caption() == "a photo of a red triangle"
    assert scene.full_caption == "a photo of two red triangles pointing up on the left"


def test_mean_se_and_paired_difference():
    m, se, n = mean_se([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and se == pytest.approx(1 / 3 ** 0.5)
    d, se, n = paired({0: 5.0, 1: 7.0, 2: 9.0}, {0: 4.0, 1: 6.0, 2: 8.0, 3: 100.0})
    assert (d, se, n) == (1.0, 0.0, 3)


def test_downstream_section_pairs_each_feedback_llava_with_the_base_and_its_control():
    from world.report import downstream_section

    table = {"mmvp/question_accuracy": {"base": {1: 60.0, 2: 58.0, 3: 62.0},
                                        "diva-feedback": {1: 55.0, 2: 54.0, 3: 57.0},
                                        "diva-control": {1: 57.0, 2: 56.0, 3: 59.0}},
             "cv-bench/count": {"base": {1: 25.0}, "diva-feedback": {1: 25.0}}}
    text = downstream_section({"table": table})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if " − " in line}
    assert set(rows) == {"diva-feedback − base", "diva-feedback − diva-control", "diva-control − base"}
    assert "| -2.0 ± 0.0 | 3 | **harm** |" in rows["diva-feedback − diva-control"]
    assert "cv-bench" not in "".join(rows.values())  # CV-Bench answers at chance: no paired rows
    # without a control downstream, the feedback tower is compared with the base tower only
    del table["mmvp/question_accuracy"]["diva-control"]
    assert "diva-control" not in downstream_section({"table": table})


def test_language_corpus_reads_described_scenes_in_the_benchmark_formats():
    import re

    from world import language

    texts = language.corpus(0, 600, captions=0.05, described=0.9, text_only=0.0, described_rounds=5)
    # no text names a held-out combination: the reading check's `unseen` scenes are never described
    held = [s for s in (scenes.sample_scene(random.Random(k)) for k in range(400)) if language.held_out(s)]
    assert 40 < len(held) < 120  # about 20%
    assert not any(s.full_caption + "\n" in t for s in held for t in texts)
    # the option letters carry no information: the true option is as often A as B
    letters = re.findall(r"\nB\. [^\n]+\nAnswer with the option's letter from the given choices directly\. "
                         r"ASSISTANT: ([AB])</s>", "".join(texts))
    assert len(letters) > 200 and abs(letters.count("A") / len(letters) - 0.5) < 0.08
    assert max(t.count("ASSISTANT:") for t in texts) == 5


def test_mmvp_original_turns_are_what_eval_mmvp_sends_and_their_answers_score_right(tmp_path):
    """A world `mmvp_original` training turn is worded as `eval mmvp --prompt-style original` asks world
    MMVP, and its gold answer (the option's words) is scored as the right letter by the parsers that read an
    option's words (the default `strict` and `cambrian`; lmms-eval's reads letters only)."""
    from eval.benchmarks import mmvp
    from world import questions
    from world.benchmarks import read_labels, write_mmvp

    data = write_mmvp(tmp_path / "mmvp")
    labels = {row["id"]: row for row in read_labels(data)}
    for item in mmvp.load(data, fix_label_swap=False):
        label = labels[item.index]
        scene = scenes.Scene(**label["scene"])
        sent = mmvp.build_prompt(item, "original")
        assert sent == questions.mmvp_original_prompt(questions.question(scene, label["attribute"]), list(item.options))
        answer = questions.value_text(scene, label["attribute"])
        for parser in ("strict", "cambrian"):
            assert mmvp.is_correct(answer, mmvp.parse(answer, parser, item.options), item.gold, item.options, parser)
    rng = random.Random(0)
    scene = scenes.Scene("red", "triangle", 2, "left", "up", 0)
    for _ in range(20):
        human, gold = questions.ask(scene, "orientation", "mmvp_original", rng)
        assert gold == "up" and human.startswith("Which way") and "(a) " in human and " (b) " in human
        assert "up" in human.split("(a) ", 1)[1]


def test_language_labels_supervise_the_answers_of_a_chat_and_all_of_a_caption():
    from world.language import supervised_labels

    assistant, eos = [7, 8], 2
    chat = [1, 5, 7, 8, 30, 31, 2, 6, 7, 8, 40, 2]
    assert supervised_labels(chat, assistant, eos) == [-100] * 4 + [30, 31, 2] + [-100] * 3 + [40, 2]
    assert supervised_labels([1, 5, 6], assistant, eos) == [1, 5, 6]


@pytest.mark.slow
def test_world_study_smoke_end_to_end(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "world", "study", "--preset", "study-smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert jobs and all(j["status"] == "done" for j in jobs), jobs

    zoo = json.loads((out / "world" / "seed-0" / "zoo.json").read_text())
    for key in ("clip", "sd21", "unclip", "llm"):
        assert Path(zoo[key]).is_dir(), key
    # every tower was probed and scored, and the diva runs recorded which control they were
    for tower in ("base", "diva-feedback", "diva-control"):
        probe = json.loads((out / "seed-0" / "probe" / f"{tower}.json").read_text())
        assert set(probe["probe"]) == set(scenes.ATTRIBUTES)
        assert (out / "seed-0" / "mmvp_vlm" / tower / "metrics.json").is_file()
    control = json.loads((out / "seed-0" / "towers" / "diva-control" / "vision_tower" / "genfeedback.json").read_text())
    assert control["config"]["feedback"]["weight"] == 0
    # the chain learns: even the smoke CLIP tells colours apart better than chance (1/6)
    base = json.loads((out / "seed-0" / "probe" / "base.json").read_text())
    assert base["zero_shot"]["colour"] > 1 / 6 + 0.1
    for tower in ("base", "diva-feedback"):
        for bench in ("mmvp", "cv-bench"):
            assert (out / "seed-0" / "llava" / tower / "eval" / bench / "metrics.json").is_file()

    report = (out / "report" / "world.md").read_text()
    for heading in ("## What the generators use", "## The towers", "## Effects", "## Downstream: LLaVA on the world",
                    "### Does the language model read a scene?"):
        assert heading in report
    assert "diva-feedback − diva-control" in report
    assert "(n=1: no verdict)" in report  # one seed never yields a verdict
    reading = json.loads((out / "world" / "seed-0" / "reading.json").read_text())
    assert set(reading["described"]["mmvp"]) == set(scenes.ATTRIBUTES)
    assert set(reading["described"]["world_mmvp"]) == set(scenes.ATTRIBUTES)  # every world MMVP question
    assert set(reading["blind"]["world_cv_bench"]) == {"count", "position"}
    assert set(reading["held_out"]["world_mmvp"]) == {"seen", "unseen"}
    for plot in ("probe.png", "mmvp_vlm.png", "effects.png", "sensitivity.png"):
        assert (out / "report" / plot).is_file(), plot
    # a rerun reuses every finished job
    again = subprocess.run([sys.executable, "-m", "world", "study", "--preset", "study-smoke", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0
    assert len((out / "jobs.jsonl").read_text().splitlines()) == len(jobs)  # nothing ran again
