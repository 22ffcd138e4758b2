"""Image conventions that training and evaluation must share exactly."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from llava_plugin.errors import GenfeedbackError


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


class ImageDecodeError(GenfeedbackError, ValueError):
    """An image file that is empty, truncated or not an image; the message says which."""


def check_image_header(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, or ImageDecodeError: catches a missing, empty, non-image or
    header-damaged file at a fraction of a decode's cost (pixels are not read, so a file truncated after
    its header passes; `decode_rgb` finds those)."""
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageDecodeError(f"{path}: zero-size file")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{path}: {type(err).__name__}: {err}") from err
    if not width or not height:
        raise ImageDecodeError(f"{path}: the header says {width}x{height} pixels")
    return width, height


def decode_rgb(source: str | Path | bytes) -> Image.Image:
    """A path or encoded bytes -> a fully decoded RGB image, or ImageDecodeError.

    Truncated files always fail here, even when another library (lmms-eval does, on import)
    has set PIL's global `LOAD_TRUNCATED_IMAGES`, which would otherwise decode half an image
    silently. Transparency is composited onto white; grayscale, palette and CMYK become RGB.
    """
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageDecodeError("zero-size image data")
        stream, name = io.BytesIO(source), "image bytes"
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: zero-size file")
        stream, name = path, str(path)
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(stream) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
                return rgb
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{name}: {type(err).__name__}: {err}") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
