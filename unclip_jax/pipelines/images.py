"""Images at the pipeline's boundary: files and arrays in, uint8 out; conversions to the
float [-1, 1] images of the models and the resizes the stages need (host side, PIL)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unclip_jax.data.image_files import read_image

ImageLike = np.ndarray | str | Path  # uint8 [H, W, 3], float [H, W, 3] in [-1, 1], or a file


def load_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (`data.image_files.read_image`: every Pillow mode, EXIF
    orientation); FileNotFoundError or ValueError naming the file if it is not a whole image."""
    return read_image(path)


def as_image(image: ImageLike) -> np.ndarray:
    """uint8 [H, W, 3] from a file, a uint8 array or a float array in [-1, 1]."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"an image must be [H, W, 3] (RGB), got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        return to_uint8(image)
    if image.dtype != np.uint8:
        raise ValueError(f"an image must be uint8 or float in [-1, 1], got dtype {image.dtype}")
    return image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] → uint8 in [0, 255]."""
    return np.round((np.clip(np.asarray(images, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image [H, W, C]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] → [size, size, 3], bicubic (antialiased by PIL)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def square_pixels(image: ImageLike, size: int) -> np.ndarray:
    """A model's input: an image's centred square at `size` px, float32 [size, size, 3] in
    [-1, 1] (from a file, a uint8 array or a float array in [-1, 1])."""
    return to_unit(resize(center_square(as_image(image)), size))


def captioned_grid(
    images: np.ndarray,  # uint8 [R, C, H, W, 3]
    captions: Sequence[str],  # one per row
    label_width: int = 160,
) -> np.ndarray:  # uint8 [R·(H+2), label_width + C·(W+2), 3]
    """One row of images per caption, the caption written to the left of its row."""
    rows, columns, height, width, _ = images.shape
    if len(captions) != rows:
        raise ValueError(f"need one caption per row ({rows}), got {len(captions)}")
    cell_h, cell_w = height + 2, width + 2
    canvas = Image.new("RGB", (label_width + columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, caption in enumerate(captions):
        text = caption or "(unconditional)"
        lines, line = [], ""
        for word in text.split():
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=font) > label_width - 8 and line:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
        draw.multiline_text((4, r * cell_h + 4), "\n".join(lines), fill=(0, 0, 0), font=font)
        for c in range(columns):
            canvas.paste(
                Image.fromarray(images[r, c]), (label_width + c * cell_w + 1, r * cell_h + 1)
            )
    return np.asarray(canvas)
