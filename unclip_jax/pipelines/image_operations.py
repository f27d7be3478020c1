"""The image operations of unCLIP (§3) over `UnCLIP`'s batched stages: variations (§3.1),
interpolations (§3.2) and text diffs (§3.3), all decoded from CLIP image embeddings of images."""

from collections.abc import Sequence
from typing import Unpack

import numpy as np

from unclip_jax.pipelines.arguments import DecoderOptions, RunSettings, check_count, check_prompts
from unclip_jax.pipelines.images import (
    ImageLike,
    as_image,
    center_square,
    resize,
    to_uint8,
    to_unit,
)
from unclip_jax.pipelines.protocol import InvertibleDecoder


def slerp(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit vectors a, b [D] at θ [N] → [N, D]."""
    theta = np.asarray(theta, np.float64)[:, None]
    omega = np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))
    if omega < 1e-6:
        return (1 - theta) * a + theta * b
    return (np.sin((1 - theta) * omega) * a + np.sin(theta * omega) * b) / np.sin(omega)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ImageOperations:
    """Mixed into `UnCLIP`: uses its `clip`, `decoder`, `_map_rows`, `_chain`, `_settings`,
    `_caption_rows`, `_shard` and `_require_image_encoder`."""

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """CLIP image embeddings z_i [N, D] of images."""
        self._require_image_encoder("encoding images")
        size = self.clip.config.vision.image_size
        pixels = np.stack([to_unit(resize(center_square(as_image(i)), size)) for i in images])
        out = self._map_rows(
            lambda r, _: {"z": self.clip.encode_image(r["x"])}, {"x": pixels}, "encode"
        )
        return out["z"]

    def _decode_embeddings(
        self, image_embed: np.ndarray, noise_id: np.ndarray, chain: RunSettings, desc: str, **extra
    ) -> np.ndarray:
        """Images [N, S, S, 3] uint8 of image embeddings [N, D] with the null caption."""
        rows = self._caption_rows([""] * len(image_embed))
        rows.update(
            image_embed=np.asarray(image_embed, np.float32),
            drop_caption=np.ones(len(image_embed), bool),
            noise_id=np.asarray(noise_id, np.int32),
            **extra,
        )
        return to_uint8(self._map_rows(lambda r, i: self._chain(r, i, chain), rows, desc)["images"])

    def variations(
        self,
        image: ImageLike,
        n: int = 4,
        seed: int = 0,
        **options: Unpack[DecoderOptions],
    ) -> np.ndarray:
        """n images that keep the image's CLIP embedding, with new decoder noise (§3.1):
        uint8 [n, S, S, 3]."""
        return self.variations_batch([image], n, seed, **options)[0]

    def variations_batch(
        self,
        images: Sequence[ImageLike],
        n: int = 4,
        seed: int = 0,
        **options: Unpack[DecoderOptions],
    ) -> np.ndarray:
        """`variations` of several images in one batch: uint8 [N, n, S, S, 3]; variation k of
        every image uses noise row k."""
        self._require_image_encoder("variations")
        n = check_count("n", n)
        chain = self._settings(seed, **options)
        z = self.encode_images(images)
        ids = np.tile(np.arange(n), len(z))
        out = self._decode_embeddings(np.repeat(z, n, axis=0), ids, chain, "variations")
        return out.reshape(len(z), n, *out.shape[1:])

    def interpolate(
        self,
        image_a: ImageLike,
        image_b: ImageLike,
        n: int = 5,
        seed: int = 0,
        **options: Unpack[DecoderOptions],
    ) -> np.ndarray:
        """n frames from image A to image B (§3.2): slerp of the CLIP image embeddings (norm
        interpolated linearly), the same decoder noise in every frame. uint8 [n, S, S, 3]."""
        return self.interpolate_batch([image_a], [image_b], n, seed, **options)[0]

    def interpolate_batch(
        self,
        images_a: Sequence[ImageLike],
        images_b: Sequence[ImageLike],
        n: int = 5,
        seed: int = 0,
        **options: Unpack[DecoderOptions],
    ) -> np.ndarray:
        """`interpolate` for pairs (A_j, B_j) in one batch: uint8 [N, n, S, S, 3]."""
        self._require_image_encoder("interpolate")
        n = check_count("n", n, least=2)
        if len(images_a) != len(images_b) or not len(images_a):
            raise ValueError(f"need as many A as B images, got {len(images_a)}, {len(images_b)}")
        chain = self._settings(seed, **options)
        z = self.encode_images([*images_a, *images_b])
        z_a, z_b = z[: len(images_a)], z[len(images_a) :]
        theta = np.linspace(0.0, 1.0, n)
        frames = []
        for a, b in zip(z_a, z_b, strict=True):
            norms = (1 - theta) * np.linalg.norm(a) + theta * np.linalg.norm(b)
            frames.append(slerp(unit(a), unit(b), theta) * norms[:, None])
        embed = np.concatenate(frames)
        out = self._decode_embeddings(embed, np.zeros(len(embed)), chain, "interpolate")
        return out.reshape(len(z_a), n, *out.shape[1:])

    def text_diff(
        self,
        image: ImageLike,
        from_caption: str,
        to_caption: str,
        thetas: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
        seed: int = 0,
        **options: Unpack[DecoderOptions],
    ) -> np.ndarray:
        """Edits the image toward a caption change (§3.3): z_θ = slerp(z_i, z_d, θ) with
        z_d = normalize(z_t' − z_t), decoded from the DDIM inversion of the image.
        uint8 [len(thetas), S, S, 3]."""
        return self.text_diff_batch([image], [from_caption], [to_caption], thetas, seed, **options)[
            0
        ]

    def text_diff_batch(
        self,
        images: Sequence[ImageLike],
        from_captions: Sequence[str],
        to_captions: Sequence[str],
        thetas: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
        seed: int = 0,
        **options: Unpack[DecoderOptions],
    ) -> np.ndarray:
        """`text_diff` of several images in one batch: uint8 [N, len(thetas), S, S, 3]."""
        self._require_image_encoder("text_diff")
        if not isinstance(self.decoder, InvertibleDecoder):
            raise ValueError("text_diff needs a decoder with a DDIM inversion; this one has none")
        captions = check_prompts([*from_captions, *to_captions])
        count = len(images)
        if not count or len(from_captions) != count or len(to_captions) != count:
            raise ValueError(
                f"need one from and one to caption per image, got {count} images, "
                f"{len(from_captions)} and {len(to_captions)} captions"
            )
        thetas = np.asarray(list(thetas), np.float64)
        if thetas.ndim != 1 or not len(thetas) or np.any((thetas < 0) | (thetas > 1)):
            raise ValueError(f"thetas must be a non-empty list of values in [0, 1], got {thetas}")
        chain = self._settings(seed, **options)
        text = self._map_rows(
            lambda r, _: {"z": self.clip.encode_text(r["ids"], r["mask"])[0]},
            self._caption_rows(captions),
            "encode",
        )["z"]
        for j in range(count):
            if np.allclose(text[j], text[count + j]):
                raise ValueError(
                    f"from_caption {from_captions[j]!r} and to_caption {to_captions[j]!r} have "
                    "the same text embedding: there is no direction to move in"
                )
        pixels = [as_image(image) for image in images]
        z_i = self.encode_images(pixels)
        z_d = unit(text[count:] - text[:count])
        embed = np.concatenate(
            [slerp(unit(z), d, thetas) * np.linalg.norm(z) for z, d in zip(z_i, z_d, strict=True)]
        )
        size = self.decoder.image_size
        invert_rows = self._caption_rows([""] * count)
        invert_rows.update(
            image_embed=z_i.astype(np.float32),
            drop_caption=np.ones(count, bool),
            x0=np.stack([to_unit(resize(center_square(p), size)) for p in pixels]),
        )

        def invert(rows: dict, _: int) -> dict:
            text_embed, states = self.clip.encode_text(rows["ids"], rows["mask"])
            caption = {"ids": rows["ids"], "mask": rows["mask"], "states": states}
            caption["text_embed"] = text_embed
            cond = self.decoder.conditioning(rows["image_embed"], caption, rows["drop_caption"])
            return {"x_T": self.decoder.invert(rows["x0"], self._shard(cond), chain.decoder_steps)}

        x_T = self._map_rows(invert, invert_rows, "invert")["x_T"]
        out = self._decode_embeddings(
            embed,
            np.zeros(len(embed)),
            chain,
            "text diff",
            x_T=np.repeat(x_T, len(thetas), axis=0),
        )
        return out.reshape(count, len(thetas), *out.shape[1:])
