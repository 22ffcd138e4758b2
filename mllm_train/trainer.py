"""The LLaVA-1.5 training stage (pretrain or finetune) on the shared loop (llava_plugin.train).

    LlavaTrainer(cfg).fit()        # setup -> (resume) -> train -> export

What is LLaVA's here: the model (tower + projector + LLM, frozen per stage), the dataset with its
chat template and label masks, the per-epoch plan of whole steps (a seeded shuffle, or LLaVA's
grouping by modality and length), and the export as an HF Llava directory (plus
`mm_projector.bin` after pretraining). The plan depends only on (data, seed, epoch, batch sizes),
never on the world size, so 1 and N processes see the same global batches, and a resumed run
continues exactly where the checkpoint was taken.

Output directory: `metrics.jsonl`, `config.json` (the resolved config), `checkpoints/step-N/`
(llava_plugin.train.checkpoint), `llava/` (the HF Llava export) and, after pretraining,
`mm_projector.bin`.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from llava_plugin import distributed
from llava_plugin.train import deepspeed as ds
from llava_plugin.train.checkpoint import config_identity, files_fingerprint
from llava_plugin.train.loop import Trainer
from llava_plugin.train.plan import EpochOrder, modality_length_steps, shuffled_steps
from mllm_train.config import ConfigError, TrainConfig
from mllm_train.conversation import get_template
from mllm_train.data import Collator, LlavaDataset, WithSkips, default_pad_token_id
from mllm_train.export import export_llava
from mllm_train.model import build_model, param_groups, unwrap
from mllm_train.packing import PackedCollator, num_positions, num_sequences

logger = logging.getLogger("mllm_train")

EXPORT_DIR = "llava"
# config fields a resumed session may change; every other field is part of the run's identity
# (max_steps, seed and global batch are checked by the shared loop, resolved)
SESSION_FIELDS = ("output_dir", "checkpointing", "logging", "data.num_workers", "data.skip_bad_samples",
                  "data.max_skip_fraction", "data.verify", "model.attn_implementation", "precision.tf32",
                  "precision.gradient_checkpointing", "schedule.max_steps", "schedule.epochs", "seed",
                  "batch.global_batch_size", "model.projector_any_tower")
PROJECTOR_FILE = "mm_projector.bin"


def epoch_steps(lengths: list[int], has_image: list[bool], cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """Step -> its `global / micro` micro-batches of dataset indices, for one epoch: LLaVA's
    group_by_modality_length (each step all-image or all-text, length-balanced micro-batches), or
    a seeded shuffle. A last partial step repeats its own samples up to whole micro-batches."""
    chunks = cfg.batch.global_batch_size // cfg.batch.micro_batch_size
    if cfg.data.group_by_modality_length:
        return modality_length_steps(lengths, has_image, cfg.batch.micro_batch_size, chunks, cfg.data.seed, epoch,
                                     megabatch_mult=cfg.data.length_group_megabatches)
    return shuffled_steps(len(lengths), cfg.batch.global_batch_size, cfg.batch.micro_batch_size, cfg.data.seed,
                          epoch)


class LlavaTrainer(Trainer):
    name = "llava"
    # the tower and base LLM are rebuilt from their sources on resume; LLaVA keeps only the last
    # checkpoints it was asked for (no extra one at the end, which at 7B would be ~100 GB)
    exclude_frozen_from_checkpoints = True
    checkpoint_at_end = False

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.name = cfg.stage
        self.pending_skips: list[str] = []  # this rank's skips since the last step row
        self.skipped_in_training: set[str] = set()  # all ranks', restored on resume

    # ------------------------------------------------------------------ setup
    def build(self) -> torch.nn.Module:
        cfg = self.cfg
        model, self.processor = build_model(cfg)
        llava = unwrap(model)
        # the tower never trains: under ZeRO-3 it stays whole on every rank, unhooked (FrozenOutside)
        self.tower_outside = (ds.FrozenOutside(llava.model, "vision_tower", self.device)
                              if self.zero_stage == 3 else None)
        self.dataset = LlavaDataset(
            cfg.data, self.processor.tokenizer, get_template(cfg.template), self.processor.image_processor,
            image_token_id=llava.config.image_token_id, num_image_tokens=llava.config.image_seq_length)
        self.collator = (PackedCollator() if cfg.data.pack_sequences
                         else Collator(default_pad_token_id(self.processor.tokenizer)))
        mixed = len(set(self.dataset.has_image)) > 1
        if mixed and self.zero_stage == 3 and not cfg.data.group_by_modality_length and self.world > 1:
            raise ConfigError(f"{cfg.data.data_path} mixes image and text-only samples: under ZeRO-3 every rank "
                              f"must run the projector together, so set data.group_by_modality_length: true")
        self.order = EpochOrder(lambda epoch: epoch_steps(self.dataset.lengths, self.dataset.has_image, cfg, epoch))
        if distributed.is_main():
            logger.info("data: %s", self.dataset.skip_report())
        return model

    def setup(self):
        super().setup()
        if distributed.is_main():  # after the resume check: a refused run leaves the run's config alone
            (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2, default=str))
        return self

    def param_groups(self, module) -> list[dict]:
        return param_groups(module, self.cfg.optim)

    def num_steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def run_identity(self) -> dict:
        """The resolved config (but what a resumed session may change: SESSION_FIELDS) and fingerprints
        of the files behind the tower, LLM, starting checkpoint, projector and data list."""
        m = self.cfg.model
        identity = config_identity(asdict(self.cfg), SESSION_FIELDS)
        sources = {"model.vision_tower": m.vision_tower, "model.llm": m.llm, "model.init_from": m.init_from,
                   "model.pretrained_projector": m.pretrained_projector, "data.data_path": self.cfg.data.data_path}
        identity.update({f"files.{key}": files_fingerprint(spec) for key, spec in sources.items()})
        return {**identity, "steps_per_epoch": self.steps_per_epoch}

    # ------------------------------------------------------------------ training
    def micro_batches(self, start_step: int, end_step: int):
        order, per_step = self.order, self.plan.micro_per_step
        batches = (order.micro_batch_items(g, per_step) for g in self.plan.micro_indices(start_step, end_step))
        # A private generator: a DataLoader iterator otherwise draws its base seed from the global
        # RNG, which would shift the dropout draws of a resumed run against an uninterrupted one.
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=list(batches),
                                           collate_fn=WithSkips(self.collator),
                                           num_workers=self.cfg.data.num_workers, generator=torch.Generator(),
                                           persistent_workers=False, pin_memory=torch.cuda.is_available())

    def forward_backward_step(self, item: dict) -> dict[str, float]:
        self.pending_skips += item["skipped"]
        device = self.engine.device
        batch = {k: v.to(device=device, dtype=self.dtype if v.is_floating_point() else v.dtype)
                 for k, v in item["batch"].items()}
        loss = self.engine(**batch, use_cache=False).loss
        self.backward_step(loss)
        tokens, positions = num_positions(batch)
        return {"loss": float(loss.detach()), "supervised_tokens": float((batch["labels"] != -100).sum()),
                "samples": float(num_sequences(batch)), "tokens": float(tokens), "positions": float(positions),
                "skips": float(len(item["skipped"]))}

    def step_row(self, sums: dict[str, float], seconds: float) -> dict:
        if sums["skips"]:  # summed over ranks with the rest of the row: all ranks gather, or none does
            self._count_skips()
        return {"epoch": self.order.epoch_of(self.step - 1), "loss": sums["loss"] / max(sums["micro_batches"], 1),
                "supervised_tokens": int(sums["supervised_tokens"]), "samples": int(sums["samples"]),
                "tokens": int(sums["tokens"]), "positions": int(sums["positions"]),
                "seconds": round(seconds, 4), "skipped_samples": len(self.skipped_in_training)}

    def _count_skips(self) -> None:
        """The samples skipped during training, distinct over ranks and epochs (a bad image is met again
        every epoch, maybe on another rank), against the same threshold as those dropped at start."""
        new = [s for rank_skips in distributed.all_gather_object(self.pending_skips) for s in rank_skips]
        self.pending_skips = []
        fresh = sorted(set(new) - self.skipped_in_training)
        if not fresh:
            return
        self.skipped_in_training.update(fresh)
        if distributed.is_main():
            logger.warning("step %d: skipped %d bad sample(s) found during training: %s", self.step, len(fresh),
                           "; ".join(fresh[:3]))
        data = self.cfg.data
        dropped = len(self.dataset.skipped) + len(self.skipped_in_training)
        if dropped > data.max_skip_fraction * self.dataset.num_records:
            raise ConfigError(f"{data.data_path}: {dropped} of {self.dataset.num_records} samples are bad "
                              f"({len(self.skipped_in_training)} found during training, e.g. {fresh[0]}), more than "
                              f"data.max_skip_fraction={data.max_skip_fraction}; fix the data or raise the fraction")

    def trainer_state(self) -> dict:
        return {"skipped_in_training": sorted(self.skipped_in_training)}

    def load_trainer_state(self, state: dict) -> None:
        self.skipped_in_training = set(state.get("skipped_in_training", []))

    # ------------------------------------------------------------------ export
    def export(self) -> Path | None:
        cfg = self.cfg
        lora_scaling = cfg.lora.alpha / cfg.lora.r if cfg.lora.enabled else None
        projector = self.out / PROJECTOR_FILE if cfg.stage == "pretrain" else None
        metadata = {"stage": cfg.stage, "steps": self.step, "vision_tower": cfg.model.vision_tower,
                    "llm": cfg.model.llm, "init_from": cfg.model.init_from, "template": cfg.template,
                    "image_aspect_ratio": cfg.data.image_aspect_ratio, "lora": asdict(cfg.lora) if cfg.lora.enabled
                    else None, "pretrained_projector": cfg.model.pretrained_projector}
        with self.tower_outside.restored() if self.tower_outside else contextlib.nullcontext():
            return export_llava(self.engine, self.processor, self.out / EXPORT_DIR, lora_scaling=lora_scaling,
                                projector_file=projector, metadata=metadata, dtype=self.dtype,
                                vision_tower=cfg.model.vision_tower)

    def fit(self, stop_after: int | None = None) -> Path | None:
        """setup, train, export; returns the export dir (rank 0), or None when `stop_after` steps
        ended this session early (with a checkpoint: rerun the same command to resume)."""
        if self.engine is None:
            self.setup()
        self.train(stop_after, checkpoint_on_stop=True)
        if self.step < self.max_steps:
            return None
        return self.finish()
