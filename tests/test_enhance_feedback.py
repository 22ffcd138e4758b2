"""The `feedback:` section (enhance/feedback.py) and the other general options of controlled runs:
the weight-0 control, the shuffled-condition control, the tower warm-up, the regularisers and their
captions, DIVA/un2CLIP's timestep band, x0-prediction, and the gradient-norm rows. Method-level
checks use DIVA and un2CLIP on the tiny zoo; loop-level ones the `test-reconstruct` double."""
import itertools
import json
import os

import pytest
import torch

os.environ.setdefault("GENFEEDBACK_SKIP_SHM_OP", "1")

import enhance_double  # noqa: F401  (registers test-reconstruct)

from enhance.config import PRESET_DIR, load_config, presets
from enhance.data import MicroBatches, open_source
from enhance.feedback import FeedbackConfig, contrastive_loss, derange
from enhance.generators.sd import LatentDiffusion
from enhance.methods.diva import Diva, DivaConfig
from enhance.methods.un2clip import Un2Clip, Un2ClipConfig
from enhance.trainer import EnhanceTrainer
from llava_plugin.config import ConfigError, deep_merge, from_dict, load_yaml_preset
from llava_plugin.registry import load_tower
from llava_plugin.train.plan import StreamOrder


# ---------------------------------------------------------------- helpers
def feedback(**kw) -> FeedbackConfig:
    reg = kw.pop("regularizer", None)
    return from_dict(FeedbackConfig, {**kw, **({"regularizer": reg} if reg else {})})


def diva(zoo, **cfg) -> Diva:
    torch.manual_seed(0)
    return Diva(from_dict(DivaConfig, cfg), load_tower(str(zoo.clip)), str(zoo.sd21))


def un2clip(zoo, **cfg) -> Un2Clip:
    torch.manual_seed(0)
    return Un2Clip(from_dict(Un2ClipConfig, cfg), load_tower(str(zoo.clip)), str(zoo.unclip))


def captioned(zoo, n=4):
    """The first n scenes of the zoo's caption list, with their captions (the data path a run reads)."""
    source = open_source(zoo.data["scenes"] / "captions.jsonl")
    return [source.load(i) for i in range(n)], [source.caption(i) for i in range(n)]


def prepared(method, zoo, n=4):
    images, captions = captioned(zoo, n)
    batch = method.preprocess(images)
    batch |= method.encode_targets(batch)
    if method.feedback.cfg.needs_captions:
        batch |= method.feedback.encode_captions(method, captions)
    return batch


def loop_cfg(zoo, out, **overrides):
    base = {
        "method": {"name": "test-reconstruct"},
        "vision_tower": str(zoo.clip), "generator": "none", "output_dir": str(out),
        "data": {"source": str(zoo.data["scenes"] / "captions.jsonl"), "num_workers": 0},
        "batch": {"global_batch_size": 8, "micro_batch_size": 4},
        "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"max_steps": 4, "warmup_steps": 0, "kind": "constant"},
        "precision": {"dtype": "fp32"},
        "checkpointing": {"every_steps": 0, "keep_last": 1},
        "logging": {"every_steps": 1, "progress_bar": False},
        "diagnose": {"images": 0},
    }
    return load_config(preset="base", overrides=deep_merge(base, overrides))


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def exported(out):
    from safetensors.torch import load_file

    return load_file(str(out / "vision_tower" / "model.safetensors"))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- config
def test_defaults_are_upstream_and_every_paper_preset_keeps_them():
    cfg = FeedbackConfig()
    assert (cfg.weight, cfg.condition, cfg.tower_warmup_steps, cfg.regularizer.kind) == (1.0, "own", 0, "none")
    assert DivaConfig().timestep_range == Un2ClipConfig().timestep_range == [0.0, 1.0]
    for name in presets():
        if name.startswith("world-"):
            continue  # the shapes world's presets are the ones that use the options
        data = load_yaml_preset(PRESET_DIR, name)
        assert "feedback" not in data and "timestep_range" not in data.get("method", {}), name


