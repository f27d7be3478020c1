"""Sample grids: images in [-1, 1] tiled into one uint8 picture and written as PNG."""

import io
import math
import os

import numpy as np
from etils import epath
from PIL import Image


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """images: [N, H, W, C] floats in [-1, 1] (C = 1 or 3) → uint8 [rows·H, columns·W, C]; empty
    cells stay black. Default columns: ceil(sqrt(N))."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    grid = np.zeros((rows * columns, h, w, c), np.uint8)
    grid[:n] = pixels
    grid = grid.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * h, columns * w, c)


def save_png(grid: np.ndarray, path: str | os.PathLike) -> None:
    """grid: uint8 [H, W, C] → PNG at `path`, local or a URI (parent directories created)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(png, format="PNG")
    path.write_bytes(png.getvalue())
