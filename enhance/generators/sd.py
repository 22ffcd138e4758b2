"""Frozen Stable Diffusion parts for training-time feedback: loading, pixels, latents, noise, target.

Thin wrappers over diffusers: a generator is a pipeline directory in the hub layout
(stabilityai/stable-diffusion-2-1-base, stabilityai/stable-diffusion-2-1-unclip, ...). Only
what a training step needs is loaded; the text encoder is used once, for the fixed prompt,
and then dropped (its embedding is all the step needs).

The noise schedule is read as a `DDPMScheduler` from the pipeline's `scheduler/` config,
as diffusers' training scripts do: the betas and the prediction type are the pipeline's
own, whatever sampler class it ships (PNDM, Euler, DDIM).

Randomness always comes from the `torch.Generator` the caller passes, so a step is
reproducible from its seed and a cache of VAE posteriors changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llava_plugin.errors import GenfeedbackError

# what `target()` can produce; anything else in scheduler_config.json is refused at load
# (epsilon: the noise; v_prediction: the velocity; sample: the clean latents, x0-prediction)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class GeneratorError(GenfeedbackError, ValueError):
    """A generator directory that cannot serve this method; the message says what to pass instead."""


def resolve_pipeline_dir(spec: str | Path, expected: str) -> Path:
    """A local diffusers pipeline directory, or a hub id already in the local HF cache."""
    path = Path(spec).expanduser()
    if not path.exists() and "/" in str(spec) and not str(spec).startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:  # the hub cache (HF_HUB_OFFLINE=1 reads only what is already there)
            path = Path(
                snapshot_download(
                    str(spec),
                    allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
                    # weights a training step never loads: other precisions, the image encoder
                    # the tower replaces, the safety checker
                    ignore_patterns=["*fp16*", "*non_ema*", "*ema-only*", "image_encoder/*",
                                     "safety_checker/*"],
                )
            )
        except Exception as err:
            raise GeneratorError(
                f"generator {spec!r}: not a local directory and not loadable from the hub "
                f"cache ({type(err).__name__}: {err}); download {expected} first"
            ) from err
    if not (path / "model_index.json").is_file():
        raise GeneratorError(
            f"generator {spec!r}: {path} is not a diffusers pipeline directory (no "
            f"model_index.json); pass a local copy of {expected}"
        )
    return path


def center_squares(images: Sequence[Image.Image]) -> list[Image.Image]:
    """The largest centred square of each image, so that the tower and the VAE see the same
    content whatever each processor does with non-square input (CLIP crops, SigLIP squashes)."""
    out = []
    for image in images:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        out.append(image if w == h else image.crop((left, top, left + side, top + side)))
    return out


def vae_pixels(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """The VAE's input: RGB, shortest side resized to `resolution` (bicubic), centre-cropped
    square, scaled to [-1, 1] as 2 * x / 255 - 1. [B, 3, R, R] float32.

    Deliberately independent of any tower's normalisation (DIVA's upstream code fed the VAE
    CLIP-normalised pixels; the VAE was trained on [-1, 1])."""
    out = []
    for image in images:
        image = image.convert("RGB") if image.mode != "RGB" else image
        w, h = image.size
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.float32)
        out.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(out)


def randn(shape, rng: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, returned on `like`'s device/dtype."""
    device = rng.device if rng is not None else like.device
    return torch.randn(shape, generator=rng, device=device, dtype=torch.float32).to(like.device, like.dtype)


