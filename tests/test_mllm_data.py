"""LLaVA JSON datasets: checks, image preprocessing, collator, modality-grouped sampler, inspect."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from llava_plugin.config import ConfigError
from mllm_train.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    BadSample,
    get_template,
    tokenize_conversation,
)
from mllm_train.data import (
    Collator,
    DataConfig,
    LlavaDataset,
    ModalityLengthGroupedBatchSampler,
    WithSkips,
    default_pad_token_id,
    parse_record,
    preprocess_image,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN = 1000  # the model's image token in the expanded (HF Llava) form: added after the vocab
N_PATCHES = 16  # (32 / 8) ** 2


@pytest.fixture(scope="module")
def tokenizer(zoo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(zoo.llm)


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))


def striped(width=40, height=20):
    """Green | red | blue vertical bands (10, 20, 10 px at width 40): shows what a transform kept."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 255, 0), (0, 0, width // 4, height))
    image.paste((0, 0, 255), (3 * width // 4, 0, width, height))
    return image


def write_fixture(root, records, images=("a.png", "b.png")):
    (root / "img").mkdir(exist_ok=True)
    for name in images:
        striped().save(root / "img" / name)
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


GOOD = [
    {"id": "img-1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the star?"}, {"from": "gpt", "value": "Red."}]},
    {"id": "text-1", "conversations": [
        {"from": "human", "value": "Name a shape."}, {"from": "gpt", "value": "A circle."}]},
    {"id": "img-2", "image": "b.png", "conversations": [
        {"from": "human", "value": "How many stars?\n<image>"}, {"from": "gpt", "value": "2 stars."},
        {"from": "human", "value": "And squares?"}, {"from": "gpt", "value": "None."}]},
]


def make_dataset(tmp_path, tokenizer, processor, records=GOOD, **config):
    path = write_fixture(tmp_path, records)
    cfg = DataConfig(data_path=str(path), image_folder=str(tmp_path / "img"), **config)
    return LlavaDataset(cfg, tokenizer, get_template("vicuna_v1"), processor, image_token_id=IMAGE_TOKEN,
                        num_image_tokens=N_PATCHES)


def test_items_in_expanded_form(tmp_path, tokenizer, processor):
    dataset = make_dataset(tmp_path, tokenizer, processor)
    assert len(dataset) == 3 and dataset.has_image == [True, False, True]
    item = dataset[0]
    expected = tokenize_conversation(list(parse_record(GOOD[0], 0).turns), get_template("vicuna_v1"), tokenizer,
                                     image_token_id=IMAGE_TOKEN, num_image_tokens=N_PATCHES)
    assert item["input_ids"].tolist() == expected.input_ids and item["labels"].tolist() == expected.labels
    assert (item["input_ids"] == IMAGE_TOKEN).sum() == N_PATCHES
    assert (item["labels"][item["input_ids"] == IMAGE_TOKEN] == IGNORE_INDEX).all()
    assert item["pixel_values"].shape == (3, 32, 32)
    assert dataset[1]["pixel_values"] is None and IMAGE_TOKEN not in dataset[1]["input_ids"]
    assert dataset.lengths == [7 + N_PATCHES, 5, 9 + N_PATCHES]  # words, <image> included (+ image tokens)


def test_pad_to_square_uses_processor_mean(processor):
    """pad: the 40x20 image sits centred on a mean-colour square, so the padding normalises to ~0."""
    pixels = preprocess_image(striped(), processor, "pad")
    assert pixels.shape == (3, 32, 32)
    # 40x20 -> 40x40 canvas (image in rows 10..29) -> 32x32: rows 0..7 and 24..31 are padding
    assert pixels[:, :7].abs().max() < 0.02 and pixels[:, 25:].abs().max() < 0.02
    mean_colour = tuple(int(x * 255) for x in OPENAI_MEAN)
    assert mean_colour == (122, 116, 104)
    left, middle = pixels[:, 16, 2], pixels[:, 16, 16]  # green band, red band
    assert left[1] > 1 and left[0] < -1 and middle[0] > 1 and middle[1] < -1
    # crop: resize shortest side + centre crop keeps only the red middle
    cropped = preprocess_image(striped(), processor, "crop")
    assert (cropped[0] > 1).all() and (cropped[1] < -1).all()
    # resize: the whole image stretched, green band on the left, no padding
    resized = preprocess_image(striped(), processor, "resize")
    assert resized[1, :, 0].min() > 1 and resized[2, :, -1].min() > 1 and resized[0, :, 16].min() > 1


