"""Snapshot tests of the chat templates' token layout and label masks, on the zoo's tiny vicuna
tokenizer (seed 0). `IMG` marks the image position."""
import json
from pathlib import Path

import pytest

from mllm_train.conversation import (
    GPT,
    HUMAN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    BadSample,
    ChatTemplate,
    Turn,
    get_template,
    load_templates,
    tokenize_conversation,
)
from mllm_train.data import parse_record

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the user's questions. ")
# The system prompt's tokens, after BOS.
SYSTEM_TOKENS = ["▁A", "▁chat", "▁between", "▁a", "▁curious", "▁user", "▁and", "▁an", "▁artificial",
                 "▁intelligence", "▁assistant", ".", "▁The", "▁assistant", "▁gives", "▁helpful", ",",
                 "▁detailed", ",", "▁and", "▁polite", "▁answers", "▁to", "▁the", "▁user", "'", "s",
                 "▁questions", "."]
IMG = "IMG"


@pytest.fixture(scope="module")
def tokenizer(zoo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(zoo.llm)


def layout(sample, tokenizer, image_token_id=IMAGE_TOKEN_INDEX):
    tokens = [IMG if i == image_token_id else tokenizer.convert_ids_to_tokens(i) for i in sample.input_ids]
    supervised = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
    assert all(sample.labels[i] == sample.input_ids[i] for i in supervised)
    return tokens, supervised


def conversation(*texts):
    return [Turn(HUMAN if i % 2 == 0 else GPT, text) for i, text in enumerate(texts)]


def test_plain_supervises_caption_and_newline_only(tokenizer):
    # the human instruction is dropped; BOS and the image are masked
    sample = tokenize_conversation(conversation("Describe the image.\n<image>", "a red star"),
                                   get_template("plain"), tokenizer, sample_id="p1")
    assert sample.prompt == "<image>a red star\n"
    tokens, supervised = layout(sample, tokenizer)
    # right after the image there is no dummy-prefix space (as when HF's processor tokenizes it)
    assert tokens == ["<s>", IMG, "a", "▁red", "▁star", "\n"]
    assert supervised == [2, 3, 4, 5]
    assert [tokenizer.decode(run) for run in sample.supervised_runs()] == ["a red star\n"]


def test_vicuna_single_turn_with_image(tokenizer):
    sample = tokenize_conversation(conversation("<image>\nWhat color is the star?", "Red."),
                                   get_template("vicuna_v1"), tokenizer, sample_id="v1")
    assert sample.prompt == SYSTEM + "USER: <image>\nWhat color is the star? ASSISTANT: Red.</s>"
    tokens, supervised = layout(sample, tokenizer)
    assert tokens == (["<s>"] + SYSTEM_TOKENS + ["▁USER", ":", "▁", IMG, "\n", "What", "▁color", "▁is",
                                                 "▁the", "▁star", "?", "▁ASSISTANT", ":", "▁", "R", "ed", ".",
                                                 "</s>"])
    # from the space after "ASSISTANT:" through "</s>"
    assert supervised == [43, 44, 45, 46, 47]
    assert [tokens[i] for i in supervised] == ["▁", "R", "ed", ".", "</s>"]
    assert [tokenizer.decode(run) for run in sample.supervised_runs()] == ["Red.</s>"]


def test_vicuna_multi_turn_supervises_every_answer(tokenizer):
    # the image tag written after the question moves to the front of its turn, as in LLaVA-1.5
    turns = conversation("What color is the star?\n<image>", "The star is red.", "How many?", "2 stars.")
    sample = tokenize_conversation(turns, get_template("vicuna_v1"), tokenizer, sample_id="v2")
    assert sample.prompt == (SYSTEM + "USER: <image>\nWhat color is the star? ASSISTANT: The star is red.</s>"
                             "USER: How many? ASSISTANT: 2 stars.</s>")
    tokens, supervised = layout(sample, tokenizer)
    assert tokens[30:] == ["▁USER", ":", "▁", IMG, "\n", "What", "▁color", "▁is", "▁the", "▁star", "?",
                           "▁ASSISTANT", ":", "▁The", "▁star", "▁is", "▁red", ".", "</s>",
                           "USER", ":", "▁How", "▁many", "?", "▁ASSISTANT", ":", "▁", "2", "▁stars", ".", "</s>"]
    assert supervised == [43, 44, 45, 46, 47, 48, 56, 57, 58, 59, 60]
    assert [tokenizer.decode(run) for run in sample.supervised_runs()] == ["The star is red.</s>", "2 stars.</s>"]


def test_vicuna_text_only(tokenizer):
    sample = tokenize_conversation(conversation("Name a shape.", "A circle."), get_template("vicuna_v1"),
                                   tokenizer, sample_id="t1")
    assert sample.prompt == SYSTEM + "USER: Name a shape. ASSISTANT: A circle.</s>"
    tokens, supervised = layout(sample, tokenizer)
    assert tokens == ["<s>"] + SYSTEM_TOKENS + ["▁USER", ":", "▁N", "am", "e", "▁a", "▁shape", ".",
                                                "▁ASSISTANT", ":", "▁A", "▁circle", ".", "</s>"]
    assert supervised == [40, 41, 42, 43]
    assert IMAGE_TOKEN_INDEX not in sample.input_ids


def test_expanded_image_form_matches_collapsed_form(tokenizer):
    """HF Llava training form: the image token once per patch token, masked; the rest unchanged."""
    turns = conversation("<image>\nWhat color is the star?", "Red.", "And the square?", "Blue.")
    template = get_template("vicuna_v1")
    collapsed = tokenize_conversation(turns, template, tokenizer, sample_id="e1")
    expanded = tokenize_conversation(turns, template, tokenizer, sample_id="e1", image_token_id=1000,
                                     num_image_tokens=16)
    at = collapsed.input_ids.index(IMAGE_TOKEN_INDEX)
    assert expanded.input_ids == collapsed.input_ids[:at] + [1000] * 16 + collapsed.input_ids[at + 1:]
    assert expanded.labels == collapsed.labels[:at] + [IGNORE_INDEX] * 16 + collapsed.labels[at + 1:]
    assert expanded.supervised_runs() == collapsed.supervised_runs()
    # an image token id the text also produces would miscount the image positions
    star = tokenizer.convert_tokens_to_ids("▁star")
    with pytest.raises(ValueError, match=f"image_token_id {star} is also an id of the text's tokens"):
        tokenize_conversation(turns, template, tokenizer, sample_id="e1", image_token_id=star)


def test_truncation(tokenizer):
    template = get_template("vicuna_v1")
    turns = conversation("<image>\nWhat color is the star?", "The star is red.", "How many?", "2 stars.")
    full = tokenize_conversation(turns, template, tokenizer, sample_id="tr")
    cut = tokenize_conversation(turns, template, tokenizer, sample_id="tr", max_length=46)
    assert cut.truncated and not full.truncated
    assert (cut.input_ids, cut.labels) == (full.input_ids[:46], full.labels[:46])
    assert [tokenizer.decode(run) for run in cut.supervised_runs()] == ["The star is"]
    # nothing supervised left: an error, not a silently empty sample
    with pytest.raises(BadSample, match="'tr'.*no supervised token left after truncation to max_length 40"):
        tokenize_conversation(turns, template, tokenizer, sample_id="tr", max_length=40)
    # a cut through the expanded image tokens would desynchronise image features and tokens
    with pytest.raises(BadSample, match="'tr'.*cuts through the image tokens"):
        tokenize_conversation(turns, template, tokenizer, sample_id="tr", image_token_id=1000,
                              num_image_tokens=16, max_length=40)


def test_span_that_splits_a_token_is_an_error(tokenizer):
    """A template whose supervised part starts inside a token cannot be masked honestly."""
    bad = ChatTemplate(name="split", description="", system="", human="USER: {image}{text} ", image="<image>\n",
                       assistant_prompt="ASSIST", assistant="ANT: {text}</s>", max_rounds=None,
                       requires_image=False)
    with pytest.raises(BadSample, match=r"sample 'odd-1'.*straddles the edge of the supervised span"):
        tokenize_conversation(conversation("Hi", "Red."), bad, tokenizer, sample_id="odd-1")


def test_generation_prompt_for_evaluation():
    rendered = get_template("vicuna_v1").render(conversation("What is this?<image>"), add_generation_prompt=True)
    assert rendered.text == SYSTEM + "USER: <image>\nWhat is this? ASSISTANT:"
    assert rendered.supervised == ()
    with pytest.raises(BadSample, match="needs a conversation ending with a human turn"):
        get_template("vicuna_v1").render(conversation("Hi", "Hello."), add_generation_prompt=True)
    # an image-only turn keeps no dangling newline (LLaVA strips the moved tag)
    assert get_template("vicuna_v1").render(conversation("<image>", "A star.")).text == (
        SYSTEM + "USER: <image> ASSISTANT: A star.</s>")


@pytest.mark.parametrize("template, texts, roles, problem", [
    ("vicuna_v1", ("Hi", "Hello"), (GPT, HUMAN), "turn 0 is from 'gpt' but should be from 'human'"),
    ("vicuna_v1", ("Hi", "Hello", "More?", "Yes"), (HUMAN, GPT, GPT, HUMAN), "turn 2 is from 'gpt'"),
    ("vicuna_v1", ("<image>\nHi <image>", "Hello"), (HUMAN, GPT), "2 <image> tags"),
    ("vicuna_v1", ("Hi", "Look: <image>"), (HUMAN, GPT), "turn 1 \\(gpt\\) contains <image>"),
    ("vicuna_v1", ("Hi", "  "), (HUMAN, GPT), "turn 1 \\(gpt\\) is empty"),
    ("vicuna_v1", ("Hi", "Hello", "Bye?"), (HUMAN, GPT, HUMAN), "ends with a human turn"),
    ("plain", ("<image>", "a star", "More?", "no"), (HUMAN, GPT, HUMAN, GPT), "2 rounds, template 'plain' allows 1"),
    ("plain", ("Describe.", "a star"), (HUMAN, GPT), "template 'plain' needs an image"),
])
def test_malformed_conversations_name_the_sample(template, texts, roles, problem):
    turns = [Turn(role, text) for role, text in zip(roles, texts)]
    with pytest.raises(BadSample, match=f"sample 'bad-7': .*{problem}"):
        get_template(template).render(turns, sample_id="bad-7")


def test_template_registry():
    assert set(load_templates()) == {"plain", "vicuna_v1"}
    with pytest.raises(ValueError, match=r"unknown chat template 'llava_v0'; known templates: \['plain', 'vicuna_v1'\]"):
        get_template("llava_v0")
    with pytest.raises(ValueError, match="'assistant' must contain {text}"):
        ChatTemplate(name="x", description="", system="", human="{image}{text}", image="<image>",
                     assistant_prompt="", assistant="</s>", max_rounds=None, requires_image=False)
    with pytest.raises(ValueError, match="<image> belongs in 'image', not 'system'"):
        ChatTemplate(name="x", description="", system="<image>", human="{image}{text}", image="<image>",
                     assistant_prompt="", assistant="{text}", max_rounds=None, requires_image=False)


# ---------------------------------------------------------------- tokenization: original
GOLDEN = Path(__file__).resolve().parent / "golden" / "original_tokenization.json"


@pytest.fixture(scope="module")
def golden(zoo):
    """Original LLaVA's ids for hand-written conversations (tests/golden/make_original_tokenization.py),
    made with the zoo's tokenizer (seed 0): refused if this zoo's tokenizer is another one."""
    from golden.make_original_tokenization import vocab_fingerprint

    data = json.loads(GOLDEN.read_text())
    assert vocab_fingerprint(Path(zoo.llm) / "tokenizer.model") == data["vocab_fingerprint"], (
        "the zoo's tokenizer vocabulary changed since the golden ids were made: run "
        "tests/golden/make_original_tokenization.py --llava /path/to/LLaVA")
    return data["cases"]


def _golden_sample(case, tokenizer, tokenization):
    sample = parse_record(case["record"], 0)
    return tokenize_conversation(list(sample.turns), get_template(case["template"]), tokenizer,
                                 sample_id=sample.id, tokenization=tokenization)


def test_original_tokenization_reproduces_original_llava_ids(golden, tokenizer):
    # every hand-written case: the same ids as original LLaVA's preprocess, image at -200
    for case in golden:
        ours = _golden_sample(case, tokenizer, "original")
        assert ours.input_ids == case["input_ids"], case["id"]
    # the hf default differs only in the text after the image, which it reads without the dummy-prefix
    # space a fresh string gets ("a red star": "a" not "▁a"; "\nWhat": "\n" not "▁", "\n")
    for case in golden:
        if "image" not in case["record"] or case["id"] == "v1-leading-gpt":
            continue
        hf = _golden_sample(case, tokenizer, "hf").input_ids
        at = case["input_ids"].index(IMAGE_TOKEN_INDEX) + 1
        assert hf[:at] == case["input_ids"][:at] and hf != case["input_ids"], case["id"]
        first_original, first_hf = tokenizer.convert_ids_to_tokens([case["input_ids"][at], hf[at]])
        assert first_original.startswith("▁") and not first_hf.startswith("▁"), case["id"]
    text_only = [case for case in golden if "image" not in case["record"]]
    assert text_only and all(_golden_sample(c, tokenizer, "hf").input_ids == c["input_ids"] for c in text_only)


def test_original_tokenization_labels(golden, tokenizer):
    """Where original LLaVA's length arithmetic is consistent, its labels are ours; where it is not
    (a later round with this non-legacy tokenizer) it printed a mismatch and masked the whole sample,
    while we keep the answers supervised."""
    consistent = masked = 0
    for case in golden:
        ours = _golden_sample(case, tokenizer, "original")
        if "tokenization mismatch" in case["printed"]:
            assert set(case["labels"]) == {IGNORE_INDEX}, case["id"]
            answers = [turn["value"] for turn in case["record"]["conversations"][1:] if turn["from"] == GPT]
            assert [tokenizer.decode(run) for run in ours.supervised_runs()] == [f"{a}</s>" for a in answers]
            masked += 1
        else:
            assert ours.labels == case["labels"], case["id"]
            consistent += 1
    assert consistent >= 8 and masked >= 1  # the file covers both outcomes


def test_original_tokenization_drops_a_leading_gpt_turn(tokenizer):
    turns = [Turn(GPT, "Hello!"), *conversation("<image>\nHow many stars?", "Two.")]
    template = get_template("vicuna_v1")
    with pytest.raises(BadSample, match="turn 0 is from 'gpt'"):
        tokenize_conversation(turns, template, tokenizer, sample_id="lead")
    dropped = tokenize_conversation(turns, template, tokenizer, sample_id="lead", tokenization="original")
    assert dropped.input_ids == tokenize_conversation(turns[1:], template, tokenizer, sample_id="lead",
                                                      tokenization="original").input_ids
    with pytest.raises(ValueError, match="unknown tokenization 'legacy'; known: hf, original"):
        tokenize_conversation(turns, template, tokenizer, tokenization="legacy")


def test_inspect_and_dataset_take_original_tokenization(golden, zoo, tokenizer, tmp_path, capsys):
    from llava_plugin.config import ConfigError
    from mllm_train.__main__ import main
    from mllm_train.data import DataConfig, LlavaDataset

    vicuna = [case for case in golden if case["template"] == "vicuna_v1"]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([case["record"] for case in vicuna]))
    assert main(["inspect", "--data", str(data), "--tokenizer", str(zoo.llm), "--template", "vicuna_v1",
                 "--tokenization", "original"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["input_ids"] for line in lines] == [case["input_ids"] for case in vicuna]
    # the training dataset, on the text-only cases and one opening with a gpt turn: dropped, not a bad sample
    text_only = [case for case in vicuna if "image" not in case["record"]]
    leading = {"id": "lead", "conversations": [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Hello?"},
                                               {"from": "gpt", "value": "Hello."}]}
    data.write_text(json.dumps([case["record"] for case in text_only] + [leading]))
    dataset = LlavaDataset(DataConfig(data_path=str(data), tokenization="original", num_workers=0), tokenizer,
                           get_template("vicuna_v1"))
    expected = [c["input_ids"] for c in text_only] + [tokenize_conversation(
        conversation("Hello?", "Hello."), get_template("vicuna_v1"), tokenizer, tokenization="original").input_ids]
    assert [dataset[i]["input_ids"].tolist() for i in range(len(dataset))] == expected
    with pytest.raises(BadSample, match="turn 0 is from 'gpt'"):
        LlavaDataset(DataConfig(data_path=str(data), num_workers=0), tokenizer, get_template("vicuna_v1"))
    with pytest.raises(ConfigError, match="data.tokenization='fresh': must be one of hf, original"):
        DataConfig(data_path=str(data), tokenization="fresh").validate()
