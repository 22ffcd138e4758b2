"""The enhance loop end to end on CPU: resume equivalence, latent-cache equivalence, corrupt
images, export, diagnose. The loop is driven by the `test-reconstruct` double (tests/enhance_double.py)
so these tests isolate the shared machinery; per-method tests live in the methods' own files."""
import json
import os

import pytest
import torch

os.environ.setdefault("GENFEEDBACK_SKIP_SHM_OP", "1")

import enhance_double  # noqa: F401  (registers test-reconstruct)

from enhance.cache import StaleCacheError
from enhance.config import load_config
from enhance.data import DataError
from enhance.trainer import EnhanceTrainer
from llava_plugin.config import deep_merge


@pytest.fixture(scope="session")
def loop_zoo(tmp_path_factory):
    """Towers and data of the tiny zoo (the double needs no diffusion generator)."""
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("enhance-zoo"), seed=0, parts=["vision", "data"])


def tiny_cfg(zoo, out, **overrides):
    base = {
        "method": {"name": "test-reconstruct"},
        "vision_tower": str(zoo.clip), "generator": "none", "output_dir": str(out),
        "data": {"source": str(zoo.data["scenes"]), "num_workers": 0},
        "batch": {"global_batch_size": 8, "micro_batch_size": 4},
        "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01},
        "schedule": {"max_steps": 4, "warmup_steps": 1, "kind": "cosine"},
        "precision": {"dtype": "fp32"},
        "checkpointing": {"every_steps": 2, "keep_last": 1},
        "logging": {"every_steps": 1, "progress_bar": False},
        "diagnose": {"images": 0},
    }
    return load_config(preset="base", overrides=deep_merge(base, overrides))


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tower_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_matches_uninterrupted_run(loop_zoo, tmp_path):
    full = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "full")).fit()

    stopped = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "resumed")).setup()
    stopped.train(num_steps=2)  # "killed" after the step-2 checkpoint
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-00000002"]
    del stopped
    resumed = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "resumed")).setup()
    assert resumed.step == 2
    summary = resumed.fit()
    assert summary["steps"] == full["steps"] == 4

    losses_full = [r["loss"] for r in read_metrics(tmp_path / "full")]
    rows_resumed = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows_resumed] == losses_full  # bitwise: same data, RNG, optimizer and schedule state
    assert [r["lr"] for r in rows_resumed] == pytest.approx([r["lr"] for r in read_metrics(tmp_path / "full")])
    a = tower_weights(tmp_path / "full" / "vision_tower")
    b = tower_weights(tmp_path / "resumed" / "vision_tower")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights are not bitwise equal"
    # keep_last=1: only the final checkpoint remains, and no half-written one
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-00000004"]


def test_export_loads_and_differs_from_base(loop_zoo, tmp_path, caplog):
    from transformers import CLIPVisionModel

    from llava_plugin.registry import load_tower, read_metadata

    cfg = tiny_cfg(loop_zoo, tmp_path / "run", precision={"dtype": "bf16"}, schedule={"max_steps": 2},
                   checkpointing={"every_steps": 0}, diagnose={"images": 4})
    EnhanceTrainer(cfg).fit()
    export = tmp_path / "run" / "vision_tower"
    hf = CLIPVisionModel.from_pretrained(export)
    base = CLIPVisionModel.from_pretrained(loop_zoo.clip)
    assert hf.dtype == torch.float32  # fp32 master weights, not the bf16 working copy
    diffs = [float((p - q).detach().abs().max()) for p, q in zip(hf.parameters(), base.parameters())]
    assert max(diffs) > 1e-4
    tower = load_tower(str(export))
    assert tower.sizes == load_tower(str(loop_zoo.clip)).sizes
    meta = read_metadata(export)
    assert meta["method"] == "test-reconstruct" and meta["steps"] == 2
    assert meta["base_tower"] == str(loop_zoo.clip)
    assert meta["config"]["optim"]["lr"] == 1e-2
    assert meta["final_metrics"]["step"] == 2
    assert set(meta["generator_fingerprint"]) == {"vae", "decoder"}
    assert meta["condition_gap_at_start"]["num_images"] == 4
    diagnosis = read_metrics(tmp_path / "run")[0]
    assert diagnosis["event"] == "diagnosis"
    # the double's random decoder barely reads its condition: the loud warning fires (log + metrics)
    assert diagnosis["ignores_condition"] is True and abs(diagnosis["relative_gap"]) < 0.01
    assert "CONDITION GAP NEAR ZERO" in caplog.text