def test_bad_values_are_refused_naming_the_key(zoo, tmp_path):
    with pytest.raises(ConfigError, match="feedback.weight=-1"):
        feedback(weight=-1)
    with pytest.raises(ConfigError, match="feedback.weight=0 with feedback.regularizer.kind=none"):
        feedback(weight=0)
    with pytest.raises(ConfigError, match="tower_warmup_steps=-2"):
        feedback(tower_warmup_steps=-2)
    with pytest.raises(ConfigError, match="condition"):
        feedback(condition="rolled")
    with pytest.raises(ConfigError, match="micro_batch_size=1; use 2 or more"):
        loop_cfg(zoo, tmp_path, feedback={"condition": "shuffled"}, batch={"micro_batch_size": 1})
    with pytest.raises(ConfigError, match=r"timestep_range=\[0.5, 0.5\]"):
        from_dict(DivaConfig, {"timestep_range": [0.5, 0.5]})
    with pytest.raises(ConfigError, match=r"timestep_range=\[0.9999, 1.0\].*holds no timestep"):
        diva(zoo, timestep_range=[0.9999, 1.0])  # rounds to [1000, 1000) of the 1000 steps


# ---------------------------------------------------------------- weight 0: the run without the feedback term
def test_weight_zero_keeps_the_generator_loss_out_of_the_gradient(zoo):
    method = diva(zoo)
    method.set_feedback(feedback(weight=0, regularizer={"kind": "contrastive"}))
    batch = prepared(method, zoo)
    with torch.no_grad():
        plain = method.denoising_loss(batch, method.encode_condition(batch), torch.Generator().manual_seed(5)).mean()
    grad_modes = []
    method.generator.unet.register_forward_pre_hook(lambda *args: grad_modes.append(torch.is_grad_enabled()))
    out = method(batch, torch.Generator().manual_seed(5))
    assert grad_modes == [False]  # the generator runs without a graph: the control saves its backward
    out.loss.backward()
    assert method.projector.weight.grad is None  # the projector is reached only through the generator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.tower.parameters())
    assert out.metrics["feedback_loss"] == pytest.approx(float(plain), rel=1e-6)  # still computed and logged
    assert out.metrics["loss"] == pytest.approx(out.metrics["regularizer_loss"])

    weighted = diva(zoo)
    weighted.set_feedback(feedback(weight=0.5, regularizer={"kind": "contrastive", "weight": 2.0}))
    out = weighted(prepared(weighted, zoo), torch.Generator().manual_seed(5))
    assert out.metrics["loss"] == pytest.approx(0.5 * out.metrics["feedback_loss"] + 2.0 * out.metrics["regularizer_loss"])


def test_weight_zero_run_moves_the_tower_by_the_regulariser_alone(zoo, tmp_path):
    """Through DeepSpeed (ZeRO-2): the double's projector gets no gradient and stays bitwise as it was,
    the tower moves; the rows log both losses and genfeedback.json records the section."""
    control = EnhanceTrainer(loop_cfg(zoo, tmp_path / "control", schedule={"max_steps": 2},
                                      feedback={"weight": 0, "regularizer": {"kind": "contrastive"}}))
    control.setup()
    project = snapshot(control.method.project)
    control.fit()
    assert same(project, snapshot(control.method.project))
    base = load_tower(str(zoo.clip)).model.state_dict()
    tower = exported(tmp_path / "control")
    assert any(not torch.equal(tower[k], base[k]) for k in tower if k in base)
    rows = read_metrics(tmp_path / "control")
    assert all({"feedback_loss", "regularizer_loss", "grad_norm", "grad_norm_clipped"} <= set(r) for r in rows)
    assert rows[0]["loss"] == pytest.approx(rows[0]["regularizer_loss"])
    meta = json.loads((tmp_path / "control" / "vision_tower" / "genfeedback.json").read_text())
    assert meta["feedback"]["weight"] == 0 and meta["feedback"]["regularizer"]["kind"] == "contrastive"

    fed = EnhanceTrainer(loop_cfg(zoo, tmp_path / "fed", schedule={"max_steps": 2},
                                  feedback={"regularizer": {"kind": "contrastive"}}))
    fed.setup()
    fed.fit()
    assert not same(project, snapshot(fed.method.project))  # the same run with the term trains it
    # the first step's generator loss is the same in both (same weights, data and noise)
    assert read_metrics(tmp_path / "fed")[0]["feedback_loss"] == pytest.approx(rows[0]["feedback_loss"], rel=1e-6)


