"""enhance/data.py: the three source kinds, broken images, RGB conversion, micro-batches read
through the shared plan (its world-size invariance is tested in test_train_core.py)."""
import json

import pytest
from PIL import Image

from enhance.data import (
    BadImageTracker,
    DataError,
    MicroBatches,
    decode_image,
    expand_braces,
    open_source,
)
from llava_plugin.train.plan import StreamOrder


@pytest.fixture(scope="module")
def data_zoo(tmp_path_factory):
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("enhance-data-zoo"), seed=0, parts=["data"])


def test_folder_jsonl_and_webdataset_sources(data_zoo):
    folder = open_source(data_zoo.data["scenes"])
    assert len(folder) == 64 and folder.key(0) == "images/000.jpg"
    jsonl = open_source(data_zoo.data["scenes"] / "captions.jsonl")
    assert jsonl.keys() == folder.keys()
    assert jsonl.load(5).tobytes() == folder.load(5).tobytes()
    for spec in (data_zoo.data["wds"], data_zoo.data["wds_pattern"], data_zoo.data["wds"] / "00001.tar"):
        wds = open_source(spec)
        assert len(wds) == (32 if str(spec).endswith("00001.tar") else 64)
        image = wds.load(len(wds) - 1)
        assert image.mode == "RGB" and min(image.size) > 0
    wds = open_source(data_zoo.data["wds_pattern"])
    assert wds.key(33) == "00001.tar/000010001"


def test_grayscale_rgba_cmyk_become_rgb(data_zoo):
    source = open_source(data_zoo.data["scenes"])
    for name in ("images/061.jpg", "images/062.png", "images/063.jpg"):
        original = Image.open(data_zoo.data["scenes"] / name)
        assert original.mode in ("L", "RGBA", "CMYK")
        assert source.load(source.keys().index(name)).mode == "RGB"


def test_broken_images_raise_bad_image_with_a_reason(data_zoo):
    from enhance.data import BadImage

    source = open_source(data_zoo.data["scenes_corrupt"] / "captions.jsonl")
    assert len(source) == 67
    reasons = {}
    for name in ("images/empty.jpg", "images/truncated.jpg", "images/not_an_image.jpg"):
        with pytest.raises(BadImage) as err:
            source.load(source.keys().index(name))
        reasons[name] = str(err.value)
    assert "zero-size" in reasons["images/empty.jpg"]
    with pytest.raises(BadImage):
        decode_image(b"\x89PNG\r\n\x1a\n broken")


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        open_source(tmp_path / "empty")
    bad = tmp_path / "list.jsonl"
    bad.write_text('{"image": "a.jpg"}\n{"img": "b.jpg"}\n')
    with pytest.raises(DataError, match=r"list.jsonl:2 has no string 'image' field"):
        open_source(bad)
    bad.write_text('{"image": "a.jpg"\n')
    with pytest.raises(DataError, match=r"list.jsonl:1 is not JSON"):
        open_source(bad)
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a readable tar"):
        open_source(tmp_path / "broken.tar")
    with pytest.raises(DataError, match="1 shard"):
        open_source(str(tmp_path / "{00000..00000}.tar"))


def test_expand_braces():
    assert expand_braces("a/{008..010}.tar") == ["a/008.tar", "a/009.tar", "a/010.tar"]
    assert expand_braces("{x,y}/{0..1}") == ["x/0", "x/1", "y/0", "y/1"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_micro_batches_refill_bad_slots_and_report_them(data_zoo):
    source = open_source(data_zoo.data["scenes_corrupt"] / "captions.jsonl")
    bad_index = source.keys().index("images/empty.jpg")
    order = StreamOrder(len(source), micro_batch=4, seed=0, shuffle=False)
    ds = MicroBatches(source, order, preprocess=lambda images: {"n": len(images)})
    micro = bad_index // 4  # the micro-batch holding the empty file
    item = ds[micro]
    assert item["batch"]["n"] == 4  # the slot was refilled
    assert item["bad"][0][:2] == (bad_index, "images/empty.jpg")
    assert item["tried"] == 4 + len(item["bad"])
    assert bad_index not in item["indices"]


def neighbouring_bad_files(tmp_path, total=21, bad=range(8, 13)):
    """`total` images in a folder; the ones at `bad` (adjacent in sorted order) are zero-size files."""
    for i in range(total):
        path = tmp_path / f"{i:03d}.png"
        if i in bad:
            path.write_bytes(b"")
        else:
            Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
    return open_source(tmp_path)


@pytest.mark.parametrize("micro_batches", [2, 10])  # part of the first epoch; nearly two epochs
def test_bad_files_are_counted_once_each_not_per_retry(tmp_path, micro_batches):
    """5 adjacent bad files of 21: a bad slot is refilled by retrying the next files, so the bad ones
    fail again and again (per retry, per epoch); the tracker counts 5 bad of the distinct files read,
    which are exactly the files the micro-batches loaded or failed on."""
    source = neighbouring_bad_files(tmp_path)
    order = StreamOrder(len(source), micro_batch=4, seed=0, shuffle=True)
    batches = MicroBatches(source, order, preprocess=lambda images: {})
    tracker = BadImageTracker(max_fraction=0.1, check_after=0, order=order)
    attempts, read = 0, set()
    for micro in range(micro_batches):
        item = batches[micro]
        tracker.add(item["bad"])
        attempts += item["tried"]
        read |= set(item["indices"]) | {index for index, _, _ in item["bad"]}
    tracker.gather()
    positions = micro_batches * 4
    assert tracker.files_read(positions) == len(read)
    if micro_batches == 10:
        failures = attempts - positions
        assert len(tracker.bad) == 5 and len(read) == 21 and failures > 5  # per retry, it was inflated
        with pytest.raises(DataError, match=r"5 of 21 files read \(23.8%\) are unreadable.*008.png: zero-size"):
            tracker.check(positions, final=True)


def test_bad_image_threshold_waits_for_enough_files(tmp_path):
    source = neighbouring_bad_files(tmp_path, total=21, bad=[3])
    order = StreamOrder(len(source), micro_batch=4, seed=0, shuffle=False)
    tracker = BadImageTracker(max_fraction=0.05, check_after=10, order=order)
    tracker.add([(3, "003.png", "zero-size file")])
    tracker.gather()
    assert tracker.files_read(4) == 5  # 0-3 asked for, 3 failed, 4 refilled its slot
    tracker.check(4)  # too few files read to judge yet
    with pytest.raises(DataError, match=r"1 of 5 files read \(20.0%\)"):
        tracker.check(4, final=True)
    tracker.check(40, final=True)  # 1 of 21


def test_jsonl_paths_are_relative_to_the_list(tmp_path, data_zoo):
    rows = [{"image": str((data_zoo.data["scenes"] / "images" / "001.jpg").resolve())}, {"image": "sub/x.jpg"}]
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (9, 7), (1, 2, 3)).save(tmp_path / "sub" / "x.jpg")
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    source = open_source(tmp_path / "list.jsonl")
    assert len(source) == 2 and source.load(1).size == (9, 7)


