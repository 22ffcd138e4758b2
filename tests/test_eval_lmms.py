"""eval.lmms: our LLaVA checkpoints inside lmms-eval 0.7.3, on local task configs.

Fast tests check the pieces (entry-point registration, continuation scoring against an
independent forward pass, task rendering for every listed task, the tiny tasks' pure
functions); the end-to-end tests run lmms-eval's CLI as `python -m eval vqa` does."""

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from eval import lmms, mllm
from eval.benchmarks import rescore
from eval.benchmarks.common import read_metrics, read_predictions
from eval.report import load_run
from llava_plugin.images import pad_to_square


def _images(parquet):
    return [Image.open(io.BytesIO(row["bytes"])).convert("RGB") for row in pd.read_parquet(parquet)["image"]]


def _rows(parquet):
    return pd.read_parquet(parquet).drop(columns="image").to_dict("records")


def _predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def llava(zoo):
    return mllm.load_mllm(str(zoo.llava))


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """lmms-eval converts the parquet files into the HF datasets cache: keep it per test."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


# ---------------------------------------------------------------- pieces
def test_entry_point_registers_the_model_class():
    import lmms_eval.models

    assert lmms_eval.models.get_model(lmms.MODEL_NAME) is lmms.GenfeedbackLlava


def _reference_nll(model, processor, image, context, continuation):
    """Unbatched, unpadded: the NLL of the continuation's tokens after the full prompt."""
    prompt = mllm.format_prompt(context)
    image = pad_to_square(image, mllm.mean_color(processor))
    full = processor(images=[image], text=[prompt + continuation], return_tensors="pt")
    n_prompt = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**full).logits[0]
    ids = full["input_ids"][0]
    logprobs = torch.log_softmax(logits.float(), -1)
    return -sum(float(logprobs[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))


def test_continuation_scores_match_an_unbatched_forward_and_use_the_image(llava, zoo):
    model, processor = llava
    images = _images(zoo.data["vqa_mc"])[:3]
    contexts = ["Is it round?\nA. No\nB. Yes", "Which way?", "Colour of the big shape?"]
    continuations = [" A", " B is the answer", " red"]
    scores = lmms.score_continuations(model, processor, images, contexts, continuations, batch_size=3)
    for (nll, greedy), image, context, continuation in zip(scores, images, contexts, continuations):
        assert isinstance(greedy, bool)
        assert nll == pytest.approx(_reference_nll(model, processor, image, context, continuation), abs=1e-3)
    swapped = lmms.score_continuations(model, processor, images[::-1], contexts, continuations, batch_size=3)
    assert swapped[0][0] != pytest.approx(scores[0][0], abs=1e-6), "the image must change the score"


def _requests(request_type, docs, second_arg):
    from lmms_eval.api.instance import Instance

    def doc_to_visual(doc):
        return [doc["image"]]

    return [Instance(request_type, (doc["question"], second_arg, doc_to_visual, i, "t", "test"), idx=0,
                     metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, doc in enumerate(docs)]


@pytest.mark.parametrize("checkpoint", ["llava", "llava_original"])
def test_model_class_answers_and_scores_from_either_checkpoint_format(zoo, llava, checkpoint, monkeypatch):
    """Both the HF Llava dir and the original LLaVA-1.5 dir of the same weights load into the
    plugin and give the answers and scores of a direct call on the HF dir (3 requests in
    image chunks of one batch of 2: the chunking must not reorder or drop anything)."""
    monkeypatch.setattr(lmms, "IMAGE_CHUNK_BATCHES", 1)
    model = lmms.GenfeedbackLlava(pretrained=str(getattr(zoo, checkpoint)), batch_size="2")
    images = _images(zoo.data["vqa_gen"])[:3]
    docs = [{"question": row["question"], "image": image} for row, image in zip(_rows(zoo.data["vqa_gen"]), images)]
    model.task_dict = {"t": {"test": docs}}
    gen_kwargs = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}
    answers = model.generate_until(_requests("generate_until", docs, gen_kwargs))
    prompts = [mllm.format_prompt(d["question"]) for d in docs]
    assert answers == mllm.generate(*llava, images, prompts, batch_size=2, max_new_tokens=6)
    scores = [r.text for r in model.loglikelihood(_requests("loglikelihood", docs, " Yes"))]
    expected = lmms.score_continuations(*llava, images, [d["question"] for d in docs], [" Yes"] * 3)
    assert [s[1] for s in scores] == [e[1] for e in expected]
    assert [s[0] for s in scores] == pytest.approx([e[0] for e in expected], abs=1e-3)
    model.task_dict = {"t": {"test": [{"question": "text only", "image": None}]}}
    with pytest.raises(ValueError, match="t doc 0 has 1 visuals .*NoneType.*exactly one image"):
        model.loglikelihood(_requests("loglikelihood", model.task_dict["t"]["test"], " A"))


def test_continuation_must_tokenize_as_a_suffix(llava):
    tokenizer = llava[1].tokenizer
    assert lmms.continuation_length(tokenizer, "USER: hi ASSISTANT:", "USER: hi ASSISTANT: A") == 1
    with pytest.raises(ValueError, match="does not tokenize as a suffix"):
        lmms.continuation_length(tokenizer, "USER: hi ASSISTANT:", "USER: hi ASSISTANT:")


def test_greedy_settings_refuse_sampling_and_cut_at_stop_strings():
    assert lmms.greedy_settings("t", {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                      "do_sample": False, "until": "ASSISTANT:"}) == (["ASSISTANT:"], 16)
    with pytest.raises(ValueError, match="only greedy"):
        lmms.greedy_settings("t", {"temperature": 0.7, "do_sample": True})
    with pytest.raises(ValueError, match="does not implement"):
        lmms.greedy_settings("t", {"repetition_penalty": 1.2})
    assert lmms.cut_at("Yes ASSISTANT: no", ["ASSISTANT:"]) == "Yes "


def test_every_listed_task_renders_to_a_config_lmms_eval_loads(tmp_path):
    """Each tasks.yaml entry, on empty files in its hub layout, renders to a YAML that
    lmms-eval's loader resolves: includes found, functions imported, data local and absolute."""
    from lmms_eval.utils import load_yaml_config

    specs = lmms.task_specs()
    data = tmp_path / "data"
    for spec in specs.values():
        for pattern in [*spec["data_files"].values(), *([spec["images"]] if "images" in spec else [])]:
            path = data / pattern.replace("*", "00000-of-00001")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    names, env = lmms.render_tasks(list(specs), data, tmp_path / "tasks")
    assert env == {lmms.GQA_IMAGES_ENV: str(data / specs["gqa"]["images"])}
    for name, local in names.items():
        config = load_yaml_config(str(tmp_path / "tasks" / f"{local}.yaml"))
        assert config["task"] == local == f"{name}_local"
        assert config["dataset_path"] == "parquet" and "token" not in config["dataset_kwargs"]
        for split, files in config["dataset_kwargs"]["data_files"].items():
            assert split in (config.get("test_split"), config.get("validation_split"))
            assert files and all(f.startswith(str(data)) for f in files)
        assert callable(config["doc_to_visual"]) and callable(config["doc_to_text"])
        assert set(specs[name]["headline"]) <= {m["metric"] for m in config["metric_list"]}
    gqa = load_yaml_config(str(tmp_path / "tasks" / "gqa_local.yaml"))
    assert gqa["process_docs"].__name__ == "attach_local_images"


def test_rendering_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="known: .*pope"):
        lmms.render_tasks(["popee"], tmp_path, tmp_path / "tasks")
    with pytest.raises(FileNotFoundError, match="POPE/data/test-"):
        lmms.render_tasks(["pope"], tmp_path, tmp_path / "tasks")


