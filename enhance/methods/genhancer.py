"""GenHancer (Ma et al., 2025): a tower learns from a light generator that sees only its global token.

Condition: the tower's pooled/projected global token (`image_embeds`: CLIP's projected CLS,
SigLIP's attention-pooled output) through two MLPs (LayerNorm-Linear-GELU-Linear), one to
the denoiser's pooled vector, one to its joint-attention condition token(s).

Two stages, one method (`stage` in the config):
  1. tower frozen; a randomly initialised light denoiser + the two MLPs train (AdamW 1e-4).
     `save_extras(out_dir)` writes them, with the frozen tokenizer, to `out_dir/generator/`.
  2. denoiser + MLPs frozen, loaded from the stage-1 run (`generator` = that run's output
     dir); LoRA on the tower's attention and MLP linears trains (1e-5). `export_tower()`
     merges the LoRA into plain weights.

This module holds what both variants share and the continuous variant (`genhancer`:
rectified flow over VAE latents with a small Flux MM-DiT). The discrete variant
(`genhancer-discrete`: masked VQ-token prediction) is in genhancer_discrete.py.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from enhance.generators.flow_dit import (
    FlowDenoiser,
    FlowDiTConfig,
    build_flow_dit,
    flow_interpolate,
    logit_normal_timesteps,
    pack_latents,
    randn,
    vae_dir,
    vae_scaled_latents,
)
from enhance.methods.base import Method, register_method
from llava_plugin.config import ConfigError
from llava_plugin.towers import VisionTower
from llava_plugin.train import lora
from llava_plugin.train.lora import ALL_LINEAR

GENERATOR_DIR = "generator"  # stage-1 output: <run dir>/generator/
GENERATOR_FILE = "genhancer.json"
PROJECTOR_FILE = "projector.safetensors"
DENOISER_DIR = "denoiser"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # CLIP/SigLIP attention + MLP linears


# ---- config ------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    """Stage-2 LoRA on the tower (GenHancer: r16, alpha16, dropout 0.1)."""

    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata={
        "help": "names of the tower's Linear modules that get LoRA (module-name suffixes), or ['all-linear'] "
                "(peft: every Linear, the visual projection included, as upstream)"})
    bias: Literal["none", "lora_only"] = field(default="none", metadata={
        "help": "'none': only LoRA matrices train; 'lora_only' (upstream's setting) also trains the "
                "biases of the adapted linears"})

    def validate(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"method.lora.r={self.r}, method.lora.alpha={self.alpha}: must be positive")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.lora.dropout={self.dropout}: must be in [0, 1)")
        if not self.targets:
            raise ConfigError(f"method.lora.targets is empty; e.g. {LORA_TARGETS} or {[ALL_LINEAR]}")
        if ALL_LINEAR in self.targets and len(self.targets) > 1:
            raise ConfigError(f"method.lora.targets={self.targets}: {ALL_LINEAR!r} already names every Linear; "
                              "give it alone")


@dataclass
class GenHancerCommonConfig:
    """Fields both GenHancer variants share."""

    stage: int = field(default=1, metadata={
        "help": "1: train denoiser + MLPs, tower frozen (generator = tokenizer dir); 2: train tower LoRA "
                "(generator = the stage-1 output dir), with the denoiser + MLPs frozen or not (stage2_trains)"})
    stage2_trains: Literal["tower", "all"] = field(default="tower", metadata={
        "help": "stage 2: 'tower' trains only the tower's LoRA, the stage-1 denoiser and MLPs frozen (the paper; "
                "upstream Continuous/train_*_stage2_only.py); 'all' trains them too, from their stage-1 weights "
                "(upstream Continuous/train_*_stage2_all.py:165)"})
    image_size: int | None = field(default=None, metadata={
        "help": "resolution the generator sees (the tower's crop, resized); null: the tower's own (upstream)"})
    projector_hidden: int | None = field(default=None, metadata={
        "help": "hidden width of the two condition MLPs; null: each MLP's output width (as upstream)"})
    num_context_tokens: int = field(default=1, metadata={
        "help": "joint-attention condition tokens made from the global token (upstream: 1)"})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "stage-2 LoRA"})

    def validate(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"method.stage={self.stage}: must be 1 (train the denoiser) or 2 (train the tower)")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"method.image_size={self.image_size}: must be positive (or null)")
        if self.projector_hidden is not None and self.projector_hidden <= 0:
            raise ConfigError(f"method.projector_hidden={self.projector_hidden}: must be positive (or null)")
        if self.num_context_tokens <= 0:
            raise ConfigError(f"method.num_context_tokens={self.num_context_tokens}: must be >= 1")
        self.lora.validate()
        self.denoiser.validate()

    def architecture(self) -> dict:
        """What a stage-1 generator fixes and stage 2 must match (JSON-normalised)."""
        return json.loads(json.dumps({"denoiser": asdict(self.denoiser), "projector_hidden": self.projector_hidden,
                                      "num_context_tokens": self.num_context_tokens}))


@dataclass
class GenHancerConfig(GenHancerCommonConfig):
    """Continuous GenHancer: rectified flow over VAE latents."""

    denoiser: FlowDiTConfig = field(default_factory=FlowDiTConfig, metadata={"help": "light Flux MM-DiT"})
    logit_normal_mean: float = field(default=0.0, metadata={"help": "t = sigmoid(mean + std * N(0,1))"})
    logit_normal_std: float = field(default=1.0, metadata={"help": "(upstream `scale_factor`: 1.0)"})

    def validate(self) -> None:
        super().validate()
        if self.logit_normal_std <= 0:
            raise ConfigError(f"method.logit_normal_std={self.logit_normal_std}: must be positive")


# ---- condition ---------------------------------------------------------------------------
def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class GlobalConditionProjector(nn.Module):
    """The global token -> {"pooled": [B, pooled_dim], "context": [B, T, context_dim]}."""

    def __init__(self, embed_dim: int, pooled_dim: int, context_dim: int, num_context_tokens: int = 1,
                 hidden: int | None = None):
        super().__init__()
        self.dims = {"embed_dim": embed_dim, "pooled_dim": pooled_dim, "context_dim": context_dim,
                     "num_context_tokens": num_context_tokens, "hidden": hidden}  # saved with the weights
        self.num_context_tokens = num_context_tokens
        self.to_pooled = _mlp(embed_dim, hidden or pooled_dim, pooled_dim)
        self.to_context = _mlp(embed_dim, hidden or context_dim, context_dim * num_context_tokens)

    def forward(self, global_token: torch.Tensor) -> dict[str, torch.Tensor]:
        global_token = global_token.to(self.to_pooled[1].weight.dtype)
        context = self.to_context(global_token)
        return {"pooled": self.to_pooled(global_token),
                "context": context.view(global_token.shape[0], self.num_context_tokens, -1)}


# ---- preprocessing -----------------------------------------------------------------------
def generator_pixels(pixel_values: torch.Tensor, processor, size: int) -> torch.Tensor:
    """The tower's own crop for the generator, as upstream feeds one tensor to both: the
    processor's normalisation undone, scaled to [-1, 1], resized to `size` if it differs."""
    x = pixel_values.float()
    if getattr(processor, "do_normalize", False):
        mean = torch.tensor(processor.image_mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(processor.image_std, dtype=x.dtype).view(1, -1, 1, 1)
        x = x * std + mean
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0) * 2.0 - 1.0


