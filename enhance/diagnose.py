"""un2CLIP's label-free diagnostic: does the generator listen to the tower?

For held-out images at fixed noise and fixed timesteps, compare the generator's loss given each
image's own condition with its loss given another image's condition (the condition tensors
rolled by one along the batch, so no image keeps its own: `enhance.feedback.derange`, the same
permutation as training's shuffled-condition control). Per timestep band:

    loss_own        lower is better: how well the tower's condition explains the image
    gap             loss_shuffled - loss_own; near zero means the generator ignores the
                    condition, and generative feedback can then only make the encoder drift

`python -m enhance diagnose` writes the JSON and prints the table; `train` runs a small
version at start and warns when the relative gap is below `diagnose.min_relative_gap`.
"""
from __future__ import annotations

import numpy as np
import torch

from enhance.data import BadImage, ImageSource
from enhance.feedback import derange
from enhance.methods.base import Method


def sample_indices(source: ImageSource, count: int, seed: int) -> list[int]:
    """A fixed, seeded choice of `count` images (all of them if the source is smaller)."""
    order = np.random.default_rng(seed).permutation(len(source))
    return [int(i) for i in order[: min(count, len(source))]]


def _band_timesteps(low: float, high: float, band: int, bands: int, n: int, gen: torch.Generator,
                    integer: bool) -> torch.Tensor:
    lo = low + (high - low) * band / bands
    hi = low + (high - low) * (band + 1) / bands
    t = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    return t.floor().long().clamp(int(low), int(high) - 1) if integer else t.float()


@torch.no_grad()
def condition_gap(method: Method, source: ImageSource, indices: list[int], *, bands: int = 4, seed: int = 0,
                  device: torch.device | str = "cpu", batch_size: int = 8) -> dict:
    """Loss with own vs rolled condition, per timestep band, over the images `indices` of `source`.

    Runs on the method as it is (device, dtype), in eval mode; restores its training mode.
    Integer timestep ranges (DDPM: (0, 1000)) get integer timesteps; float ranges get floats.
    """
    device = torch.device(device)
    low, high = method.timestep_range()
    integer = isinstance(low, int) and isinstance(high, int)
    images, used, skipped = [], [], []
    for index in indices:
        try:
            images.append(source.load(index))
            used.append(source.key(index))
        except BadImage as err:
            skipped.append(f"{source.key(index)}: {err}")
    if len(images) < 2:
        raise ValueError(f"condition gap needs >= 2 readable images; got {len(images)} ({skipped})")
    own = np.zeros(bands)
    shuffled = np.zeros(bands)
    counted = 0
    was_training = method.training
    method.eval()
    try:
        dtype = next(method.parameters()).dtype
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if len(chunk) < 2:  # a lone image has no other condition to swap with
                continue
            batch = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                     for k, v in method.preprocess(chunk).items()}
            batch.update(method.encode_targets(batch))
            cond = method.encode_condition(batch)
            rolled = derange(cond)
            for band in range(bands):
                gen = torch.Generator().manual_seed(seed * 1000 + band)
                t = _band_timesteps(low, high, band, bands, len(chunk), gen, integer).to(device)
                noise_seed = seed * 1_000_003 + start * 1009 + band
                loss_own = method.denoising_loss(batch, cond, torch.Generator(device).manual_seed(noise_seed), t)
                loss_shuf = method.denoising_loss(batch, rolled, torch.Generator(device).manual_seed(noise_seed), t)
                own[band] += float(loss_own.float().sum())
                shuffled[band] += float(loss_shuf.float().sum())
            counted += len(chunk)
    finally:
        method.train(was_training)
    own /= counted
    shuffled /= counted
    rows = []
    for band in range(bands):
        gap = shuffled[band] - own[band]
        rows.append({"band": band, "t_low": low + (high - low) * band / bands,
                     "t_high": low + (high - low) * (band + 1) / bands, "loss_own": own[band],
                     "loss_shuffled": shuffled[band], "gap": gap,
                     "relative_gap": gap / own[band] if own[band] else 0.0})
    loss, loss_shuf = float(own.mean()), float(shuffled.mean())
    return {"method": method.name, "num_images": counted, "seed": seed, "images": used, "skipped": skipped,
            "loss": loss, "loss_shuffled": loss_shuf, "gap": loss_shuf - loss,
            "relative_gap": (loss_shuf - loss) / loss if loss else 0.0, "bands": rows}


