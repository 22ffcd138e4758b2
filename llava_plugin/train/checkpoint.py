"""Resumable checkpoints and the append-only metrics log, the same for every training stage.

Layout under a run directory:

    metrics.jsonl                       one JSON object per logged step (append-only)
    checkpoints/step-00000042/          a complete checkpoint: DeepSpeed engine state (tag `engine`),
        trainer_state.json              the step, world size, run identity and the stage's own state,
        rng-rank00000.pt ...            and every rank's RNG states
    checkpoints/.incomplete-step-.../   a checkpoint being written (never resumed from)

A checkpoint is written under `.incomplete-step-N` and renamed once every rank is done, so a
kill mid-save never leaves a directory that looks complete; resume takes the newest complete one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llava_plugin import distributed
from llava_plugin.config import ConfigError
from llava_plugin.errors import naming_disk_full, read_json, read_jsonl, tensor_bytes

logger = logging.getLogger("genfeedback")

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
ENGINE_TAG = "engine"
METRICS_FILE = "metrics.jsonl"
_PREFIX = "step-"
_INCOMPLETE = ".incomplete-"


def step_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


# ---- RNG -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- metrics.jsonl -------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics log. A torn last line (a kill mid-write) is ignored; a bad line
    elsewhere means the file was edited or corrupted, which is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    return read_jsonl(path, "metrics log", "remove or fix that line", torn_last_line_ok=True)


def append_metrics(path: str | Path, row: dict) -> None:
    path = Path(path)
    # a torn line left by a kill would glue itself to this row: start on a fresh line
    needs_newline = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    line = json.dumps(row) + "\n"
    with naming_disk_full(path.parent, len(line)), open(path, "a") as f:  # a torn line is dropped on reading
        if needs_newline:
            f.write("\n")
        f.write(line)


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep only the rows up to `step` (a resumed run logs the later steps again), atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [row for row in read_metrics(path) if row.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)


# ---- checkpoints ---------------------------------------------------------------------------
def identity_mismatches(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: saved -> now` for every field of a run's identity that differs (JSON-normalised). A field
    the checkpoint does not record (written before the field was part of the identity) is not checked."""
    now = json.loads(json.dumps(now, default=str))
    unrecorded = [key for key in now if key not in saved]
    if saved and unrecorded:
        logger.warning("the checkpoint predates these run-identity fields, which are not checked: %s",
                       ", ".join(unrecorded))
    return [f"{key}: {saved[key]!r} -> {now[key]!r}" for key in now if key in saved and saved[key] != now[key]]


RUN_FILE = "run.json"  # a run directory's identity, rewritten at every start


def check_run_record(run_dir: str | Path, identity: dict[str, Any], hint: str) -> None:
    """Refuse a fresh start in a directory that records another run (its RUN_FILE's identity differs):
    with no checkpoint to resume, starting would overwrite that run's logs and export."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return
    saved = read_json(path, "run record", f"delete it if {run_dir} holds no run you want to keep")
    differences = identity_mismatches(saved if isinstance(saved, dict) else {}, identity)
    if differences:
        raise ConfigError(f"{run_dir} holds another run ({'; '.join(differences)}) and no checkpoint to resume "
                          f"it from; starting here would overwrite it: {hint}")


def write_run_record(run_dir: str | Path, identity: dict[str, Any]) -> None:
    """RUN_FILE, atomically (a kill leaves the old record or the new one)."""
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(identity, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def config_identity(config: dict[str, Any], session_fields: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """A resolved config as flat `a.b.c: value` identity fields, without `session_fields` (dotted
    names or whole sections): those a resumed session may change (workers, logging, output, ...)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in session_fields:
            continue
        if isinstance(value, dict):
            flat.update(config_identity(value, session_fields, f"{name}."))
        else:
            flat[name] = value
    return flat


FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json")


def local_files(spec: str | None) -> list[tuple[Path, Path]]:
    """(root, file) for each weight/config file behind a model or data spec (a file, a directory, an HF
    id in the local cache, or `family:LOCATION[@CHECKPOINT]`); [] when nothing local stands behind it."""
    if not spec:
        return []
    paths = [Path(part).expanduser() for part in re.split(r"[:@]", spec) if part]
    paths = [path for path in paths if path.exists()]
    if not paths:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec.rpartition(":")[2], "config.json")
        except ValueError:  # HFValidationError: not a hub id either (e.g. a path that does not exist)
            return []
        if not isinstance(cached, str):
            return []
        paths = [Path(cached).parent]
    found = []
    for root in paths:
        files = [root] if root.is_file() else sorted(
            f for f in root.rglob("*") if f.suffix in FINGERPRINT_SUFFIXES and f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(root).parts))
        found += [(root, file) for file in files]
    return found


