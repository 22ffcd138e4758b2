"""What a tower's image embedding knows about each world attribute.

Three readings, all on the tower's projected global embedding (`image_embeds`, what MMVP-VLM
and zero-shot use), all on scenes from fixed seeds that no training run draws from:

- **linear probe** per attribute: a logistic regression (fixed settings, never tuned) fit on
  `train` scenes and scored on `test` scenes. Orientation uses only the shapes that point.
  It reads what the embedding holds, whether or not the frozen text tower can read it.
- **pair cosine** per attribute: the mean cosine between the embeddings of two scenes that
  differ only in that attribute (lower: the tower tells them apart more).
- **zero-shot** colour, shape and colour+shape accuracy against "a photo of a {colour} {shape}":
  the retention check, since captions always name these two.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from world import scenes

PROBE_SEED = 1_000_003  # disjoint from every training seed (those are < 1e6)


@dataclass(frozen=True)
class ProbeSets:
    n_train: int = 2000
    n_test: int = 1000
    n_pairs: int = 300
    seed: int = PROBE_SEED

    def split(self, name: str, n: int) -> list[scenes.Scene]:
        rng = random.Random(f"{self.seed}-{name}")
        return [scenes.sample_scene(rng) for _ in range(n)]

    def pairs(self, attribute: str) -> list[tuple[scenes.Scene, scenes.Scene]]:
        rng = random.Random(f"{self.seed}-pairs-{attribute}")
        return [scenes.sample_pair(rng, attribute) for _ in range(self.n_pairs)]


@torch.no_grad()
def embed(tower, items: list[scenes.Scene], batch_size: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(items), batch_size):
        images = [scenes.draw(s) for s in items[i:i + batch_size]]
        pixels = tower.preprocess(images).to(tower.device, tower.dtype)
        out.append(torch.nn.functional.normalize(tower.image_embeds(pixels).float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=3000)
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == np.asarray(test_y)).mean())


@torch.no_grad()
def zero_shot(tower, test: list[scenes.Scene], test_x: np.ndarray) -> dict[str, float]:
    text = tower.load_text_encoder().to(tower.device)
    classes = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES]
    prompts = [f"a photo of a {c} {s}" for c, s in classes]
    t = torch.nn.functional.normalize(text.encode(prompts).float(), dim=-1).cpu().numpy()
    pick = [classes[i] for i in (test_x @ t.T).argmax(1)]
    return {
        "colour": float(np.mean([p[0] == s.colour for p, s in zip(pick, test)])),
        "shape": float(np.mean([p[1] == s.shape for p, s in zip(pick, test)])),
        "colour_shape": float(np.mean([p == (s.colour, s.shape) for p, s in zip(pick, test)])),
    }


def tower_report(tower_spec: str, sets: ProbeSets = ProbeSets()) -> dict:
    """Probe accuracy and pair cosine per attribute, and zero-shot retention, of one tower."""
    from llava_plugin.registry import load_tower

    tower = load_tower(tower_spec, dtype=torch.float32, device="cpu")
    tower.model.eval()
    train, test = sets.split("train", sets.n_train), sets.split("test", sets.n_test)
    train_x, test_x = embed(tower, train), embed(tower, test)
    probes = {}
    for attribute in scenes.ATTRIBUTES:
        keep_train = [i for i, s in enumerate(train) if s.value(attribute) is not None]
        keep_test = [i for i, s in enumerate(test) if s.value(attribute) is not None]
        probes[attribute] = linear_probe(train_x[keep_train], [str(train[i].value(attribute)) for i in keep_train],
                                         test_x[keep_test], [str(test[i].value(attribute)) for i in keep_test])
    cosines = {}
    for attribute in scenes.ATTRIBUTES:
        pairs = sets.pairs(attribute)
        a, b = embed(tower, [p[0] for p in pairs]), embed(tower, [p[1] for p in pairs])
        cosines[attribute] = float((a * b).sum(1).mean())
    return {"tower": tower_spec, "probe": probes, "pair_cosine": cosines, "zero_shot": zero_shot(tower, test, test_x),
            "sets": {"n_train": sets.n_train, "n_test": sets.n_test, "n_pairs": sets.n_pairs, "seed": sets.seed}}
