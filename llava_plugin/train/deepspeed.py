"""Everything DeepSpeed-specific that a training stage needs, in one place.

- One pair of ZeRO JSON files (`zero2`, `zero3`, beside this module), the ZeRO settings of
  LLaVA-1.5's scripts/zero2.json and scripts/zero3.json (haotian-liu/LLaVA) without their "auto"
  values: `load_json` reads a shipped name or a user's file and refuses blocks the trainers own;
  `fill` writes in a run's batch sizes, precision and clipping.
- `build_engine` wraps a module with a torch optimizer and scheduler (a JSON optimizer would be
  JIT-compiled; a torch one is not). Frozen generators are kept out of the wrapped module by the
  stages themselves, so ZeRO never partitions them and checkpoints never contain them;
  `FrozenOutside` does the same for a frozen part of an HF model (the LLaVA's tower).
- `for_world` picks the stage a run uses: one process needs no ZeRO.
- `full_state_dict` is the one gather: rank 0 gets every tensor of the module, complete, trained
  parameters from the optimizer's fp32 master copy (bf16 runs) and the others from a snapshot
  taken before DeepSpeed cast them (`untrained_fp32_snapshot`) or from the module itself.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from llava_plugin import distributed
from llava_plugin.config import ConfigError

JSON_DIR = Path(__file__).parent / "deepspeed"
logger = logging.getLogger("genfeedback")

SHIPPED = ("zero2", "zero3")
_TRAINER_OWNED = ("optimizer", "scheduler", "fp16")


def json_path(name_or_path: str) -> Path:
    return JSON_DIR / f"{name_or_path}.json" if name_or_path in SHIPPED else Path(name_or_path)


def check_name(name_or_path: str, key: str) -> None:
    """For config validation: a shipped name or an existing file."""
    if name_or_path not in SHIPPED and not Path(name_or_path).is_file():
        raise ConfigError(f"{key}={name_or_path!r}: expected one of {list(SHIPPED)} or an existing DeepSpeed "
                          "JSON file")


def load_json(name_or_path: str, key: str = "deepspeed.config") -> dict:
    path = json_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path} ({err.strerror})") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{key}: {path} is not valid JSON ({err})") from err
    for block in _TRAINER_OWNED:
        if block in data:
            raise ConfigError(f"{key}: {path} has a {block!r} block; remove it (the trainer passes a torch "
                              "optimizer and scheduler from the optim/schedule config; fp16 is not supported, "
                              "use bf16 precision)")
    return data


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offloads(ds_config: dict) -> bool:
    """Whether the JSON moves optimizer states or parameters off the accelerator (ZeRO-Offload),
    which is worth ZeRO's hooks even on one process."""
    zero = ds_config.get("zero_optimization", {})
    return any(str(zero.get(key, {}).get("device", "none")).lower() not in ("none", "")
               for key in ("offload_optimizer", "offload_param"))


def for_world(ds_config: dict, world_size: int, *, keep: bool = False) -> dict:
    """The ZeRO JSON for `world_size` processes. ZeRO-2/3 shard optimizer states, gradients and
    parameters over ranks; with one rank there is nothing to shard, while the fetch/release hooks
    of ZeRO-3 and the bucketed reductions of ZeRO-2 still run. So one process without offloading
    trains at stage 0 (the log says so); `keep` keeps the JSON's stage."""
    stage = zero_stage(ds_config)
    if world_size > 1 or stage == 0 or keep or offloads(ds_config):
        return ds_config
    logger.info("1 process: ZeRO-%d has nothing to partition, training without it (stage 0); "
                "--set deepspeed.keep_zero_on_one_process=true keeps ZeRO-%d", stage, stage)
    return {**ds_config, "zero_optimization": {"stage": 0}}


def fill(base: dict, *, global_batch: int, micro_batch: int, accumulation: int, bf16: bool,
         grad_clip: float) -> dict:
    """The ZeRO JSON with this run's batch sizes, precision and clipping filled in."""
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