# ---- LoRA --------------------------------------------------------------------------------
def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """The tower's model with stage-2 LoRA (the shared wrap, llava_plugin.train.lora)."""
    return lora.add_lora(model, r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
                         targets=settings.targets, bias=settings.bias, key="method.lora")


def merged_tower(tower: VisionTower) -> VisionTower:
    """The tower (same processor, text tower and metadata) around the LoRA-merged model."""
    merged = lora.merged_model(tower.model)
    return copy.deepcopy(tower, memo={id(tower.model): merged}).eval()


# ---- the shared two-stage method ---------------------------------------------------------
class GenHancerBase(Method):
    """Stage logic, condition and stage-1 output shared by both variants.

    A variant says how to load its frozen tokenizer (`tokenizer_dir` names it inside the
    stage-1 output), build/load its denoiser, encode targets and compute the loss.
    """

    tokenizer_dir: ClassVar[str] = ""

    stages: ClassVar[tuple[str, ...]] = ("stage1", "stage2")

    @classmethod
    def stage_overrides(cls, stage: str, run_dir: str) -> dict[str, Any]:
        """stage1 trains the generator into RUN/stage1/ (its `generator/` is what stage 2 loads);
        stage2 trains the tower's LoRA in RUN itself, so RUN/vision_tower/ is the run's export."""
        stage1_dir = str(Path(run_dir) / "stage1")
        if stage == "stage1":
            return {"output_dir": stage1_dir, "method": {"stage": 1}}
        return {"output_dir": run_dir, "generator": stage1_dir, "method": {"stage": 2}}

    def __init__(self, cfg: GenHancerCommonConfig, tower: VisionTower, generator: str):
        super().__init__(cfg, tower, generator)
        cfg.validate()
        self.image_size = cfg.image_size or tower.sizes.image_size
        embed_dim = tower.sizes.embed_dim
        if cfg.stage == 1:
            self.tokenizer_source = self.tokenizer_directory(generator)
            tokenizer = self.freeze("tokenizer", self.load_tokenizer(self.tokenizer_source))
            self.denoiser = self.build_denoiser(tokenizer)
            self.projector = GlobalConditionProjector(
                embed_dim, cfg.denoiser.pooled_dim, cfg.denoiser.context_dim, cfg.num_context_tokens,
                cfg.projector_hidden)
            self.tower.requires_grad_(False)
            self.tower.eval()
        else:
            source = self._stage1_dir(generator, embed_dim)
            self.tokenizer_source = source / self.tokenizer_dir
            self.freeze("tokenizer", self.load_tokenizer(self.tokenizer_source))
            denoiser = self.load_denoiser(source / DENOISER_DIR)
            projector = GlobalConditionProjector(**json.loads((source / GENERATOR_FILE).read_text())["projector"])
            _load_safetensors(projector, source / PROJECTOR_FILE)
            if cfg.stage2_trains == "all":  # trained from their stage-1 weights, beside the tower's LoRA
                self.denoiser, self.projector = denoiser.requires_grad_(True), projector.requires_grad_(True)
            else:
                self.freeze("denoiser", denoiser)
                self.freeze("projector", projector)
            self.tower.requires_grad_(False)
            self.tower.model = add_lora(self.tower.model, cfg.lora)

    # -- variant hooks ---------------------------------------------------------------------
    def tokenizer_directory(self, generator: str) -> Path:
        """The frozen tokenizer's own directory, resolved from the stage-1 `generator` spec."""
        raise NotImplementedError

    def load_tokenizer(self, directory: Path) -> nn.Module:
        raise NotImplementedError

    def build_denoiser(self, tokenizer: nn.Module) -> nn.Module:
        raise NotImplementedError

    def load_denoiser(self, directory: Path) -> nn.Module:
        raise NotImplementedError

    # -- parts -----------------------------------------------------------------------------
    def part(self, name: str) -> nn.Module:
        """`denoiser` / `projector`: trainable in stage 1, frozen in stage 2 unless stage2_trains='all'."""
        return self.frozen[name] if name in self.frozen else getattr(self, name)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.stage == 1:
            self.tower.eval()  # frozen in stage 1: no dropout
        return self

    # -- Method API ------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The tower's own pixels and the generator's [-1, 1] pixels of the same crop."""
        pixel_values = self.tower.preprocess(images)
        return {"pixel_values": pixel_values,
                "generator_pixels": generator_pixels(pixel_values, self.tower.image_processor, self.image_size)}

    def encode_condition(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.stage == 2):
            global_token = self.tower(batch["pixel_values"]).image_embeds
        return self.part("projector")(global_token)

    def export_tower(self) -> VisionTower:
        return merged_tower(self.tower) if self.cfg.stage == 2 else self.tower

    def save_extras(self, out_dir: str | Path) -> None:
        """Stage 1: write the trained denoiser, MLPs and the frozen tokenizer to
        `out_dir/generator/`, which stage 2 loads (pass `out_dir` as its generator).
        Stage 2 writes nothing: its product is the exported tower."""
        if self.cfg.stage != 1:
            return
        out = Path(out_dir) / GENERATOR_DIR
        out.mkdir(parents=True, exist_ok=True)
        # copied from disk: the in-memory copy may have been cast to the run's precision
        shutil.copytree(self.tokenizer_source, out / self.tokenizer_dir, dirs_exist_ok=True)
        self.denoiser.save_pretrained(out / DENOISER_DIR)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()},
                  str(out / PROJECTOR_FILE))
        meta = {"method": self.name, "base_tower": self.tower.spec, "tokenizer_source": str(self.tokenizer_source),
                "image_size": self.image_size, "projector": self.projector.dims,
                "architecture": self.cfg.architecture()}
        (out / GENERATOR_FILE).write_text(json.dumps(meta, indent=2))

    def _stage1_dir(self, generator: str, embed_dim: int) -> Path:
        """The stage-1 generator dir (`<run>/generator/`, or `<run>` given), checked against this run."""
        root = Path(generator)
        source = root if (root / GENERATOR_FILE).is_file() else root / GENERATOR_DIR
        if not (source / GENERATOR_FILE).is_file():
            raise ConfigError(
                f"method.stage=2 needs a stage-1 output as its generator, but {root} has no {GENERATOR_FILE} "
                f"(nor {GENERATOR_DIR}/{GENERATOR_FILE}); run stage 1 of {self.name!r} first and pass its "
                "output directory as --generator")
        meta = json.loads((source / GENERATOR_FILE).read_text())
        problems = []
        if meta["method"] != self.name:
            problems.append(f"it was trained by method {meta['method']!r}, this run is {self.name!r}")
        if meta["projector"]["embed_dim"] != embed_dim:
            problems.append(f"its MLPs take a {meta['projector']['embed_dim']}-d global token, the tower "
                            f"{self.tower.spec!r} gives {embed_dim}-d")
        if meta["image_size"] != self.image_size:
            problems.append(f"it saw {meta['image_size']} px images, this run gives {self.image_size} px "
                            "(set method.image_size)")
        stored, ours = meta["architecture"], self.cfg.architecture()
        diff = _diff(stored, ours)
        if diff:
            problems.append("its architecture differs from this config in " + ", ".join(
                f"method.{k} (stage 1: {a!r}, here: {b!r})" for k, a, b in diff)
                + "; use the stage-1 values")
        if problems:
            raise ConfigError(f"stage-1 generator {source} does not fit this run: " + "; ".join(problems))
        return source


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _load_safetensors(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)), strict=True)


