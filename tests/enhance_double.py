"""A unit-test double of an enhance Method, for testing the shared loop on its own.

`TinyReconstruction` ("test-reconstruct") is a real Method subclass: the tower's global
embedding, through a trainable projector, conditions a tiny frozen flow-matching decoder that
reconstructs an 8x8 thumbnail's "latents" (a frozen 1x1 conv plays the VAE). It exercises
every part of the contract (preprocess, cacheable encode_targets, condition, per-sample loss
with an rng and fixed timesteps, frozen modules) in milliseconds. It is not a method of the
toolkit and is registered only when tests import this module.

Run as a script it is `python -m enhance` with the double registered (multi-process tests):
    python -m torch.distributed.run --nproc_per_node 2 tests/enhance_double.py train ...
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enhance.methods.base import METHODS, Method, register_method


@dataclass
class TinyReconstructionConfig:
    thumb: int = 8  # thumbnail side the decoder reconstructs
    hidden: int = 32
    num_noise: int = 2  # noise draws per image, averaged (as DIVA does)


class TinyReconstruction(Method):
    name = "test-reconstruct"
    config_cls = TinyReconstructionConfig

    def __init__(self, cfg: TinyReconstructionConfig, tower, generator: str):
        super().__init__(cfg, tower, generator)
        dim = 3 * cfg.thumb * cfg.thumb
        self.project = nn.Linear(tower.sizes.embed_dim, cfg.hidden)
        with torch.random.fork_rng():
            torch.manual_seed(1234)  # the "pretrained" frozen generator is the same in every run
            self.freeze("vae", nn.Conv2d(3, 3, 1))
            self.freeze("decoder", nn.Sequential(nn.Linear(cfg.hidden + dim + 1, 64), nn.GELU(), nn.Linear(64, dim)))

    def preprocess(self, images):
        thumbs = [torch.tensor(list(im.resize((self.cfg.thumb, self.cfg.thumb)).getdata()), dtype=torch.float32)
                  for im in images]
        thumbs = torch.stack(thumbs).view(len(images), self.cfg.thumb, self.cfg.thumb, 3).permute(0, 3, 1, 2)
        return {"pixel_values": self.tower.preprocess(images), "thumb": thumbs / 127.5 - 1}

    @torch.no_grad()
    def encode_targets(self, batch):
        return {"latents": self.frozen["vae"](batch["thumb"])}

    def encode_condition(self, batch):
        return {"embedding": self.project(self.tower.image_embeds(batch["pixel_values"]))}

    def timestep_range(self):
        return (0.0, 1.0)

    def denoising_loss(self, batch, condition, rng=None, timesteps=None):
        x0 = batch["latents"].flatten(1)
        cond = condition["embedding"]
        losses = []
        for _ in range(self.cfg.num_noise):
            t = timesteps if timesteps is not None else torch.rand(x0.shape[0], generator=rng, device=x0.device)
            t = t.to(x0.dtype)
            noise = torch.randn(x0.shape, generator=rng, device=x0.device, dtype=x0.dtype)
            xt = (1 - t[:, None]) * x0 + t[:, None] * noise
            pred = self.frozen["decoder"](torch.cat([cond.to(x0.dtype), xt, t[:, None]], dim=1))
            losses.append(F.mse_loss(pred.float(), (noise - x0).float(), reduction="none").mean(1))
        return torch.stack(losses).mean(0)


if TinyReconstruction.name not in METHODS:
    register_method(TinyReconstruction)


if __name__ == "__main__":
    from enhance.__main__ import main
    from llava_plugin import distributed

    code = main(sys.argv[1:])
    distributed.shutdown()
    sys.exit(code)