def test_a_resume_with_another_control_is_refused(zoo, tmp_path):
    out = tmp_path / "run"
    cfg = {"schedule": {"max_steps": 3}, "checkpointing": {"every_steps": 2},
           "feedback": {"weight": 0, "regularizer": {"kind": "distill"}}}
    EnhanceTrainer(loop_cfg(zoo, out, **cfg)).setup().train(num_steps=2)
    with pytest.raises(ConfigError, match=r"another run \(feedback: .*'weight': 0.0.*'weight': 1.0"):
        EnhanceTrainer(loop_cfg(zoo, out, **{**cfg, "feedback": {"regularizer": {"kind": "distill"}}})).setup()
    assert EnhanceTrainer(loop_cfg(zoo, out, **cfg)).setup().step == 2


# ---------------------------------------------------------------- shuffled condition
def test_shuffled_condition_gives_each_image_its_neighbours(zoo):
    method = diva(zoo)
    batch = prepared(method, zoo)
    with torch.no_grad():
        cond = method.encode_condition(batch)
        neighbour = [len(batch["pixel_values"]) - 1, 0, 1, 2]  # image i gets image i-1's condition
        expected = method.denoising_loss(batch, {k: v[neighbour] for k, v in cond.items()},
                                         torch.Generator().manual_seed(3))
        got = method.denoising_loss(batch, derange(cond), torch.Generator().manual_seed(3))
        own = method.denoising_loss(batch, cond, torch.Generator().manual_seed(3))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert not torch.allclose(got, own)

        method.set_feedback(feedback(condition="shuffled"))
        out = method(batch, torch.Generator().manual_seed(3))
    assert out.metrics["feedback_loss"] == pytest.approx(float(expected.mean()), rel=1e-6)
    assert out.metrics["loss"] == out.metrics["feedback_loss"]


# ---------------------------------------------------------------- tower warm-up
def test_tower_warmup_holds_the_tower_bitwise_while_the_projector_trains_and_resumes_exactly(zoo, tmp_path):
    cfg = {"feedback": {"tower_warmup_steps": 2}, "checkpointing": {"every_steps": 1, "keep_last": 1}}
    full = EnhanceTrainer(loop_cfg(zoo, tmp_path / "full", **cfg)).setup()
    tower, project = snapshot(full.method.tower), snapshot(full.method.project)
    full.train(num_steps=2)
    assert same(tower, snapshot(full.method.tower))  # no update, no weight decay
    assert not same(project, snapshot(full.method.project))
    full.fit()
    assert not same(tower, snapshot(full.method.tower))  # and it trains after the warm-up
    rows = read_metrics(tmp_path / "full")
    assert [r["lr"][0] for r in rows] == [0.0, 0.0, 1e-2, 1e-2]  # group 0 is the tower's, group 1 the rest
    assert [r["lr"][1] for r in rows] == [1e-2] * 4

    # killed inside the warm-up (after step 1's checkpoint), resumed across its end: bitwise the same run
    stopped = EnhanceTrainer(loop_cfg(zoo, tmp_path / "resumed", **cfg)).setup()
    stopped.train(num_steps=1)
    del stopped
    resumed = EnhanceTrainer(loop_cfg(zoo, tmp_path / "resumed", **cfg)).setup()
    assert resumed.step == 1
    resumed.fit()
    assert [r["loss"] for r in read_metrics(tmp_path / "resumed")] == [r["loss"] for r in rows]
    assert same(exported(tmp_path / "full"), exported(tmp_path / "resumed"))


def test_tower_warmup_splits_groups_by_tower_parameters(zoo):
    method = diva(zoo, projector_lr=3e-3)
    trainer = EnhanceTrainer(loop_cfg(zoo, "/unused", feedback={"tower_warmup_steps": 5}))
    groups = trainer.param_groups(method)
    tower = {id(p) for p in method.tower.parameters()}
    assert [g.get("held_steps", 0) for g in groups] == [5, 0]
    assert {id(p) for p in groups[0]["params"]} == tower and groups[1].get("lr") == 3e-3
    plain = EnhanceTrainer(loop_cfg(zoo, "/unused")).param_groups(method)
    assert all("held_steps" not in g for g in plain)  # default: the method's groups untouched


