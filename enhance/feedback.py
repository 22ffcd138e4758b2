"""The `feedback:` section: how a method's generator loss, and an optional regulariser, make the
step's loss. The same for every method; the trainer applies it (`Method.set_feedback`), no method
implements any of it.

    condition = method.encode_condition(batch)                 # the tower forward, as the method defines it
    embeds    = method.global_embedding(batch, condition)      # only with a regulariser
    generator = method.denoising_loss(batch, derange(condition) if shuffled else condition, rng)
    loss      = weight * generator.mean() + regularizer.weight * regularizer(embeds, ...)

Every default is upstream's (weight 1, each image's own condition, no tower warm-up, no regulariser)
and every paper preset keeps them; the options exist for controlled experiments such as the shapes
world, where each method runs against matched controls:

- `weight: 0` is "the same run without the feedback term": the generator loss is still computed,
  under no_grad, and logged as `feedback_loss` (at world scale it costs a generator forward), but no
  gradient flows through the generator, so the tower moves only by the regulariser and a method's
  other parameters (DIVA's projector) get no gradient. ZeRO fills their missing gradients with
  zeros, so under ZeRO they change only by weight decay (0 in every preset).
- `condition: shuffled` is the shuffled-condition control: every condition tensor is permuted within
  the micro-batch by `derange` (each image gets its neighbour's, no image keeps its own; the same
  helper as the diagnostic's, enhance/diagnose.py) before the generator sees it.
- `tower_warmup_steps: N`: the tower's parameters do not move for the first N optimizer steps while
  the method's other trainable parameters (DIVA's projector) warm up. It is a per-param-group lr factor
  of 0 (llava_plugin.train.schedule), so the optimizer, checkpoints and exact resume are untouched; the
  tower's gradients are still computed, count in the clipped gradient norm and feed its optimizer
  state (Adam moments, SGD momentum), so its first real update follows the warm-up's gradients.
- `regularizer`: keeps the tower's text alignment when feedback alone would let it drift. `contrastive`:
  CLIP's symmetric InfoNCE between the tower's `image_embeds` and the frozen paired text tower's
  embedding of each image's caption, over the micro-batch, at the base model's own (frozen) logit
  scale; the captions come from the data (data.caption_key of a .jsonl list, KEY.txt of webdataset
  shards). `distill`: 1 - cosine(image_embeds, a frozen copy of the initial tower's image_embeds).
  Either frozen part is held in `method.frozen` (never trained or checkpointed; on the device, in the
  run's precision). Logged as `regularizer_loss`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llava_plugin.config import ConfigError
from llava_plugin.config import documented as _help

TEXT_TOWER = "regularizer_text_tower"  # method.frozen names of the regularisers' frozen parts
INITIAL_TOWER = "regularizer_initial_tower"
CAPTION_EMBEDS = "caption_embeds"  # batch key: the frozen text tower's embeddings of the captions


@dataclass
class RegularizerConfig:
    kind: Literal["none", "contrastive", "distill"] = _help(
        "none (upstream); contrastive: CLIP InfoNCE of the tower's image_embeds against the frozen paired "
        "text tower's embeddings of the images' captions (needs captions: data.caption_key in a .jsonl "
        "list, or KEY.txt in webdataset shards; and a full CLIPModel/SiglipModel tower dir); distill: "
        "1 - cosine to a frozen copy of the initial tower's image_embeds.", "none")
    weight: float = _help("Scale of the regulariser's loss in the step's loss.", 1.0)

    def validate(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"feedback.regularizer.weight={self.weight}: must be >= 0")


@dataclass
class FeedbackConfig:
    """How the generator's loss trains the tower; upstream by default (see enhance/feedback.py)."""

    weight: float = _help(
        "Scale of the generator (feedback) loss. 0 is the matched control 'the same run without the feedback "
        "term': no backprop through the generator, its loss still computed (no_grad) and logged as "
        "feedback_loss.", 1.0)
    condition: Literal["own", "shuffled"] = _help(
        "own (upstream); shuffled: the shuffled-condition control, every condition tensor permuted within "
        "the micro-batch (each image denoised under its neighbour's condition).", "own")
    tower_warmup_steps: int = _help(
        "The tower's parameters do not update for the first N optimizer steps (lr factor 0 on its param "
        "groups) while the method's other trainable parameters (DIVA's projector) warm up.", 0)
    regularizer: RegularizerConfig = _help("", factory=RegularizerConfig)

    def validate(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"feedback.weight={self.weight}: must be >= 0 (0: the run without the feedback term)")
        if self.tower_warmup_steps < 0:
            raise ConfigError(f"feedback.tower_warmup_steps={self.tower_warmup_steps}: must be >= 0")
        if self.weight == 0 and (self.regularizer.kind == "none" or self.regularizer.weight == 0):
            raise ConfigError(f"feedback.weight=0 with feedback.regularizer.kind={self.regularizer.kind} (weight "
                              f"{self.regularizer.weight}) leaves nothing to train the tower; set a regulariser "
                              "(feedback.regularizer.kind=contrastive|distill, weight > 0) or feedback.weight > 0")

    @property
    def needs_captions(self) -> bool:
        return self.regularizer.kind == "contrastive"