def fixed_timesteps(timesteps, batch: int, device) -> torch.Tensor:
    """A diagnostic's fixed t (scalar or [B]) as float32 [B]."""
    t = torch.as_tensor(timesteps, dtype=torch.float32, device=device).reshape(-1)
    return t.expand(batch) if t.numel() == 1 else t


# ---- continuous ----------------------------------------------------------------------------
@register_method
class GenHancer(GenHancerBase):
    """Continuous GenHancer: a light Flux MM-DiT trained with rectified flow on VAE latents.

    `generator` (stage 1): a VAE dir or a pipeline dir with `vae/`: FLUX.1-dev (upstream's 16-channel AE) or
    another AutoencoderKL such as SD-2.1-base's.
    """

    name = "genhancer"
    config_cls = GenHancerConfig
    tokenizer_dir = "vae"

    def tokenizer_directory(self, generator):
        return vae_dir(generator)

    def load_tokenizer(self, directory):
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(directory)

    def build_denoiser(self, vae):
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if self.image_size % (2 * factor):
            raise ConfigError(f"method.image_size={self.image_size}: the VAE downsamples by {factor} and Flux packs "
                              f"2x2 latent patches, so the generator's image size must be a multiple of {2 * factor}")
        return FlowDenoiser(build_flow_dit(self.cfg.denoiser, vae.config.latent_channels), self.cfg.denoiser.guidance)

    def load_denoiser(self, directory):
        return FlowDenoiser.load(directory, self.cfg.denoiser.guidance)

    @torch.no_grad()
    def encode_targets(self, batch):
        """VAE posterior parameters (deterministic, cacheable); sampled in `denoising_loss`."""
        vae = self.frozen["tokenizer"]
        pixels = batch["generator_pixels"].to(device=vae.device, dtype=vae.dtype)
        posterior = vae.encode(pixels).latent_dist
        return {"latent_mean": posterior.mean, "latent_logvar": posterior.logvar}

    def denoising_loss(self, batch, condition, rng=None, timesteps=None):
        """Velocity MSE per sample at logit-normal t (or the given t in [0, 1])."""
        device = condition["pooled"].device
        latents = vae_scaled_latents(self.frozen["tokenizer"], batch["latent_mean"].to(device),
                                     batch["latent_logvar"].to(device), rng)
        b, _, h, w = latents.shape
        x0 = pack_latents(latents)
        noise = randn(x0.shape, rng, device)
        if timesteps is None:
            t = logit_normal_timesteps(b, self.cfg.logit_normal_mean, self.cfg.logit_normal_std, rng, device)
        else:
            t = fixed_timesteps(timesteps, b, device)
        x_t, target = flow_interpolate(x0, noise, t)
        velocity = self.part("denoiser")(x_t, t, condition["pooled"], condition["context"], h, w)
        return ((velocity.float() - target) ** 2).mean(dim=(1, 2))

    def timestep_range(self) -> tuple[float, float]:
        return (0.0, 1.0)