class FrozenOutside:
    """A frozen submodule held out of the module DeepSpeed wraps, as a plain attribute of its parent.

    Forward still calls `parent.<name>`, but the submodule is no longer in the parent's module
    tree, so ZeRO-3 neither partitions it nor hooks its layers (each of which it would otherwise
    gather from every rank on every forward, for weights that never change), and checkpoints,
    which the stage rebuilds from the source anyway, skip it. The cost is one full copy per rank
    (CLIP-L/336 in bf16: 0.6 GB), against 14/N GB of partitioned 7B weights. `restored()` puts it
    back in the tree, for an export that must contain it."""

    def __init__(self, parent: nn.Module, name: str, device: torch.device | str):
        if name not in parent._modules:
            raise ValueError(f"{type(parent).__name__} has no submodule {name!r}")
        module = parent._modules[name]
        if any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"{name} has trainable parameters: only a frozen module can be held outside ZeRO")
        self.parent, self.name, self.module = parent, name, module.to(device)
        del parent._modules[name]
        object.__setattr__(parent, name, self.module)  # an instance attribute: found before nn.Module's lookup

    @contextlib.contextmanager
    def restored(self) -> Iterator[nn.Module]:
        del self.parent.__dict__[self.name]
        self.parent._modules[self.name] = self.module
        try:
            yield self.module
        finally:
            del self.parent._modules[self.name]
            object.__setattr__(self.parent, self.name, self.module)


def build_engine(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler, ds_config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine


def grad_norm(module: nn.Module) -> float:
    """The 2-norm of all of `module`'s gradients (held in the parameters, as without ZeRO)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def untrained_fp32_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU fp32 copies of the registered parameters that do not train (e.g. a tower's base weights
    under LoRA), taken before DeepSpeed casts them to bf16, so an export keeps their exact values.
    Only rank 0 exports, so only rank 0 keeps them."""
    if not distributed.is_main():
        return {}
    return {name: p.detach().float().cpu().clone() for name, p in module.named_parameters() if not p.requires_grad}


def _is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_state_dict(engine, *, fp32_untrained: dict[str, torch.Tensor] | None = None,
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor] | None:
    """Collective (every rank calls it): the module's complete state dict on CPU on rank 0, None
    elsewhere. Trained parameters come from the fp32 master copy, untrained ones from
    `fp32_untrained` when given, else from the module; `dtype` casts floating tensors (e.g. back
    to bf16 for a LLaVA export, which is then exactly the working copy). Under ZeRO-3 parameters
    are gathered one at a time, so no rank holds more than the model plus one parameter."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    params = dict(module.named_parameters())
    fp32_untrained = fp32_untrained or {}
    main = distributed.is_main()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        param = params.get(name)
        # every rank takes the same branch, in the same order: both gathers are collectives
        if param is not None and param.requires_grad:
            master = safe_get_full_fp32_param(param)
            value = master.detach().float() if master is not None else param.data.detach()
        elif param is not None and _is_partitioned(param):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                value = param.data.detach().clone() if main else None
        else:
            value = tensor.detach()
        if main:
            value = fp32_untrained.get(name, value).cpu()
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            state[name] = value.clone()
    return state if main else None


@contextlib.contextmanager
def full_weights(engine, fp32_untrained: dict[str, torch.Tensor] | None = None) -> Iterator[nn.Module]:
    """Collective: every rank enters. Inside, the module's parameters on rank 0 are the complete
    fp32 tensors of `full_state_dict`, so code that reads the live module (a method's
    `export_tower()`) exports full precision. Other ranks see partitions; only rank 0 may save.
    On exit the working copies are put back, so training can go on after an export."""
    state = full_state_dict(engine, fp32_untrained=fp32_untrained)
    module = engine.module
    params = [p for p in module.parameters()]
    gather = contextlib.nullcontext()
    if any(_is_partitioned(p) for p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        working = {}
        if distributed.is_main():
            for name, param in module.named_parameters():
                working[name] = param.data
                param.data = state[name].to(param.device)
        try:
            yield module
        finally:
            for name, param in module.named_parameters():
                if name in working:
                    param.data = working[name]