def derange(condition: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each image gets the previous image's condition (every tensor rolled by one along the batch):
    a permutation with no fixed point for any batch of 2 or more."""
    return {k: v.roll(1, dims=0) for k, v in condition.items()}


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of (image, its caption) pairs, as CLIPModel's `return_loss`:
    cosine similarities times `logit_scale` (already exp'ed), the mean of both directions' cross-entropy.
    Identical captions in a batch raise the loss's floor but not its gradient's direction."""
    image = F.normalize(image_embeds.float(), dim=-1)
    text = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def distill_loss(image_embeds: torch.Tensor, initial_embeds: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - cosine(image_embeds, the frozen initial tower's)."""
    return (1 - F.cosine_similarity(image_embeds.float(), initial_embeds.float(), dim=-1)).mean()


class Feedback:
    """The step's loss of one method under a `FeedbackConfig` (upstream's by default). `method` is
    the `enhance.methods.base.Method` it serves (passed in, so that this module needs no import of it)."""

    def __init__(self, cfg: FeedbackConfig | None = None):
        self.cfg = cfg or FeedbackConfig()

    @property
    def regularizes(self) -> bool:
        return self.cfg.regularizer.kind != "none"

    def attach(self, method: nn.Module) -> None:
        """Hold the regulariser's frozen parts in `method.frozen`, taken now (before any training)."""
        kind = self.cfg.regularizer.kind
        if kind == "none":
            return
        if not any(p.requires_grad for p in method.tower.parameters()):
            raise ConfigError(f"feedback.regularizer.kind={kind}: the tower does not train in this {method.name} run "
                              "(e.g. GenHancer stage 1 trains only its generator); set feedback.regularizer.kind=none")
        if kind == "contrastive":
            if not method.tower.has_text_encoder:
                raise ConfigError(f"feedback.regularizer.kind=contrastive needs the tower's paired text tower, but "
                                  f"{method.tower.spec!r} is vision-only; pass the full CLIPModel/SiglipModel dir as "
                                  "--vision-tower, or use feedback.regularizer.kind=distill")
            method.freeze(TEXT_TOWER, method.tower.load_text_encoder())
        else:  # distill: the tower as it is now, before the first step
            method.freeze(INITIAL_TOWER, copy.deepcopy(method.tower))

    @torch.no_grad()
    def encode_captions(self, method: nn.Module, captions: list[str]) -> dict[str, torch.Tensor]:
        """The batch entry the contrastive regulariser reads: the frozen text tower's embeddings."""
        return {CAPTION_EMBEDS: method.frozen[TEXT_TOWER].encode(captions)}

    def regularizer_loss(self, method: nn.Module, batch: dict[str, torch.Tensor], embeds: torch.Tensor) -> torch.Tensor:
        if self.cfg.regularizer.kind == "contrastive":
            if CAPTION_EMBEDS not in batch:
                raise KeyError(f"the contrastive regulariser reads batch[{CAPTION_EMBEDS!r}]: add "
                               "Feedback.encode_captions(method, captions) to the batch (the trainer does)")
            text = method.frozen[TEXT_TOWER]
            return contrastive_loss(embeds, batch[CAPTION_EMBEDS].to(embeds.device), text.logit_scale)
        with torch.no_grad():
            initial = method.frozen[INITIAL_TOWER](batch["pixel_values"]).image_embeds
        return distill_loss(embeds, initial)

    def loss(self, method: nn.Module, batch: dict[str, torch.Tensor],
             rng: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
        """(the loss backward() runs on, its logged metrics: loss, feedback_loss, regularizer_loss)."""
        cfg = self.cfg
        # The condition keeps its graph even when weight is 0 (its graph is then unused unless the regulariser
        # reads the condition's own image_embeds): the control costs no more than the run it controls.
        condition = method.encode_condition(batch)
        embeds = method.global_embedding(batch, condition) if self.regularizes else None
        seen = derange(condition) if cfg.condition == "shuffled" else condition
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.weight > 0):
            feedback = method.denoising_loss(batch, seen, rng).mean()
        metrics = {"feedback_loss": float(feedback.detach())}
        loss = cfg.weight * feedback if cfg.weight > 0 else None
        if embeds is not None:
            reg = self.regularizer_loss(method, batch, embeds)
            metrics["regularizer_loss"] = float(reg.detach())
            loss = cfg.regularizer.weight * reg if loss is None else loss + cfg.regularizer.weight * reg
        metrics["loss"] = float(loss.detach())
        return loss, metrics
