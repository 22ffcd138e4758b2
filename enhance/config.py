"""The enhance stage's config: one nested dataclass, loaded from a preset YAML plus overrides.

    cfg = load_config(preset="diva-openai-l14-224", overrides={"data": {"source": "/cc3m"}})

Every field is documented (`help_lines()` prints them for `--help`) and validated with a
message naming the field, the value and the fix. The method's own hyperparameters live in
the `method:` section; its `name` picks the registered method, the other keys are parsed by
that method's `config_cls` (so a typo there is rejected too). The `feedback:` section
(enhance/feedback.py) holds the options every method shares for controlled runs (the feedback
term's weight, a shuffled-condition control, a tower warm-up, a regulariser); upstream by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from enhance.feedback import FeedbackConfig
from llava_plugin.config import (
    ConfigError,
    deep_merge,
    from_dict,
    help_text,
    list_presets,
    load_yaml_preset,
    resolve_zoo_refs,
    to_dict,
)
from llava_plugin.config import documented as _help
from llava_plugin.train.config import RunConfig
from llava_plugin.train.config import positive as _positive

PRESET_DIR = Path(str(resources.files("enhance") / "configs"))


AUGMENTATIONS = ("none", "random_resized_crop")


@dataclass
class DataConfig:
    source: str = _help("Images: a folder, a .jsonl list ({'image': path} lines), .tar shard(s) / brace "
                        "pattern / directory of shards (webdataset). --data sets it.", "")
    seed: int = _help("Seeds the epoch shuffle (order = f(seed, epoch)) and the per-step noise.", 0)
    shuffle: bool = _help("Shuffle each epoch (deterministically); false keeps source order.", True)
    caption_key: str = _help("Field of a .jsonl list's rows holding the image's caption (read only when "
                             "feedback.regularizer.kind=contrastive; webdataset shards hold it in KEY.txt).",
                             "caption")
    num_workers: int = _help("DataLoader workers decoding and preprocessing images (0: in-process).", 0)
    max_bad_fraction: float = _help("Unreadable images are skipped and counted; more than this fraction of "
                                    "the images tried is an error (0 allows none).", 0.01)
    bad_check_after: int = _help("Images tried before the bad-image fraction is enforced (it is always "
                                 "enforced at the end of the run).", 256)
    augment: str = _help("'none': every image is used whole (the method's centre square); 'random_resized_crop': "
                         "a crop of data.crop_scale of its area and aspect 3/4-4/3, warped to a square, as "
                         "DIVA and GenHancer train (torchvision RandomResizedCrop(scale=(0.9, 1.0))); the crop is "
                         "a function of data.seed and the image's place in the stream, so resume stays exact. "
                         "A latent cache cannot hold it.", "none")
    crop_scale: list[float] = _help("Area fraction range of random_resized_crop.", factory=lambda: [0.9, 1.0])

    def validate(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"data.augment={self.augment!r}: expected one of {list(AUGMENTATIONS)}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale={self.crop_scale}: expected [low, high] with 0 < low <= high <= 1")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction={self.max_bad_fraction}: must be in [0, 1] (e.g. 0.01)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers}: must be >= 0")


@dataclass
class CacheConfig:
    latents: bool = _help("Cache the method's frozen target encodings (VAE latents / VQ ids) once and reuse "
                          "them; a cache built for another method/generator/preprocessing/image list is "
                          "refused.", False)
    dir: str = _help("Cache directory ('' -> OUTPUT/latent_cache).", "")
    shard_size: int = _help("Images per cache file.", 1024)
    batch_size: int = _help("Images per encode_targets call while building.", 32)

    def validate(self) -> None:
        _positive("cache.shard_size", self.shard_size)
        _positive("cache.batch_size", self.batch_size)


@dataclass
class DiagnoseConfig:
    images: int = _help("Images for the condition-gap check at start (0 skips it).", 8)
    bands: int = _help("Timestep bands of that check.", 4)
    min_relative_gap: float = _help("Warn when (shuffled - own condition loss) / own loss is below this: the "
                                    "generator ignores the tower, so feedback can only make it drift.", 0.01)
    pairs: str = _help("A .jsonl of image pairs that differ in one attribute ({'image', 'pair_image', "
                       "'attribute'} lines): at the start and the end of the run, the generator's loss under each "
                       "image's own condition vs its partner's, per attribute (diagnosis_pairs.json): what the "
                       "generator reads from the tower, so what feedback can teach. '' skips it.", "")

    def validate(self) -> None:
        if self.images < 0 or self.images == 1:
            raise ConfigError(f"diagnose.images={self.images}: use 0 (skip) or >= 2 "
                              "(conditions are shuffled within the batch)")
        _positive("diagnose.bands", self.bands)


@dataclass
class ExportConfig:
    """Tower exports during the run, besides the final OUTPUT/vision_tower: upstream GenHancer saves the
    merged tower from step 50 to 3000, then every 500 steps (Continuous/train_OpenAICLIP_stage2_all.py:312),
    so a checkpoint can be chosen afterwards."""

    every_steps: int = _help("Also export the tower to OUTPUT/exports/step-NNNNNNNN every N steps (0: never).", 0)
    at_steps: list[int] = _help("Also export the tower at these steps (e.g. [50, 100, 200]).", factory=list)

    def validate(self) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"export.every_steps={self.every_steps}: must be >= 0")
        bad = [s for s in self.at_steps if not isinstance(s, int) or s <= 0]
        if bad:
            raise ConfigError(f"export.at_steps={self.at_steps}: steps must be positive integers, not {bad}")

    def due(self, step: int) -> bool:
        return step in self.at_steps or bool(self.every_steps and step % self.every_steps == 0)


@dataclass
class EnhanceConfig(RunConfig):
    """One enhance run (a stage): what to train, on what, how (batch, optim, schedule, precision,
    deepspeed, checkpointing and logging come from the shared RunConfig)."""

    vision_tower: str = _help("Tower spec to train (see llava_plugin.registry). --vision-tower sets it.", "")
    generator: str = _help("Generator spec/path the method loads (frozen). --generator sets it.", "")
    method: dict[str, Any] = _help("Method section: `name` (diva, un2clip, genhancer, ...) plus that method's "
                                   "own fields (see `python -m enhance presets --method NAME`).", factory=dict)
    data: DataConfig = _help("", factory=DataConfig)
    cache: CacheConfig = _help("", factory=CacheConfig)
    diagnose: DiagnoseConfig = _help("", factory=DiagnoseConfig)
    feedback: FeedbackConfig = _help("", factory=FeedbackConfig)
    export: ExportConfig = _help("", factory=ExportConfig)

    def validate(self) -> None:
        if not self.method.get("name"):
            raise ConfigError("method.name is not set: pass --method NAME (or a --preset that sets it)")
        self.method_config()  # parse now, so a bad method key fails before any model loads
        if self.cache.latents and self.data.augment != "none":
            raise ConfigError(f"cache.latents=true with data.augment={self.data.augment}: the cache holds one "
                              "encoding per image, but each epoch crops it anew; drop --cache-latents or set "
                              "data.augment=none (the README's 'latent cache' note weighs the two)")
        if self.feedback.condition == "shuffled" and self.batch.micro_batch_size < 2:
            raise ConfigError(f"feedback.condition=shuffled permutes conditions within a micro-batch, but "
                              f"batch.micro_batch_size={self.batch.micro_batch_size}; use 2 or more")

    @property
    def method_name(self) -> str:
        return self.method["name"]

    def method_config(self):
        """The method's own config dataclass, parsed from `method:` minus `name`."""
        from enhance.methods.base import get_method

        try:
            cls = get_method(self.method_name)
        except KeyError as err:
            raise ConfigError(f"method.name={self.method_name!r}: {err.args[0]}") from err
        params = {k: v for k, v in self.method.items() if k != "name"}
        return from_dict(cls.config_cls, params, "method.")

    def require_run_fields(self) -> None:
        """The fields only a real run needs (presets may leave them to the command line)."""
        for key, flag in (("vision_tower", "--vision-tower"), ("generator", "--generator"),
                          ("output_dir", "--output")):
            if not getattr(self, key):
                raise ConfigError(f"{key} is not set: pass {flag} (or set it in the preset)")
        if not self.data.source:
            raise ConfigError("data.source is not set: pass --data DIR|FILE.jsonl|SHARDS")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_config(preset: str | None = None, config_file: str | None = None,
                overrides: dict[str, Any] | None = None, zoo: str | None = None) -> EnhanceConfig:
    """Preset (by name or path) <- config file <- overrides, each a (nested) dict, then validate.

    String values `zoo:NAME` (tiny presets use them) become paths of the tiny zoo at `zoo`:
    `zoo:clip` -> zoo.clip, `zoo:data/scenes` -> zoo.data["scenes"].
    """
    data: dict[str, Any] = {}
    if preset:
        data = load_yaml_preset(PRESET_DIR, preset)
    if config_file:
        data = deep_merge(data, load_yaml_preset(PRESET_DIR, config_file))
    data = deep_merge(data, overrides or {})
    return from_dict(EnhanceConfig, resolve_zoo_refs(data, zoo))