def test_latent_cache_gives_the_same_losses(loop_zoo, tmp_path):
    plain = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "plain", checkpointing={"every_steps": 0})).fit()
    cache_dir = tmp_path / "cache"
    cached_cfg = tiny_cfg(loop_zoo, tmp_path / "cached", checkpointing={"every_steps": 0},
                          cache={"latents": True, "dir": str(cache_dir), "shard_size": 24, "batch_size": 5})
    trainer = EnhanceTrainer(cached_cfg)
    cached = trainer.fit()
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["method"] == "test-reconstruct" and manifest["images"]["count"] == 64
    assert sorted(p.name for p in cache_dir.glob("shard-*")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert plain["final_metrics"]["loss"] == pytest.approx(cached["final_metrics"]["loss"], rel=1e-5)
    assert [r["loss"] for r in read_metrics(tmp_path / "plain")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "cached")], rel=1e-5)

    # the cache is really read: rebuild nothing, and poison it to prove the loop uses it
    from safetensors.torch import load_file, save_file

    shard = cache_dir / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    tensors["latents"] = tensors["latents"] + 5.0
    save_file(tensors, str(shard))
    poisoned = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "poisoned", checkpointing={"every_steps": 0},
                                cache={"latents": True, "dir": str(cache_dir), "shard_size": 24})).fit()
    assert poisoned["final_metrics"]["loss"] != pytest.approx(cached["final_metrics"]["loss"], rel=1e-3)

    # a cache built for another preprocessing / generator is refused, naming the field
    stale = tiny_cfg(loop_zoo, tmp_path / "stale", generator="another-generator",
                     cache={"latents": True, "dir": str(cache_dir), "shard_size": 24})
    with pytest.raises(StaleCacheError, match="generator"):
        EnhanceTrainer(stale).setup()
    other_method_cfg = tiny_cfg(loop_zoo, tmp_path / "stale2", method={"thumb": 4},
                                cache={"latents": True, "dir": str(cache_dir), "shard_size": 24})
    with pytest.raises(StaleCacheError, match="method_config"):
        EnhanceTrainer(other_method_cfg).setup()


def test_corrupt_images_are_skipped_counted_and_thresholded(loop_zoo, tmp_path):
    corrupt = str(loop_zoo.data["scenes_corrupt"] / "captions.jsonl")
    # 67 listed images, 3 broken; 9 steps x 8 = 72 positions cover every image once
    cfg = tiny_cfg(loop_zoo, tmp_path / "ok", data={"source": corrupt, "max_bad_fraction": 0.1, "shuffle": True},
                   schedule={"max_steps": 9}, checkpointing={"every_steps": 0})
    summary = EnhanceTrainer(cfg).fit()
    rows = read_metrics(tmp_path / "ok")
    # each broken file counted once, of the 67 distinct files read (a retry or a second epoch adds none)
    assert summary["skipped_images"] == rows[-1]["skipped_images"] == 3 and rows[-1]["files_read"] == 67
    assert rows[-1]["images_tried"] >= 72 + 3  # read attempts: every failure is retried
    assert all(r["loss"] == r["loss"] for r in rows)  # no NaN from a short batch

    strict = tiny_cfg(loop_zoo, tmp_path / "strict", data={"source": corrupt, "max_bad_fraction": 0.0,
                                                            "bad_check_after": 8},
                      schedule={"max_steps": 9}, checkpointing={"every_steps": 0})
    with pytest.raises(DataError, match="unreadable.*max_bad_fraction"):
        EnhanceTrainer(strict).fit()


