"""Everything DeepSpeed- and process-group-specific in enhance, in one place.

- `init()` joins the process group a launcher (deepspeed, torchrun) set up, or creates a
  1-process group itself when run plainly; gloo on CPU, nccl on GPU.
- `build_engine()` wraps a Method with a torch optimizer and LR scheduler. The frozen
  generator is not a registered submodule of the method (see enhance/methods/base.py), so
  ZeRO never partitions it, the optimizer never sees it and checkpoints never contain it.
- `full_precision_weights()` gives rank 0 the complete, full-precision parameters for export:
  under ZeRO-3 they are gathered from all ranks; under bf16 the fp32 master weights replace
  the bf16 working copies (tiny learning rates such as un2CLIP's 3e-7 vanish in bf16 rounding).

The method's forward returns a `LossOutput` dataclass, so ZeRO-3 logs once that it cannot see
the top module's output tensors; its per-submodule hooks (the tower's layers return tensors)
still gather and release partitions, and 2-rank ZeRO-3 runs match 1-rank runs (tests).

Set GENFEEDBACK_SKIP_SHM_OP=1 to skip DeepSpeed's CPU shared-memory collective op (an ~80 s
JIT compile on first use; gloo does the same job for tests and small runs).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

SKIP_SHM_ENV = "GENFEEDBACK_SKIP_SHM_OP"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> None:
    """Join (or, without a launcher, create) the process group; idempotent."""
    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    import deepspeed
    import deepspeed.comm.torch

    if os.environ.get(SKIP_SHM_ENV) == "1" or int(os.environ["WORLD_SIZE"]) == 1:
        # one process has nothing to reduce; skip the op's minutes-long first JIT compile
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=datetime.timedelta(minutes=30))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Barrier, then leave the process group (so no rank exits while others still talk). Once, at
    process exit: DeepSpeed caches its groups, so a process cannot init() again afterwards."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a list of floats over ranks (float64, on the collective's device)."""
    if not dist.is_initialized() or world_size() == 1:
        return list(values)
    dev = device() if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(obj):
    if not dist.is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def deepspeed_config(base: dict, *, global_batch: int, micro_batch: int, accumulation: int,
                     bf16: bool, grad_clip: float) -> dict:
    """The shipped/user ZeRO JSON with this run's batch, precision and clipping filled in."""
    cfg = dict(base)
    cfg.update(
        train_batch_size=global_batch,
        train_micro_batch_size_per_gpu=micro_batch,
        gradient_accumulation_steps=accumulation,
        gradient_clipping=grad_clip,
        bf16={"enabled": bool(bf16)},
        # a torch optimizer object (not a DeepSpeed-native one) is what we pass; ZeRO accepts it with this flag
        zero_allow_untested_optimizer=True,
        steps_per_print=cfg.get("steps_per_print", 10**9),
        wall_clock_breakdown=False,
    )
    return cfg


def zero_stage(ds_cfg: dict) -> int:
    return int(ds_cfg.get("zero_optimization", {}).get("stage", 0))


def build_engine(method: nn.Module, optimizer: torch.optim.Optimizer, scheduler, ds_cfg: dict):
    """deepspeed.initialize over the method (its frozen generator stays outside: not registered)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=method, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_cfg)
    return engine


def untrained_fp32_snapshot(method: nn.Module) -> dict[str, torch.Tensor]:
    """CPU fp32 copies of the method's registered parameters that do not train (e.g. a tower's
    base weights under LoRA), taken before DeepSpeed casts them to bf16, so the export keeps
    their exact values. Only rank 0 exports, so only rank 0 keeps them."""
    if not is_main():
        return {}
    return {name: p.detach().float().cpu().clone() for name, p in method.named_parameters()
            if not p.requires_grad}


@contextlib.contextmanager
def full_precision_weights(engine, fp32_untrained: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Collective: every rank enters. Inside, the method's parameters on rank 0 are complete
    fp32 tensors (trained ones from the optimizer's master copy, others from the snapshot), so
    `method.export_tower().save_pretrained(...)` writes full-precision weights. Other ranks see
    partitions; only rank 0 may save. Training must be over: the working copies are replaced."""
    from deepspeed.utils import safe_get_full_fp32_param

    method = engine.module
    named = list(method.named_parameters())
    # gathering the master copies is itself a collective under ZeRO-3: all ranks, same order
    masters = {}
    for name, param in named:
        if param.requires_grad:
            master = safe_get_full_fp32_param(param)
            masters[name] = master.detach().float().cpu().clone() if master is not None else None
    params = [p for _, p in named]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitioned
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        if is_main():
            for name, param in named:
                full = masters.get(name)
                if full is None:
                    full = fp32_untrained.get(name)
                if full is None:  # trained param without a master copy (fp32 ZeRO-0): already exact
                    full = param.data.detach().float()
                param.data = full.to(param.device)
        yield method