STAGES_KEY = "stages"
PAPER_BACKBONE = "openai-l14-224"


def resolve_preset(method: str | None, preset: str | None, backbone: str | None = None,
                   zoo: str | None = None) -> str:
    """The preset a run uses: a name or YAML path as given, or one of two recipe keywords,
    `paper` (`<method>-<backbone>`, the published recipe) and `toy` (`tiny-<method>`, the same code on
    the tiny zoo). Without --preset: the method's own preset."""
    if preset not in (None, "paper", "toy"):
        if backbone:
            raise ConfigError(f"--backbone {backbone} goes with --preset paper, not --preset {preset}")
        return preset
    if not method:
        raise ConfigError("pass --method NAME or --preset NAME")
    from enhance.methods.base import get_method

    try:
        get_method(method)
    except KeyError as err:
        raise ConfigError(f"--method {method}: {err}") from err
    if preset is None:
        return method if method in presets() else "base"
    if preset == "toy":
        if not zoo:
            raise ConfigError("--preset toy needs --zoo DIR (build one with: python -m llava_plugin.toy --out DIR)")
        name = f"tiny-{method}"
    else:
        name = f"{method}-{backbone or PAPER_BACKBONE}"
    if name not in presets():
        mine = sorted(p.removeprefix(f"{method}-") for p in presets()
                      if p.startswith(f"{method}-") and not p.startswith(f"{method}-discrete")
                      and "-stage" not in p)
        raise ConfigError(f"no {preset} preset {name!r} for method {method!r}" +
                          (f"; its paper backbones: {mine}" if preset == "paper" and mine else "") +
                          " (python -m enhance presets lists them all)")
    return name


