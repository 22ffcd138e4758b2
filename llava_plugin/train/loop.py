"""The training loop every stage runs: a `Trainer` of small overridable steps (after torchtitan).

    trainer = SomeStageTrainer(cfg); trainer.fit()        # setup -> (resume) -> train -> finish

One optimizer step = `accumulation` micro-batches on every rank (llava_plugin.train.plan says who
reads what). Per micro-batch the stage's `forward_backward_step` runs forward and `backward_step`
(`engine.backward` + `engine.step`: DeepSpeed scales by 1/accumulation and steps the optimizer at the
boundary) and returns sums to log; at every step boundary the sums are reduced over ranks, a row goes
to metrics.jsonl, and a checkpoint is written every `checkpointing.every_steps`.

Every row has the step's global gradient norm before clipping (`grad_norm`) and after it
(`grad_norm_clipped` = min(norm, optim.grad_clip) when clipping is on). The norm is DeepSpeed's
(`engine.get_global_grad_norm()`: ZeRO-1/2/3 and its bf16 optimizers compute it over all ranks'
partitions before clipping, the same value on every rank); with no ZeRO in fp32 DeepSpeed keeps
none, and `backward_step` takes it from the (already all-reduced, identical) gradients itself.

A stage overrides:
    build()                    -> the module DeepSpeed wraps (tower + method, or the LLaVA); it may
                                  read `zero_stage`, the stage chosen for this world size
    param_groups(module)       -> optimizer groups (default: everything that requires grad); a group
                                  may carry HELD_STEPS_KEY: N (lr factor 0 for its first N steps, see
                                  llava_plugin.train.schedule), which the loop removes before the optimizer
    num_steps_per_epoch()      -> steps in one pass over the data
    micro_batches(start, end)  -> this rank's micro-batch items for steps [start, end), in order
    forward_backward_step(item)-> {"loss": float, other sums...}
    step_row(sums, seconds)    -> the metrics row of a step (the base adds step, lr, grad norms)
    run_identity()             -> what a checkpoint must share with the run resuming it
    export()                   -> write the stage's artefact (collective)
and may extend setup_hook(), start_hook(), trainer_state()/load_trainer_state().
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from llava_plugin import distributed
from llava_plugin.train import deepspeed as ds
from llava_plugin.train.checkpoint import (
    METRICS_FILE,
    Checkpointer,
    append_metrics,
    check_run_record,
    seed_everything,
    truncate_metrics,
    write_run_record,
)
from llava_plugin.train.config import RunConfig
from llava_plugin.train.plan import BatchPlan
from llava_plugin.train.schedule import build_scheduler, warmup_steps

logger = logging.getLogger("genfeedback")

#: a param-group key a stage may set: the group's lr is 0 for its first N optimizer steps
HELD_STEPS_KEY = "held_steps"


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (imports included), for the start-up log line."""
    import psutil  # a DeepSpeed dependency

    return time.time() - psutil.Process().create_time()


