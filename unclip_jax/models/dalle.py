"""The transformer of DALL·E (Ramesh et al. 2021): one decoder-only stream over the caption's BPE
tokens and the dVAE's image codes, with sparse attention among image tokens.

The sequence is L text positions then the image codes in raster order of an n×n grid (N = n²):

    [t_0 … t_{L−1}, c_0 … c_{N−2}]    (S = L + N − 1 positions)

Position p predicts the token at p + 1: text positions predict the next text token, position L − 1
predicts c_0, position L + j predicts c_{j+1}. Caption positions past its end hold a padding token
of their own for each of the L positions (id `text_vocab_size + p`), so the text needs no
attention mask. Text tokens carry a learned position embedding; image codes a row and a column
embedding.

Attention is causal. Every position attends to every text position at or before it, in every
layer. Among image positions, a query holding code a attends to the image position holding code
b ≤ a when the layer's mask allows (r(x), c(x) the row and column of code x in the grid):

- `dense`: always;
- `row`: a − b < n (the last n codes: the query's row so far and the end of the row above);
- `column`: (a − b) mod n = 0 (the same column);
- `conv` (kernel k, odd): r(a) − r(b) ≤ k // 2 and |c(a) − c(b)| ≤ k // 2.

The paper's pattern (its appendix B.1) gives layer i (from 0) the column mask when
(i − 2) mod 4 = 0, the row mask otherwise, and the last layer the convolutional mask; `pattern=
"dense"` gives every layer the dense mask (the ablation; "row", "column" and "conv" likewise).
The layers run under `nn.scan` (one compiled block, the mask picked by layer index) with
optional rematerialisation.

The same layers serve training (all positions at once, attending among themselves) and cached
decoding. A layer's cache is a tuple of segments, each a (keys, values) pair of buffers
[B, H, S_k, Dh] holding consecutive positions from 0: the new tokens' keys and values are written
in place into the last segment, and the queries attend over every segment (positions not yet
written are excluded by causality). The prefix fills one segment of its own length; decoding
adds a segment per chunk of tokens (`grow_cache`), so that each step reads the positions written
so far and the chunk, not all S positions.

    model = DalleTransformer(DalleConfig(...))
    text_logits, image_logits = model.apply(v, text_ids, text_mask, codes)  # teacher forcing
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unclip_jax.models.dvae import DVAEConfig
from unclip_jax.nn.attention import IN_NAMES, OUT_NAMES
from unclip_jax.nn.embedding import position_embedding, token_embedding
from unclip_jax.nn.linear import dense
from unclip_jax.nn.norm import layer_norm
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.nn.softmax_attention import dot_product_attention
from unclip_jax.sharding import EMBED, LAYERS, MLP, PER_HEAD, TOKENS, VOCAB, constrain, remat

Array = jax.Array
MASKS = ("dense", "row", "column", "conv")
PATTERNS = ("sparse", *MASKS)  # the paper's layer schedule, or one mask in every layer
TEXT_LOSS_WEIGHT, IMAGE_LOSS_WEIGHT = 1 / 8, 7 / 8  # the paper's weighting of the two losses


@dataclasses.dataclass(frozen=True)
class DalleConfig:
    """The paper's 12B model by default (64 layers, 62 heads of 64, width 3968; 256 BPE tokens
    of a 16,384 vocabulary; 32×32 codes of 8192)."""

    text_vocab_size: int = 16384
    text_length: int = 256
    image_vocab_size: int = 8192
    grid: int = 32  # n: the dVAE's codes per side
    width: int = 3968
    depth: int = 64
    num_heads: int = 62
    head_dim: int = 64
    mlp_ratio: int = 4
    pattern: str = "sparse"  # one of PATTERNS
    conv_kernel: int = 11  # k of the convolutional mask (paper appendix B.1, Figure 11)
    remat_policy: str = "none"  # a key of sharding.REMAT_POLICIES

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be an odd number >= 1, got {self.conv_kernel}")
        for name in ("text_length", "grid", "depth", "num_heads", "head_dim", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "DalleConfig":
        fields = fields.to_dict() if hasattr(fields, "to_dict") else dict(fields)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown DALL·E model fields {unknown}; expected some of {sorted(known)}"
            )
        return cls(**fields)

    @property
    def num_codes(self) -> int:  # N
        return self.grid * self.grid

    @property
    def length(self) -> int:  # S: the positions the model is fed
        return self.text_length + self.num_codes - 1

    def layer_masks(self) -> list[str]:
        """The mask of each layer, a key of MASKS."""
        if self.pattern != "sparse":
            return [self.pattern] * self.depth
        masks = ["column" if (i - 2) % 4 == 0 else "row" for i in range(self.depth)]
        masks[-1] = "conv"
        return masks


def sized_config(
    fields: Mapping[str, Any],  # DalleConfig fields but the four sizes set here
    text_vocab_size: int,  # the caption tokenizer's
    text_length: int,  # the caption tokenizer's context length
    dvae: DVAEConfig,  # the dVAE whose codes the model reads and writes
    image_size: int,  # the side of the images the dVAE encodes into the grid
) -> DalleConfig:
    """The model over a tokenizer's captions and a dVAE's codes of `image_size` px images (its
    grid: image_size / the dVAE's downsampling factor), as trained and as loaded."""
    factor = dvae.downsample_factor
    if image_size % factor:
        raise ValueError(
            f"image_size {image_size} is not a multiple of the dVAE's downsampling factor {factor}"
        )
    sizes = dict(
        text_vocab_size=text_vocab_size,
        text_length=text_length,
        image_vocab_size=dvae.vocab_size,
        grid=image_size // factor,
    )
    return DalleConfig.from_dict({**fields, **sizes})


def image_mask(kind: str, grid: int, kernel: int = 11) -> np.ndarray:
    """[N, N] bool: may the query holding code a attend to the position holding code b."""
    a = np.arange(grid * grid)[:, None]
    b = np.arange(grid * grid)[None, :]
    causal = b <= a
    if kind == "dense":
        return causal
    if kind == "row":
        return causal & (a - b < grid)
    if kind == "column":
        return causal & ((a - b) % grid == 0)
    if kind == "conv":
        half = kernel // 2
        rows, cols = a // grid - b // grid, np.abs(a % grid - b % grid)
        return causal & (rows <= half) & (cols <= half)
    raise ValueError(f"mask must be one of {MASKS}, got {kind!r}")


def sequence_masks(config: DalleConfig) -> np.ndarray:
    """[len(MASKS), S, S] bool over the fed positions: causal text, every text position visible
    to every later position, image positions by `image_mask` (position L + j holds code j)."""
    text, length = config.text_length, config.length
    causal = np.tril(np.ones((length, length), bool))
    masks = []
    for kind in MASKS:
        mask = causal.copy()
        codes = image_mask(kind, config.grid, config.conv_kernel)[: length - text, : length - text]
        mask[text:, text:] = codes
        masks.append(mask)
    return np.stack(masks)


Segment = tuple[Array, Array]  # a run of positions' keys and values, each [B, H, S_k, Dh]


def cached_attention(
    query: Array,  # [B, T, H, Dh] at positions start … start + T − 1
    key: Array,  # [B, T, H, Dh]
    value: Array,  # [B, T, H, Dh]
    segments: tuple[Segment, ...],  # the layer's cache, positions 0 … ΣS_k − 1
    start: Array,  # [] the first new position, in the last segment
    rows: Array,  # [T, S] bool: may query t attend to position s
) -> tuple[Array, tuple[Segment, ...]]:  # ([B, T, H, Dh], the cache with the new entries)
    """The new keys and values written in place into the last segment, then the queries attend
    over every segment (each read where it lies: no concatenated copy). The buffers are laid out
    heads before positions, as both products read them."""
    offset = sum(keys.shape[2] for keys, _ in segments[:-1])
    last = tuple(
        jax.lax.dynamic_update_slice(
            buffer, new.transpose(0, 2, 1, 3).astype(buffer.dtype), (0, 0, start - offset, 0)
        )
        for buffer, new in zip(segments[-1], (key, value), strict=True)
    )
    segments = (*segments[:-1], last)
    logits = jnp.concatenate(
        [jnp.einsum("bthd,bhsd->bhts", query, keys.astype(query.dtype)) for keys, _ in segments],
        axis=-1,
    )  # [B, H, T, ΣS_k]
    visible = rows[:, : logits.shape[-1]]
    logits = jnp.where(visible, logits / np.sqrt(query.shape[-1]), jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
    attended, first = 0, 0
    for _, values in segments:
        part = weights[..., first : first + values.shape[2]]
        attended = attended + jnp.einsum("bhts,bhsd->bthd", part, values.astype(query.dtype))
        first += values.shape[2]
    return attended, segments


def grow_cache(cache: tuple[tuple[Segment, ...], ...], length: int):
    """Each layer's segments joined into one, then an empty segment of `length` positions after
    them (where a decoding chunk writes): one copy of the cache per chunk, none per token."""

    def grown(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
        joined = tuple(jnp.concatenate(parts, axis=2) for parts in zip(*segments, strict=True))
        empty = jnp.zeros((*joined[0].shape[:2], length, joined[0].shape[3]), joined[0].dtype)
        return (joined, (empty, empty))

    return tuple(grown(segments) for segments in cache)


class DalleBlock(PrecisionModule):
    """Pre-LayerNorm block: h + attn(LN(h)), then h + MLP(LN(h)) (GELU). Without a cache
    (training) the T positions attend among themselves; with one their keys and values are
    written into it at `start` and they attend over it (`cached_attention`)."""

    config: DalleConfig

    @nn.compact
    def __call__(
        self,
        h: Array,
        mask_index: Array,
        start: Array,
        masks: Array,
        cache: tuple[Segment, ...] | None = None,
    ) -> tuple[Array, tuple[Segment, ...] | None]:
        """h [B, T, W] at positions start … start + T − 1 (start 0 without a cache); the index of
        the layer's mask in masks [len(MASKS), S, S]; the layer's segments (`cached_attention`).
        Returns (h, cache)."""
        cfg = self.config
        heads = (cfg.num_heads, cfg.head_dim)
        normed = layer_norm(name="norm_attn", **self.dtypes)(h)

        def project(name: str) -> Array:  # [B, T, H, Dh]
            return constrain(dense(heads, IN_NAMES, name=name, **self.dtypes)(normed), PER_HEAD)

        query, key, value = project("query"), project("key"), project("value")
        rows = jax.lax.dynamic_slice_in_dim(masks[mask_index], start, h.shape[1], axis=0)
        if cache is None:
            attended = dot_product_attention(
                query, key, value, mask=rows[None, None, :, : h.shape[1]]
            )
        else:
            attended, cache = cached_attention(query, key, value, cache, start, rows)
        h = h + dense(cfg.width, OUT_NAMES, name="out", **self.dtypes)(attended)
        h = constrain(h, TOKENS)
        hidden = dense(cfg.mlp_ratio * cfg.width, (EMBED, MLP), name="mlp_in", **self.dtypes)(
            layer_norm(name="norm_mlp", **self.dtypes)(h)
        )
        h = h + dense(cfg.width, (MLP, EMBED), name="mlp_out", **self.dtypes)(nn.gelu(hidden))
        return constrain(h, TOKENS), cache


class DalleTransformer(PrecisionModule):
    """Logits of the next text token at text positions and of the next image code after them."""

    config: DalleConfig

    def setup(self):
        cfg = self.config
        text_tokens = cfg.text_vocab_size + cfg.text_length  # and a padding token per position
        self.text_embed = token_embedding(text_tokens, cfg.width, name="text_embed", **self.dtypes)
        self.text_positions = position_embedding(self, cfg.text_length, cfg.width, 0.01, "text_pos")
        self.image_embed = token_embedding(
            cfg.image_vocab_size, cfg.width, name="image_embed", **self.dtypes
        )
        self.rows = position_embedding(self, cfg.grid, cfg.width, 0.01, "row_embed")
        self.columns = position_embedding(self, cfg.grid, cfg.width, 0.01, "column_embed")
        block = remat(DalleBlock, cfg.remat_policy)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=cfg.depth,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )(cfg, name="layers", **self.dtypes)
        self.norm_out = layer_norm(name="norm_out", **self.dtypes)
        self.text_head = dense(text_tokens, (EMBED, VOCAB), name="text_head", **self.dtypes)
        self.image_head = dense(
            cfg.image_vocab_size, (EMBED, VOCAB), name="image_head", **self.dtypes
        )
        self.mask_ids = jnp.asarray([MASKS.index(m) for m in cfg.layer_masks()], jnp.int32)
        self.masks = jnp.asarray(sequence_masks(cfg))

    def text_inputs(self, text_ids: Array, text_mask: Array) -> Array:  # [B, L] -> [B, L, W]
        ids = padded_text(self.config, text_ids, text_mask)
        return self.text_embed(ids) + jnp.asarray(self.text_positions, self.dtype)

    def image_inputs(self, codes: Array, first: int | Array = 0) -> Array:
        """Codes [B, T] at code indices first … first + T − 1 → [B, T, W]."""
        index = first + jnp.arange(codes.shape[1])
        positions = self.rows[index // self.config.grid] + self.columns[index % self.config.grid]
        return self.image_embed(jnp.asarray(codes, jnp.int32)) + jnp.asarray(positions, self.dtype)

    def empty_cache(self, batch: int, length: int) -> tuple[tuple[Segment, ...], ...]:
        """Each layer's cache: one segment of `length` positions, in the compute dtype."""
        cfg = self.config
        shape = (batch, cfg.num_heads, length, cfg.head_dim)
        return tuple(
            ((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)),)
            for _ in range(cfg.depth)
        )

    def run(self, h: Array) -> Array:
        """The layers over h [B, T, W] at positions 0 … T − 1, attending among themselves."""
        h, _ = self.layers(h, self.mask_ids, jnp.int32(0), self.masks)
        return self.norm_out(h)

    def run_cached(
        self,
        h: Array,
        start: Array,
        cache: tuple[tuple[Segment, ...], ...],
        layers: tuple[Any, ...] | None = None,
    ):
        """The layers over h [B, T, W] at positions start … start + T − 1, attending over the
        cache: (final states, cache). The layers run one after another (not scanned), each on
        its own buffers and its parameters (`layers`, from `layer_params`; sliced here where not
        given): a decoding loop that slices them once gives its steps nothing to copy."""
        block = DalleBlock(self.config, **self.dtypes, parent=None)
        if layers is None:
            layers = layer_params(self.variables["params"])
        new_cache = []
        for index, (params, layer_cache) in enumerate(zip(layers, cache, strict=True)):
            h, layer_cache = block.apply(
                {"params": params}, h, self.mask_ids[index], start, self.masks, layer_cache
            )
            new_cache.append(layer_cache)
        return self.norm_out(h), tuple(new_cache)

    def __call__(
        self, text_ids: Array, text_mask: Array, codes: Array
    ) -> tuple[Array, Array]:  # ([B, L − 1, Vt + L], [B, N, Vi]) float32
        """Teacher forcing: text [B, L] with its mask, codes [B, N]."""
        cfg = self.config
        if codes.shape[1:] != (cfg.num_codes,):
            raise ValueError(f"codes must be [B, {cfg.num_codes}], got {codes.shape}")
        h = jnp.concatenate(
            [self.text_inputs(text_ids, text_mask), self.image_inputs(codes[:, :-1])], axis=1
        )
        h = self.run(h)
        text, image = h[:, : cfg.text_length - 1], h[:, cfg.text_length - 1 :]
        return (
            self.text_head(text).astype(jnp.float32),
            self.image_head(image).astype(jnp.float32),
        )

    def prefill(
        self,
        text_ids: Array,
        text_mask: Array,
        codes: Array | None = None,
        layers: tuple[Any, ...] | None = None,
    ) -> tuple[Array, tuple[tuple[Segment, ...], ...]]:
        """The caption (and the first K codes [B, K], for completion) encoded at once: the logits
        of the next code [B, Vi] and the cache, one segment of the L + K positions (`layers`: as
        `run_cached`)."""
        h = self.text_inputs(text_ids, text_mask)
        if codes is not None and codes.shape[1]:
            h = jnp.concatenate([h, self.image_inputs(codes)], axis=1)
        empty = self.empty_cache(h.shape[0], h.shape[1])
        h, cache = self.run_cached(h, jnp.int32(0), empty, layers)
        return self.image_head(h[:, -1]).astype(jnp.float32), cache

    def decode_step(
        self,
        cache: tuple[tuple[Segment, ...], ...],
        code: Array,
        index: Array,
        layers: tuple[Any, ...] | None = None,
        head: tuple[Array, Array] | None = None,
    ) -> tuple[Array, tuple[tuple[Segment, ...], ...]]:
        """Feed code `index` [B], its position in the cache's last segment (`grow_cache`); the
        logits of code index + 1 [B, Vi] and the new cache (`layers`: as `run_cached`; `head`:
        the image head as `decoding_head` gives it, else the module's)."""
        h = self.image_inputs(code[:, None], index)
        h, cache = self.run_cached(h, self.config.text_length + index, cache, layers)
        if head is None:
            return self.image_head(h[:, 0]).astype(jnp.float32), cache
        kernel, bias = head
        logits = jnp.einsum("bw,vw->bv", h[:, 0].astype(self.dtype), kernel.astype(self.dtype))
        return (logits + bias.astype(self.dtype)).astype(jnp.float32), cache


def layer_params(params: Mapping[str, Any]) -> tuple[Any, ...]:
    """Each layer's parameters, sliced from a `DalleTransformer`'s stacked (scanned) ones."""
    stacked = nn.unbox(params["layers"])
    depth = jax.tree.leaves(stacked)[0].shape[0]
    return tuple(jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth))


def decoding_head(params: Mapping[str, Any]) -> tuple[Array, Array]:
    """The image head's (kernel transposed [Vi, W], bias [Vi]), made once before a decoding
    loop: on a CPU, XLA's product of a few rows with a wide [W, Vi] kernel streams it at half
    the rate of the [Vi, W] one (12 × 768, Vi 8192, 16 rows: 5.3 against 3.1 ms)."""
    head = nn.unbox(params["image_head"])
    return head["kernel"].T, head["bias"]


def dalle_loss(
    text_logits: Array, image_logits: Array, text_targets: Array, codes: Array
) -> tuple[Array, dict[str, Array]]:
    """1/8 × mean text cross-entropy + 7/8 × mean image cross-entropy (the paper's weights).

    text_logits [B, L − 1, Vt + L] against text_targets [B, L − 1] (ids with padding mapped, as
    `padded_text` gives them); image_logits [B, N, Vi] against codes [B, N]."""
    text = optax.softmax_cross_entropy_with_integer_labels(text_logits, text_targets).mean()
    image = optax.softmax_cross_entropy_with_integer_labels(image_logits, codes).mean()
    loss = TEXT_LOSS_WEIGHT * text + IMAGE_LOSS_WEIGHT * image
    return loss, {"text_loss": text, "image_loss": image}


def padded_text(config: DalleConfig, text_ids: Array, text_mask: Array) -> Array:
    """[B, L] ids with each padded position's own padding token (the model's inputs; [:, 1:] are
    its text targets)."""
    if text_ids.shape[1:] != (config.text_length,):
        raise ValueError(f"text must be [B, {config.text_length}], got {text_ids.shape}")
    padding = config.text_vocab_size + jnp.arange(config.text_length)
    return jnp.where(text_mask, jnp.asarray(text_ids, jnp.int32), padding[None])