def test_shapes_task_functions():
    from lmms_eval.utils import load_yaml_config

    utils = load_yaml_config(str(lmms.TASKS_DIR / "shapes" / "shapes_mc.yaml"))
    doc = {"question_id": "q", "question": "Which way?", "options": ["Up", "Down"], "answer": "B"}
    kwargs = {"post_prompt": "\nAnswer with the option's letter from the given choices directly."}
    assert utils["doc_to_text"](doc, kwargs) == ("Which way?\nA. Up\nB. Down\n"
                                                  "Answer with the option's letter from the given choices directly.")
    assert utils["doc_to_choice"](doc) == ["A", "B"] and utils["doc_to_target"](doc) == 1
    with pytest.raises(ValueError, match="q: answer 'C'"):
        utils["doc_to_target"]({**doc, "answer": "C"})
    score = load_yaml_config(str(lmms.TASKS_DIR / "shapes" / "shapes_vqa.yaml"))["process_results"]
    doc = {"question_id": "g", "answers": ["Two", "2"]}
    assert score(doc, ["two."]) == {"exact_match": 1.0}
    assert score(doc, [" 2 "]) == {"exact_match": 1.0}
    assert score(doc, ["twenty"]) == {"exact_match": 0.0}


# ---------------------------------------------------------------- end to end
def test_vqa_generate_and_multiple_choice_through_lmms_eval(zoo, llava, tmp_path, datasets_cache):
    out = tmp_path / "run"
    metrics = lmms.evaluate(zoo.llava, ["shapes_vqa", "shapes_mc"], zoo.data["vqa"].parent, out, batch_size=4)
    model, processor = llava

    # generation: the answers are LLaVA-1.5 greedy answers to the task prompt and the image
    gen = _predictions(out / "shapes_vqa")
    rows, images = _rows(zoo.data["vqa_gen"]), _images(zoo.data["vqa_gen"])
    assert [p["id"] for p in gen] == list(range(24))
    direct = mllm.generate(model, processor, images, [mllm.format_prompt(p["prompt"]) for p in gen],
                           batch_size=4, max_new_tokens=8)
    assert [p["raw_answer"] for p in gen] == direct
    for p, row in zip(gen, rows):
        assert p["prompt"] == row["question"] + "\nAnswer the question using a single word or phrase."
        assert p["gold"] == row["answer"]
    vqa = metrics["shapes_vqa"]
    lmms_results = json.loads(Path(vqa["config"]["lmms_eval_results"]).read_text())["results"]
    assert vqa["headline"]["exact_match"] == 100 * lmms_results["shapes_vqa_local"]["exact_match,none"]
    assert vqa["accuracy_from_predictions"] == pytest.approx(vqa["headline"]["exact_match"])

    # multiple choice: per-option NLLs with the image; lowest NLL is the answer; acc recomputed
    mc = _predictions(out / "shapes_mc")
    rows, images = _rows(zoo.data["vqa_mc"]), _images(zoo.data["vqa_mc"])
    assert len(mc) == 24
    for p, row, image in zip(mc[:4], rows, images):
        expected = [_reference_nll(model, processor, image, p["prompt"], f" {letter}") for letter in "AB"]
        assert [nll for nll, _ in p["raw_answer"]] == pytest.approx(expected, abs=1e-3)
    for p, row in zip(mc, rows):
        assert p["gold"] == "AB".index(row["answer"])
        assert p["parsed"] == min((0, 1), key=lambda i: p["raw_answer"][i][0])
        assert p["correct"] == (p["parsed"] == p["gold"])
    acc = 100.0 * sum(p["parsed"] == p["gold"] for p in mc) / len(mc)
    assert metrics["shapes_mc"]["headline"]["acc"] == pytest.approx(acc)
    assert json.loads((out / "shapes_mc" / "metrics.json").read_text())["headline"]["acc"] == pytest.approx(acc)

    for name in ("shapes_vqa", "shapes_mc"):  # metrics.json is a function of the predictions
        recorded = read_metrics(out / name)
        assert lmms.score(read_predictions(out / name), recorded["config"]) == recorded
        assert rescore(out / name) == recorded  # what `python -m eval rescore` checks

    assert load_run(out) == pytest.approx({"vqa_shapes_mc/acc": acc,
                                           "vqa_shapes_vqa/exact_match": vqa["headline"]["exact_match"]})