def check_inputs(stages: list[tuple[str, EnhanceConfig]]) -> None:
    """The run's local inputs exist (before any process starts): the images, and every generator
    that is not made by an earlier stage of the same run."""
    from enhance.data import expand_braces

    made = set()
    for _, cfg in stages:
        source = cfg.data.source
        if source and not any(Path(p).exists() for p in expand_braces(source)):
            raise ConfigError(f"training data (--data) not found: {source}")
        cfg.require_run_fields()
        if cfg.generator not in made and cfg.generator.startswith(("/", ".")) and not Path(cfg.generator).exists():
            raise ConfigError(f"generator (--generator) not found: {cfg.generator}")
        made.add(cfg.output_dir)


def load_run(preset: str | None = None, config_file: str | None = None,
             overrides: dict[str, Any] | None = None, zoo: str | None = None) -> list[tuple[str, EnhanceConfig]]:
    """The stages one `python -m enhance train` runs, as [(stage, config)], in order.

    A preset with `stages:` (a preset per stage of its method, e.g. GenHancer's stage1 and stage2)
    runs every stage the method declares (`Method.stages`), each from its own preset with the same
    flags and overrides, chained by `Method.stage_overrides` (output dirs, the generator a stage
    takes from the one before). Any other preset is one stage.
    """
    stages = load_yaml_preset(PRESET_DIR, preset).get(STAGES_KEY) if preset else None
    if stages is None:
        return [("train", load_config(preset, config_file, overrides, zoo))]
    if not isinstance(stages, dict) or not stages:
        raise ConfigError(f"preset {preset!r}: `{STAGES_KEY}:` must map each stage name to a preset")
    from enhance.methods.base import get_method

    first = load_config(next(iter(stages.values())), config_file, overrides, zoo)
    method = get_method(first.method_name)
    if list(stages) != list(method.stages):
        raise ConfigError(f"preset {preset!r} lists stages {list(stages)}, but method {first.method_name!r} runs "
                          f"{list(method.stages)}: name a preset for each, in that order")
    if not first.output_dir:
        raise ConfigError("output_dir is not set: pass --output (every stage of the run writes under it)")
    return [(stage, load_config(stages[stage], config_file,
                                deep_merge(overrides or {}, method.stage_overrides(stage, first.output_dir)), zoo))
            for stage in method.stages]


def presets() -> list[str]:
    return list_presets(PRESET_DIR)


def preset_summary(name: str) -> str:
    """One line per preset for `python -m enhance presets`."""
    data = load_yaml_preset(PRESET_DIR, name)
    if STAGES_KEY in data:
        return f"{name:<42} stages: " + ", ".join(f"{stage}={p}" for stage, p in data[STAGES_KEY].items())
    method = data.get("method", {}).get("name", "?")
    optim = data.get("optim", {})
    sched = data.get("schedule", {})
    batch = data.get("batch", {}).get("global_batch_size", "?")
    return (f"{name:<42} method={method:<19} tower={data.get('vision_tower') or '(--vision-tower)'} "
            f"{optim.get('name', '?')} lr={optim.get('lr', '?')} batch={batch} steps={sched.get('max_steps') or 'epochs=' + str(sched.get('epochs', '?'))}")


def help_lines() -> list[str]:
    return help_text(EnhanceConfig)
