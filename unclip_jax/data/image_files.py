"""Reading image files: every mode Pillow opens brought to 8-bit RGB the same way, for the
sampling commands' image arguments and the folder training data alike.

- EXIF orientation is applied first, so the pixels are the picture as a viewer shows it.
- 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB.
- 16-bit grey (I;16, I;16L, I;16B, I;16N): scaled by 255/65535 (not clipped, which whitens them).
- Alpha (LA, PA, RGBA, RGBa, La, P with a transparent colour): composited on white (`BACKGROUND`).
- I (32-bit integer) and F (float) samples have no fixed scale and are refused, naming the mode.

An image over Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) is refused.
Every failure is a one-line error naming the file: FileNotFoundError when there is no file,
ValueError otherwise.
"""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)  # what transparent pixels become
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def _to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """uint8 [H, W, 3] of an opened image (already transposed by its EXIF orientation)."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.float32) * (255.0 / 65535.0)
        grey = np.round(grey).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in UNSCALED_MODES:
        raise ValueError(
            f"{name} has mode {image.mode!r} ({UNSCALED_MODES[image.mode]} samples with no fixed "
            "range); save it as 8- or 16-bit"
        )
    has_alpha = image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """The image file at `path` as uint8 [H, W, 3] (see the module docstring for the modes)."""
    path = Path(path)
    name = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image, name)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(
            f"{name} has more pixels than the limit of {Image.MAX_IMAGE_PIXELS} "
            "(PIL.Image.MAX_IMAGE_PIXELS, Pillow's decompression-bomb guard)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        if str(error).startswith(name):
            raise
        raise ValueError(f"{name} is not a readable image: {error}") from None