def test_diagnose_cli_writes_json_and_table(loop_zoo, tmp_path, capsys):
    from enhance.__main__ import main

    out = tmp_path / "diag.json"
    code = main(["diagnose", "--method", "test-reconstruct", "--vision-tower", str(loop_zoo.clip),
                 "--generator", "none", "--data", str(loop_zoo.data["scenes"]), "--num-images", "8",
                 "--bands", "3", "--batch-size", "4", "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert [b["band"] for b in result["bands"]] == [0, 1, 2]
    assert result["num_images"] == 8
    for band in result["bands"]:
        assert band["gap"] == pytest.approx(band["loss_shuffled"] - band["loss_own"])
    table = capsys.readouterr().out
    assert "loss own" in table and "shuffled" in table
    # fixed seeds: the same numbers again
    main(["diagnose", "--method", "test-reconstruct", "--vision-tower", str(loop_zoo.clip), "--generator", "none",
          "--data", str(loop_zoo.data["scenes"]), "--num-images", "8", "--bands", "3", "--batch-size", "4",
          "--output", str(tmp_path / "again.json")])
    assert json.loads((tmp_path / "again.json").read_text())["bands"] == result["bands"]


def test_gradient_checkpointing_changes_nothing_but_memory(loop_zoo, tmp_path):
    plain = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "plain", schedule={"max_steps": 2},
                             checkpointing={"every_steps": 0})).fit()
    trainer = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "ckpt", schedule={"max_steps": 2},
                               checkpointing={"every_steps": 0}, precision={"gradient_checkpointing": True}))
    ckpt = trainer.fit()
    assert trainer.method.tower.model.is_gradient_checkpointing
    assert [r["loss"] for r in read_metrics(tmp_path / "ckpt")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "plain")], rel=1e-6)
    assert ckpt["final_metrics"]["loss"] == pytest.approx(plain["final_metrics"]["loss"], rel=1e-6)


def test_resume_refuses_another_runs_checkpoint_and_drops_unsaved_rows(loop_zoo, tmp_path):
    from enhance.config import ConfigError

    out = tmp_path / "run"
    first = EnhanceTrainer(tiny_cfg(loop_zoo, out)).setup()
    first.train(num_steps=3)  # checkpoint at 2, then step 3 logged but never checkpointed ("killed")
    del first
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"another run \(batch.global_batch_size: 8 -> 16\)"):
        EnhanceTrainer(tiny_cfg(loop_zoo, out, batch={"global_batch_size": 16})).setup()
    forced = EnhanceTrainer(tiny_cfg(loop_zoo, out, schedule={"max_steps": 6},
                                     checkpointing={"every_steps": 2, "keep_last": 1, "force_resume": True}))
    with pytest.raises(ConfigError, match=r"max_steps: 4 -> 6.*checkpointing.force_resume=true"):
        EnhanceTrainer(tiny_cfg(loop_zoo, out, schedule={"max_steps": 6})).setup()
    assert forced.setup().step == 2 and forced.max_steps == 6  # a deliberate change, resumed on request
    del forced
    resumed = EnhanceTrainer(tiny_cfg(loop_zoo, out)).setup()
    assert resumed.step == 2 and [r["step"] for r in read_metrics(out)] == [1, 2]
    state_file = out / "checkpoints" / "step-00000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ConfigError, match="written by 2 rank.*this run has 1"):
        EnhanceTrainer(tiny_cfg(loop_zoo, out)).setup()


