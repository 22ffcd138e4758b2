"""Process-group helpers that every stage needs the same way (DeepSpeed's engine-side helpers
are llava_plugin.train.deepspeed's).

- `init()` joins the process group a launcher (torchrun, deepspeed) set up, or creates a
  1-process group when run plainly; gloo on CPU, nccl on GPU.

Set GENFEEDBACK_SKIP_SHM_OP=1 to skip DeepSpeed's CPU shared-memory collective op (an ~80 s
JIT compile on first use; gloo does the same job for tests and small runs).
"""
from __future__ import annotations

import datetime
import os
import socket
import sys

import torch
import torch.distributed as dist

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


# What `init()` (or a launcher) puts in the environment to rendezvous; a child process that runs its
# own process group must not inherit it, or it would try to join or bind this process's group.
RENDEZVOUS_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def child_environment() -> dict[str, str]:
    """This process's environment without the rendezvous settings, for an independent child run."""
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_ENV}


# How a collective reports that another rank is gone (gloo: its socket closed; NCCL: the communicator aborted)
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "remote worker crashing",
              "remote process exited", "communicator was aborted")


def lost_a_peer(err: BaseException) -> bool:
    """Whether `err` is this rank finding, in a collective, that another rank has stopped: a consequence
    of that rank's own error (which it reports), not a second fault."""
    if not (dist.is_available() and dist.is_initialized()) or world_size() == 1:
        return False
    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(err, backend_error) or any(marker in str(err).lower() for marker in _PEER_LOST)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Barrier, then leave the process group (so no rank exits while others still talk). Once, at
    process exit: DeepSpeed caches its groups, so a process cannot init() again afterwards."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum floats over ranks (float64)."""
    if world_size() == 1:
        return list(values)
    dev = device() if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