def files_fingerprint(spec: str | None) -> str | None:
    """A cheap fingerprint of the local files behind a spec (`local_files`): each weight/config file's
    name, size and mtime, so a model re-exported or a data file rewritten in place is noticed without
    reading gigabytes. None when nothing local stands behind the spec."""
    files = local_files(spec)
    if not files:
        return None
    digest = hashlib.sha256()
    for root, file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if file != root else file.name}|{stat.st_size}|"
                      f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def files_bytes(spec: str | None) -> int:
    """Bytes of the local files behind a spec (`local_files`): e.g. what re-writing that model takes."""
    return sum(file.stat().st_size for _, file in local_files(spec))


class Checkpointer:
    """Saves and restores one run's checkpoints (collective: every rank calls save/load)."""

    def __init__(self, run_dir: str | Path, keep_last: int, *, exclude_frozen: bool = False):
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.keep_last = keep_last
        # frozen weights a stage rebuilds from their sources on resume need not be saved
        self.exclude_frozen = exclude_frozen

    def complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{_PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def path(self, step: int) -> Path:
        return self.root / step_dir_name(step)

    def save(self, engine, step: int, state: dict[str, Any]) -> Path:
        """Atomic: under .incomplete-step-N, renamed to step-N once every rank has written its part."""
        final, tmp = self.path(step), self.root / f"{_INCOMPLETE}{step_dir_name(step)}"
        rank = distributed.rank()
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        # a full disk is named, and the partial checkpoint removed (the previous ones stay)
        with naming_disk_full(self.root, lambda: self.estimated_bytes(engine), cleanup=[tmp]):
            engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, client_state={"step": step}, save_latest=False,
                                   exclude_frozen_parameters=self.exclude_frozen)
            torch.save(rng_state(), tmp / f"rng-rank{rank:05d}.pt")
            distributed.barrier()
            if distributed.is_main():
                full = {"step": step, "world_size": distributed.world_size(), **state}
                (tmp / STATE_FILE).write_text(json.dumps(full, indent=2, default=str))
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
                for old in self.complete()[: -self.keep_last]:
                    shutil.rmtree(old)
        distributed.barrier()
        return final

    def estimated_bytes(self, engine) -> int:
        """About what one checkpoint takes on disk: the module's weights (the trained ones only when
        frozen ones are excluded), the optimizer's state, and fp32 master copies of low-precision weights."""
        params = [p for p in engine.module.parameters() if p.requires_grad or not self.exclude_frozen]
        numel = {id(p): getattr(p, "ds_numel", p.numel()) for p in params}  # ZeRO-3: the full size
        optimizer = getattr(engine, "optimizer", None)
        inner = getattr(optimizer, "optimizer", optimizer)
        state = [t for s in getattr(inner, "state", {}).values() for t in s.values() if torch.is_tensor(t)]
        weights = sum(numel[id(p)] * p.element_size() for p in params)
        masters = sum(4 * numel[id(p)] for p in params if p.requires_grad and p.element_size() < 4)
        return weights + tensor_bytes(state) + masters

    def load(self, engine, path: Path, identity: dict[str, Any], *, force: bool = False,
             on_mismatch: Callable[[str], str] | None = None) -> dict[str, Any]:
        """Restore engine, optimizer, scheduler and RNG states from `path`; returns its trainer
        state. A checkpoint of another run (its identity differs) is refused unless `force`."""
        state_file = path / STATE_FILE
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot resume from {path}: {state_file.name} is unreadable ({err}); delete that "
                              "checkpoint directory to resume from the one before") from err
        world = distributed.world_size()
        if state["world_size"] != world:
            raise ConfigError(
                f"checkpoint {path} was written by {state['world_size']} rank(s), this run has {world}: ZeRO "
                "partitions the optimizer state by rank, so resume with the same number of processes (the data "
                "order and global batch do not depend on it)")
        differences = identity_mismatches(state.get("run", {}), identity)
        if differences and not force:
            hint = on_mismatch(path) if on_mismatch else "use a new --output"
            raise ConfigError(f"checkpoint {path} belongs to another run ({'; '.join(differences)}): {hint}")
        if differences:
            logger.warning("resuming %s although its run differs (%s): checkpointing.force_resume=true", path,
                           "; ".join(differences))
        _, client = engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=True,
                                           load_module_strict=not self.exclude_frozen)
        set_rng_state(torch.load(path / f"rng-rank{distributed.rank():05d}.pt", weights_only=False))
        if client and "step" in client:
            state["step"] = int(client["step"])
        logger.info("resumed from %s at step %d", path, state["step"])
        return state
