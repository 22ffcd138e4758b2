"""DIVA (Wang et al. 2024, baaivision/DIVA): a frozen Stable Diffusion 2.1-base denoises the
image conditioned on the tower's own tokens, and the denoising loss trains the tower.

The condition, as upstream builds it for OpenAI CLIP: the last layer's CLS token and K
patch tokens chosen at random (with replacement, per image), each through the tower's
post-LayerNorm and visual projection, then a trainable Linear to the UNet's
cross-attention width, added position-wise to the text embedding of the fixed prompt
"a photo of a ." (upstream's empty class name in its "a photo of a {}." template).
Upstream's other backbones choose the patch tokens otherwise (`patch_tokens`): MetaCLIP and
DFN-224 take every patch in order (condition/{MetaCLIP,DFN}_for_openclip_transformer.py:550-560),
SigLIP averages the post-LN patch tokens over consecutive windows of 6 (224 px) or 10 (384 px),
dropping the remainder (condition/SigLIP_for_timm_models_visiontransformer.py:680-720,
`F.avg_pool1d`); those conditions are the same for every draw. Averaging commutes with the
affine projections, so the windows are taken after them.
Upstream draws a fresh token choice, timestep and noise for each of its 2 passes per
batch; here those are the `num_noise_draws` of one step, from the step's rng, and their
losses are combined by `draw_weighting`. Upstream (models/SD_with_OpenAICLIP.py, the loop over
`train_steps` in `forward`) back-propagates every pass but the last inside `forward`, undivided,
and returns the last to the HF Trainer, which divides it by the 5 accumulation steps; summed over
the 5 micro-batches of a step, that is 5 x the mean gradient of each early draw + 1 x that of the
last, about 6x the mean over draws, at a scale-sensitive SGD lr of 1e-4. `upstream` (the paper
presets) reproduces that weighting per sample, independent of the world size: A x loss(draw d)
for every draw but the last, + loss(last draw), A = `upstream_accumulation`; `mean` averages the
draws (a 6x smaller update unless clipping binds).

Upstream encodes the posterior mean of the VAE (no sampling) and the loss is epsilon-MSE
at t ~ U{0..999}; the target here follows the scheduler's prediction type, which for
SD-2.1-base is epsilon (v_prediction and sample, i.e. x0-prediction, work too). Unlike upstream,
the VAE sees [-1, 1] pixels, not CLIP-normalised ones.

General options, all off in the paper presets: `timestep_range` narrows t to a band of the
schedule; the run's `feedback:` section (enhance/feedback.py: feedback weight, shuffled
condition, `tower_warmup_steps` for "a projector warmed up with the tower frozen", a contrastive
or distillation regulariser) applies to DIVA as to every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from enhance.generators.sd import GeneratorError, LatentDiffusion, randint
from enhance.methods.base import register_method
from enhance.methods.latent_diffusion import (
    TIMESTEP_RANGE_HELP,
    LatentDiffusionFeedback,
    check_timestep_range,
)
from llava_plugin.config import ConfigError
from llava_plugin.config import documented as _help
from llava_plugin.towers import VisionTower

COMBINE_MODES = ("add_per_position", "add_to_prompt_mean")
PATCH_TOKEN_MODES = ("random", "all", "window_mean")


@dataclass
class DivaConfig:
    num_noise_draws: int = _help(
        "Denoising draws per image per step, each with its own token choice, t and noise, combined by "
        "draw_weighting (DIVA: 2 passes per batch).", 2)
    draw_weighting: Literal["mean", "upstream"] = _help(
        "How the draws' losses add up: mean (their average) or upstream (A x every draw but the last + the "
        "last, A = upstream_accumulation: the update baaivision/DIVA applies; see the module docstring).", "mean")
    upstream_accumulation: int = _help(
        "A of draw_weighting=upstream: the gradient accumulation steps upstream's HF Trainer divides the "
        "last draw by (DIVA_for_*.sh: 5).", 5)
    patch_tokens: Literal["random", "all", "window_mean"] = _help(
        "Which patch tokens join the global token: random (num_patch_tokens drawn with replacement, anew for "
        "each draw: DIVA for OpenAI CLIP and DFN-378), all (every patch in order: MetaCLIP, DFN-224) or "
        "window_mean (means over consecutive windows of patch_window patches, the remainder dropped: SigLIP).",
        "random")
    num_patch_tokens: int = _help(
        "With patch_tokens=random: K patch tokens drawn at random (with replacement) next to the CLS token "
        "(DIVA: 76, so that CLS + 76 = the prompt's 77 text tokens); 0 otherwise.", 76)
    patch_window: int = _help("With patch_tokens=window_mean: patches per window (DIVA SigLIP: 6 at 224 px, "
                              "10 at 384 px).", 10)
    combine: Literal["add_per_position", "add_to_prompt_mean"] = _help(
        "add_per_position: condition token i is added to prompt-embedding token i (DIVA for CLIP; needs "
        "1 + num_patch_tokens = prompt length). add_to_prompt_mean: the prompt embedding's mean over tokens "
        "is added to every condition token (DIVA for SigLIP).", "add_per_position")
    prompt: str = _help("Fixed prompt whose text embedding the condition is added to (DIVA: "
                        "'a photo of a .').", "a photo of a .")
    generator_resolution: int = _help(
        "Side in pixels of the image the VAE encodes (0: the generator's native size, 512 for SD-2.1-base, "
        "as DIVA trains).", 0)
    sample_latents: bool = _help("Draw latents from the VAE posterior; false uses its mean, as DIVA does.",
                                 False)
    projector_lr: float = _help("Peak lr of the condition projector (0: the run's optim.lr, as in DIVA).",
                                0.0)
    timestep_range: list[float] = _help(TIMESTEP_RANGE_HELP, factory=lambda: [0.0, 1.0])

    def validate(self) -> None:
        check_timestep_range(self.timestep_range)
        if self.num_noise_draws < 1:
            raise ConfigError(f"method.num_noise_draws={self.num_noise_draws}: must be >= 1 (DIVA uses 2)")
        if self.upstream_accumulation < 1:
            raise ConfigError(f"method.upstream_accumulation={self.upstream_accumulation}: must be >= 1 (DIVA: 5)")
        if self.num_patch_tokens < 0:
            raise ConfigError(f"method.num_patch_tokens={self.num_patch_tokens}: must be >= 0 (DIVA uses 76)")
        if self.patch_tokens not in PATCH_TOKEN_MODES:
            raise ConfigError(f"method.patch_tokens={self.patch_tokens!r}: must be one of "
                              f"{', '.join(PATCH_TOKEN_MODES)}")
        if self.patch_tokens != "random" and self.num_patch_tokens:
            raise ConfigError(f"method.num_patch_tokens={self.num_patch_tokens} counts random draws; with "
                              f"patch_tokens={self.patch_tokens!r} the patches decide the count: set it to 0")
        if self.patch_window < 1:
            raise ConfigError(f"method.patch_window={self.patch_window}: must be >= 1 (DIVA SigLIP: 6 or 10)")
        if self.generator_resolution < 0:
            raise ConfigError(
                f"method.generator_resolution={self.generator_resolution}: must be >= 0 "
                "(0: the generator's native resolution)"
            )
        if self.projector_lr < 0:
            raise ConfigError(f"method.projector_lr={self.projector_lr}: must be >= 0 (0: optim.lr)")


@register_method
class Diva(LatentDiffusionFeedback):
    name = "diva"
    config_cls = DivaConfig

    def __init__(self, cfg: DivaConfig, tower: VisionTower, generator: str):
        super().__init__(cfg, tower, generator)
        cfg.validate()
        diffusion = LatentDiffusion(generator)
        if diffusion.unet.config.class_embed_type is not None:
            raise GeneratorError(
                f"generator {diffusion.path}: its UNet expects class labels "
                f"({diffusion.unet.config.class_embed_type!r}; an unCLIP pipeline?); DIVA "
                "needs a text-to-image pipeline such as stable-diffusion-2-1-base"
            )
        self.hold_generator(diffusion)
        tower.model.requires_grad_(True)  # the whole tower trains, with the projector
        if not hasattr(tower.vision_model, "post_layernorm"):
            raise ValueError(
                f"tower {tower.spec!r}: its vision model has no post_layernorm, which DIVA applies "
                "to every condition token"
            )
        prompt_len, chosen = self.prompt_embeds.shape[1], self.num_condition_patches(tower.sizes.num_patches)
        if chosen < 1 and cfg.patch_tokens == "window_mean":
            raise ConfigError(f"method.patch_window={cfg.patch_window}: wider than the tower's "
                              f"{tower.sizes.num_patches} patches")
        if cfg.combine == "add_per_position" and 1 + chosen != prompt_len:
            raise ConfigError(
                f"method.num_patch_tokens={cfg.num_patch_tokens}, patch_tokens={cfg.patch_tokens!r}: with "
                f"combine='add_per_position' the condition (the global token + {chosen} patch tokens) must have "
                f"the prompt embedding's {prompt_len} tokens; set num_patch_tokens={prompt_len - 1} with "
                "patch_tokens='random', or combine='add_to_prompt_mean'"
            )
        self.projector = nn.Linear(tower.sizes.embed_dim, self.generator.cross_attention_dim)

    # -- model side ------------------------------------------------------------------------
    def encode_condition(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every candidate token, projected: [B, 1 + num_patches, cross_attention_dim], the global
        token first. Which K patches a draw uses is chosen in `denoising_loss`, from its rng."""
        out = self.tower(batch["pixel_values"])
        last = out.hidden_states[-1]
        patches = self.tower.vision_model.post_layernorm(last[:, 1:] if self.tower.has_cls else last)
        tokens = torch.cat([out.pooled[:, None], patches], dim=1)  # pooled = post-LN CLS for CLIP
        if self.tower.has_projection:
            tokens = self.tower.model.visual_projection(tokens)
        return {"tokens": self.projector(tokens)}

    def num_condition_patches(self, num_patches: int) -> int:
        """How many patch tokens join the global token in the condition."""
        return {"random": self.cfg.num_patch_tokens, "all": num_patches,
                "window_mean": num_patches // self.cfg.patch_window}[self.cfg.patch_tokens]

    def context(self, tokens: torch.Tensor, patch_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's encoder_hidden_states: the global token + the patch tokens `patch_tokens` chooses,
        combined with the prompt. With patch_tokens=random, `patch_ids` [B, K] index the patch tokens
        (tokens[:, 1:])."""
        patches = tokens[:, 1:]
        if self.cfg.patch_tokens == "random":
            patches = torch.gather(patches, 1, patch_ids[..., None].expand(-1, -1, patches.shape[-1]))
        elif self.cfg.patch_tokens == "window_mean":
            window, (batch, n, width) = self.cfg.patch_window, patches.shape
            patches = patches[:, : n // window * window].reshape(batch, n // window, window, width).mean(dim=2)
        cond = torch.cat([tokens[:, :1], patches], dim=1)
        prompt = self.prompt_embeds.to(cond.dtype)
        if self.cfg.combine == "add_per_position":
            return prompt + cond
        return prompt.mean(dim=1, keepdim=True) + cond

    def denoising_loss(
        self,
        batch: dict[str, torch.Tensor],
        condition: dict[str, torch.Tensor],
        rng: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = condition["tokens"]
        batch_size, num_patches = tokens.shape[0], tokens.shape[1] - 1
        draws = self.cfg.num_noise_draws
        if self.cfg.patch_tokens == "random":
            patch_ids = randint(num_patches, (draws, batch_size, self.cfg.num_patch_tokens), rng, tokens.device)
            context = torch.cat([self.context(tokens, patch_ids[d]) for d in range(draws)])  # draw-major rows
        else:  # the same condition for every draw
            context = self.context(tokens).repeat(draws, 1, 1)
        return self.diffusion_loss(batch, context, draws, rng, timesteps, draw_weights=self.draw_weights())

    def draw_weights(self) -> list[float] | None:
        """Each draw's weight in the per-sample loss (None: their mean)."""
        if self.cfg.draw_weighting == "mean":
            return None
        return [float(self.cfg.upstream_accumulation)] * (self.cfg.num_noise_draws - 1) + [1.0]

    # -- what trains -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[dict[str, Any]]:
        """The whole tower and the projector (DIVA trains both, at one lr unless projector_lr is set)."""
        projector = {"params": list(self.projector.parameters())}
        if self.cfg.projector_lr:
            projector["lr"] = self.cfg.projector_lr
        tower = [p for p in self.tower.parameters() if p.requires_grad]
        return [{"params": tower}, projector]
