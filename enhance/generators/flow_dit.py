"""A light rectified-flow MM-DiT over frozen VAE latents (GenHancer's continuous denoiser).

The denoiser is diffusers' `FluxTransformer2DModel` at a small depth (GenHancer: 2 double-
stream + 4 single-stream blocks), randomly initialised: image latents are packed into
Flux's 2x2 patch sequence, the condition arrives as Flux's pooled vector and its joint-
attention ("text") tokens.

Rectified flow, in the convention of GenHancer and the Flux pipelines: t=0 is data, t=1
is noise, x_t = (1 - t) * x0 + t * noise, and the network predicts the velocity
noise - x0. t is drawn logit-normal: sigmoid(mean + std * N(0, 1)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llava_plugin.config import ConfigError


@dataclass
class FlowDiTConfig:
    """Architecture of the light Flux denoiser (defaults: GenHancer's, at paper scale)."""

    num_double_blocks: int = field(default=2, metadata={"help": "MM-DiT double-stream (joint) blocks"})
    num_single_blocks: int = field(default=4, metadata={"help": "single-stream blocks after the joint ones"})
    num_heads: int = field(default=24, metadata={"help": "attention heads; width = num_heads * head_dim"})
    head_dim: int = field(default=128, metadata={"help": "width of one head; must equal sum(axes_dims_rope)"})
    pooled_dim: int = field(default=768, metadata={"help": "width of the pooled condition vector (Flux: CLIP-L, 768)"})
    context_dim: int = field(default=4096, metadata={"help": "width of the joint-attention condition tokens (Flux: T5, 4096)"})
    axes_dims_rope: tuple[int, int, int] = field(
        default=(16, 56, 56), metadata={"help": "rotary dims per position axis (id, row, column); sum = head_dim"})
    guidance: float | None = field(
        default=4.0, metadata={"help": "constant guidance value fed to Flux's guidance embedder (GenHancer "
                                       "builds flux-dev, which has one, and feeds 4); null: no guidance embedder"})

    def validate(self) -> None:
        for name in ("num_heads", "head_dim", "pooled_dim", "context_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"method.denoiser.{name}={getattr(self, name)}: must be positive")
        if self.num_double_blocks < 0 or self.num_single_blocks < 0 or \
                self.num_double_blocks + self.num_single_blocks == 0:
            raise ConfigError(f"method.denoiser: needs at least one block (num_double_blocks={self.num_double_blocks}, "
                             f"num_single_blocks={self.num_single_blocks})")
        if sum(self.axes_dims_rope) != self.head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise ConfigError(f"method.denoiser.axes_dims_rope={list(self.axes_dims_rope)}: must be three even numbers "
                             f"summing to head_dim={self.head_dim}")


def build_flow_dit(cfg: FlowDiTConfig, latent_channels: int):
    """A randomly initialised `FluxTransformer2DModel` for `latent_channels`-channel latents."""
    from diffusers import FluxTransformer2DModel

    cfg.validate()
    return FluxTransformer2DModel(
        patch_size=1,  # patching is the 2x2 packing below, as in the Flux pipelines
        in_channels=latent_channels * 4,
        num_layers=cfg.num_double_blocks,
        num_single_layers=cfg.num_single_blocks,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.context_dim,
        pooled_projection_dim=cfg.pooled_dim,
        guidance_embeds=cfg.guidance is not None,
        axes_dims_rope=tuple(cfg.axes_dims_rope),
    )


# ---- latents <-> Flux sequence -----------------------------------------------------------
def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), C*4]: each 2x2 patch becomes one token (channel-major)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent grid {h}x{w} is not divisible by 2: Flux packs 2x2 patches; "
                         "choose an image size whose latent size is even")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent grid of `height` x `width`."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Flux position ids of the packed tokens, [(H/2)(W/2), 3]: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


# ---- rectified flow ----------------------------------------------------------------------
def randn(shape, rng: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn from `rng` (on the generator's own device), then moved to `device`."""
    gen_device = rng.device if rng is not None else device
    return torch.randn(shape, generator=rng, device=gen_device, dtype=torch.float32).to(device=device, dtype=dtype)


def rand(shape, rng: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) draws from `rng`, moved to `device` (float32)."""
    gen_device = rng.device if rng is not None else device
    return torch.rand(shape, generator=rng, device=gen_device, dtype=torch.float32).to(device)


def logit_normal_timesteps(batch: int, mean: float, std: float, rng, device) -> torch.Tensor:
    """t = sigmoid(mean + std * N(0, 1)) in (0, 1), one per sample."""
    return torch.sigmoid(mean + std * randn((batch,), rng, device))


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) for data `x0`, `noise` and per-sample `t` (t=1 is pure noise)."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise, noise - x0


class FlowDenoiser(nn.Module):
    """The Flux denoiser plus the packing and ids around it: latents in, velocity out."""

    def __init__(self, transformer, guidance: float | None):
        super().__init__()
        self.transformer = transformer
        if (guidance is not None) != bool(transformer.config.guidance_embeds):
            raise ValueError(f"guidance={guidance} but the Flux denoiser has guidance_embeds="
                             f"{transformer.config.guidance_embeds}: set guidance null iff it has no embedder")
        self.guidance = guidance

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels // 4

    def forward(self, packed_x_t: torch.Tensor, t: torch.Tensor, pooled: torch.Tensor, context: torch.Tensor,
                height: int, width: int) -> torch.Tensor:
        """Velocity prediction [B, tokens, C*4] for packed noisy latents of a `height` x `width` grid.
        `t` in [0, 1] (Flux scales it by 1000 inside); `context` [B, T, context_dim]."""
        dtype = next(self.transformer.parameters()).dtype
        device = packed_x_t.device
        b = packed_x_t.shape[0]
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((b,), self.guidance, device=device, dtype=dtype)
        return self.transformer(
            hidden_states=packed_x_t.to(dtype),
            encoder_hidden_states=context.to(dtype),
            pooled_projections=pooled.to(dtype),
            timestep=t.to(dtype),
            img_ids=latent_image_ids(height, width, device=device, dtype=dtype),
            txt_ids=torch.zeros(context.shape[1], 3, device=device, dtype=dtype),
            guidance=guidance,
            return_dict=False,
        )[0]

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.transformer.save_pretrained(out_dir)

    @classmethod
    def load(cls, directory: str | Path, guidance: float | None) -> FlowDenoiser:
        from diffusers import FluxTransformer2DModel

        return cls(FluxTransformer2DModel.from_pretrained(directory), guidance)


# ---- the frozen VAE ----------------------------------------------------------------------
def vae_dir(location: str | Path) -> Path:
    """The AutoencoderKL directory of a VAE dir or of a pipeline dir with a `vae/` subfolder."""
    path = Path(location)
    for candidate in (path / "vae", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"no VAE at {path}: expected an AutoencoderKL directory (config.json + weights) "
                            "or a diffusers pipeline directory with a vae/ subfolder (e.g. FLUX.1-dev, SD-2.1)")


def vae_scaled_latents(vae, mean: torch.Tensor, logvar: torch.Tensor, rng) -> torch.Tensor:
    """Sample the VAE posterior N(mean, exp(logvar)) and map it to the diffusion latent scale
    ((z - shift) * scaling_factor, as the diffusers pipelines do)."""
    std = torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))
    z = mean.float() + std * randn(mean.shape, rng, mean.device)
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor
