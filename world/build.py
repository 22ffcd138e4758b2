"""Build a world: its data once, and per model seed its pre-trained models, in the hub layouts.

    WORLD/data/                      shared by every seed: enhance images (+ captions), LLaVA
                                     pretrain/finetune sets, world MMVP-VLM / MMVP / CV-Bench
    WORLD/seed-K/models/<part>/      the seed-K CLIP, VAE, text-to-image, unCLIP and language model
    WORLD/seed-K/zoo.json            the same format as the tiny zoo's, so presets say zoo:clip,
                                     zoo:sd21, zoo:unclip, zoo:llm, zoo:data/enhance ... and --zoo WORLD/seed-K

A part is built into `.incomplete-<part>/` and renamed when done, with `part.json` (its spec,
seed, seconds, final loss). A finished part whose spec and seed match is reused; one that does not
match is rebuilt, with a message. Independent parts run in parallel processes (`jobs`), one
thread each.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import random
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llava_plugin.config import ConfigError, deep_merge, from_dict, load_yaml_preset
from llava_plugin.config import documented as _help
from world import pretrain

logger = logging.getLogger("world")
PRESET_DIR = Path(str(resources.files("world") / "configs"))
PART_FILE = "part.json"


@dataclass
class DataSpec:
    pool_size: int = _help("Scenes the world models pre-train on (drawn once per seed).", 20000)
    enhance_images: int = _help("Images (with sampled captions) of the enhance training set.", 4000)
    pairs_per_attribute: int = _help("Pairs per attribute in world MMVP-VLM (and the other pair benchmarks).", 50)
    diagnostic_pairs: int = _help("Pairs per attribute of the generators' diagnostic set (diagnose.pairs).", 64)
    llava: dict[str, Any] = _help("Keyword arguments of world.benchmarks.write_llava_data.", factory=dict)


@dataclass
class WorldSpec:
    """What `python -m world build` trains (see world/configs/*.yaml)."""

    clip: pretrain.ClipSpec = _help("", factory=pretrain.ClipSpec)
    vae: pretrain.VaeSpec = _help("", factory=pretrain.VaeSpec)
    text_to_image: pretrain.DenoiserSpec = _help("", factory=pretrain.DenoiserSpec)
    unclip: pretrain.DenoiserSpec = _help("", factory=pretrain.DenoiserSpec)
    language: dict[str, Any] = _help("Keyword arguments of world.language.train_language_model.", factory=dict)
    data: DataSpec = _help("", factory=DataSpec)


def load_spec(preset: str = "world", overrides: dict | None = None) -> WorldSpec:
    return from_dict(WorldSpec, deep_merge(load_yaml_preset(PRESET_DIR, preset), overrides or {}))


# ---------------------------------------------------------------- parts
def _seeded_pool(spec: WorldSpec, seed: int) -> pretrain.ScenePool:
    return pretrain.ScenePool(spec.data.pool_size, seed=10_000 + seed)


def build_clip(out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> dict:
    return pretrain.train_clip(out, _seeded_pool(spec, seed), spec.clip, seed)


def build_vae(out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> dict:
    return pretrain.train_vae(out, _seeded_pool(spec, seed), spec.vae, seed)


def build_text_to_image(out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> dict:
    return pretrain.train_text_to_image(out, _seeded_pool(spec, seed), deps["vae"], spec.text_to_image, seed)


def build_unclip(out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> dict:
    return pretrain.train_unclip(out, _seeded_pool(spec, seed), deps["vae"], deps["clip"], deps["text_to_image"],
                                 spec.unclip, seed)


def build_language(out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> dict:
    from world.language import train_language_model

    return train_language_model(out, seed=seed, **spec.language) or {}


def build_data(out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> dict:
    from world.benchmarks import write_benchmarks, write_llava_data

    paths = {"enhance": write_enhance_data(out / "enhance", spec.data.enhance_images, spec.clip.p_mention, seed),
             "pairs": write_diagnostic_pairs(out / "pairs", spec.data.diagnostic_pairs, seed)}
    paths.update(write_benchmarks(out, seed=seed, pairs_per_attribute=spec.data.pairs_per_attribute))
    paths.update(write_llava_data(out, seed=seed, **spec.data.llava))
    return {"paths": {k: str(Path(v).relative_to(out)) for k, v in paths.items()}}


def write_diagnostic_pairs(out: Path, per_attribute: int, seed: int) -> Path:
    """`pairs.jsonl` for `enhance ... diagnose.pairs`: per attribute, scenes and their one-attribute
    changes, from a seed no benchmark or training set uses."""
    from world import scenes

    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for attribute in scenes.ATTRIBUTES:
        rng = random.Random(f"diagnostic-pairs-{seed}-{attribute}")
        for i in range(per_attribute):
            a, b = scenes.sample_pair(rng, attribute)
            names = (f"images/{attribute}-{i:04d}-a.png", f"images/{attribute}-{i:04d}-b.png")
            scenes.draw(a).save(out / names[0])
            scenes.draw(b).save(out / names[1])
            rows.append({"image": names[0], "pair_image": names[1], "attribute": attribute})
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_enhance_data(out: Path, n: int, p_mention: float, seed: int) -> Path:
    """`images.jsonl`: {"image", "caption"} rows, captions as the CLIP pre-trained on them (the
    contrastive regulariser reads them; the methods read only the images)."""
    from world import scenes

    rng = random.Random(f"enhance-{seed}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = scenes.sample_scene(rng)
        name = f"images/{i:06d}.png"
        scenes.draw(scene).save(out / name)
        rows.append({"image": name, "caption": scene.caption(scenes.sample_mentions(rng, p_mention)),
                     "labels": scene.labels()})
    path = out / "images.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass(frozen=True)
class Part:
    name: str
    build: Any
    deps: tuple[str, ...] = ()
    spec_keys: tuple[str, ...] = ()  # the WorldSpec sections that define it (its reuse key)
    shared: bool = False  # built once per world (data), not per seed


PARTS = (
    Part("data", build_data, spec_keys=("data", "clip.p_mention"), shared=True),
    Part("clip", build_clip, spec_keys=("clip", "data.pool_size")),
    Part("vae", build_vae, spec_keys=("vae", "data.pool_size")),
    Part("text_to_image", build_text_to_image, deps=("vae",), spec_keys=("text_to_image", "data.pool_size")),
    Part("unclip", build_unclip, deps=("vae", "clip", "text_to_image"), spec_keys=("unclip", "data.pool_size")),
    Part("language", build_language, spec_keys=("language",)),
)


def _spec_of(part: Part, spec: WorldSpec) -> dict:
    full = asdict(spec)
    out = {}
    for key in part.spec_keys:
        value: Any = full
        for k in key.split("."):
            value = value[k]
        out[key] = value
    return out


def _fingerprint(part: Part, spec: WorldSpec, seed: int, deps: dict[str, Path]) -> str:
    dep_ids = {d: json.loads((deps[d] / PART_FILE).read_text())["fingerprint"] for d in part.deps}
    blob = json.dumps({"spec": _spec_of(part, spec), "seed": seed, "deps": dep_ids}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _run_part(part: Part, out: Path, spec: WorldSpec, seed: int, deps: dict[str, Path], fingerprint: str) -> dict:
    """In a worker process: build one part atomically."""
    import torch

    torch.set_num_threads(1)
    tmp = out.parent / f".incomplete-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = part.build(tmp, spec, seed, deps)
    record = {"part": part.name, "seed": seed, "fingerprint": fingerprint, "spec": _spec_of(part, spec),
              "seconds": round(time.perf_counter() - start, 1),
              "cpu_seconds": round(time.process_time() - cpu, 1), **result}
    (tmp / PART_FILE).write_text(json.dumps(record, indent=2, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


@dataclass
class World:
    root: Path
    seed: int
    parts: dict[str, Path] = field(default_factory=dict)

    @property
    def zoo(self) -> Path:
        return self.root / f"seed-{self.seed}"


def part_dir(root: Path, part: Part, seed: int) -> Path:
    return root / "data" if part.shared else root / f"seed-{seed}" / "models" / part.name


def build_world(root: str | Path, seed: int = 0, spec: WorldSpec | None = None, jobs: int = 2,
                data_seed: int = 0) -> World:
    """Build (or reuse) the shared data and the seed's models; write `seed-K/zoo.json`."""
    root = Path(root).resolve()
    spec = spec or load_spec()
    done: dict[str, Path] = {}
    pending = {p.name: p for p in PARTS}
    records: dict[str, dict] = {}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        running = {}
        while pending or running:
            for name, part in list(pending.items()):
                if not all(d in done for d in part.deps):
                    continue
                del pending[name]
                out = part_dir(root, part, seed)
                part_seed = data_seed if part.shared else seed
                fingerprint = _fingerprint(part, spec, part_seed, done)
                existing = out / PART_FILE
                if existing.is_file() and json.loads(existing.read_text()).get("fingerprint") == fingerprint:
                    done[name] = out
                    records[name] = json.loads(existing.read_text())
                    logger.info("world: reusing %s (%s)", name, out)
                    continue
                if out.exists():
                    logger.warning("world: %s at %s was built from another spec or seed; rebuilding", name, out)
                logger.info("world: building %s -> %s", name, out)
                running[pool.submit(_run_part, part, out, spec, part_seed, dict(done), fingerprint)] = (name, out)
            if not running:
                if pending:
                    raise ConfigError(f"world parts {sorted(pending)} depend on parts that are not defined")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name, out = running.pop(future)
                records[name] = future.result()
                done[name] = out
                logger.info("world: %s built in %.0fs", name, records[name]["seconds"])
    world = World(root=root, seed=seed, parts=done)
    write_zoo_json(world, records)
    return world


def write_zoo_json(world: World, records: dict[str, dict]) -> Path:
    """The tiny zoo's zoo.json format (llava_plugin.toy.load_zoo reads it), pointing at the world."""
    data_root = world.parts["data"]
    data = {k: str(data_root / v) for k, v in records["data"]["paths"].items()}
    zoo = {
        "seed": world.seed,
        "seconds": {name: r["seconds"] for name, r in records.items()},
        "clip": str(world.parts["clip"]),
        "sd21": str(world.parts["text_to_image"]),
        "unclip": str(world.parts["unclip"]),
        "llm": str(world.parts["language"]),
        "data": data,
    }
    world.zoo.mkdir(parents=True, exist_ok=True)
    path = world.zoo / "zoo.json"
    path.write_text(json.dumps(zoo, indent=2))
    return path
