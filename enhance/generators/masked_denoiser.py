"""The MaskGIT-style masked-token denoiser of GenHancer's discrete variant (enhance.generators.vq
has the tokenizer and the mask schedule). A diffusers model, saved and loaded with diffusers'
`save_pretrained` / `from_pretrained`; in a module of its own so that only runs that build or
load it import diffusers (the method registry imports every method's module)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from enhance.generators.vq import MaskedDenoiserConfig


class _Block(nn.Module):
    """Pre-LN transformer block whose norms are modulated by the pooled condition (adaLN-zero)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        b, n, w = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        x = x + gate1 * self.proj(attn)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class MaskedTokenDenoiser(ModelMixin, ConfigMixin):
    """Predicts codebook ids at masked positions from the visible ids and the condition.

    Input ids use `codebook_size` as the [MASK] id. Output: logits [B, num_tokens, codebook_size].
    Saved and loaded with diffusers' `save_pretrained` / `from_pretrained`.
    """

    @register_to_config
    def __init__(self, codebook_size: int, num_tokens: int, depth: int = 6, width: int = 1024,
                 num_heads: int = 16, mlp_ratio: float = 4.0, pooled_dim: int = 1024, context_dim: int = 1024):
        super().__init__()
        self.token_embed = nn.Embedding(codebook_size + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.context_embed = nn.Linear(context_dim, width)
        self.pooled_embed = nn.Sequential(nn.Linear(pooled_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width, num_heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.modulation_out.weight)
        nn.init.zeros_(self.modulation_out.bias)
        self.head = nn.Linear(width, codebook_size)

    @classmethod
    def build(cls, cfg: MaskedDenoiserConfig, codebook_size: int, num_tokens: int) -> MaskedTokenDenoiser:
        cfg.validate()
        return cls(codebook_size=codebook_size, num_tokens=num_tokens, depth=cfg.depth, width=cfg.width,
                   num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, pooled_dim=cfg.pooled_dim,
                   context_dim=cfg.context_dim)

    @property
    def mask_id(self) -> int:
        return self.config.codebook_size

    def forward(self, ids: torch.Tensor, pooled: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = self.token_embed.weight.dtype
        x = self.token_embed(ids) + self.pos_embed
        prefix = self.context_embed(context.to(dtype))
        cond = F.silu(self.pooled_embed(pooled.to(dtype)))
        h = torch.cat([prefix, x], dim=1)
        for block in self.blocks:
            h = block(h, cond)
        h = h[:, prefix.shape[1]:]
        shift, scale = self.modulation_out(cond)[:, None].chunk(2, dim=-1)
        return self.head(self.norm_out(h) * (1 + scale) + shift)
