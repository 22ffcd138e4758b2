"""Latent cache: the method's frozen, deterministic target encodings (`encode_targets`: VAE
latent parameters, VQ ids) computed once per image and reused by every later step and run.

Layout of a cache directory:
    manifest.json              what the cache was built from (method, method config, generator,
                               preprocessing, precision, image list hash + count); a cache whose
                               manifest differs from the run's is refused, never silently reused
    images.txt                 the image keys, one per line, in dataset order
    shard-00000.safetensors    images [0, S): one stacked tensor per target key + `valid` (uint8:
                               0 for images that could not be decoded)

Building is split over ranks by shard; rank 0 writes the manifest last, so a cache with a
manifest is complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from enhance.data import BadImage, ImageSource
from llava_plugin import distributed
from llava_plugin.errors import GenfeedbackError

logger = logging.getLogger("genfeedback")

MANIFEST = "manifest.json"
VALID_KEY = "valid"


class StaleCacheError(GenfeedbackError, ValueError):
    """The cache on disk was built from something else than this run."""


class CacheDiskError(GenfeedbackError, OSError):
    """The cache would not fit on the disk it is to be written to."""


def bytes_per_image(targets: dict[str, torch.Tensor]) -> int:
    """Disk bytes of one image's row in a shard (its targets plus the `valid` flag)."""
    return sum(t[0].numel() * t.element_size() for t in targets.values()) + 1


def check_disk(cache_dir: Path, images: int, per_image: int, keys: list[str]) -> int:
    """Log the cache's size and refuse, in one line, a disk that cannot hold it."""
    total = images * per_image
    free = shutil.disk_usage(cache_dir).free
    if distributed.is_main():
        logger.info(
            "latent cache: %d images x %.1f KB (%s) = %.2f GB in %s (%.1f GB free)", images, per_image / 1024,
            ", ".join(keys), total / 1e9, cache_dir, free / 1e9)
    if total > free:
        raise CacheDiskError(f"latent cache {cache_dir}: {images} images x {per_image / 1024:.1f} KB need "
                             f"{total / 1e9:.1f} GB, the disk has {free / 1e9:.1f} GB free; set cache.dir to a "
                             f"larger disk or turn the cache off (cache.latents=false)")
    return total


def images_fingerprint(source: ImageSource) -> dict:
    keys = source.keys()
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    return {"count": len(keys), "sha256": digest}


def expected_manifest(*, method_name: str, method_config: dict, generator: str, preprocessing: dict,
                      dtype: str, source: ImageSource, shard_size: int) -> dict:
    return {
        "format": 1,
        "method": method_name,
        "method_config": method_config,
        "generator": generator,
        "preprocessing": preprocessing,
        "dtype": dtype,
        "shard_size": shard_size,
        "images": images_fingerprint(source),
    }


def _json_normal(obj) -> dict:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def check_manifest(cache_dir: Path, expected: dict) -> None:
    found = json.loads((cache_dir / MANIFEST).read_text())
    expected = _json_normal(expected)
    for key in sorted(set(found) | set(expected)):
        if found.get(key) != expected.get(key):
            raise StaleCacheError(
                f"latent cache {cache_dir} was built for a different {key!r}: cached {found.get(key)!r}, "
                f"this run {expected.get(key)!r}. Delete the directory (it is rebuilt) or set cache.dir "
                "to a new path")


def build(cache_dir: Path, source: ImageSource, manifest: dict, *,
          preprocess: Callable, encode: Callable[[dict], dict], batch_size: int, shard_size: int) -> None:
    """Encode every image once (collective: all ranks call it; shards are split over ranks).

    `preprocess(images) -> batch` and `encode(batch) -> targets` are the method's, the latter
    already moved to the device and precision of the run.
    """
    from safetensors.torch import save_file

    if distributed.is_main():
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        cache_dir.mkdir(parents=True)
        (cache_dir / "images.txt").write_text("\n".join(source.keys()) + "\n")
    distributed.barrier()
    num_shards = math.ceil(len(source) / shard_size)
    for shard in range(distributed.rank(), num_shards, distributed.world_size()):
        lo, hi = shard * shard_size, min(len(source), (shard + 1) * shard_size)
        rows: dict[int, dict[str, torch.Tensor]] = {}
        for start in range(lo, hi, batch_size):
            indices, images = [], []
            for index in range(start, min(hi, start + batch_size)):
                try:
                    images.append(source.load(index))
                    indices.append(index)
                except BadImage:
                    pass  # stored as invalid; training skips (and counts) it on its own decode
            if not images:
                continue
            targets = encode(preprocess(images))
            if shard == distributed.rank() and start == lo:  # each rank's first batch: the size, once
                check_disk(cache_dir, len(source), bytes_per_image(targets), sorted(targets))
            for row, index in enumerate(indices):
                rows[index] = {k: v[row].detach().cpu() for k, v in targets.items()}
        if not rows:
            raise StaleCacheError(f"no image of cache shard {shard} (images {lo}..{hi - 1}) could be decoded")
        template = next(iter(rows.values()))
        tensors = {key: torch.zeros((hi - lo, *t.shape), dtype=t.dtype) for key, t in template.items()}
        valid = torch.zeros(hi - lo, dtype=torch.uint8)
        for index, row in rows.items():
            for key, value in row.items():
                tensors[key][index - lo] = value
            valid[index - lo] = 1
        tensors[VALID_KEY] = valid
        tmp = cache_dir / f".shard-{shard:05d}.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.rename(cache_dir / f"shard-{shard:05d}.safetensors")
    distributed.barrier()
    if distributed.is_main():
        (cache_dir / MANIFEST).write_text(json.dumps(_json_normal(manifest), indent=2))
    distributed.barrier()


class LatentCache:
    """Read side: `targets(indices)` -> {key: [len(indices), ...]} for the loader.

    Rows are read by offset from memory-mapped shard files, so a shuffled run touches only the
    rows it uses (a handle per shard stays open; handles are cheap, not the shard's data)."""

    def __init__(self, cache_dir: Path, shard_size: int):
        self.dir = Path(cache_dir)
        self.shard_size = shard_size
        self._handles: dict[int, object] = {}

    def _shard(self, shard: int):
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.dir / f"shard-{shard:05d}.safetensors"), framework="pt")
        return self._handles[shard]

    def targets(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows: dict[str, list[torch.Tensor]] = {}
        for index in indices:
            shard = self._shard(index // self.shard_size)
            offset = index % self.shard_size
            if not int(shard.get_slice(VALID_KEY)[offset:offset + 1][0]):
                raise StaleCacheError(f"latent cache {self.dir} has no entry for image {index}, which now "
                                      "decodes: the files changed since the cache was built; delete the cache")
            for key in shard.keys():
                if key != VALID_KEY:
                    rows.setdefault(key, []).append(shard.get_slice(key)[offset:offset + 1][0])
        return {key: torch.stack(values) for key, values in rows.items()}

    def __getstate__(self):  # data-loader workers open their own handles
        return {**self.__dict__, "_handles": {}}


def open_or_build(cache_dir: Path, source: ImageSource, manifest: dict, **build_kwargs) -> LatentCache:
    """Reuse a cache whose manifest matches, refuse a stale one, build a missing one."""
    complete = (cache_dir / MANIFEST).is_file()
    if complete:
        check_manifest(cache_dir, manifest)
    else:
        build(cache_dir, source, manifest, shard_size=manifest["shard_size"], **build_kwargs)
    return LatentCache(cache_dir, manifest["shard_size"])
