"""DALL·E (Ramesh et al. 2021) end to end over a pipeline directory (`pipelines.dalle_store`):
the caption's BPE tokens, then image codes drawn one at a time by the transformer
(`sampling.dalle`), decoded by the dVAE; of N candidates per image the one the directory's CLIP
scores highest is kept (§2.3: the paper draws 512, its gains flattening after about 32); and
image completion, the top K rows of an image's codes kept and the rest drawn for a caption (the
paper's image-to-image prompting).

    from unclip_jax.pipelines.dalle import Dalle
    pipe = Dalle.load("workdirs/dalle/pipeline")
    images = pipe.generate(["a red circle"], 4, rerank_candidates=16)  # uint8 [4, S, S, 3]
    completed = pipe.complete("circle.png", "a red circle", keep_rows=4, num_images=4)

Work is cut into bucketed chunks sharded over the local devices (`pipelines.batches`); one
compiled program per bucket (and number of kept codes) draws a chunk's codes, decodes them and
scores them with CLIP, so new prompts, seeds and sampling settings do not recompile
(`compiled_programs()`). Each row's codes come from its own key, the seed's folded with the row's
index, so a row's sample depends neither on chunking, padding or the device count nor on the
other rows: the candidates among which `generate(prompts, n, rerank_candidates=N)` chose are the
images of `generate(prompts, n·N)`. A caption longer than the transformer's text length (or the
CLIP's context) is cut with a `CaptionTruncatedWarning`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import flop_meter
from unclip_jax.models.dalle import DalleConfig, DalleTransformer
from unclip_jax.models.dvae import FrozenDVAE
from unclip_jax.nn.precision import cast_floats, compute_dtype
from unclip_jax.pipelines import dalle_store
from unclip_jax.pipelines.arguments import check_count, check_dtype, check_prompts, check_seed
from unclip_jax.pipelines.batches import RowBatches
from unclip_jax.pipelines.images import (
    ImageLike,
    square_pixels,
    to_uint8,
)
from unclip_jax.pipelines.stages import TextImageEncoder, check_params, reading
from unclip_jax.sampling.dalle import check_truncation, make_dalle_sampler
from unclip_jax.sampling.rerank import best_rows, clip_scores
from unclip_jax.storage.tokenizers import load_tokenizer
from unclip_jax.text.tokenizer import Tokenizer

Array = jax.Array
Params = Any


def rows_program(model: DalleTransformer) -> Callable[..., dict[str, Array]]:
    """`program(models, rows, key, temperature, top_p, top_k)`: models {"transformer": params,
    "dvae": FrozenDVAE, "clip": FrozenCLIP}; rows {"ids", "mask" [B, L], "row" [B],
    "clip_ids", "clip_mask" [B, Lc], optionally "kept" [B, K]} → {"codes" [B, N], "images"
    [B, S, S, 3] in [-1, 1], "scores" [B] CLIP cosine against the row's caption}. Row b's codes
    are drawn with `fold_in(key, row[b])`."""
    sample = make_dalle_sampler(model).program

    def program(models, rows, key, temperature, top_p, top_k) -> dict[str, Array]:
        def one(ids, mask, row, kept):  # [L], [L], [], [K] or None → [N]
            kept = None if kept is None else kept[None]
            row_key = jax.random.fold_in(key, row)
            params = models["transformer"]
            codes = sample(params, ids[None], mask[None], row_key, temperature, top_p, top_k, kept)
            return codes[0]

        codes = jax.vmap(one)(rows["ids"], rows["mask"], rows["row"], rows.get("kept"))
        images = models["dvae"].decode(codes)
        text_embed, _ = models["clip"].encode_text(rows["clip_ids"], rows["clip_mask"])
        scores = clip_scores(models["clip"].encode_image(images), text_embed)
        return {"codes": codes, "images": images, "scores": scores}

    return program


def check_sizes(config: DalleConfig, tokenizer: Tokenizer, dvae: FrozenDVAE) -> None:
    """The tokenizer and the dVAE fit the transformer's text and image vocabularies."""
    text = (tokenizer.vocab_size, tokenizer.context_length)
    if text != (config.text_vocab_size, config.text_length):
        raise ValueError(
            f"the tokenizer has {text[0]} tokens and {text[1]} positions; the transformer reads "
            f"{config.text_vocab_size} tokens and {config.text_length} positions"
        )
    if dvae.config.vocab_size != config.image_vocab_size:
        raise ValueError(
            f"the dVAE has {dvae.config.vocab_size} codes; the transformer's image vocabulary "
            f"is {config.image_vocab_size}"
        )


def check_sampling(values: dict[str, Any], config: DalleConfig) -> None:
    """The temperature, top_k and top_p of `values` (`sampling.dalle.check_truncation`)."""
    vocab = config.image_vocab_size
    check_truncation(values["temperature"], values["top_p"], values["top_k"], vocab)


class DalleOptions(TypedDict, total=False):
    """The keyword options of `Dalle.generate` and `Dalle.complete`; the sampling ones default to
    the pipeline's."""

    rerank_candidates: int  # codes drawn per image, the one of the largest CLIP score kept
    temperature: float | None  # > 0
    top_k: int | None  # draw among the k likeliest codes; 0: off
    top_p: float | None  # nucleus mass, in (0, 1]


class Dalle:
    """DALL·E's text → image sampler, CLIP reranking and image completion."""

    def __init__(
        self,
        model: DalleTransformer,
        params: Params,
        tokenizer: Tokenizer,  # the transformer's caption BPE
        dvae: FrozenDVAE,
        clip: TextImageEncoder,  # the reranking CLIP and its tokenizer
        sampling: dict[str, Any] | None = None,  # default temperature, top_k, top_p
        *,
        num_devices: int | None = None,  # local devices to shard over (default: all)
        max_batch: int = 64,  # rows (candidates) per compiled batch
        progress: bool = False,  # a progress bar over chunks
    ):
        check_sizes(model.config, tokenizer, dvae)
        self.model, self.tokenizer, self.dvae, self.clip = model, tokenizer, dvae, clip
        self.sampling = {**dalle_store.DEFAULT_SAMPLING, **(sampling or {})}
        check_sampling(self.sampling, model.config)
        self.batches = RowBatches(num_devices, max_batch, progress)
        self.num_devices = self.batches.num_devices
        models = {"transformer": params, "dvae": dvae, "clip": clip.clip}
        self.models = self.batches.replicate(models)
        self._sample = flop_meter.jit(rows_program(model))
        self._encode = flop_meter.jit(FrozenDVAE.encode)

    @classmethod
    def load(cls, directory: str | Path, dtype: Any = None, **options: Any) -> "Dalle":
        """The pipeline saved in `directory` (see `pipelines.dalle_store`); options go to
        __init__. `dtype` ("bfloat16" or jnp.bfloat16, "float32"; None: as saved): the
        transformer and the CLIP compute in it and hold their parameters in it (the dVAE stays
        float32). A missing, corrupt or mismatched file is one error naming it, before anything
        is compiled."""
        dtype = check_dtype(dtype)
        files = dalle_store.read_dalle_pipeline(directory)
        stage = files.transformer
        tokenizer = load_tokenizer(files.tokenizer_dir)
        dvae_config, dvae_variables = files.dvae
        dvae = FrozenDVAE(
            dvae_config, dvae_variables["encoder"]["params"], dvae_variables["decoder"]["params"]
        )
        with reading(stage) as settings:
            config = DalleConfig.from_dict(settings["model"])
            compute = dtype or settings.get("dtype", "float32")
            model = DalleTransformer(config, dtype=compute_dtype(compute, "dtype"))
            sampling = dict(settings["sampling"])
            check_sampling({**dalle_store.DEFAULT_SAMPLING, **sampling}, config)
            check_sizes(config, tokenizer, dvae)
        check_params(stage, lambda params: _example_call(model, params))
        params = stage.params if dtype is None else cast_floats(stage.params, model.dtype)
        clip = TextImageEncoder(files.clip_dir, dtype)
        return cls(model, params, tokenizer, dvae, clip, sampling, **options)

    @property
    def image_size(self) -> int:
        return self.model.config.grid * self.dvae.config.downsample_factor

    def compiled_programs(self) -> dict[str, int]:
        """Programs compiled so far: sampling (per bucket and kept-code count), encoding."""
        return {"sample": self._sample._cache_size(), "encode": self._encode._cache_size()}

    def _settings(self, seed: int, **given: float | int | None) -> tuple:
        """(key, temperature, top_p, top_k) checked, the stage's where None."""
        values = {k: self.sampling[k] if v is None else v for k, v in given.items()}
        check_sampling(values, self.model.config)
        return (
            jax.random.key(check_seed(seed)),
            jnp.float32(values["temperature"]),
            jnp.float32(values["top_p"]),
            jnp.int32(values["top_k"]),
        )

    def _caption_rows(self, captions: list[str], repeat: int) -> dict[str, np.ndarray]:
        """Each caption's tokens for the transformer and the CLIP, `repeat` rows each, and the
        rows' indices."""
        ids, mask = self.tokenizer(captions)
        clip_ids, clip_mask = self.clip.tokenize(captions)
        rows = {
            "ids": np.asarray(ids, np.int32),
            "mask": np.asarray(mask).astype(bool),
            "clip_ids": clip_ids,
            "clip_mask": clip_mask,
        }
        rows = {k: np.repeat(v, repeat, axis=0) for k, v in rows.items()}
        rows["row"] = np.arange(len(captions) * repeat, dtype=np.int32)
        return rows

    def _sample_best(
        self, rows: dict[str, np.ndarray], settings: tuple, candidates: int, desc: str
    ) -> dict[str, np.ndarray]:
        """Every row sampled, decoded and scored; of each `candidates` consecutive rows the one of
        the largest CLIP score kept."""
        out = self.batches.map(lambda r, _: self._sample(self.models, r, *settings), rows, desc)
        return {k: v[best_rows(out["scores"], candidates)] for k, v in out.items()}

    def _draw(
        self,
        prompts: list[str],
        count: tuple[str, int],
        seed: int,
        options: DalleOptions,
        desc: str,
        kept: tuple[ImageLike, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """`count` = (its argument's name, images per prompt) of each prompt, each the best of
        `rerank_candidates` draws; `kept` = (an image, how many of its first codes every row
        keeps). Every argument is checked before the image is encoded or anything compiled."""
        unknown = sorted(set(options) - set(DalleOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"unknown options {unknown}; known: {list(DalleOptions.__annotations__)}"
            )
        prompts = check_prompts(prompts)
        n = check_count(*count)
        candidates = check_count("rerank_candidates", options.get("rerank_candidates", 1))
        settings = self._settings(
            seed, **{k: options.get(k) for k in ("temperature", "top_p", "top_k")}
        )
        rows = self._caption_rows(prompts, n * candidates)
        if kept is not None:
            image, num_kept = kept
            codes = self.encode_image(image)
            if num_kept:
                rows["kept"] = np.repeat(codes[None, :num_kept], n * candidates, axis=0)
        return self._sample_best(rows, settings, candidates, desc)

    def generate_float(
        self,
        prompts: list[str],
        num_images_per_prompt: int = 1,
        seed: int = 0,
        **options: Unpack[DalleOptions],
    ) -> dict[str, np.ndarray]:
        """`generate` before conversion: {"images": [P·n, S, S, 3] float in [-1, 1], "codes":
        [P·n, N], "scores": [P·n] CLIP cosine of the kept images}, prompt-major."""
        count = ("num_images_per_prompt", num_images_per_prompt)
        return self._draw(prompts, count, seed, options, "generate")

    def generate(
        self,
        prompts: list[str],
        num_images_per_prompt: int = 1,
        seed: int = 0,
        **options: Unpack[DalleOptions],
    ) -> np.ndarray:
        """Images for each prompt: uint8 [P·n, S, S, 3], prompt-major (`DalleOptions`)."""
        return to_uint8(
            self.generate_float(prompts, num_images_per_prompt, seed, **options)["images"]
        )

    def encode_image(self, image: ImageLike) -> np.ndarray:
        """An image's dVAE codes [N] in raster order (its centre square at the pipeline's size)."""
        pixels = square_pixels(image, self.image_size)[None]
        return np.asarray(self._encode(self.models["dvae"], pixels))[0]

    def complete_float(
        self,
        image: ImageLike,
        prompt: str,
        keep_rows: int,
        num_images: int = 1,
        seed: int = 0,
        **options: Unpack[DalleOptions],
    ) -> dict[str, np.ndarray]:
        """`complete` before conversion: {"images" [n, S, S, 3] in [-1, 1], "codes" [n, N] (the
        first keep_rows·grid are the image's), "scores" [n]}."""
        grid = self.model.config.grid
        if isinstance(keep_rows, bool) or not isinstance(keep_rows, (int, np.integer)):
            raise ValueError(f"keep_rows must be an integer in [0, {grid}), got {keep_rows!r}")
        if not 0 <= keep_rows < grid:
            raise ValueError(
                f"keep_rows must be in [0, {grid}) (the code grid has {grid} rows), got {keep_rows}"
            )
        count = ("num_images", num_images)
        kept = (image, keep_rows * grid)
        return self._draw([prompt], count, seed, options, "complete", kept)

    def complete(
        self,
        image: ImageLike,
        prompt: str,
        keep_rows: int,
        num_images: int = 1,
        seed: int = 0,
        **options: Unpack[DalleOptions],
    ) -> np.ndarray:
        """Completions of an image for a caption: its top `keep_rows` rows of codes kept (in
        [0, grid rows); 0 keeps none), the rest drawn: uint8 [n, S, S, 3] (`DalleOptions`)."""
        return to_uint8(
            self.complete_float(image, prompt, keep_rows, num_images, seed, **options)["images"]
        )


def _example_call(model: DalleTransformer, params: Params) -> tuple[Array, Array]:
    """One teacher-forced call on zeros (traced by `check_params`, nothing computed)."""
    config = model.config
    ids = jnp.zeros((1, config.text_length), jnp.int32)
    codes = jnp.zeros((1, config.num_codes), jnp.int32)
    return model.apply({"params": params}, ids, jnp.ones_like(ids, bool), codes)
