"""A DALL·E pipeline directory of tiny random parts: `tiny_pipeline`'s CLIP (32 px, 16-d) to
rerank, a dVAE of 16 codes (downsampling 2) and a 2-layer transformer over 8 BPE positions and a
4×4 grid of codes (8 px images). Used by the DALL·E pipeline and command tests."""

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tiny_pipeline

from unclip_jax.models.dalle import DalleConfig, DalleTransformer, sized_config
from unclip_jax.models.dvae import DVAEConfig, DVAEDecoder, DVAEEncoder
from unclip_jax.pipelines import dalle_store
from unclip_jax.text import bpe

DVAE = DVAEConfig(group_count=2, n_hid=8, n_blk_per_group=1, vocab_size=16, n_init=8)
GRID = 4
IMAGE_SIZE = GRID * DVAE.downsample_factor  # 8 px
MODEL = dict(width=16, depth=2, num_heads=2, head_dim=8, conv_kernel=3)  # DalleConfig but sizes


def tokenizer():
    """The transformer's BPE: `tiny_pipeline`'s captions, 64 tokens, 8 positions."""
    captions, length = tiny_pipeline.CAPTIONS, tiny_pipeline.CONTEXT
    return bpe.train_bpe(captions, vocab_size=64, context_length=length)


def model_config(text_tokenizer) -> DalleConfig:
    sizes = (text_tokenizer.vocab_size, text_tokenizer.context_length)
    return sized_config(MODEL, *sizes, DVAE, IMAGE_SIZE)


def dvae_variables() -> dict:
    """Random encoder and decoder parameters of DVAE ({"encoder": {"params": ...}, ...})."""
    images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
    encoder = tiny_pipeline.random_params(DVAEEncoder(DVAE), images)
    decoder = tiny_pipeline.random_params(DVAEDecoder(DVAE), jnp.zeros((1, GRID, GRID), jnp.int32))
    return {"encoder": {"params": encoder}, "decoder": {"params": decoder}}


def transformer_params(config: DalleConfig, seed: int | None = None) -> dict:
    ids = jnp.zeros((1, config.text_length), jnp.int32)
    codes = jnp.zeros((1, config.num_codes), jnp.int32)
    model = DalleTransformer(config)
    return tiny_pipeline.random_params(model, ids, jnp.ones_like(ids, bool), codes, seed=seed)


def build(directory: Path) -> Path:
    """Writes the tiny DALL·E pipeline into `directory` and returns it."""
    clip_dir = tiny_pipeline.build_clip(directory / "stages" / "clip")
    text = tokenizer()
    config = model_config(text)
    settings = {
        "model": dataclasses.asdict(config),
        "dtype": "float32",
        "sampling": dict(dalle_store.DEFAULT_SAMPLING),
    }
    return dalle_store.write_dalle_pipeline(
        directory / "dalle",
        clip_dir=clip_dir,
        dvae=(DVAE, dvae_variables()),
        transformer=(settings, transformer_params(config)),
        tokenizer=text,
    )


def source_image(seed: int = 0) -> np.ndarray:
    """A random uint8 image at the pipeline's size [8, 8, 3]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