# ---------------------------------------------------------------- regularisers
def test_contrastive_is_clips_own_loss_and_falls_on_a_fixed_batch(zoo):
    from transformers import AutoTokenizer, CLIPModel

    method = un2clip(zoo)
    method.set_feedback(feedback(weight=0, regularizer={"kind": "contrastive"}))
    _, captions = captioned(zoo)
    batch = prepared(method, zoo)
    clip = CLIPModel.from_pretrained(zoo.clip).eval()
    tokens = AutoTokenizer.from_pretrained(zoo.clip)(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = clip(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                         pixel_values=batch["pixel_values"], return_loss=True).loss
        ours = contrastive_loss(method.encode_condition(batch)["image_embeds"], batch["caption_embeds"],
                                method.frozen["regularizer_text_tower"].logit_scale)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)

    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3)
    losses = []
    for step in range(5):
        out = method(batch, torch.Generator().manual_seed(step))
        losses.append(out.metrics["regularizer_loss"])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[0] == pytest.approx(float(reference), rel=1e-5)
    assert losses[-1] < 0.9 * losses[0] and all(b < a for a, b in itertools.pairwise(losses))
    assert set(method.frozen_state_fingerprint()) == {"unet", "vae", "image_normalizer", "regularizer_text_tower"}


def test_regulariser_reuses_the_conditions_image_embeds(zoo):
    """un2CLIP's condition is the tower's image_embeds: one tower forward; DIVA's is not: one more."""
    for method, forwards in ((un2clip(zoo), 1), (diva(zoo), 2)):
        method.set_feedback(feedback(regularizer={"kind": "distill"}))
        batch = prepared(method, zoo, n=2)
        calls = []
        method.tower.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        method(batch, torch.Generator().manual_seed(0))
        assert len(calls) == forwards, method.name


