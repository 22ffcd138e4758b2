"""`VisionTower`: one interface over every vision encoder genfeedback trains or evaluates.

Every family (HF CLIP, HF SigLIP, open_clip) is held as a Hugging Face vision module, so
that LLaVA, HF Llava and lmms-eval can load what we save without our code. open_clip
checkpoints are converted to HF CLIP on load (see `convert.py`).

The tower owns exactly the trainable vision part (`self.model`): the ViT plus, for CLIP,
the visual projection. The paired text encoder is loaded only on demand
(`load_text_encoder`), so it never enters an optimizer or a ZeRO partition.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

SELECT_FEATURES = ("patch", "cls_patch")
METADATA_FILE = "genfeedback.json"


@dataclass(frozen=True)
class TowerSizes:
    """Static sizes of a tower, as LLaVA and the generators need them."""

    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_patches: int
    has_cls: bool
    embed_dim: int  # width of `image_embeds` (the projection dim, or hidden size without projection)

    @property
    def num_tokens(self) -> int:
        """Tokens per image in every hidden state: patches, plus CLS where the family has one."""
        return self.num_patches + int(self.has_cls)


@dataclass
class TowerOutput:
    hidden_states: tuple[torch.Tensor, ...]  # embeddings output + one per layer, each [B, num_tokens, hidden]
    pooled: torch.Tensor  # [B, hidden]: CLS after post-LN (CLIP) or attention-pool head (SigLIP)
    image_embeds: torch.Tensor  # [B, embed_dim]: pooled through the visual projection when there is one


class TextEncoder(nn.Module):
    """The text tower paired with a vision tower, for contrastive scoring (MMVP-VLM, zero-shot)."""

    def __init__(self, model: nn.Module, tokenizer, logit_scale: float, padding: str | bool = True,
                 max_length: int | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.logit_scale = float(logit_scale)
        self._padding = padding
        self._max_length = max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings [len(texts), embed_dim], unnormalised."""
        batch = self.tokenizer(list(texts), padding=self._padding, truncation=True,
                               max_length=self._max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")})
        return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


class VisionTower(nn.Module):
    """A vision encoder with its preprocessing, LLaVA feature selection and global embedding.

    Build one with `llava_plugin.registry.load_tower(spec)`; families construct it directly.
    """

    def __init__(
        self,
        model: nn.Module,
        image_processor,
        *,
        family: str,
        spec: str,
        has_cls: bool,
        full_model_loader: Callable[[], nn.Module] | None = None,
        text_encoder_loader: Callable[[], TextEncoder] | None = None,
        tokenizer_loader: Callable[[], object] | None = None,
        metadata: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.family = family
        self.spec = spec
        self.has_cls = has_cls
        self.metadata = metadata or {}
        self._full_model_loader = full_model_loader
        self._text_encoder_loader = text_encoder_loader
        self._tokenizer_loader = tokenizer_loader

    # ---- sizes -------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def sizes(self) -> TowerSizes:
        cfg = self.model.config
        patches = (cfg.image_size // cfg.patch_size) ** 2
        embed_dim = getattr(cfg, "projection_dim", None) if self.has_projection else None
        return TowerSizes(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_patches=patches,
            has_cls=self.has_cls,
            embed_dim=embed_dim or cfg.hidden_size,
        )

    @property
    def has_projection(self) -> bool:
        return hasattr(self.model, "visual_projection")

    @property
    def vision_model(self) -> nn.Module:
        """The bare ViT (embeddings, encoder, post-LN), without the visual projection."""
        return getattr(self.model, "vision_model", self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- preprocessing -----------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize, crop and normalise exactly as the model expects: [B, 3, H, W] float32."""
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    # ---- forward -----------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        pooled = out.pooler_output
        embeds = self.model.visual_projection(pooled) if self.has_projection else pooled
        return TowerOutput(hidden_states=tuple(out.hidden_states), pooled=pooled, image_embeds=embeds)

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.forward(pixel_values).hidden_states

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled, projected global embedding (CLIP's image_embeds), unnormalised."""
        return self.forward(pixel_values).image_embeds

    def select(self, hidden_states: Sequence[torch.Tensor], select_layer: int = -2,
               select_feature: str = "patch") -> torch.Tensor:
        """LLaVA's feature selection: one layer's tokens, CLS dropped (`patch`) or kept (`cls_patch`)."""
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature={select_feature!r}; expected one of {SELECT_FEATURES}")
        if not -len(hidden_states) <= select_layer < len(hidden_states):
            raise ValueError(f"select_layer={select_layer} out of range for {len(hidden_states)} hidden states")
        feats = hidden_states[select_layer]
        if select_feature == "patch":
            return feats[:, 1:] if self.has_cls else feats
        if not self.has_cls:
            raise ValueError(f"select_feature='cls_patch' needs a CLS token; the {self.family} tower has none")
        return feats

    def features(self, pixel_values: torch.Tensor, select_layer: int = -2,
                 select_feature: str = "patch") -> torch.Tensor:
        return self.select(self.hidden_states(pixel_values), select_layer, select_feature)

    # ---- paired text tower -------------------------------------------------------------
    @property
    def has_text_encoder(self) -> bool:
        return self._text_encoder_loader is not None

    def load_text_encoder(self) -> TextEncoder:
        """The paired text tower (frozen, eval mode). Raises if this tower has none."""
        if self._text_encoder_loader is None:
            raise ValueError(
                f"tower {self.spec!r} has no paired text encoder: it was saved as a vision-only model. "
                "Score it with the CLIPModel/SiglipModel directory it came from (its `base_tower` in "
                f"{METADATA_FILE}), or pass a full model directory."
            )
        text = self._text_encoder_loader().eval()
        text.requires_grad_(False)
        return text

    # ---- saving ------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, metadata: dict | None = None) -> Path:
        """Write an HF directory that `CLIPVisionModel.from_pretrained` (SigLIP: `SiglipVisionModel`)
        and the image processor class load unchanged.

        When the tower came from a full CLIPModel/SiglipModel, the full model is written with
        this tower's vision weights and its text tower untouched, so MMVP-VLM can score it.
        `metadata` (method, base tower, config, steps, metrics) goes to genfeedback.json.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self._full_model_loader is not None:
            full = self._full_model_loader()
            full.vision_model.load_state_dict(self.vision_model.state_dict(), strict=True)
            if self.has_projection:
                full.visual_projection.load_state_dict(self.model.visual_projection.state_dict(), strict=True)
            full.to(self.dtype).save_pretrained(out)
        else:
            self.model.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        if self._tokenizer_loader is not None:
            self._tokenizer_loader().save_pretrained(out)
        meta = {**self.metadata, **(metadata or {}), "family": self.family}
        meta.setdefault("base_tower", self.spec)
        (out / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return out

    def describe(self) -> dict:
        return {"spec": self.spec, "family": self.family, **asdict(self.sizes),
                "num_tokens": self.sizes.num_tokens, "has_text_encoder": self.has_text_encoder}


def read_metadata(location: str | Path) -> dict:
    """genfeedback.json of an enhanced tower directory ({} for any other tower)."""
    path = Path(location) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
