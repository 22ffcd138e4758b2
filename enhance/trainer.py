"""The enhance training loop: one explicit step for every method.

    trainer = Trainer(cfg); trainer.fit()      # setup -> train -> export

One optimizer step = `accumulation` micro-batches on every rank (see enhance/data.py for who
reads what). Per micro-batch:

    batch = method.preprocess(images)           (data workers)
    batch |= cache.targets(indices)             (cached) or method.encode_targets(batch) (not)
    out = engine(batch, rng)                    encode_condition + denoising_loss
    engine.backward(out.loss); engine.step()    DeepSpeed steps the optimizer at the boundary

The noise generator and torch's global RNG are reseeded from (data.seed, global micro-batch
index) before every micro-batch, so the noise an image gets does not depend on the world size
or on where a run was resumed. Checkpoints still carry every RNG state.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch

from enhance import cache as latent_cache
from enhance import distributed
from enhance.config import ConfigError, EnhanceConfig
from enhance.data import BadImageTracker, BatchPlan, MicroBatches, PlanSampler, collate_identity, open_source
from enhance.methods.base import Method, get_method

logger = logging.getLogger("enhance")

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "vision_tower"
METRICS_FILE = "metrics.jsonl"
ENGINE_TAG = "engine"


def micro_seed(seed: int, micro_index: int) -> int:
    """The seed of one global micro-batch's noise (world-size and resume independent)."""
    return int(np.random.SeedSequence([seed, micro_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device, float_dtype: torch.dtype) -> dict:
    """Move a batch; floating tensors take the training precision (ints, e.g. VQ ids, keep theirs)."""
    return {k: v.to(device=device, dtype=float_dtype if v.is_floating_point() else v.dtype, non_blocking=True)
            for k, v in batch.items()}


def lr_lambda(step: int, *, max_steps: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of each group's base lr after `step` optimizer steps: linear warmup, then cosine/constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(cfg: EnhanceConfig, groups: list[dict]) -> torch.optim.Optimizer:
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError(f"method {cfg.method_name!r} has no trainable parameters")
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def _plain(obj):
    return asdict(obj) if is_dataclass(obj) else obj


class Trainer:
    def __init__(self, cfg: EnhanceConfig):
        cfg.require_run_fields()
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.step = 0
        self.history: list[dict] = []
        self.diagnosis: dict | None = None
        self.images_tried = 0  # over all ranks, whole run (restored on resume)
        self.images_skipped = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> Trainer:
        from llava_plugin.registry import load_tower

        cfg = self.cfg
        distributed.init()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.device = distributed.device()
        self.dtype = torch.bfloat16 if cfg.precision.dtype == "bf16" else torch.float32
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        _seed_everything(cfg.seed)

        method_cls = get_method(cfg.method_name)
        self.method_config = cfg.method_config()
        tower = load_tower(cfg.vision_tower)
        self.method: Method = method_cls(self.method_config, tower, cfg.generator)
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
            module.to(self.dtype)

        self.source = open_source(cfg.data.source)
        self.plan = BatchPlan(num_images=len(self.source), global_batch=cfg.data.global_batch_size,
                              micro_batch=cfg.data.micro_batch_size, world_size=self.world, rank=self.rank,
                              seed=cfg.data.seed, shuffle=cfg.data.shuffle)
        self.plan.check()
        self.max_steps = cfg.schedule.max_steps or math.ceil(
            cfg.schedule.epochs * len(self.source) / cfg.data.global_batch_size)
        self.tracker = BadImageTracker(cfg.data.max_bad_fraction, cfg.data.bad_check_after)

        self.cache = self._latent_cache() if cfg.cache.latents else None

        self.fp32_untrained = distributed.untrained_fp32_snapshot(self.method)
        self.method.train()
        optimizer = build_optimizer(cfg, self.method.trainable_parameters())
        warmup = cfg.schedule.warmup_steps or int(cfg.schedule.warmup_ratio * self.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(
            s, max_steps=self.max_steps, warmup=warmup, kind=cfg.schedule.kind, min_ratio=cfg.schedule.min_lr_ratio))
        self.ds_config = distributed.deepspeed_config(
            cfg.deepspeed.load(), global_batch=cfg.data.global_batch_size, micro_batch=cfg.data.micro_batch_size,
            accumulation=self.plan.accumulation, bf16=self.dtype == torch.bfloat16, grad_clip=cfg.optim.grad_clip)
        self.engine = distributed.build_engine(self.method, optimizer, scheduler, self.ds_config)
        resume_dir = self._resume_dir()
        if resume_dir is not None:
            self._load_checkpoint(resume_dir)
        elif cfg.logging.diagnose_images:
            self._diagnose_at_start()  # on the engine's module: the precision (and partitioning) it trains in
        return self

    def _resume_dir(self) -> Path | None:
        mode = self.cfg.checkpointing.resume
        if mode == "none":
            return None
        if mode != "auto":
            return Path(mode)
        done = sorted((self.out / CHECKPOINT_DIR).glob("step-*"))
        return done[-1] if done else None

    def _diagnose_at_start(self) -> None:
        from enhance.diagnose import condition_gap, sample_indices

        cfg = self.cfg.logging
        indices = sample_indices(self.source, cfg.diagnose_images, seed=self.cfg.data.seed + 1)
        result = condition_gap(self.method, self.source, indices, bands=cfg.diagnose_bands,
                               seed=self.cfg.seed, device=self.device, batch_size=cfg.diagnose_images)
        # The warning is about the tower drifting; when the tower does not train (GenHancer stage 1
        # trains a fresh generator that starts out ignoring every condition), there is nothing to warn of.
        tower_params = {id(p) for p in self.method.tower.parameters()}
        tower_trains = any(id(p) in tower_params for g in self.method.trainable_parameters() for p in g["params"])
        result["tower_trains"] = tower_trains
        result["warning"] = tower_trains and result["relative_gap"] < cfg.min_relative_gap
        self.diagnosis = result
        if distributed.is_main():
            (self.out / "diagnosis_start.json").write_text(json.dumps(result, indent=2))
            self._write_metrics({"event": "diagnosis", "step": 0, "loss": result["loss"],
                                 "condition_gap": result["gap"], "relative_gap": result["relative_gap"],
                                 "ignores_condition": result["warning"]})
            if result["warning"]:
                logger.warning(
                    "\n%s\nCONDITION GAP NEAR ZERO: the generator's loss with each image's own condition (%.5f) is "
                    "about the same as with a shuffled one (relative gap %.4f < logging.min_relative_gap=%s).\n"
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

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Atomic: written under .incomplete-step-N, renamed to step-N once every rank is done."""
        root = self.out / CHECKPOINT_DIR
        final = root / f"step-{self.step:07d}"
        tmp = root / f".incomplete-step-{self.step:07d}"
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        self.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, client_state={"step": self.step}, save_latest=False)
        torch.save(_rng_state(), tmp / f"rng-rank{self.rank:05d}.pt")
        if distributed.is_main():
            state = {"step": self.step, "world_size": self.world, "run": self._run_identity(),
                     "images_tried": self.images_tried,
                     "images_skipped": self.images_skipped, "bad_on_rank0": self.tracker.bad,
                     "noise_rng": "reseeded per micro-batch from (data.seed, global micro-batch index); "
                                  f"next micro-batch index {self.step * self.plan.micro_per_step}"}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        distributed.barrier()
        if distributed.is_main():
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in sorted(root.glob("step-*"))[: -self.cfg.checkpointing.keep_last]:
                shutil.rmtree(old)
        distributed.barrier()
        return final

    def _run_identity(self) -> dict:
        """What a checkpoint must share with the run resuming it (else the resume is another run)."""
        cfg = self.cfg
        return {"method": cfg.method, "vision_tower": cfg.vision_tower, "generator": cfg.generator,
                "data.source": cfg.data.source, "data.global_batch_size": cfg.data.global_batch_size,
                "data.seed": cfg.data.seed, "data.shuffle": cfg.data.shuffle, "optim.name": cfg.optim.name}

    def _load_checkpoint(self, ckpt: Path) -> None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["world_size"] != self.world:
            raise ConfigError(
                f"checkpoint {ckpt} was written by {state['world_size']} rank(s), this run has {self.world}: ZeRO "
                "partitions the optimizer state by rank, so resume with the same number of processes (the data "
                "order and global batch do not depend on it)")
        saved, now = state["run"], json.loads(json.dumps(self._run_identity()))
        for key in now:
            if saved.get(key) != now[key]:
                raise ConfigError(
                    f"checkpoint {ckpt} belongs to another run: its {key} is {saved.get(key)!r}, this run's is "
                    f"{now[key]!r}. Use a new --output, or --set checkpointing.resume=none to start over")
        if distributed.is_main() and (self.out / METRICS_FILE).is_file():
            # drop rows logged after the checkpoint (a run killed between checkpoints), so the curve has no repeats
            lines = (self.out / METRICS_FILE).read_text().splitlines()
            kept = [line for line in lines if json.loads(line).get("step", 0) <= state["step"]]
            (self.out / METRICS_FILE).write_text("".join(line + "\n" for line in kept))
        _, client = self.engine.load_checkpoint(str(ckpt), tag=ENGINE_TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        self.step = int(client["step"]) if client else int(state["step"])
        self.images_tried = state["images_tried"]
        self.images_skipped = state["images_skipped"]
        if self.rank == 0:
            self.tracker.bad = dict(state["bad_on_rank0"])
        rng_file = ckpt / f"rng-rank{self.rank:05d}.pt"
        _set_rng_state(torch.load(rng_file, weights_only=False))
        logger.info("resumed from %s at step %d", ckpt, self.step)

    # ------------------------------------------------------------------ training
    def _loader(self, end_step: int):
        dataset = MicroBatches(self.source, self.plan, self.method.preprocess,
                               self.cache.targets if self.cache is not None else None)
        sampler = PlanSampler(self.plan, self.step, end_step)
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                                           collate_fn=collate_identity, persistent_workers=False,
                                           prefetch_factor=2 if workers else None)

    def _micro_step(self, item: dict) -> tuple[float, dict[str, float]]:
        batch = to_device(item["batch"], self.device, self.dtype)
        if self.cache is None:
            with torch.no_grad():
                batch.update(self.method.encode_targets(batch))
        seed = micro_seed(self.cfg.data.seed, item["micro_index"])
        torch.manual_seed(seed)  # dropout etc.: same for an image whatever the world size
        rng = torch.Generator(device=self.device).manual_seed(seed)
        out = self.engine(batch, rng)
        self.engine.backward(out.loss)
        self.engine.step()
        return float(out.loss.detach().float()), dict(out.metrics)

    def train(self, num_steps: int | None = None) -> list[dict]:
        """Run optimizer steps until max_steps (or `num_steps` more); returns their metrics rows."""
        from tqdm import tqdm

        end = self.max_steps if num_steps is None else min(self.max_steps, self.step + num_steps)
        rows: list[dict] = []
        if self.step >= end:
            return rows
        every = self.cfg.checkpointing.every_steps
        bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (distributed.is_main() and self.cfg.logging.progress_bar))
        losses: list[float] = []
        metric_sums: dict[str, float] = {}
        tried = bad = 0
        start = time.perf_counter()
        for item in self._loader(end):
            if not losses:
                lr = float(self.engine.get_lr()[0])  # the lr this step trains with
            loss, metrics = self._micro_step(item)
            losses.append(loss)
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
            tried += item["tried"]
            bad += len(item["bad"])
            self.tracker.add(item["tried"], item["bad"])
            if len(losses) < self.plan.accumulation:
                continue
            self.step += 1
            row = self._step_row(losses, metric_sums, tried, bad, time.perf_counter() - start, lr)
            rows.append(row)
            self.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", img_s=f"{row['images_per_s']:.1f}",
                            skipped=row["skipped_images"])
            if distributed.is_main() and (self.step % self.cfg.logging.every_steps == 0 or self.step == end):
                self._write_metrics(row)
            if every and self.step % every == 0 and self.step < self.max_steps:
                self.save_checkpoint()
            losses, metric_sums, tried, bad = [], {}, 0, 0
            start = time.perf_counter()
        bar.close()
        return rows

    def _step_row(self, losses, metric_sums, tried, bad, seconds, lr) -> dict:
        keys = sorted(metric_sums)
        totals = distributed.all_reduce_sum(
            [sum(losses), float(len(losses)), float(tried), float(bad), seconds] + [metric_sums[k] for k in keys])
        loss_sum, count, tried_all, bad_all, seconds_all = totals[:5]
        self.images_tried += int(tried_all)
        self.images_skipped += int(bad_all)
        self.tracker.check(self.images_tried, self.images_skipped)
        seconds_per_rank = seconds_all / self.world
        row = {"step": self.step, "loss": loss_sum / count, "lr": lr,
               "images_per_s": self.cfg.data.global_batch_size / max(seconds_per_rank, 1e-9),
               "epoch": round(self.plan.epoch_of(self.step), 4),
               "skipped_images": self.images_skipped, "images_tried": self.images_tried}
        for key, value in zip(keys, totals[5:]):
            if key != "loss":
                row[key] = value / count
        return row

    def _write_metrics(self, row: dict) -> None:
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ finish
    def finish(self) -> dict:
        """Final checkpoint, bad-image report and the export (collective)."""
        cfg = self.cfg
        if self.step and not (self.out / CHECKPOINT_DIR / f"step-{self.step:07d}").is_dir():
            self.save_checkpoint()
        tried, bad = self.images_tried, self.images_skipped
        if bad and distributed.is_main():
            logger.warning("skipped %d unreadable image(s) of %d tried (all ranks); rank 0 saw: %s",
                           bad, tried, self.tracker.report())
        self.tracker.check(tried, bad, final=True)
        final_metrics = self.history[-1] if self.history else {}
        metadata = {
            "method": cfg.method_name, "base_tower": cfg.vision_tower, "generator": cfg.generator,
            "config": cfg.to_dict(), "steps": self.step, "world_size": self.world,
            "final_metrics": final_metrics, "skipped_images": bad,
            "condition_gap_at_start": self.diagnosis,
            "generator_fingerprint": self.method.frozen_state_fingerprint(),
        }
        export = self.out / EXPORT_DIR
        tmp = self.out / f".incomplete-{EXPORT_DIR}"
        with distributed.full_precision_weights(self.engine, self.fp32_untrained) as method:
            if distributed.is_main():
                shutil.rmtree(tmp, ignore_errors=True)
                method.export_tower().save_pretrained(tmp, metadata)
                shutil.rmtree(export, ignore_errors=True)
                tmp.rename(export)
                method.save_extras(self.out)  # e.g. GenHancer stage 1's denoiser, stage 2's --generator
        distributed.barrier()
        if distributed.is_main():
            logger.info("exported the enhanced tower to %s", export)
        return {"export": str(export), "steps": self.step, "final_metrics": final_metrics, "skipped_images": bad}

    def fit(self) -> dict:
        self.setup()
        self.train()
        return self.finish()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
