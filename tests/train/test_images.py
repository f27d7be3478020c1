"""Sample grids: layout, value mapping and PNG round trip."""

import numpy as np
import pytest
from PIL import Image

from unclip_jax.train import images


def test_grid_layout_values_and_png(tmp_path):
    values = np.asarray([-1.0, 0.0, 1.0])
    batch = np.broadcast_to(values[:, None, None, None], (3, 2, 3, 3))
    grid = images.image_grid(batch)  # 2 columns, 2 rows, last cell empty
    assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 128 and grid[2, 0, 0] == 255
    assert (grid[2:, 3:] == 0).all()
    images.save_png(grid, tmp_path / "a" / "grid.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "grid.png")), grid)


def test_grid_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[N, H, W, 1 or 3\], got shape \(2, 4, 4\)"):
        images.image_grid(np.zeros((2, 4, 4)))