def format_table(result: dict) -> str:
    lines = [f"{'band':>4} {'t range':>17} {'loss own':>11} {'shuffled':>11} {'gap':>11} {'rel gap':>9}"]
    for row in result["bands"]:
        lines.append(f"{row['band']:>4} {row['t_low']:>8.3g}-{row['t_high']:<8.3g} {row['loss_own']:>11.5f} "
                     f"{row['loss_shuffled']:>11.5f} {row['gap']:>11.5f} {row['relative_gap']:>9.4f}")
    lines.append(f"{'all':>4} {'':>17} {result['loss']:>11.5f} {result['loss_shuffled']:>11.5f} "
                 f"{result['gap']:>11.5f} {result['relative_gap']:>9.4f}")
    lines.append(f"{result['num_images']} images, seed {result['seed']}; lower loss is better; a gap near zero "
                 "means the generator ignores the tower's condition")
    return "\n".join(lines)


# ---------------------------------------------------------------- per attribute, from image pairs
def read_pairs(path) -> list[dict]:
    """A pairs list: one {"image": a, "pair_image": b, "attribute": name} per line (paths relative to the
    file's folder), where the two images differ only in `attribute` (an MMVP-style pair)."""
    import json
    from pathlib import Path

    from enhance.data import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"diagnose.pairs={str(path)!r} does not exist; pass a .jsonl of "
                        '{"image": a, "pair_image": b, "attribute": name} lines (or leave it empty)')
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"image": path.parent / row["image"], "pair_image": path.parent / row["pair_image"],
                         "attribute": str(row["attribute"])})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{lineno}: expected {{\"image\", \"pair_image\", \"attribute\"}} ({err})") from err
    if not rows:
        raise DataError(f"{path} holds no pairs")
    return rows


@torch.no_grad()
def attribute_gap(method: Method, pairs: list[dict], *, seed: int = 0, device: torch.device | str = "cpu",
                  batch_size: int = 16) -> dict:
    """What the method's generator reads from the tower, per attribute: the loss of each image under
    its own condition vs under the condition of its pair partner (the same scene with one attribute
    changed), at the same noise and t. A relative gap near zero for an attribute means the generator
    does not use that attribute of the condition, so feedback through it cannot teach it."""
    from enhance.data import decode_image

    device = torch.device(device)
    low, high = method.timestep_range()
    integer = isinstance(low, int) and isinstance(high, int)
    sums: dict[str, list[float]] = {}
    was_training = method.training
    method.eval()
    try:
        dtype = next(method.parameters()).dtype

        def prepared(images):
            return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                    for k, v in method.preprocess(images).items()}

        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            own_batch = prepared([decode_image(p["image"].read_bytes()) for p in chunk])
            own_batch.update(method.encode_targets(own_batch))
            partner = prepared([decode_image(p["pair_image"].read_bytes()) for p in chunk])
            own_cond, partner_cond = method.encode_condition(own_batch), method.encode_condition(partner)
            gen = torch.Generator().manual_seed(seed * 7919 + start)
            t = _band_timesteps(low, high, 0, 1, len(chunk), gen, integer).to(device)
            noise_seed = seed * 1_000_003 + start
            own = method.denoising_loss(own_batch, own_cond, torch.Generator(device).manual_seed(noise_seed), t)
            swapped = method.denoising_loss(own_batch, partner_cond, torch.Generator(device).manual_seed(noise_seed), t)
            for p, lo, ls in zip(chunk, own.float().tolist(), swapped.float().tolist()):
                acc = sums.setdefault(p["attribute"], [0.0, 0.0, 0])
                acc[0] += lo
                acc[1] += ls
                acc[2] += 1
    finally:
        method.train(was_training)
    out = {}
    for attribute, (own_sum, swapped_sum, n) in sums.items():
        own_mean, swapped_mean = own_sum / n, swapped_sum / n
        out[attribute] = {"pairs": n, "loss_own": own_mean, "loss_partner": swapped_mean,
                          "relative_gap": (swapped_mean - own_mean) / own_mean if own_mean else 0.0}
    return {"method": method.name, "seed": seed, "t_range": [low, high], "attributes": out}
