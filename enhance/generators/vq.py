"""A frozen VQ tokenizer and a MaskGIT-style masked-token denoiser (GenHancer's discrete variant).

Images become codebook ids through a diffusers `VQModel`; the denoiser sees the ids with a
random subset replaced by a [MASK] id and predicts the hidden ids with cross-entropy. The
fraction masked follows MaskGIT's schedule: ratio = cos(pi/2 * u), u ~ U(0, 1), so most
draws mask much of the image. The condition enters twice, as in the continuous denoiser: a
pooled vector modulates every block (adaLN), and condition tokens are prepended to the
image tokens (bidirectional attention over both). The denoiser, a diffusers model, is in
enhance.generators.masked_denoiser, so that discovering the methods imports no diffusers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llava_plugin.config import ConfigError

MASK_SCHEDULES = ("cosine", "linear")


@dataclass
class MaskedDenoiserConfig:
    """Architecture of the masked-token denoiser (paper scale unreleased upstream: ours)."""

    depth: int = field(default=6, metadata={"help": "transformer blocks (6, as the 2+4 blocks of the continuous one)"})
    width: int = field(default=1024, metadata={"help": "token width"})
    num_heads: int = field(default=16, metadata={"help": "attention heads (width must divide evenly)"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden width / token width"})
    pooled_dim: int = field(default=1024, metadata={"help": "width of the pooled condition vector (adaLN input)"})
    context_dim: int = field(default=1024, metadata={"help": "width of the prefix condition tokens"})

    def validate(self) -> None:
        for name in ("depth", "width", "num_heads", "pooled_dim", "context_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"method.denoiser.{name}={getattr(self, name)}: must be positive")
        if self.width % self.num_heads:
            raise ConfigError(f"method.denoiser.width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"method.denoiser.mlp_ratio={self.mlp_ratio}: must be positive")


# ---- the frozen tokenizer ----------------------------------------------------------------
class VQTokenizer(nn.Module):
    """A diffusers `VQModel` used only to turn [-1, 1] images into codebook ids."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    @staticmethod
    def directory(location: str | Path) -> Path:
        """The VQModel directory: `location` itself or its `vqvae/` subfolder."""
        path = Path(location)
        for candidate in (path, path / "vqvae"):
            if (candidate / "config.json").is_file():
                return candidate
        raise FileNotFoundError(f"no VQ model at {path}: expected a diffusers VQModel directory "
                                "(config.json + weights) or a directory with a vqvae/ subfolder")

    @classmethod
    def load(cls, location: str | Path) -> VQTokenizer:
        from diffusers import VQModel

        return cls(VQModel.from_pretrained(cls.directory(location)))

    @property
    def codebook_size(self) -> int:
        return self.vq.config.num_vq_embeddings

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vq.config.block_out_channels) - 1)

    def grid(self, image_size: int) -> tuple[int, int]:
        if image_size % self.downsample:
            raise ValueError(f"image size {image_size} is not a multiple of the VQ model's downsampling "
                             f"factor {self.downsample}")
        side = image_size // self.downsample
        return side, side

    @torch.no_grad()
    def encode_ids(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> codebook ids [B, (H/f)(W/f)] (row-major)."""
        dtype = next(self.vq.parameters()).dtype
        latents = self.vq.encode(pixels.to(dtype)).latents
        _, _, (_, _, ids) = self.vq.quantize(latents)
        return ids.reshape(pixels.shape[0], -1).long()


# ---- mask schedule -----------------------------------------------------------------------
def mask_ratio(u: torch.Tensor, schedule: str) -> torch.Tensor:
    """Map u in [0, 1) to the fraction of tokens to mask (MaskGIT: cosine)."""
    if schedule == "cosine":
        return torch.cos(math.pi / 2 * u)
    if schedule == "linear":
        return 1.0 - u
    raise ValueError(f"mask schedule {schedule!r}; known schedules: {list(MASK_SCHEDULES)}")


def random_mask(ratios: torch.Tensor, num_tokens: int, rng: torch.Generator | None, device) -> torch.Tensor:
    """Boolean [B, num_tokens], True where masked: per sample ceil(ratio * N) tokens (at least
    one) chosen uniformly at random."""
    gen_device = rng.device if rng is not None else device
    scores = torch.rand((ratios.shape[0], num_tokens), generator=rng, device=gen_device).to(device)
    counts = torch.ceil(ratios.to(device) * num_tokens).clamp(1, num_tokens).long()
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]