def test_vqa_command_fails_loudly_when_lmms_eval_fails(zoo, tmp_path, datasets_cache, capsys):
    """lmms-eval exits 0 after a traceback; `python -m eval vqa` must not."""
    from eval.__main__ import main

    argv = ["vqa", "--model", tmp_path / "no_such_model", "--tasks", "shapes_vqa", "--data-root",
            zoo.data["vqa"].parent, "--output", tmp_path / "run", "--limit", 2]
    assert main([str(a) for a in argv]) == 1
    error = capsys.readouterr().err
    assert "lmms-eval failed (exit code 0" in error and str(tmp_path / "run" / "lmms_eval.log") in error
    assert not (tmp_path / "run" / "shapes_vqa" / "metrics.json").exists()


def test_our_checkpoint_runs_in_lmms_evals_stock_llava_hf(zoo, llava, tmp_path, datasets_cache):
    """The HF Llava dir is a standard one: lmms-eval's own llava_hf (chat mode, its processor's
    chat template) loads it and answers exactly as our greedy decoding does without padding."""
    out = tmp_path / "run"
    metrics = lmms.evaluate(zoo.llava, ["shapes_vqa"], zoo.data["vqa"].parent, out, lmms_model="llava_hf",
                            model_args={"device_map": "cpu", "dtype": "float32"}, limit=3)
    predictions = _predictions(out / "shapes_vqa")
    assert metrics["shapes_vqa"]["samples"] == len(predictions) == 3
    images = _images(zoo.data["vqa_gen"])[:3]
    direct = mllm.generate(*llava, images, [mllm.format_prompt(p["prompt"]) for p in predictions],
                           batch_size=1, max_new_tokens=8, pad_to_square=False)
    assert [p["raw_answer"] for p in predictions] == direct


