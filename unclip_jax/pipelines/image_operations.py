"""The image operations of unCLIP (§3) over `UnCLIP`'s batched stages: variations (§3.1),
interpolations (§3.2) and text diffs (§3.3), all decoded from CLIP image embeddings of images.

An image's bipartite latent (§3.1) is (z_i, x_T): its CLIP image embedding and the DDIM
inversion of the image at the decoder's resolution, conditioned on z_i and the null caption
(`_bipartite_latents`, shared by the three operations). Decoding (z_i, x_T) with DDIM η = 0 and
decoder_guidance = 1 (the inversion is unguided) gives the image back up to the inversion's
discretisation error; η > 0 adds fresh noise at every step, so larger η gives more varied images.
"""

from collections.abc import Sequence
from typing import Unpack

import numpy as np

from unclip_jax.pipelines.arguments import (
    ImageOptions,
    RunSettings,
    check_count,
    check_prompts,
    check_x_T,
)
from unclip_jax.pipelines.images import (
    ImageLike,
    as_image,
    center_square,
    resize,
    square_pixels,
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


def slerp_with_norm(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """a, b [...] (any shape, taken as vectors) at θ [N] → [N, ...]: the slerp of their
    directions scaled by the linearly interpolated norm (§3.2, for embeddings and x_T alike)."""
    flat_a, flat_b = np.ravel(a), np.ravel(b)
    theta = np.asarray(theta, np.float64)
    norms = (1 - theta) * np.linalg.norm(flat_a) + theta * np.linalg.norm(flat_b)
    path = slerp(unit(flat_a), unit(flat_b), theta) * norms[:, None]
    return path.reshape(len(theta), *np.shape(a))


# Default DDIM η of variations from an inverted x_T (§3.1; the paper gives none): see `variations`.
VARIATION_ETA = 1.0


class ImageOperations:
    """Mixed into `UnCLIP`: uses its `clip`, `decoder`, `batches` (`pipelines.batches`),
    `_chain`, `_settings`, `_caption_rows` and `_require_image_encoder`."""

    def _require_ddim(self, what: str, inverted: bool) -> None:
        """ValueError before any compute where `what` needs what the decoder lacks: a DDIM
        inversion (for an `inverted` x_T) and DDIM sampling (which η and the inversion mean)."""
        if inverted and not isinstance(self.decoder, InvertibleDecoder):
            raise ValueError(f"{what} needs a decoder with a DDIM inversion; this one has none")
        sampler = getattr(self.decoder.diffusion, "sampler", None)
        if sampler != "ddim":
            raise ValueError(
                f"{what} samples the decoder with DDIM (η, inverted x_T); this decoder's sampler "
                f"is {sampler!r}"
            )

    def _bipartite_latents(
        self, images: Sequence[ImageLike], chain: RunSettings
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bipartite latents of images (§3.1): (z_i [N, D], x_T [N, S, S, 3]), x_T the DDIM
        inversion (`chain.decoder_steps` steps) of each image at the decoder's resolution,
        conditioned on its own z_i and the null caption."""
        pixels = [as_image(image) for image in images]
        z_i = self.encode_images(pixels)
        size = self.decoder.shape[0]
        rows = self._caption_rows([""] * len(pixels))
        rows.update(
            image_embed=z_i.astype(np.float32),
            drop_caption=np.ones(len(pixels), bool),
            x0=np.stack([to_unit(resize(center_square(p), size)) for p in pixels]),
        )

        def invert(rows: dict, _: int) -> dict:
            text_embed, states = self.clip.encode_text(rows["ids"], rows["mask"])
            caption = {"ids": rows["ids"], "mask": rows["mask"], "states": states}
            caption["text_embed"] = text_embed
            cond = self.decoder.conditioning(rows["image_embed"], caption, rows["drop_caption"])
            return {
                "x_T": self.decoder.invert(
                    rows["x0"], self.batches.shard(cond), chain.decoder_steps
                )
            }

        return z_i, self.batches.map(invert, rows, "invert")["x_T"]

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """CLIP image embeddings z_i [N, D] of images."""
        self._require_image_encoder("encoding images")
        size = self.clip.config.vision.image_size
        pixels = np.stack([square_pixels(image, size) for image in images])
        out = self.batches.map(
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
        return to_uint8(
            self.batches.map(lambda r, i: self._chain(r, i, chain), rows, desc)["images"]
        )

    def variations(
        self,
        image: ImageLike,
        n: int = 4,
        seed: int = 0,
        *,
        eta: float | None = None,
        x_T: str = "inverted",  # or "random"
        **options: Unpack[ImageOptions],
    ) -> np.ndarray:
        """n images that keep the image's CLIP embedding (§3.1): uint8 [n, S, S, 3].

        x_T="inverted" (the paper's): each variation decodes the image's bipartite latent
        (z_i, x_T) with DDIM η and its own step noise; η = 0 reproduces the image (`reconstruct`)
        n times, larger η varies it more. η defaults to VARIATION_ETA = 1.0: the step noise of
        ancestral (DDPM) sampling, the paper's decoder sampler, so that the variety comes from
        the sampler the decoder is meant for while x_T still carries the image's layout (the
        demo reports keep-rate and spread at η 0 / 0.5 / 1 to check it). x_T="random":
        variation k starts from noise row k of the seed, η defaulting to 0 (a deterministic
        decode of each draw, as before)."""
        return self.variations_batch([image], n, seed, eta=eta, x_T=x_T, **options)[0]

    def variations_batch(
        self,
        images: Sequence[ImageLike],
        n: int = 4,
        seed: int = 0,
        *,
        eta: float | None = None,
        x_T: str = "inverted",  # or "random"
        **options: Unpack[ImageOptions],
    ) -> np.ndarray:
        """`variations` of several images in one batch: uint8 [N, n, S, S, 3]. With a random
        x_T variation k of every image uses noise row k (decoder and upsamplers); with the
        inverted x_T the upsamplers use noise row 0 for all, so η = 0 gives n equal images."""
        self._require_image_encoder("variations")
        n = check_count("n", n)
        inverted = check_x_T(x_T) == "inverted"
        if eta is None:
            eta = VARIATION_ETA if inverted else 0.0
        chain = self._settings(seed, eta=eta, **options)
        if inverted or chain.eta > 0:
            self._require_ddim("variations", inverted)
        if inverted:
            z, latent = self._bipartite_latents(images, chain)
            ids, extra = np.zeros(len(z) * n), {"x_T": np.repeat(latent, n, axis=0)}
        else:
            z, extra = self.encode_images(images), {}
            ids = np.tile(np.arange(n), len(z))
        out = self._decode_embeddings(np.repeat(z, n, axis=0), ids, chain, "variations", **extra)
        return out.reshape(len(z), n, *out.shape[1:])

    def reconstruct(
        self, image: ImageLike, seed: int = 0, **options: Unpack[ImageOptions]
    ) -> np.ndarray:
        """The image decoded from its bipartite latent with DDIM η = 0 (§3.1): with
        decoder_guidance=1 the image again, up to the inversion's error. uint8 [S, S, 3]."""
        return self.reconstruct_batch([image], seed, **options)[0]

    def reconstruct_batch(
        self, images: Sequence[ImageLike], seed: int = 0, **options: Unpack[ImageOptions]
    ) -> np.ndarray:
        """`reconstruct` of several images in one batch: uint8 [N, S, S, 3]."""
        return self.variations_batch(images, 1, seed, eta=0.0, **options)[:, 0]

    def interpolate(
        self,
        image_a: ImageLike,
        image_b: ImageLike,
        n: int = 5,
        seed: int = 0,
        *,
        eta: float = 0.0,
        x_T: str = "inverted",  # or "random"
        **options: Unpack[ImageOptions],
    ) -> np.ndarray:
        """n frames from image A to image B (§3.2): the CLIP image embeddings slerped (norm
        interpolated linearly) at θ = 0 … 1, decoded with DDIM η. x_T="inverted": x_T slerped
        the same way between the two images' DDIM inversions, so that at η = 0 (and
        decoder_guidance=1) the end frames reproduce A and B; x_T="random": one random x_T for
        every frame. uint8 [n, S, S, 3]."""
        return self.interpolate_batch([image_a], [image_b], n, seed, eta=eta, x_T=x_T, **options)[0]

    def interpolate_batch(
        self,
        images_a: Sequence[ImageLike],
        images_b: Sequence[ImageLike],
        n: int = 5,
        seed: int = 0,
        *,
        eta: float = 0.0,
        x_T: str = "inverted",  # or "random"
        **options: Unpack[ImageOptions],
    ) -> np.ndarray:
        """`interpolate` for pairs (A_j, B_j) in one batch: uint8 [N, n, S, S, 3]; every frame
        uses noise row 0 (the random x_T, the upsamplers' noise)."""
        self._require_image_encoder("interpolate")
        n = check_count("n", n, least=2)
        inverted = check_x_T(x_T) == "inverted"
        count = len(images_a)
        if len(images_b) != count or not count:
            raise ValueError(f"need as many A as B images, got {count}, {len(images_b)}")
        chain = self._settings(seed, eta=eta, **options)
        if inverted or chain.eta > 0:
            self._require_ddim("interpolate", inverted)
        images = [*images_a, *images_b]
        theta = np.linspace(0.0, 1.0, n)
        extra = {}
        if inverted:
            z, latent = self._bipartite_latents(images, chain)
            pairs = zip(latent[:count], latent[count:], strict=True)
            paths = [slerp_with_norm(a, b, theta) for a, b in pairs]
            extra["x_T"] = np.concatenate(paths).astype(np.float32)
        else:
            z = self.encode_images(images)
        embed = np.concatenate(
            [slerp_with_norm(a, b, theta) for a, b in zip(z[:count], z[count:], strict=True)]
        )
        out = self._decode_embeddings(embed, np.zeros(len(embed)), chain, "interpolate", **extra)
        return out.reshape(count, n, *out.shape[1:])

    def text_diff(
        self,
        image: ImageLike,
        from_caption: str,
        to_caption: str,
        thetas: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
        seed: int = 0,
        **options: Unpack[ImageOptions],
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
        **options: Unpack[ImageOptions],
    ) -> np.ndarray:
        """`text_diff` of several images in one batch: uint8 [N, len(thetas), S, S, 3]."""
        self._require_image_encoder("text_diff")
        self._require_ddim("text_diff", inverted=True)
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
        text = self.batches.map(
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
        z_i, latent = self._bipartite_latents(images, chain)
        z_d = unit(text[count:] - text[:count])
        embed = np.concatenate(
            [slerp(unit(z), d, thetas) * np.linalg.norm(z) for z, d in zip(z_i, z_d, strict=True)]
        )
        out = self._decode_embeddings(
            embed,
            np.zeros(len(embed)),
            chain,
            "text diff",
            x_T=np.repeat(latent, len(thetas), axis=0),
        )
        return out.reshape(count, len(thetas), *out.shape[1:])