def test_distill_is_zero_at_the_start_and_its_copy_stays_frozen(zoo):
    method = diva(zoo)
    method.set_feedback(feedback(regularizer={"kind": "distill", "weight": 3.0}))
    initial = method.frozen["regularizer_initial_tower"]
    assert initial is not method.tower and not any(p.requires_grad for p in initial.parameters())
    assert all(id(p) not in {id(q) for q in method.parameters()} for p in initial.parameters())
    assert not any(k.startswith("regularizer") for k in method.state_dict())  # never checkpointed
    batch = prepared(method, zoo, n=2)
    out = method(batch, torch.Generator().manual_seed(0))
    assert out.metrics["regularizer_loss"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in method.tower.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = method(batch, torch.Generator().manual_seed(0))
    assert out.metrics["regularizer_loss"] > 1e-4
    assert out.metrics["loss"] == pytest.approx(out.metrics["feedback_loss"] + 3.0 * out.metrics["regularizer_loss"])


def test_regulariser_refuses_a_run_whose_tower_does_not_train(zoo):
    from enhance.methods.genhancer import GenHancer, GenHancerConfig

    tiny = {"num_double_blocks": 1, "num_single_blocks": 1, "num_heads": 2, "head_dim": 16, "pooled_dim": 16,
            "context_dim": 32, "axes_dims_rope": [4, 6, 6]}
    stage1 = GenHancer(from_dict(GenHancerConfig, {"stage": 1, "denoiser": tiny}), load_tower(str(zoo.clip)),
                       str(zoo.sd21))
    with pytest.raises(ConfigError, match="tower does not train.*regularizer.kind=none"):
        stage1.set_feedback(feedback(regularizer={"kind": "distill"}))


# ---------------------------------------------------------------- captions
def test_captions_come_from_the_jsonl_and_the_shards(zoo):
    jsonl = open_source(zoo.data["scenes"] / "captions.jsonl")
    rows = [json.loads(line) for line in (zoo.data["scenes"] / "captions.jsonl").read_text().splitlines()]
    assert jsonl.missing_captions() is None and jsonl.caption(3) == rows[3]["caption"]
    wds = open_source(zoo.data["wds_pattern"])
    assert wds.missing_captions() is None and wds.caption(0) and isinstance(wds.caption(40), str)
    order = StreamOrder(len(jsonl), 4, seed=0, shuffle=True)
    item = MicroBatches(jsonl, order, lambda images: {}, captions=True)[0]
    assert item["captions"] == [rows[i]["caption"] for i in item["indices"]]
    assert "captions" not in MicroBatches(jsonl, order, lambda images: {})[0]


@pytest.mark.parametrize("where", ["folder", "jsonl"])
def test_missing_captions_fail_in_one_line_naming_the_flag(zoo, tmp_path, where):
    if where == "folder":
        source = str(zoo.data["scenes"])
        expect = "is an image folder, which holds no captions"
    else:
        source = tmp_path / "list.jsonl"
        rows = [{"image": str(zoo.data["scenes"] / "images/000.jpg"), "caption": "a shape"},
                {"image": str(zoo.data["scenes"] / "images/001.jpg")}]
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        expect = r"list.jsonl:2 has no string 'caption' field"
    cfg = loop_cfg(zoo, tmp_path / "run", data={"source": str(source)},
                   feedback={"regularizer": {"kind": "contrastive"}})
    with pytest.raises(ConfigError, match=expect) as err:
        EnhanceTrainer(cfg).setup()
    message = str(err.value)
    assert "\n" not in message and "feedback.regularizer.kind=contrastive" in message and "--data" in message
    EnhanceTrainer(loop_cfg(zoo, tmp_path / "distill", data={"source": str(source)}, schedule={"max_steps": 1},
                            feedback={"regularizer": {"kind": "distill"}})).fit()  # distill needs none


# ---------------------------------------------------------------- timestep band, x0-prediction
def test_timestep_band_is_respected_and_the_default_is_upstreams(zoo):
    gen = LatentDiffusion(zoo.sd21)
    t = gen.timesteps(1000, 4, torch.Generator().manual_seed(0), torch.device("cpu"), band=[0.8, 1.0])
    assert t.shape == (4000,) and t.min() >= 800 and t.max() <= 999 and t.min() < 805 and t.max() > 995
    default = gen.timesteps(50, 2, torch.Generator().manual_seed(1), torch.device("cpu"))
    upstream = torch.randint(0, 1000, (100,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(default, upstream)

    for method in (diva(zoo, timestep_range=[0.8, 1.0]), un2clip(zoo, timestep_range=[0.8, 1.0])):
        assert method.timestep_range() == (800.0, 1000.0)
        seen = []
        unet = method.generator.unet
        handle = unet.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[1].clone()))
        batch = prepared(method, zoo, n=2)
        with torch.no_grad():
            method.denoising_loss(batch, method.encode_condition(batch), torch.Generator().manual_seed(0))
        handle.remove()
        assert seen and all(((s >= 800) & (s < 1000)).all() for s in seen), method.name
    assert diva(zoo).timestep_range() == (0.0, 1000.0)


def test_x0_prediction_target_is_the_clean_latents(zoo, tmp_path):
    import shutil

    shutil.copytree(zoo.sd21, tmp_path / "sd")
    path = tmp_path / "sd" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "sample"}))
    gen = LatentDiffusion(tmp_path / "sd")
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(gen.target(latents, noise, torch.tensor([3, 900])), latents)


# ---------------------------------------------------------------- gradient norms
def test_grad_norm_rows_before_and_after_clipping_under_every_zero_stage(zoo, tmp_path):
    stage0 = tmp_path / "zero0.json"
    stage0.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    first = {}
    for zero in ("zero2", "zero3", str(stage0)):
        out = tmp_path / f"run-{len(first)}"
        EnhanceTrainer(loop_cfg(zoo, out, deepspeed={"config": zero, "keep_zero_on_one_process": True},
                                optim={"grad_clip": 1e-3},
                                schedule={"max_steps": 2})).fit()
        rows = read_metrics(out)
        assert all(r["grad_norm"] > 1e-3 and r["grad_norm_clipped"] == 1e-3 for r in rows), zero
        first[zero] = rows[0]["grad_norm"]
    # the norm is taken before clipping, the same gradients giving the same norm whoever computes it
    assert first["zero3"] == pytest.approx(first["zero2"], rel=1e-5)
    assert first[str(stage0)] == pytest.approx(first["zero2"], rel=1e-5)

    EnhanceTrainer(loop_cfg(zoo, tmp_path / "noclip", optim={"grad_clip": 0.0}, schedule={"max_steps": 1})).fit()
    row = read_metrics(tmp_path / "noclip")[0]
    assert row["grad_norm_clipped"] == row["grad_norm"] == pytest.approx(first["zero2"], rel=1e-5)