def _write_hub_copies(root, images):
    """Four-row copies of the real datasets, in their hub file layouts and column schemas
    (the columns lmms-eval's own task code reads), with the zoo's images."""
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    def write(path, rows, features):
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows, features=Features(features)).to_parquet(str(path))

    text, image = Value("string"), ImageFeature()
    write(root / "POPE/data/test-00000-of-00001.parquet",
          [{"question_id": str(i), "question": "Is there a circle in the image?", "answer": "yes" if i % 2 else "no",
            "image_source": f"img{i}", "image": images[i], "category": "adversarial"} for i in range(4)],
          {"question_id": text, "question": text, "answer": text, "image_source": text, "image": image,
           "category": text})
    write(root / "GQA/testdev_balanced_instructions/testdev-00000-of-00001.parquet",
          [{"id": f"q{i}", "imageId": f"n{i % 2}", "question": "What shape is it?", "answer": "circle",
            "fullAnswer": "It is a circle."} for i in range(4)],
          {"id": text, "imageId": text, "question": text, "answer": text, "fullAnswer": text})
    write(root / "GQA/testdev_balanced_images/testdev-00000-of-00001.parquet",
          [{"id": f"n{i}", "image": images[i]} for i in range(2)], {"id": text, "image": image})
    write(root / "ScienceQA/ScienceQA-IMG/test-00000-of-00001.parquet",
          [{"image": images[i], "question": "Which shape is shown?", "choices": ["circle", "square", "star"],
            "answer": i % 3, "hint": "Look closely." if i % 2 else "", "task": "closed choice", "grade": "grade2",
            "subject": "natural science", "topic": "shapes", "category": "shapes", "skill": "identify",
            "lecture": "", "solution": ""} for i in range(4)],
          {"image": image, "question": text, "choices": Sequence(text), "answer": Value("int8"), "hint": text,
           "task": text, "grade": text, "subject": text, "topic": text, "category": text, "skill": text,
           "lecture": text, "solution": text})
    write(root / "textvqa/data/validation-00000-of-00001.parquet",
          [{"image_id": f"t{i}", "question_id": i, "question": "What colour is the shape?", "image": images[i],
            "answers": ["red"] * 7 + ["blue"] * 3, "ocr_tokens": []} for i in range(4)],
          {"image_id": text, "question_id": Value("int64"), "question": text, "image": image,
           "answers": Sequence(text), "ocr_tokens": Sequence(text)})
    write(root / "MME/data/test-00000-of-00001.parquet",
          [{"question_id": f"{category}/{i // 2}.png", "image": images[i],
            "question": "Is there a circle in the image? Please answer yes or no.",
            "answer": "Yes" if i % 2 else "No", "category": category}
           for i, category in enumerate(["count", "count", "code_reasoning", "code_reasoning"])],
          {"question_id": text, "image": image, "question": text, "answer": text, "category": text})


@pytest.mark.slow
def test_real_task_configs_run_on_local_hub_layout_copies(zoo, tmp_path, datasets_cache):
    """pope, gqa, scienceqa_img, textvqa_val and mme: lmms-eval's own task code on local parquet
    copies (no hub), through our model, with every headline metric reported."""
    data = tmp_path / "data"
    _write_hub_copies(data, _images(zoo.data["vqa_gen"]))
    tasks = ["pope", "gqa", "scienceqa_img", "textvqa_val", "mme"]
    metrics = lmms.evaluate(zoo.llava, tasks, data, tmp_path / "run", batch_size=4)
    specs = lmms.task_specs()
    for name in tasks:
        predictions = _predictions(tmp_path / "run" / name)
        recorded = read_metrics(tmp_path / "run" / name)
        assert lmms.score(predictions, recorded["config"]) == recorded, name
        assert len(predictions) == metrics[name]["samples"] == 4, name
        assert set(metrics[name]["headline"]) == set(specs[name]["headline"])
        assert all(value is not None for value in metrics[name]["headline"].values()), name
    pope = _predictions(tmp_path / "run" / "pope")
    assert [p["gold"] for p in pope] == ["no", "yes", "no", "yes"]
    accuracy = 100.0 * sum(p["correct"] for p in pope) / 4
    assert metrics["pope"]["headline"]["pope_accuracy"] == pytest.approx(accuracy)
    assert metrics["pope"]["accuracy_from_predictions"] == pytest.approx(accuracy)


def test_model_refuses_a_multi_rank_launch(zoo, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="runs in one process"):
        lmms.GenfeedbackLlava(pretrained=str(zoo.llava))
