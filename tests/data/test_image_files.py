"""One image reader for the commands and the folder training data: every Pillow mode to 8-bit RGB
with the right scale (16-bit grey scaled, not clipped to white), alpha composited on white, EXIF
orientation applied; I and F refused by name; a decompression bomb refused naming the file."""

import numpy as np
import pytest
from PIL import Image

from unclip_jax.data import folder_captions
from unclip_jax.pipelines.images import load_image

RNG = np.random.default_rng(0)
GREY16 = RNG.integers(0, 65536, (12, 10)).astype(np.uint16)  # mean near 32768
RGB = RNG.integers(0, 256, (12, 10, 3)).astype(np.uint8)
ALPHA = RNG.integers(0, 256, (12, 10)).astype(np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32) / 255
    return rgb.astype(np.float32) * a + 255 * (1 - a)


def _grey16(mode: str) -> Image.Image:
    order = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (10, 12), GREY16.astype(order).tobytes())


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    image.info["transparency"] = 0
    return image


# mode -> (file suffix, image, expected uint8 RGB as float, tolerance)
CASES = {
    "RGB": ("png", lambda: Image.fromarray(RGB), lambda: RGB, 0),
    "L": ("png", lambda: Image.fromarray(RGB[..., 0]), lambda: np.stack([RGB[..., 0]] * 3, -1), 0),
    "1": (
        "png",
        lambda: Image.fromarray(RGB[..., 0] > 127),
        lambda: np.stack([(RGB[..., 0] > 127) * 255] * 3, -1),
        0,
    ),
    "I;16": ("png", lambda: _grey16("I;16"), lambda: np.stack([GREY16 / 257] * 3, -1), 0.5),
    "I;16B": ("tiff", lambda: _grey16("I;16B"), lambda: np.stack([GREY16 / 257] * 3, -1), 0.5),
    "RGBA": (
        "png",
        lambda: Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1)),
        lambda: _over_white(RGB, ALPHA),
        1,
    ),
    "LA": (
        "png",
        lambda: Image.fromarray(np.stack([RGB[..., 0], ALPHA], -1), "LA"),
        lambda: _over_white(np.stack([RGB[..., 0]] * 3, -1), ALPHA),
        1,
    ),
    "CMYK": (
        "tiff",
        lambda: Image.fromarray(RGB).convert("CMYK"),
        lambda: np.asarray(Image.fromarray(RGB).convert("CMYK").convert("RGB")),
        0,
    ),
}


def _readers(path, size):
    """The two users of the reader: the commands' load_image and the folder data's load_square
    (at the image's own size: no resize)."""
    return {"load_image": load_image(path), "load_square": folder_captions.load_square(path, size)}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_every_mode_becomes_8_bit_rgb_on_its_scale(tmp_path, mode):
    suffix, make, expected, tolerance = CASES[mode]
    path = tmp_path / f"image.{suffix}"
    make().save(path)
    want = np.asarray(expected(), np.float32)
    for name, got in _readers(path, 10).items():
        want_here = want if name == "load_image" else want[1:11]  # centre square of 12 x 10
        assert got.dtype == np.uint8 and got.shape == (*want_here.shape[:2], 3), name
        assert np.abs(got.astype(np.float32) - want_here).max() <= tolerance, (name, mode)


def test_16_bit_png_keeps_its_mean(tmp_path):
    """The reported case: a 16-bit grey PNG read as white (mean 254 for an image of mean 126)."""
    path = tmp_path / "grey16.png"
    Image.fromarray(GREY16).save(path)
    assert abs(load_image(path).mean() - GREY16.mean() / 257) < 0.5


def test_palette_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "p.png"
    image = _palette_with_transparency()
    image.save(path, transparency=0)
    index = np.asarray(image)
    got = load_image(path)
    assert (got[index == 0] == 255).all()
    np.testing.assert_array_equal(got[index != 0], np.asarray(image.convert("RGB"))[index != 0])


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(RGB).save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path), np.rot90(RGB, k=-1))


@pytest.mark.parametrize("mode, dtype", [("I", np.int32), ("F", np.float32)])
def test_modes_without_a_scale_are_refused_by_name(tmp_path, mode, dtype):
    path = tmp_path / f"{mode}.tiff"
    Image.fromarray(GREY16.astype(dtype)).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(ValueError, match=f"{path}.*mode '{mode}'"):
        load_image(path)
    with pytest.raises(ValueError, match=f"mode '{mode}'"):
        folder_captions.load_square(path, 8)


@pytest.mark.parametrize("pixels", [100, 50])  # Pillow warns above the limit, raises above 2x
def test_decompression_bomb_is_an_error_naming_the_file(tmp_path, monkeypatch, pixels):
    path = tmp_path / "bomb.png"
    Image.fromarray(RGB).save(path)  # 120 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    with pytest.raises(ValueError, match=f"{path}.*decompression-bomb"):
        load_image(path)