def test_data_workers_change_nothing(loop_zoo, tmp_path):
    wds = str(loop_zoo.data["wds_pattern"])
    inline = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "w0", data={"source": wds}, schedule={"max_steps": 2},
                              checkpointing={"every_steps": 0})).fit()
    workers = EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "w2", data={"source": wds, "num_workers": 2},
                               schedule={"max_steps": 2}, checkpointing={"every_steps": 0})).fit()
    assert [r["loss"] for r in read_metrics(tmp_path / "w2")] == [r["loss"] for r in read_metrics(tmp_path / "w0")]
    assert workers["final_metrics"]["images_tried"] == inline["final_metrics"]["images_tried"] == 16
    EnhanceTrainer(tiny_cfg(loop_zoo, tmp_path / "w2c", data={"source": wds, "num_workers": 2}, cache={"latents": True},
                     schedule={"max_steps": 2}, checkpointing={"every_steps": 0})).fit()  # cache read in workers
    assert [r["loss"] for r in read_metrics(tmp_path / "w2c")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "w0")], rel=1e-5)


def test_pairs_diagnostic_reports_each_attribute_at_start_and_end(loop_zoo, tmp_path):
    """diagnose.pairs: per attribute, the loss under each image's own condition vs its partner's. A pair of
    identical images has no gap at all; the record lands in diagnosis_pairs.json and genfeedback.json."""
    from PIL import Image

    from llava_plugin.registry import read_metadata

    images = sorted(loop_zoo.data["scenes"].rglob("*.jpg"))[:6]
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"image": str(images[0]), "pair_image": str(images[0]), "attribute": "same"},
            {"image": str(images[1]), "pair_image": str(images[1]), "attribute": "same"}]
    rows += [{"image": str(a), "pair_image": str(b), "attribute": "other"} for a, b in zip(images[2:4], images[4:6])]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert Image.open(images[0]).size  # real image files, read through the method's own preprocessing
    cfg = tiny_cfg(loop_zoo, tmp_path / "run", schedule={"max_steps": 2}, checkpointing={"every_steps": 0},
                   diagnose={"images": 0, "pairs": str(pairs)})
    EnhanceTrainer(cfg).fit()
    record = json.loads((tmp_path / "run" / "diagnosis_pairs.json").read_text())
    assert set(record) == {"start", "end"} and record["end"]["step"] == 2
    for when in ("start", "end"):
        same, other = record[when]["attributes"]["same"], record[when]["attributes"]["other"]
        assert same["pairs"] == 2 and other["pairs"] == 2
        assert same["loss_own"] == pytest.approx(same["loss_partner"]) and same["relative_gap"] == pytest.approx(0)
        assert other["loss_own"] != other["loss_partner"]
    assert read_metadata(tmp_path / "run" / "vision_tower")["attribute_gap"]["end"] == record["end"]


def test_pairs_diagnostic_names_a_bad_file(tmp_path):
    from enhance.diagnose import read_pairs

    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"image": "a.png"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:1: expected"):
        read_pairs(bad)


def test_latent_cache_states_its_size_and_refuses_a_disk_too_small(tmp_path, caplog):
    import shutil as _shutil

    import torch as _torch

    from enhance.cache import CacheDiskError, bytes_per_image, check_disk

    per_image = bytes_per_image({"latent_mean": _torch.zeros(2, 4, 8, 8)})
    assert per_image == 4 * 8 * 8 * 4 + 1  # one image's row: its mean (fp32) + the valid flag
    with caplog.at_level("INFO", logger="genfeedback"):
        assert check_disk(tmp_path, 1000, per_image, ["latent_mean"]) == 1000 * per_image
    assert "latent cache: 1000 images" in caplog.text and "latent_mean" in caplog.text
    too_many = _shutil.disk_usage(tmp_path).free // per_image + 1
    with pytest.raises(CacheDiskError, match=r"need .* GB, the disk has .* GB free; set cache.dir"):
        check_disk(tmp_path, too_many, per_image, ["latent_mean"])