def randint(high: int, shape, rng: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = rng.device if rng is not None else device
    return torch.randint(0, high, shape, generator=rng, device=gen_device).to(device)


class LatentDiffusion:
    """The frozen parts of an SD-style pipeline a training step uses: UNet, VAE, noise schedule.

    The caller registers `unet` and `vae` as frozen modules (see `modules()`), so moving or
    casting the method moves them; this object only holds references.
    """

    expected = "stabilityai/stable-diffusion-2-1-base"

    def __init__(self, spec: str | Path):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.path = resolve_pipeline_dir(spec, self.expected)
        for sub in ("unet", "vae", "scheduler", "tokenizer", "text_encoder"):
            if not (self.path / sub).is_dir():
                raise GeneratorError(
                    f"generator {self.path}: no {sub}/ folder; expected the pipeline layout of "
                    f"{self.expected}"
                )
        self.unet = UNet2DConditionModel.from_pretrained(self.path, subfolder="unet")
        self.vae = AutoencoderKL.from_pretrained(self.path, subfolder="vae")
        self.noise_scheduler = DDPMScheduler.from_pretrained(self.path, subfolder="scheduler")
        if self.prediction_type not in PREDICTION_TYPES:
            raise GeneratorError(
                f"generator {self.path}: scheduler prediction_type={self.prediction_type!r} is "
                f"not supported; supported: {list(PREDICTION_TYPES)}"
            )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae}

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def native_resolution(self) -> int:
        """Pixels per side the UNet was trained at: latent sample size x VAE downsampling."""
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def cross_attention_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    # ---- prompt ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """[1, model_max_length, cross_attention_dim]: the text encoder's last hidden state for a
        prompt padded to full length, as the SD pipelines compute it. The encoder is then freed."""
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(self.path / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(self.path / "text_encoder").eval()
        ids = tokenizer(
            [prompt],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        embeds = text_encoder(ids).last_hidden_state
        if embeds.shape[-1] != self.cross_attention_dim:
            raise GeneratorError(
                f"generator {self.path}: text encoder width {embeds.shape[-1]} != UNet "
                f"cross_attention_dim {self.cross_attention_dim}"
            )
        return embeds

    # ---- latents ---------------------------------------------------------------------------
    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, logvar) of [-1, 1] pixels, unscaled: deterministic, so cacheable."""
        param = next(self.vae.parameters())
        dist = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        return dist.mean, dist.logvar

    def latents(
        self, mean: torch.Tensor, logvar: torch.Tensor | None, rng: torch.Generator | None, sample: bool
    ) -> torch.Tensor:
        """Scaled latents for the UNet: the posterior mean, or a draw from it when `sample`."""
        z = mean + torch.exp(0.5 * logvar) * randn(mean.shape, rng, mean) if sample else mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    # ---- diffusion -------------------------------------------------------------------------
    def timestep_bounds(self, band: Sequence[float] = (0.0, 1.0)) -> tuple[int, int]:
        """The integer timesteps [low, high) of a band given as fractions of the schedule:
        [round(band[0] * T), round(band[1] * T)); (0, 1) is every step, [0, T)."""
        steps = self.num_train_timesteps
        low, high = round(band[0] * steps), round(band[1] * steps)
        if not 0 <= low < high <= steps:
            raise GeneratorError(f"timestep band {list(band)} of the generator's {steps} steps holds no timestep "
                                 f"([{low}, {high})); use fractions 0 <= low < high <= 1 at least 1/{steps} apart")
        return low, high

    def timesteps(
        self,
        batch_size: int,
        draws: int,
        rng: torch.Generator | None,
        device: torch.device,
        fixed: torch.Tensor | None = None,
        band: Sequence[float] = (0.0, 1.0),
    ) -> torch.Tensor:
        """[draws * batch_size] timesteps (draw-major), uniform over the integers of `band`
        (`timestep_bounds`; by default all of [0, num_train_timesteps)), or `fixed` (a scalar or one
        per sample) for every draw."""
        if fixed is None:
            low, high = self.timestep_bounds(band)
            t = randint(high - low, (draws * batch_size,), rng, device)
            return t + low if low else t
        return torch.as_tensor(fixed, device=device).long().expand(batch_size).repeat(draws)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.noise_scheduler.add_noise(latents, noise, t)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to output at t, by the scheduler's prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, t)
        if self.prediction_type == "sample":
            return latents
        raise GeneratorError(
            f"unknown prediction_type {self.prediction_type!r}; supported: {list(PREDICTION_TYPES)}"
        )

    def denoise(
        self,
        noisy: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        param = next(self.unet.parameters())
        return self.unet(
            noisy.to(param.dtype),
            t,
            encoder_hidden_states=context.to(param.dtype),
            class_labels=None if class_labels is None else class_labels.to(param.dtype),
        ).sample


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor, draws: int,
                   weights: list[float] | None = None) -> torch.Tensor:
    """MSE per sample, averaged over its `draws` or summed with one weight per draw (rows are
    draw-major: [draw0 batch, draw1 batch, ...])."""
    err = (pred.float() - target.float()).pow(2).flatten(1).mean(1).view(draws, -1)
    if weights is None:
        return err.mean(0)
    if len(weights) != draws:
        raise ValueError(f"{len(weights)} draw weights for {draws} draws")
    return (err * torch.tensor(weights, dtype=err.dtype, device=err.device)[:, None]).sum(0)