BAD = {
    "missing-image": ({"id": "missing-image", "image": "nope.png", "conversations": GOOD[0]["conversations"]},
                      "image .*nope.png does not exist"),
    "two-tags": ({"id": "two-tags", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\n<image> Hi"}, {"from": "gpt", "value": "Hello."}]},
        "has an image but 2 <image> tags"),
    "no-tag": ({"id": "no-tag", "image": "a.png", "conversations": GOOD[1]["conversations"]},
               "has an image but 0 <image> tags"),
    "tag-no-image": ({"id": "tag-no-image", "conversations": GOOD[0]["conversations"]},
                     "has 1 <image> tag\\(s\\) but no `image` field"),
    "not-alternating": ({"id": "not-alternating", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Yes."}]},
        "turn 1 is from 'human' but should be from 'gpt'"),
    "unknown-role": ({"id": "unknown-role", "conversations": [
        {"from": "user", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        "conversations\\[0\\] is from 'user'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_sample_is_an_error_naming_it(tmp_path, tokenizer, processor, name):
    record, problem = BAD[name]
    with pytest.raises(BadSample, match=f"sample '{name}': {problem}.*skip_bad_samples"):
        make_dataset(tmp_path, tokenizer, processor, records=GOOD + [record])


def test_skipping_bad_samples_is_counted_and_capped(tmp_path, tokenizer, processor):
    records = GOOD * 10 + [record for record, _ in BAD.values()]
    dataset = make_dataset(tmp_path, tokenizer, processor, records=records, skip_bad_samples=True,
                           max_skip_fraction=0.2)
    report = dataset.skip_report()
    assert (report["records"], report["kept"], report["skipped"]) == (36, 30, 6)
    assert {bad.sample_id for bad in dataset.skipped} == set(BAD)
    with pytest.raises(ValueError, match="6 of 36 samples are bad, more than max_skip_fraction=0.1"):
        make_dataset(tmp_path, tokenizer, processor, records=records, skip_bad_samples=True,
                     max_skip_fraction=0.1)


def test_unreadable_image(tmp_path, tokenizer, processor):
    records = GOOD + [{"id": "broken", "image": "broken.jpg", "conversations": GOOD[0]["conversations"]}]
    write_fixture(tmp_path, records)
    (tmp_path / "img" / "broken.jpg").write_bytes(b"not a jpeg")
    # found when it is read (without the start-up check) ...
    dataset = make_dataset(tmp_path, tokenizer, processor, records=records, verify="none")
    with pytest.raises(BadSample, match="sample 'broken': image .*broken.jpg cannot be read"):
        dataset[3]
    # ... as a one-line error that says how to skip it ...
    with pytest.raises(BadSample, match="found during training; set skip_bad_samples"):
        dataset[3]
    # ... or, with skip_bad_samples, replaced by the next sample with an image (a step stays single-modality)
    dataset = make_dataset(tmp_path, tokenizer, processor, records=records, skip_bad_samples=True, verify="none")
    item = dataset[3]
    assert item["id"] == "img-1" and item["pixel_values"] is not None
    assert len(item["skipped"]) == 1 and item["skipped"][0].startswith("sample 'broken': image")
    assert dataset[3]["id"] == "img-1"  # deterministic: a resumed run sees the same replacement
    assert dataset[0]["skipped"] == []
    # ... or up front with verify, where it can be skipped and counted
    dataset = make_dataset(tmp_path, tokenizer, processor, records=records, verify="full", skip_bad_samples=True,
                           max_skip_fraction=0.5)
    assert len(dataset) == 3 and [bad.sample_id for bad in dataset.skipped] == ["broken"]


def write_truncated_jpeg(path) -> None:
    """A real JPEG cut 20 bytes into its scan: the header parses, the pixels do not decode."""
    striped().save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 20])


def test_the_default_start_up_check_reads_image_headers(tmp_path, tokenizer, processor):
    """verify: header (the default) drops a file that is not an image before training; one truncated after
    its header passes and is met when read; verify: full decodes it up front."""
    records = GOOD + [{"id": "junk", "image": "junk.jpg", "conversations": GOOD[0]["conversations"]},
                      {"id": "cut", "image": "cut.jpg", "conversations": GOOD[0]["conversations"]}]
    write_fixture(tmp_path, records)
    (tmp_path / "img" / "junk.jpg").write_bytes(b"not a jpeg")
    write_truncated_jpeg(tmp_path / "img" / "cut.jpg")
    with pytest.raises(BadSample, match="sample 'junk': image .*junk.jpg cannot be read .*skip_bad_samples"):
        make_dataset(tmp_path, tokenizer, processor, records=records)
    kwargs = {"records": records, "skip_bad_samples": True, "max_skip_fraction": 0.5}
    header = make_dataset(tmp_path, tokenizer, processor, **kwargs)
    assert [bad.sample_id for bad in header.skipped] == ["junk"] and len(header) == 4
    with pytest.raises(BadSample, match="sample 'cut'"):
        header._item(header.samples[3])
    full = make_dataset(tmp_path, tokenizer, processor, verify="full", **kwargs)
    assert [bad.sample_id for bad in full.skipped] == ["junk", "cut"]
    none = make_dataset(tmp_path, tokenizer, processor, verify="none", **kwargs)
    assert none.skipped == [] and len(none) == 5


def test_verify_modes_are_checked():
    assert DataConfig(data_path="x.json").verify == "header"
    for given, meant in ((True, "full"), (False, "none"), ("full", "full")):
        cfg = DataConfig(data_path="x.json", verify=given)
        cfg.validate()
        assert cfg.verify == meant
    with pytest.raises(ConfigError, match="data.verify='quick': must be one of none, header, full"):
        DataConfig(data_path="x.json", verify="quick").validate()


def test_nothing_supervised_after_truncation_is_skipped_at_run_time(tmp_path, tokenizer, processor):
    """A sample whose answer starts past max_length is bad; found only when it is read (no verify),
    it is replaced by the next text-only sample and reported with the batch."""
    long = {"id": "long", "conversations": [{"from": "human", "value": "word " * 200},
                                            {"from": "gpt", "value": "Yes."}]}
    records = [GOOD[1], long]
    dataset = make_dataset(tmp_path, tokenizer, processor, records=records, max_length=64, skip_bad_samples=True)
    item = dataset[1]
    assert item["id"] == "text-1" and "'long'" in item["skipped"][0]
    collate = WithSkips(Collator(default_pad_token_id(tokenizer)))
    out = collate([dataset[0], dataset[1]])
    assert out["skipped"] == item["skipped"] and out["batch"]["input_ids"].shape[0] == 2


def test_collator_pads_and_stacks_only_real_images(tmp_path, tokenizer, processor):
    dataset = make_dataset(tmp_path, tokenizer, processor)
    pad = default_pad_token_id(tokenizer)
    assert pad == tokenizer.unk_token_id == 0
    items = [dataset[1], dataset[0], dataset[2]]  # text-only first: images keep batch order
    batch = Collator(pad_token_id=pad)(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    lengths = [len(item["input_ids"]) for item in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, item in enumerate(items):
        n = lengths[row]
        assert batch["input_ids"][row, :n].tolist() == item["input_ids"].tolist()
        assert (batch["input_ids"][row, n:] == pad).all() and (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
    assert torch.equal(batch["pixel_values"], torch.stack([items[1]["pixel_values"], items[2]["pixel_values"]]))
    # the image features HF Llava scatters must match the image tokens
    assert (batch["input_ids"] == IMAGE_TOKEN).sum() == N_PATCHES * len(batch["pixel_values"])
    assert "pixel_values" not in Collator(pad_token_id=pad)([dataset[1]])


def plan(sampler):
    return [list(batch) for batch in sampler]


def test_sampler_batches_are_single_modality_and_cover_every_sample():
    has_image = [i % 3 != 0 for i in range(50)]  # 33 image, 17 text samples
    lengths = [(i * 37) % 101 for i in range(50)]
    world, batch_size = 3, 4
    per_rank = [plan(ModalityLengthGroupedBatchSampler(lengths, has_image, batch_size, world_size=world, rank=r,
                                                       seed=1)) for r in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1  # every rank steps the same number of times
    assert len(per_rank[0]) == len(ModalityLengthGroupedBatchSampler(lengths, has_image, batch_size,
                                                                     world_size=world))
    seen = set()
    for step in zip(*per_rank):
        modalities = {has_image[i] for batch in step for i in batch}
        assert len(modalities) == 1  # all ranks, same modality, at the same step
        assert len({len(batch) for batch in step}) == 1
        seen.update(i for batch in step for i in batch)
    assert seen == set(range(50))
    # deterministic by seed and epoch
    sampler = ModalityLengthGroupedBatchSampler(lengths, has_image, batch_size, world_size=world, rank=0, seed=1)
    assert plan(sampler) == per_rank[0]
    sampler.set_epoch(1)
    assert plan(sampler) != per_rank[0]
    # drop_last: only full steps, each sample at most once
    dropped = [plan(ModalityLengthGroupedBatchSampler(lengths, has_image, batch_size, world_size=world, rank=r,
                                                      drop_last=True)) for r in range(world)]
    flat = [i for batches in dropped for batch in batches for i in batch]
    assert all(len(batch) == batch_size for batches in dropped for batch in batches)
    assert len(flat) == len(set(flat)) == (33 // 12 + 17 // 12) * 12


def test_sampler_groups_lengths():
    lengths = list(range(64))
    has_image = [True] * 64
    # one megabatch holding everything: every batch is a run of 4 consecutive lengths
    sampler = ModalityLengthGroupedBatchSampler(lengths, has_image, 4, megabatch_mult=16, seed=3)
    batches = plan(sampler)
    assert sorted(tuple(sorted(b)) for b in batches) == [tuple(range(k, k + 4)) for k in range(0, 64, 4)]
    # LLaVA's grouping (mult 1): the two ranks of a step get balanced totals
    for step in ModalityLengthGroupedBatchSampler(lengths, has_image, 4, world_size=2).steps():
        totals = [sum(lengths[i] for i in batch) for batch in step]
        assert abs(totals[0] - totals[1]) <= max(lengths[i] for batch in step for i in batch)


def test_dataloader_end_to_end_on_zoo_data(zoo, tokenizer, processor):
    """The zoo's mix665k-style file: every sample checks out and supervises exactly its answers."""
    cfg = DataConfig(data_path=str(zoo.data["llava_finetune"]), image_folder=str(zoo.data["llava_image_folder"]),
                     verify="full")
    dataset = LlavaDataset(cfg, tokenizer, get_template("vicuna_v1"), processor, image_token_id=IMAGE_TOKEN,
                           num_image_tokens=N_PATCHES)
    records = json.loads(zoo.data["llava_finetune"].read_text())
    assert len(dataset) == len(records) and not dataset.skipped
    for index, record in enumerate(records):
        answers = [turn["value"] + "</s>" for turn in record["conversations"] if turn["from"] == "gpt"]
        tokenized = dataset._tokenize(dataset.samples[index])
        assert [tokenizer.decode(run) for run in tokenized.supervised_runs()] == answers, record["id"]
    sampler = ModalityLengthGroupedBatchSampler(dataset.lengths, dataset.has_image, 4, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(0))
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch in batches:
        n_images = len(batch.get("pixel_values", []))
        assert n_images in (0, len(batch["input_ids"]))
        assert (batch["input_ids"] == IMAGE_TOKEN).sum() == n_images * N_PATCHES


def test_pretrain_data_with_plain(zoo, tokenizer, processor):
    cfg = DataConfig(data_path=str(zoo.data["llava_pretrain"]), image_folder=str(zoo.data["llava_pretrain_images"]))
    dataset = LlavaDataset(cfg, tokenizer, get_template("plain"), processor)
    records = json.loads(zoo.data["llava_pretrain"].read_text())
    item = dataset[0]
    assert item["input_ids"][:2].tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    supervised = item["input_ids"][item["labels"] != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == records[0]["conversations"][1]["value"] + "\n"


def test_inspect_cli(tmp_path, zoo, capsys):
    from mllm_train import inspect

    path = write_fixture(tmp_path, GOOD + [BAD["two-tags"][0]])
    status = inspect.main(["--data", str(path), "--tokenizer", str(zoo.llm), "--template", "vicuna_v1",
                           "--image-folder", str(tmp_path / "img")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1 and [line["id"] for line in lines] == ["img-1", "text-1", "img-2", "two-tags"]
    first = lines[0]
    assert first["input_ids"].count(IMAGE_TOKEN_INDEX) == 1 and len(first["labels"]) == len(first["input_ids"])
    assert first["supervised_text"] == ["Red.</s>"]
    assert lines[2]["supervised_text"] == ["2 stars.</s>", "None.</s>"]
    assert "prompt" in lines[1] and IMAGE_TOKEN_INDEX not in lines[1]["input_ids"]
    assert lines[3] == {"id": "two-tags", "error": "has an image but 2 <image> tags; put exactly one <image> "
                                                   "in the first human turn"}


def test_inspect_runs_as_module(tmp_path, zoo):
    path = write_fixture(tmp_path, [GOOD[0]])
    out = subprocess.run([sys.executable, "-m", "mllm_train.inspect", "--data", str(path), "--tokenizer",
                          str(zoo.llm), "--template", "plain", "--max-length", "4"],
                         capture_output=True, text=True, check=True).stdout
    line = json.loads(out)
    assert line["prompt"] == "<image>Red.\n" and line["truncated"]
    assert line["input_ids"][:2] == [1, IMAGE_TOKEN_INDEX] and line["labels"][:2] == [IGNORE_INDEX] * 2
    assert len(line["input_ids"]) == 4


def test_expanded_form_matches_hf_llava_processor(zoo, tokenizer, processor):
    """Training tokens == what HF's LlavaProcessor feeds the model for the same prompt at inference."""
    import copy

    from transformers import LlavaProcessor

    with_image = copy.deepcopy(tokenizer)
    with_image.add_tokens(["<image>"], special_tokens=True)
    image_token = with_image.convert_tokens_to_ids("<image>")
    llava = LlavaProcessor(image_processor=processor, tokenizer=with_image, patch_size=8,
                           vision_feature_select_strategy="default", num_additional_image_tokens=1)
    cfg = DataConfig(data_path=str(zoo.data["llava_finetune"]), image_folder=str(zoo.data["llava_image_folder"]))
    dataset = LlavaDataset(cfg, with_image, get_template("vicuna_v1"), processor, image_token_id=image_token,
                           num_image_tokens=N_PATCHES)
    checked = 0
    for sample in dataset.samples:
        ours = dataset._tokenize(sample)
        if sample.image is None:
            theirs = llava(text=ours.prompt, return_tensors="pt")
        else:
            image = Image.open(dataset.image_folder / sample.image).convert("RGB")
            theirs = llava(text=ours.prompt, images=image, return_tensors="pt")
        assert theirs["input_ids"][0].tolist() == ours.input_ids, sample.id
        checked += 1
    assert checked == len(dataset) > 0


@pytest.mark.parametrize("n, image_fraction, world, batch_size, mult, drop_last", [
    (1, 1.0, 2, 4, 1, False), (7, 0.3, 3, 1, 3, False), (50, 0.0, 2, 4, 3, True), (97, 0.3, 3, 4, 1, False),
    (97, 0.3, 2, 4, 3, True), (50, 0.7, 1, 4, 3, False),
])
def test_sampler_invariants(n, image_fraction, world, batch_size, mult, drop_last):
    rng = torch.Generator().manual_seed(n)
    has_image = (torch.rand(n, generator=rng) < image_fraction).tolist()
    lengths = torch.randint(1, 100, (n,), generator=rng).tolist()
    kwargs = dict(world_size=world, drop_last=drop_last, megabatch_mult=mult, seed=5)
    plans = [plan(ModalityLengthGroupedBatchSampler(lengths, has_image, batch_size, rank=r, **kwargs))
             for r in range(world)]
    assert {len(p) for p in plans} == {len(ModalityLengthGroupedBatchSampler(lengths, has_image, batch_size,
                                                                             **kwargs))}
    for step in zip(*plans):
        assert len({has_image[i] for batch in step for i in batch}) == 1
        assert all(0 < len(batch) <= batch_size for batch in step)
    if not drop_last:
        assert {i for p in plans for batch in p for i in batch} == set(range(n))
