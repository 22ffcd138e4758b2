"""Image conventions that training and evaluation must share exactly."""
from __future__ import annotations

from PIL import Image


def processor_mean_color(image_processor) -> tuple[int, int, int]:
    """The processor's mean as an RGB fill, truncated as LLaVA-1.5 does (`int(x * 255)`), so a
    padded image looks the same to the tower in training and in evaluation."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


def pad_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square canvas of its longer side filled with `background`
    (LLaVA-1.5's `image_aspect_ratio=pad`: the tower sees the whole image, undistorted)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