def test_random_resized_crop_is_upstreams_box_drawn_from_the_stream_position(data_zoo):
    """data.augment=random_resized_crop: torchvision's RandomResizedCrop box (area 0.9-1.0, aspect
    3/4-4/3) warped to a square; the same image at the same stream position is cropped the same way
    in every run and on every rank (the seed is the position), a later epoch crops it anew."""
    import numpy as np
    import torch
    from torchvision.transforms import RandomResizedCrop

    from enhance.data import augment_seed, random_resized_crop

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    torch.manual_seed(123)
    crop = random_resized_crop(image, seed=7, scale=(0.9, 1.0))
    assert torch.initial_seed() == 123  # the global RNG is untouched (dropout, noise draws)
    torch.manual_seed(7)
    top, left, height, width = RandomResizedCrop.get_params(image, scale=[0.9, 1.0], ratio=[3 / 4, 4 / 3])
    assert 0.9 * 60 * 80 <= height * width * 1.0001 and height * width <= 60 * 80
    side = max(height, width)
    assert crop.size == (side, side)
    expected = image.crop((left, top, left + width, top + height)).resize((side, side), Image.BICUBIC)
    assert np.abs(np.asarray(crop, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1

    source = open_source(data_zoo.data["scenes"])
    order = StreamOrder(len(source), micro_batch=4, seed=0, shuffle=True)

    def sizes(images):
        return {"sizes": [im.size for im in images], "pixels": [np.asarray(im).sum() for im in images]}

    cropped = MicroBatches(source, order, preprocess=sizes, crop=(0, (0.5, 0.6)))
    whole = MicroBatches(source, order, preprocess=sizes)
    a, b = cropped[3]["batch"], cropped[3]["batch"]
    assert a == b  # a function of (seed, position): reruns and resumes see the same crops
    assert a["sizes"] != whole[3]["batch"]["sizes"]
    other_seed = MicroBatches(source, order, preprocess=sizes, crop=(1, (0.5, 0.6)))[3]["batch"]
    assert other_seed["pixels"] != a["pixels"]
    assert augment_seed(0, 12) != augment_seed(0, 13) and augment_seed(0, 12) != augment_seed(1, 12)


def test_augmentation_config_is_checked_and_refuses_the_latent_cache(data_zoo):
    from enhance.config import ConfigError, load_config

    assert load_config(preset="diva").data.augment == "random_resized_crop"
    assert load_config(preset="genhancer-openai-l14-224-stage2").data.augment == "random_resized_crop"
    from enhance.config import PRESET_DIR
    from llava_plugin.config import load_yaml_preset

    # the world's runs (and the method defaults) use whole images
    assert all("augment" not in load_yaml_preset(PRESET_DIR, p).get("data", {})
               for p in ("world-diva", "world-un2clip", "world-genhancer-stage2", "base"))
    with pytest.raises(ConfigError, match="cache.latents=true with data.augment=random_resized_crop"):
        load_config(preset="diva", overrides={"cache": {"latents": True}})
    with pytest.raises(ConfigError, match="data.augment='flip'"):
        load_config(preset="diva", overrides={"data": {"augment": "flip"}})
    with pytest.raises(ConfigError, match="data.crop_scale"):
        load_config(preset="diva", overrides={"data": {"crop_scale": [0.9, 1.2]}})
    assert load_config(preset="diva", overrides={"cache": {"latents": True}, "data": {"augment": "none"}}).cache.latents