class Trainer:
    #: shown on the progress bar
    name = "train"
    #: frozen weights the stage rebuilds from their sources are left out of checkpoints
    exclude_frozen_from_checkpoints = False
    #: write a checkpoint after the last step, so a kill during export resumes straight to the export
    checkpoint_at_end = True
    #: keep rank-0 fp32 copies of the parameters that do not train, taken before DeepSpeed casts them,
    #: for an export that must keep their exact values (a tower's base weights under LoRA); off for
    #: stages whose export is in the training precision (at 7B the copies would be ~28 GB of RAM)
    keep_fp32_untrained = False

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.step = 0
        self.history: list[dict] = []
        self.engine = None

    # ------------------------------------------------------------------ hooks
    def build(self) -> torch.nn.Module:
        raise NotImplementedError

    def param_groups(self, module: torch.nn.Module) -> list[dict]:
        return [{"params": [p for p in module.parameters() if p.requires_grad]}]

    def num_steps_per_epoch(self) -> float:
        raise NotImplementedError

    def micro_batches(self, start_step: int, end_step: int):
        raise NotImplementedError

    def forward_backward_step(self, item) -> dict[str, float]:
        raise NotImplementedError

    def step_row(self, sums: dict[str, float], seconds: float) -> dict[str, Any]:
        return {"loss": sums["loss"] / max(sums.get("micro_batches", 1), 1)}

    def run_identity(self) -> dict[str, Any]:
        return {}

    def setup_hook(self) -> None:
        """After the engine is built and before resume (e.g. a latent cache)."""

    def start_hook(self) -> None:
        """After setup on a fresh (not resumed) run (e.g. a diagnostic)."""

    def trainer_state(self) -> dict[str, Any]:
        return {}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        pass

    def step_hook(self) -> None:
        """After each optimizer step (and its checkpoint), on every rank: e.g. an export at chosen steps."""

    def export(self) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    @property
    def metrics_file(self) -> Path:
        return self.out / METRICS_FILE

    def setup(self):
        cfg = self.cfg
        distributed.init()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.device = distributed.device()
        self.dtype = cfg.precision.torch_dtype
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        self.plan = BatchPlan(global_batch=cfg.batch.global_batch_size, micro_batch=cfg.batch.micro_batch_size,
                              world_size=self.world, rank=self.rank)
        self.plan.check("batch.")
        # ZeRO as this world size runs it (one process: stage 0), known to build() (see zero_stage)
        self.zero_config = cfg.deepspeed.for_world(self.world)
        module = self.build()
        self.steps_per_epoch = self.num_steps_per_epoch()
        self.max_steps = cfg.schedule.max_steps or math.ceil(cfg.schedule.epochs * self.steps_per_epoch)
        self.fp32_untrained = ds.untrained_fp32_snapshot(module) if self.keep_fp32_untrained else {}
        groups = [dict(g) for g in self.param_groups(module) if g["params"]]
        held = [int(g.pop(HELD_STEPS_KEY, 0)) for g in groups]  # the optimizer and DeepSpeed never see it
        optimizer = cfg.optim.build(groups)
        warmup = warmup_steps(max_steps=self.max_steps, steps=cfg.schedule.warmup_steps,
                              ratio=cfg.schedule.warmup_ratio)
        scheduler = build_scheduler(optimizer, kind=cfg.schedule.kind, max_steps=self.max_steps, warmup=warmup,
                                    min_lr_ratio=cfg.schedule.min_lr_ratio, held_steps=held)
        self.ds_config = ds.fill(self.zero_config, global_batch=cfg.batch.global_batch_size,
                                 micro_batch=cfg.batch.micro_batch_size, accumulation=self.plan.accumulation,
                                 bf16=self.dtype == torch.bfloat16, grad_clip=cfg.optim.grad_clip)
        self.engine = ds.build_engine(module, optimizer, scheduler, self.ds_config)
        self._own_grad_norm = not hasattr(self.engine.optimizer, "_global_grad_norm")  # DeepSpeed keeps none
        self._grad_norm: float | None = None
        self.checkpointer = Checkpointer(self.out, cfg.checkpointing.keep_last,
                                         exclude_frozen=self.exclude_frozen_from_checkpoints)
        # what defines this run, once: checked against the run directory's record or the checkpoint
        # resumed, written to the record, and saved in every checkpoint
        self.identity = self._full_identity()
        resume_dir = self._resume_dir()
        if resume_dir is None:
            self._check_fresh_start()
        self.setup_hook()
        if resume_dir is not None:
            self._resume(resume_dir)
        else:
            if distributed.is_main():
                truncate_metrics(self.metrics_file, -1)  # a fresh start: rows of an earlier attempt go
            self.start_hook()
        if distributed.is_main():
            write_run_record(self.out, self.identity)
            logger.info("ready to train %.1f s after the process started", seconds_since_process_start())
        return self

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage this run trains with (after setup has chosen it for the world size)."""
        return ds.zero_stage(self.zero_config)

    def _resume_dir(self) -> Path | None:
        mode = self.cfg.checkpointing.resume
        if mode == "none":
            return None
        if mode == "auto":
            return self.checkpointer.latest()
        return Path(mode)

    def _full_identity(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "batch.global_batch_size": self.cfg.batch.global_batch_size,
                "seed": self.cfg.seed, **self.run_identity()}

    def _check_fresh_start(self) -> None:
        """With nothing to resume, the run directory must not record another run (a finished run keeps no
        checkpoint where checkpoint_at_end is off): refused unless asked to start over or to force."""
        if self.cfg.checkpointing.resume == "none" or self.cfg.checkpointing.force_resume:
            return
        check_run_record(self.out, self.identity,
                         "use a new --output, or --set checkpointing.resume=none to start over in it")

    def _resume(self, path: Path) -> None:
        state = self.checkpointer.load(
            self.engine, path, self.identity, force=self.cfg.checkpointing.force_resume,
            on_mismatch=lambda p: "use a new --output, --set checkpointing.resume=none to start over, or "
                                  "--set checkpointing.force_resume=true to resume anyway")
        self.step = int(state["step"])
        self.load_trainer_state(state.get("stage", {}))
        if distributed.is_main():
            # rows logged after the checkpoint (a run killed between checkpoints) are trained again
            truncate_metrics(self.metrics_file, self.step)
        distributed.barrier()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        return self.checkpointer.save(self.engine, self.step, {"run": self.identity, "stage": self.trainer_state()})

    # ------------------------------------------------------------------ training
    def backward_step(self, loss: torch.Tensor) -> None:
        """`engine.backward(loss)` then `engine.step()` (the optimizer steps at the accumulation boundary),
        noting the gradient norm where DeepSpeed keeps none (see the module docstring)."""
        self.engine.backward(loss)
        if self._own_grad_norm and self.engine.is_gradient_accumulation_boundary():
            self._grad_norm = ds.grad_norm(self.engine.module)
        self.engine.step()

    def grad_norms(self) -> dict[str, float | None]:
        """The last step's global gradient norm before and after clipping."""
        norm = self._grad_norm if self._own_grad_norm else self.engine.get_global_grad_norm()
        if norm is None:
            return {"grad_norm": None, "grad_norm_clipped": None}
        norm = float(norm)
        clip = self.cfg.optim.grad_clip
        return {"grad_norm": norm, "grad_norm_clipped": min(norm, clip) if clip > 0 and math.isfinite(norm) else norm}

    def current_lrs(self) -> list[float]:
        return [float(lr) for lr in self.engine.get_lr()]

    def train(self, num_steps: int | None = None, *, checkpoint_on_stop: bool = False) -> list[dict]:
        """Optimizer steps until max_steps (or `num_steps` more); returns their metrics rows. With
        `checkpoint_on_stop`, a session that stops before the end writes a checkpoint."""
        from tqdm import tqdm

        cfg = self.cfg
        end = self.max_steps if num_steps is None else min(self.max_steps, self.step + num_steps)
        rows: list[dict] = []
        if self.step >= end:
            return rows
        self.engine.train()
        every = cfg.checkpointing.every_steps
        bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True, desc=self.name,
                   disable=not (distributed.is_main() and cfg.logging.progress_bar))
        sums: dict[str, float] = {}
        micro = 0
        start = time.perf_counter()
        try:
            for item in self.micro_batches(self.step, end):
                if micro == 0:
                    lrs = self.current_lrs()  # the lrs this step trains with
                for key, value in self.forward_backward_step(item).items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                micro += 1
                if micro < self.plan.accumulation:
                    continue
                self.step += 1
                row = self._row(sums, micro, time.perf_counter() - start, lrs)
                rows.append(row)
                self.history.append(row)
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss",) if k in row})
                if distributed.is_main() and (self.step % cfg.logging.every_steps == 0 or self.step == end):
                    append_metrics(self.metrics_file, row)
                if every and self.step % every == 0 and self.step < self.max_steps:
                    self.save_checkpoint()
                self.step_hook()
                sums, micro = {}, 0
                start = time.perf_counter()
        finally:  # a failure (a bad sample, a full disk) is reported on a line of its own
            bar.close()
        if checkpoint_on_stop and self.step < self.max_steps and not self.checkpointer.path(self.step).is_dir():
            self.save_checkpoint()
        return rows

    def _row(self, sums: dict[str, float], micro: int, seconds: float, lrs: list[float]) -> dict[str, Any]:
        keys = sorted(sums)
        totals = distributed.all_reduce_sum([float(micro), seconds] + [sums[k] for k in keys])
        reduced = dict(zip(keys, totals[2:]))
        reduced["micro_batches"] = totals[0]
        row: dict[str, Any] = {"step": self.step}
        row.update(self.step_row(reduced, totals[1] / self.world))
        row["lr"] = lrs[0] if len(lrs) == 1 else lrs
        row.update(self.grad_norms())
        return row

    # ------------------------------------------------------------------ finish
    def finish(self):
        if (self.checkpoint_at_end and self.step and not self.checkpointer.path(self.step).is_dir()):
            self.save_checkpoint()
        return self.export()

    def fit(self):
        if self.engine is None:
            self.setup()
        self.train()
        return self.finish()

