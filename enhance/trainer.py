"""The enhance training loop: one explicit step for every method.

    trainer = Trainer(cfg); trainer.fit()      # setup -> train -> export

One optimizer step = `accumulation` micro-batches on every rank (see enhance/data.py for who
reads what). Per micro-batch:

    batch = method.preprocess(images)           (data workers)
    batch |= cache.targets(indices)             (cached) or method.encode_targets(batch) (not)
    batch |= feedback.encode_captions(...)      (only for feedback.regularizer.kind=contrastive)
    out = engine(batch, rng)                    encode_condition + denoising_loss (+ regulariser)
    engine.backward(out.loss); engine.step()    DeepSpeed steps the optimizer at the boundary

The `feedback:` options (enhance/feedback.py) apply to every method here and in `Method.forward`:
the method gets them in `build` (`set_feedback`), `param_groups` holds the tower's groups for
`feedback.tower_warmup_steps`, and they are part of the run's identity and of genfeedback.json.

The noise generator and torch's global RNG are reseeded from (data.seed, global micro-batch
index) before every micro-batch, so the noise an image gets does not depend on the world size
or on where a run was resumed. Checkpoints still carry every RNG state.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch

from enhance import cache as latent_cache
from enhance.config import ConfigError, EnhanceConfig
from enhance.data import BadImageTracker, MicroBatches, collate_identity, open_source
from enhance.methods.base import Method, get_method
from llava_plugin import distributed
from llava_plugin.errors import naming_disk_full, tensor_bytes
from llava_plugin.train import deepspeed as ds
from llava_plugin.train.checkpoint import append_metrics, files_bytes, files_fingerprint, step_dir_name
from llava_plugin.train.loop import HELD_STEPS_KEY, Trainer
from llava_plugin.train.plan import PlanSampler, StreamOrder

logger = logging.getLogger("enhance")

EXPORT_DIR = "vision_tower"
EXPORTS_DIR = "exports"  # OUTPUT/exports/step-NNNNNNNN: the towers of export.at_steps / every_steps


def micro_seed(seed: int, micro_index: int) -> int:
    """The seed of one global micro-batch's noise (world-size and resume independent)."""
    return int(np.random.SeedSequence([seed, micro_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device, float_dtype: torch.dtype) -> dict:
    """Move a batch; floating tensors take the training precision (ints, e.g. VQ ids, keep theirs)."""
    return {k: v.to(device=device, dtype=float_dtype if v.is_floating_point() else v.dtype, non_blocking=True)
            for k, v in batch.items()}


def _plain(obj):
    return asdict(obj) if is_dataclass(obj) else obj


class EnhanceTrainer(Trainer):
    """The shared loop plus what only enhance has: a method around the tower, per-micro-batch
    reseeding, bad-image accounting, the latent cache, the start-of-run diagnostic, the tower export."""

    name = "enhance"
    keep_fp32_untrained = True  # the exported tower is fp32, its untouched weights bit-exact

    def __init__(self, cfg: EnhanceConfig):
        cfg.require_run_fields()
        super().__init__(cfg)
        self.diagnosis: dict | None = None
        self.images_tried = 0  # read attempts (retries included) over all ranks, whole run (restored on resume)

    # ------------------------------------------------------------------ setup
    def build(self) -> Method:
        from llava_plugin.registry import load_tower

        cfg = self.cfg
        self.source = open_source(cfg.data.source, caption_key=cfg.data.caption_key)
        if cfg.feedback.needs_captions:
            missing = self.source.missing_captions()
            if missing:
                raise ConfigError(
                    f"feedback.regularizer.kind=contrastive needs each image's caption, but {missing}: pass --data "
                    f"a .jsonl list whose rows carry one (field data.caption_key={cfg.data.caption_key!r}) or "
                    "webdataset shards with KEY.txt captions, or use feedback.regularizer.kind=distill")
        method_cls = get_method(cfg.method_name)
        self.method_config = cfg.method_config()
        tower = load_tower(cfg.vision_tower)
        self.method: Method = method_cls(self.method_config, tower, cfg.generator)
        self.method.set_feedback(cfg.feedback)  # before the casts below: a regulariser's frozen parts follow them
        if cfg.precision.gradient_checkpointing:
            enable = getattr(tower.model, "gradient_checkpointing_enable", None)
            if enable is None:
                raise ConfigError(f"precision.gradient_checkpointing=true but the {tower.family} tower model "
                                  f"{type(tower.model).__name__} does not support it; set it to false")
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.method.to(self.device)
        # DeepSpeed puts only registered parameters in bf16; the frozen generator takes the run's
        # precision here (so cached and uncached targets are computed identically).
        for module in self.method.frozen.values():
            if any(p.dtype != self.dtype for p in module.parameters() if p.is_floating_point()):
                module.to(self.dtype)  # (a no-op cast would still make diffusers warn about fp32 modules)
        self.order = StreamOrder(len(self.source), cfg.batch.micro_batch_size, seed=cfg.data.seed,
                                 shuffle=cfg.data.shuffle)
        self.tracker = BadImageTracker(cfg.data.max_bad_fraction, cfg.data.bad_check_after, self.order)
        self.method.train()
        return self.method

    def param_groups(self, module: Method) -> list[dict]:
        """The method's groups; with feedback.tower_warmup_steps, each split into its tower part (held
        for those steps) and the rest, same options. The tower's parameters are told apart by
        identity (`module.tower.parameters()`), so no method has to mark its groups."""
        groups = [g for g in module.trainable_parameters() if g["params"]]
        if not groups:
            raise ConfigError(f"method {self.cfg.method_name!r} has no trainable parameters")
        warmup = self.cfg.feedback.tower_warmup_steps
        if not warmup:
            return groups
        tower = {id(p) for p in module.tower.parameters()}
        split = []
        for group in groups:
            mine = [p for p in group["params"] if id(p) in tower]
            rest = [p for p in group["params"] if id(p) not in tower]
            if mine:
                split.append({**group, "params": mine, HELD_STEPS_KEY: warmup})
            if rest:
                split.append({**group, "params": rest})
        if not any(HELD_STEPS_KEY in g for g in split):
            logger.info("feedback.tower_warmup_steps=%d: the tower does not train in this run; nothing to hold",
                        warmup)
        return split

    def num_steps_per_epoch(self) -> float:
        return len(self.source) / self.cfg.batch.global_batch_size

    def setup_hook(self) -> None:
        self.cache = self._latent_cache() if self.cfg.cache.latents else None

    def start_hook(self) -> None:
        if self.cfg.diagnose.images:
            self._diagnose_at_start()  # on the engine's module: the precision (and partitioning) it trains in
        if self.cfg.diagnose.pairs and "start" not in self._pairs_diagnosis():
            self._diagnose_pairs("start")

    PAIRS_FILE = "diagnosis_pairs.json"

    def _pairs_diagnosis(self) -> dict:
        path = self.out / self.PAIRS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _diagnose_pairs(self, when: str) -> dict:
        """The per-attribute gap (enhance.diagnose.attribute_gap) at `when` (start | end), on every rank
        (ZeRO-3 gathers on use); rank 0 records it."""
        from enhance.diagnose import attribute_gap, read_pairs

        result = attribute_gap(self.method, read_pairs(self.cfg.diagnose.pairs), seed=self.cfg.seed, device=self.device)
        result["step"] = self.step
        if distributed.is_main():
            record = {**self._pairs_diagnosis(), when: result}
            tmp = self.out / f".incomplete-{self.PAIRS_FILE}"
            tmp.write_text(json.dumps(record, indent=2))
            tmp.rename(self.out / self.PAIRS_FILE)
            gaps = {a: round(v["relative_gap"], 4) for a, v in result["attributes"].items()}
            logger.info("generator's use of each attribute at the %s (relative loss gap, own vs partner condition): %s",
                        when, gaps)
        return result

    def run_identity(self) -> dict:
        cfg = self.cfg
        return {"method": cfg.method, "vision_tower": cfg.vision_tower, "generator": cfg.generator,
                "data.source": cfg.data.source, "data.seed": cfg.data.seed, "data.shuffle": cfg.data.shuffle,
                "optim.name": cfg.optim.name, "feedback": asdict(cfg.feedback),  # a control is another run
                "files.vision_tower": files_fingerprint(cfg.vision_tower),  # re-exported in place is another run
                "files.generator": files_fingerprint(cfg.generator)}

    def trainer_state(self) -> dict:
        return {"images_tried": self.images_tried,
                "bad_images": [[index, key, reason] for index, (key, reason) in sorted(self.tracker.bad.items())],
                "noise_rng": "reseeded per micro-batch from (data.seed, global micro-batch index); "
                             f"next micro-batch index {self.step * self.plan.micro_per_step}"}

    def load_trainer_state(self, state: dict) -> None:
        self.images_tried = state["images_tried"]
        if "bad_images" in state:
            self.tracker.bad = {int(index): (key, reason) for index, key, reason in state["bad_images"]}
        else:  # a checkpoint of before the distinct-file count: rank 0's bad files, by key
            index_of = {key: i for i, key in enumerate(self.source.keys())}
            self.tracker.bad = {index_of[key]: (key, reason) for key, reason in state["bad_on_rank0"].items()}

    def _diagnose_at_start(self) -> None:
        from enhance.diagnose import condition_gap, sample_indices

        cfg = self.cfg.diagnose
        indices = sample_indices(self.source, cfg.images, seed=self.cfg.data.seed + 1)
        result = condition_gap(self.method, self.source, indices, bands=cfg.bands,
                               seed=self.cfg.seed, device=self.device, batch_size=cfg.images)
        # The warning is about the tower drifting; when the tower does not train (GenHancer stage 1
        # trains a fresh generator that starts out ignoring every condition), there is nothing to warn of.
        tower_params = {id(p) for p in self.method.tower.parameters()}
        tower_trains = any(id(p) in tower_params for g in self.method.trainable_parameters() for p in g["params"])
        result["tower_trains"] = tower_trains
        result["warning"] = tower_trains and result["relative_gap"] < cfg.min_relative_gap
        self.diagnosis = result
        if distributed.is_main():
            (self.out / "diagnosis_start.json").write_text(json.dumps(result, indent=2))
            append_metrics(self.metrics_file, {"event": "diagnosis", "step": 0, "loss": result["loss"],
                                 "condition_gap": result["gap"], "relative_gap": result["relative_gap"],
                                 "ignores_condition": result["warning"]})
            if result["warning"]:
                logger.warning(
                    "\n%s\nCONDITION GAP NEAR ZERO: the generator's loss with each image's own condition (%.5f) is "
                    "about the same as with a shuffled one (relative gap %.4f < diagnose.min_relative_gap=%s).\n"
                    "The generator ignores the tower, so its feedback can only make the encoder drift. Check "
                    "the generator/method pairing before training.\n%s",
                    "!" * 78, result["loss"], result["relative_gap"], cfg.min_relative_gap, "!" * 78)

    def _latent_cache(self) -> latent_cache.LatentCache:
        cfg = self.cfg
        cache_dir = Path(cfg.cache.dir) if cfg.cache.dir else self.out / "latent_cache"
        manifest = latent_cache.expected_manifest(
            method_name=cfg.method_name, method_config=_plain(self.method_config), generator=cfg.generator,
            preprocessing={"tower": self.method.tower.image_processor.to_dict(), "method": cfg.method_name},
            dtype=cfg.precision.dtype, source=self.source, shard_size=cfg.cache.shard_size)

        def encode(batch):
            return self.method.encode_targets(to_device(batch, self.device, self.dtype))

        return latent_cache.open_or_build(cache_dir, self.source, manifest, preprocess=self.method.preprocess,
                                          encode=encode, batch_size=cfg.cache.batch_size)

    # ------------------------------------------------------------------ training
    def micro_batches(self, start_step: int, end_step: int):
        dataset = MicroBatches(self.source, self.order, self.method.preprocess,
                               self.cache.targets if self.cache is not None else None,
                               captions=self.cfg.feedback.needs_captions,
                               crop=((self.cfg.data.seed, tuple(self.cfg.data.crop_scale))
                                     if self.cfg.data.augment == "random_resized_crop" else None))
        sampler = PlanSampler(self.plan, start_step, end_step)
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                                           collate_fn=collate_identity, persistent_workers=False,
                                           prefetch_factor=2 if workers else None)

    def forward_backward_step(self, item: dict) -> dict[str, float]:
        batch = to_device(item["batch"], self.device, self.dtype)
        if self.cache is None:
            with torch.no_grad():
                batch.update(self.method.encode_targets(batch))
        if "captions" in item:  # frozen text tower, outside the engine (it is not a trained parameter)
            batch.update(self.method.feedback.encode_captions(self.method, item["captions"]))
        seed = micro_seed(self.cfg.data.seed, item["micro_index"])
        torch.manual_seed(seed)  # dropout etc.: same for an image whatever the world size
        rng = torch.Generator(device=self.device).manual_seed(seed)
        out = self.engine(batch, rng)
        self.backward_step(out.loss)
        self.tracker.add(item["bad"])
        sums = {f"metric/{k}": float(v) for k, v in out.metrics.items() if k != "loss"}
        return {"loss": float(out.loss.detach().float()), "tried": item["tried"], "bad": len(item["bad"]), **sums}

    def step_row(self, sums: dict[str, float], seconds: float) -> dict:
        self.images_tried += int(sums["tried"])
        if sums["bad"]:  # summed over ranks with the rest of the row: all ranks gather, or none does
            self.tracker.gather()
        positions = self.step * self.cfg.batch.global_batch_size
        self.tracker.check(positions)
        count = sums["micro_batches"]
        row = {"loss": sums["loss"] / count,
               "images_per_s": self.cfg.batch.global_batch_size / max(seconds, 1e-9),
               "epoch": round(self.order.epoch_of(self.step, self.cfg.batch.global_batch_size), 4),
               "skipped_images": len(self.tracker.bad), "files_read": self.tracker.files_read(positions),
               "images_tried": self.images_tried}
        for key, value in sums.items():
            if key.startswith("metric/"):
                row[key[len("metric/"):]] = value / count
        return row

    # ------------------------------------------------------------------ finish
    def step_hook(self) -> None:
        if self.cfg.export.due(self.step) and self.step < self.max_steps:
            self.write_tower(self.out / EXPORTS_DIR / step_dir_name(self.step), self.export_metadata())

    def export_metadata(self, pairs: dict | None = None, *, final: bool = False) -> dict:
        """genfeedback.json of an export; the final one also proves the generator unchanged (hashing it
        at every intermediate export would cost a read of several GB each time)."""
        cfg = self.cfg
        meta = {
            "method": cfg.method_name, "base_tower": cfg.vision_tower, "generator": cfg.generator,
            "config": cfg.to_dict(), "feedback": asdict(cfg.feedback), "steps": self.step, "world_size": self.world,
            "final_metrics": self.history[-1] if self.history else {}, "skipped_images": len(self.tracker.bad),
            "condition_gap_at_start": self.diagnosis,
            "attribute_gap": {"start": self._pairs_diagnosis().get("start"), "end": pairs} if pairs else None,
        }
        if final:
            meta["generator_fingerprint"] = self.method.frozen_state_fingerprint()
        return meta

    def write_tower(self, export: Path, metadata: dict, *, extras: bool = False) -> None:
        """The tower, exported atomically to `export` (collective: under ZeRO-3 every rank gathers);
        `extras`: also what the method saves beside it (GenHancer stage 1's denoiser)."""
        tmp = export.with_name(f".incomplete-{export.name}")
        with ds.full_weights(self.engine, self.fp32_untrained) as method:
            if distributed.is_main():
                shutil.rmtree(tmp, ignore_errors=True)
                tower = method.export_tower()
                with naming_disk_full(export.parent, lambda: self._export_bytes(tower), cleanup=[tmp]):
                    tower.save_pretrained(tmp, metadata)
                    shutil.rmtree(export, ignore_errors=True)
                    tmp.rename(export)
                    if extras:
                        method.save_extras(self.out)  # e.g. GenHancer stage 1's denoiser, stage 2's --generator
        distributed.barrier()
        if distributed.is_main():
            logger.info("exported the tower at step %d to %s", self.step, export)

    def _export_bytes(self, tower) -> int:
        """About what a tower export writes: the tower, and the base model's other parts saved beside it
        (a CLIPModel's text tower), so at least the base model's own files."""
        return max(tensor_bytes(tower.state_dict()), files_bytes(self.cfg.vision_tower))

    def export(self) -> dict:
        """The bad-image report and the tower export (collective)."""
        cfg = self.cfg
        bad, positions = len(self.tracker.bad), self.step * cfg.batch.global_batch_size
        if bad and distributed.is_main():
            logger.warning("skipped %d unreadable file(s) of %d read (all ranks): %s", bad,
                           self.tracker.files_read(positions), self.tracker.report())
        self.tracker.check(positions, final=True)
        pairs = self._diagnose_pairs("end") if cfg.diagnose.pairs else None
        export = self.out / EXPORT_DIR
        self.write_tower(export, self.export_metadata(pairs, final=True), extras=True)
        final_metrics = self.history[-1] if self.history else {}
        return {"export": str(export), "steps": self.step, "final_metrics": final_metrics, "skipped_images": bad}
