"""The LLaVA-1.5 training loop (pretrain or finetune) on DeepSpeed ZeRO-2/3.

    Trainer(cfg).fit()        # setup -> (resume) -> train -> export

One optimizer step consumes one global batch of `global_batch_size` samples, cut into
`global / micro` micro-batches: micro-batch j of a step goes to rank j % world at
accumulation index j // world. The plan of steps depends only on (data, seed, epoch, batch
sizes), never on the world size, so 1 and N processes see the same global batches, and a
resumed run continues exactly where the checkpoint was taken.

Per micro-batch: `loss = engine(**batch).loss; engine.backward(loss); engine.step()`
(DeepSpeed scales by 1/accumulation and steps the optimizer at the boundary).

Output directory: `metrics.jsonl` (one line per logged step), `config.json` (the resolved
config), `checkpoints/step_XXXXXXXX/` (written to a temp name, renamed when complete;
`checkpoints/latest` names the newest), `llava/` (the HF Llava export) and, after
pretraining, `mm_projector.bin`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from llava_plugin import distributed
from mllm_train.config import ConfigError, TrainConfig, deepspeed_json
from mllm_train.conversation import get_template
from mllm_train.data import Collator, LlavaDataset, ModalityLengthGroupedBatchSampler, default_pad_token_id
from mllm_train.export import export_llava
from mllm_train.model import build_model, param_groups, training_dtype, unwrap
from mllm_train.packing import PackedCollator, num_sequences

logger = logging.getLogger("mllm_train")

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
ENGINE_TAG = "engine"
EXPORT_DIR = "llava"
PROJECTOR_FILE = "mm_projector.bin"
METRICS_FILE = "metrics.jsonl"


# ---- the data plan ---------------------------------------------------------------------------
def epoch_plan(lengths: list[int], has_image: list[bool], cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """Step -> its `global / micro` micro-batches of dataset indices, for one epoch.

    Grouped (LLaVA's group_by_modality_length): each step is all-image or all-text and its
    micro-batches have similar total length (mllm_train.data's sampler, with one "rank" per
    micro-batch). Otherwise a seeded shuffle cut into steps. A last partial step is padded
    by repeating its own samples up to a multiple of the micro-batch count.
    """
    chunks = cfg.global_batch_size // cfg.micro_batch_size
    if cfg.group_by_modality_length:
        sampler = ModalityLengthGroupedBatchSampler(lengths, has_image, cfg.micro_batch_size, world_size=chunks,
                                                    rank=0, seed=cfg.seed)
        sampler.set_epoch(epoch)
        return sampler.steps()
    order = list(range(len(lengths)))
    random.Random(f"{cfg.seed}/{epoch}").shuffle(order)
    plan = []
    for start in range(0, len(order), cfg.global_batch_size):
        step = order[start:start + cfg.global_batch_size]
        step = step + [step[j % len(step)] for j in range(-len(step) % chunks)]
        per = len(step) // chunks
        plan.append([step[k * per:(k + 1) * per] for k in range(chunks)])
    return plan


def rank_batches(plan: list[list[list[int]]], start_step: int, rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches from `start_step` on, in order (accumulation index inner)."""
    accumulation = len(plan[0]) // world if plan else 0
    return [step[a * world + rank] for step in plan[start_step:] for a in range(accumulation)]


def lr_lambda(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """HF's linear-warmup-then-cosine-to-0 multiplier (LLaVA's lr_scheduler_type cosine)."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def deepspeed_config(cfg: TrainConfig, accumulation: int) -> dict:
    """The ZeRO JSON with this run's batch sizes, precision and clipping filled in."""
    path = deepspeed_json(cfg.deepspeed)
    ds = json.loads(path.read_text())
    for block in ("optimizer", "scheduler", "fp16"):
        if block in ds:
            raise ConfigError(f"{path}: remove the {block!r} block (the trainer passes a torch optimizer and "
                              f"scheduler; fp16 is not supported, use precision: bf16)")
    ds.update(train_batch_size=cfg.global_batch_size, train_micro_batch_size_per_gpu=cfg.micro_batch_size,
              gradient_accumulation_steps=accumulation, gradient_clipping=cfg.optim.grad_clip,
              bf16={"enabled": cfg.precision == "bf16"}, zero_allow_untested_optimizer=True,
              steps_per_print=ds.get("steps_per_print", 10 ** 9), wall_clock_breakdown=False)
    return ds


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.step = 0  # optimizer steps done
        self.engine = None

    # ---- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        import deepspeed

        cfg = self.cfg
        distributed.init()
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.accumulation = cfg.accumulation(self.world)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32

        model, self.processor = build_model(cfg)
        llava = unwrap(model)
        self.dataset = LlavaDataset(
            cfg.data, self.processor.tokenizer, get_template(cfg.template), self.processor.image_processor,
            image_token_id=llava.config.image_token_id, num_image_tokens=llava.config.image_seq_length)
        self.collator = (PackedCollator() if cfg.pack_sequences
                         else Collator(default_pad_token_id(self.processor.tokenizer)))
        self.zero_stage = int(json.loads(deepspeed_json(cfg.deepspeed).read_text())
                              .get("zero_optimization", {}).get("stage", 0))
        mixed = len(set(self.dataset.has_image)) > 1
        if mixed and self.zero_stage == 3 and not cfg.group_by_modality_length and self.world > 1:
            raise ConfigError(f"{cfg.data.data_path} mixes image and text-only samples: under ZeRO-3 every rank "
                              f"must run the tower together, so set group_by_modality_length: true")
        self.steps_per_epoch = len(self._plan(0))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch  # max_steps overrides epochs
        warmup = math.ceil(cfg.optim.warmup_ratio * self.total_steps)

        groups = param_groups(model, cfg.optim)
        optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, total=self.total_steps, warmup=warmup, schedule=cfg.optim.schedule))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=deepspeed_config(cfg, self.accumulation))
        self.float_dtype = training_dtype(cfg)
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
            logger.info("data: %s", self.dataset.skip_report())
        self._resume()

    def _plan(self, epoch: int):
        return epoch_plan(self.dataset.lengths, self.dataset.has_image, self.cfg, epoch)

    # ---- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out / CHECKPOINT_DIR

    def save_checkpoint(self) -> Path:
        """Collective. Written under a temp name and renamed once every rank has finished, so a
        crash mid-save never leaves a checkpoint that looks complete."""
        final = self.checkpoint_root / f"step_{self.step:08d}"
        tmp = self.checkpoint_root / f".tmp_step_{self.step:08d}"
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        # frozen weights (tower, base LLM) are rebuilt from their sources on resume
        self.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, exclude_frozen_parameters=True)
        torch.save(_rng_state(), tmp / f"rng_rank{self.rank}.pt")
        distributed.barrier()
        if distributed.is_main():
            state = {"step": self.step, "world_size": self.world, "total_steps": self.total_steps,
                     "steps_per_epoch": self.steps_per_epoch, "seed": self.cfg.seed}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            latest_tmp = self.checkpoint_root / f".{LATEST_FILE}.tmp"
            latest_tmp.write_text(final.name)
            os.replace(latest_tmp, self.checkpoint_root / LATEST_FILE)
            complete = sorted(p for p in self.checkpoint_root.glob("step_*") if p.is_dir())
            for old in complete[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old)
        distributed.barrier()
        return final

    def _resume(self) -> None:
        latest = self.checkpoint_root / LATEST_FILE
        if not latest.is_file():
            return
        path = self.checkpoint_root / latest.read_text().strip()
        state = json.loads((path / STATE_FILE).read_text())
        for key, now in (("world_size", self.world), ("total_steps", self.total_steps),
                         ("steps_per_epoch", self.steps_per_epoch), ("seed", self.cfg.seed)):
            if state[key] != now:
                raise ConfigError(f"cannot resume {path}: it was written with {key}={state[key]}, this run has "
                                  f"{now}; resume with the same config and world size, or use a new --output")
        # strict=False because frozen weights were excluded from the checkpoint on purpose
        self.engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_module_strict=False)
        rng_file = path / f"rng_rank{self.rank}.pt"
        _set_rng_state(torch.load(rng_file, weights_only=False))
        self.step = state["step"]
        if distributed.is_main():
            metrics = self.out / METRICS_FILE
            if metrics.is_file():  # drop lines from after the checkpoint: they will be trained again
                kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= self.step]
                metrics.write_text("".join(line + "\n" for line in kept))
            logger.info("resumed from %s at step %d", path, self.step)

    # ---- training ------------------------------------------------------------------------
    def _micro_batches(self):
        """(epoch, this rank's micro-batches) from the current step on."""
        epoch, start = divmod(self.step, self.steps_per_epoch)
        while True:
            yield epoch, rank_batches(self._plan(epoch), start, self.rank, self.world)
            epoch, start = epoch + 1, 0

    def _loader(self, batches: list[list[int]]):
        # A private generator: a DataLoader iterator otherwise draws its base seed from the global
        # RNG, which would shift the dropout draws of a resumed run against an uninterrupted one.
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collator,
                                           num_workers=self.cfg.num_workers, generator=torch.Generator(),
                                           persistent_workers=False, pin_memory=torch.cuda.is_available())

    def _to_device(self, batch: dict) -> dict:
        device = self.engine.device
        return {k: v.to(device=device, dtype=self.float_dtype if v.is_floating_point() else v.dtype)
                for k, v in batch.items()}

    def train(self, stop_after: int | None = None) -> bool:
        """Train to `total_steps`; True when done. `stop_after` ends this session after that many
        steps with a checkpoint (for time-limited jobs: rerun the same command to resume)."""
        from tqdm import tqdm

        cfg, engine = self.cfg, self.engine
        engine.train()
        session_steps, done = 0, self.step >= self.total_steps
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not distributed.is_main(), desc=cfg.stage)
        acc = {"loss": 0.0, "tokens": 0.0, "samples": 0.0, "micro": 0.0}
        start_time = time.perf_counter()
        for epoch, batches in self._micro_batches():
            if done:
                break
            for index, batch in enumerate(self._loader(batches)):
                batch = self._to_device(batch)
                loss = engine(**batch, use_cache=False).loss
                engine.backward(loss)
                engine.step()
                acc["loss"] += float(loss.detach())
                acc["tokens"] += float((batch["labels"] != -100).sum())
                acc["samples"] += num_sequences(batch)
                acc["micro"] += 1
                if (index + 1) % self.accumulation:
                    continue
                self.step += 1
                session_steps += 1
                bar.update(1)
                if self.step % cfg.log_steps == 0 or self.step == self.total_steps:
                    self._log(epoch, acc, time.perf_counter() - start_time, bar)
                acc = dict.fromkeys(acc, 0.0)
                start_time = time.perf_counter()
                done = self.step >= self.total_steps
                stopping = stop_after is not None and session_steps >= stop_after and not done
                if (cfg.save_steps and self.step % cfg.save_steps == 0) or stopping:
                    self.save_checkpoint()
                if done or stopping:
                    break
            if stop_after is not None and session_steps >= stop_after:
                break
        bar.close()
        return done

    def _log(self, epoch: int, acc: dict, seconds: float, bar) -> None:
        loss_sum, micro, tokens, samples = distributed.all_reduce_sum(
            [acc["loss"], acc["micro"], acc["tokens"], acc["samples"]])
        if not distributed.is_main():
            return
        grad_norm = self.engine.get_global_grad_norm()
        line = {"step": self.step, "epoch": epoch, "loss": loss_sum / max(micro, 1),
                "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.engine.optimizer.param_groups)},
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "supervised_tokens": int(tokens), "samples": int(samples), "seconds": round(seconds, 4)}
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")
        bar.set_postfix(loss=f"{line['loss']:.4f}")

    # ---- export --------------------------------------------------------------------------
    def export(self) -> Path | None:
        cfg = self.cfg
        lora_scaling = cfg.lora.alpha / cfg.lora.r if cfg.lora.enabled else None
        projector = self.out / PROJECTOR_FILE if cfg.stage == "pretrain" else None
        metadata = {"stage": cfg.stage, "steps": self.step, "vision_tower": cfg.model.vision_tower,
                    "llm": cfg.model.llm, "init_from": cfg.model.init_from, "template": cfg.template,
                    "image_aspect_ratio": cfg.data.image_aspect_ratio, "lora": asdict(cfg.lora) if cfg.lora.enabled
                    else None, "pretrained_projector": cfg.model.pretrained_projector}
        return export_llava(self.engine, self.processor, self.out / EXPORT_DIR, lora_scaling=lora_scaling,
                            projector_file=projector, metadata=metadata)

    def fit(self, stop_after: int | None = None) -> Path | None:
        """setup, train, export; returns the export dir (rank 0) or None if stopped early."""
        if self.engine is None:
            self.setup()
        if not self.train(stop_after):
            return None
        return self.export()
