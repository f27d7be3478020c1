"""A pipeline directory of tiny random stages: CLIP (32 px, 16-d), prior (and, when asked, an
autoregressive prior), 8 px decoder with a CLIP-token caption, 8→16 upsampler. Used by the
pipeline and command tests (with the decoder and upsampler `STEPS` flags of their quick runs); its
stage configs and `random_params` also serve the sampling and compile-hygiene tests."""

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.convert import hf_clip
from unclip_jax.models.ar_prior import ARPrior
from unclip_jax.models.clip import CLIP, clip_config
from unclip_jax.models.pca_quantizer import ARQuantizers, fit_quantizers
from unclip_jax.models.prior import DiffusionPrior
from unclip_jax.models.unet import decoder_from_config, upsampler_from_config
from unclip_jax.pipelines import store
from unclip_jax.text import bpe

CONTEXT = 8
STEPS = ("--decoder_steps=2", "--upsampler_steps=2")
CAPTIONS = [
    f"a {size} {colour} {shape}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue")
    for shape in ("circle", "square", "triangle")
]
# The widths both priors' transformers share.
PRIOR_TRANSFORMER = dict(
    text_embed_dim=16, token_dim=32, num_tokens=CONTEXT, width=16, depth=1, num_heads=2
)
PRIOR_MODEL = dict(embed_dim=16, **PRIOR_TRANSFORMER)
DECODER_MODEL = dict(
    unet=dict(
        out_channels=6,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        mid_attention=False,
        head_dim=8,
        groups=4,
    ),
    context_dim=8,
    num_image_tokens=2,
    caption_source="clip",
)
UPSAMPLER_MODEL = dict(
    unet=dict(
        out_channels=3,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        mid_attention=False,
        groups=4,
    ),
)


def random_params(module: nn.Module, *args, seed: int | None = None, **kwargs):
    """Parameters of the module's shapes drawn from N(0, 0.2²) (from eval_shape: nothing is
    compiled); `seed` defaults to the number of leaves, which the pipeline's stages (and so the
    format fixture) were drawn with."""
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args, **kwargs)))
    leaves, tree = jax.tree.flatten(shapes["params"])
    rng = np.random.default_rng(len(leaves) if seed is None else seed)
    values = [rng.normal(0.0, 0.2, leaf.shape).astype(np.float32) for leaf in leaves]
    return jax.tree.unflatten(tree, values)


AR_PRIOR_MODEL = dict(num_codes=4, num_buckets=16, num_dot_buckets=8, **PRIOR_TRANSFORMER)
AR_SAMPLING = dict(
    guidance_scale=2.0, candidates=1, temperature=1.0, top_p=1.0, dot_sampling="top_half"
)


def ar_quantizers(count: int = 256, seed: int = 0) -> ARQuantizers:
    """Quantizers of AR_PRIOR_MODEL's sizes, fitted on random 16-d pairs (z_i near z_t)."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(count, 16))
    image = 3.0 * (text + rng.normal(size=(count, 16)))
    sizes = {k: AR_PRIOR_MODEL[k] for k in ("num_buckets", "num_dot_buckets")}
    return fit_quantizers(image, text, num_components=AR_PRIOR_MODEL["num_codes"], **sizes)


def ar_prior_stage() -> tuple[dict, dict, ARQuantizers]:
    """(stage.json settings, random parameters, quantizers) of a tiny AR prior stage."""
    model = ARPrior(**AR_PRIOR_MODEL)
    params = random_params(
        model,
        jnp.zeros((1, model.num_codes), jnp.int32),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, 16)),
        jnp.zeros((1, CONTEXT, 32)),
        jnp.ones((1, CONTEXT), bool),
    )
    return {"model": AR_PRIOR_MODEL, "sampling": AR_SAMPLING}, params, ar_quantizers()


def build_clip(clip_dir: Path) -> Path:
    """Saves the tiny CLIP (and its BPE of CAPTIONS in tokenizer/) at `clip_dir`."""
    tokenizer = bpe.train_bpe(CAPTIONS, vocab_size=64, context_length=CONTEXT)
    base = clip_config("tiny")
    config = dataclasses.replace(
        base,
        text=dataclasses.replace(
            base.text,
            vocab_size=tokenizer.vocab_size,
            context_length=CONTEXT,
            eos_token_id=tokenizer.eot_id,
        ),
    )
    ids = jnp.zeros((1, CONTEXT), jnp.int32)
    clip_params = random_params(CLIP(config), ids, jnp.zeros((1, 32, 32, 3)))
    hf_clip.save_clip(clip_dir, config, {"params": clip_params})
    tokenizer.save(clip_dir / store.TOKENIZER_DIR)
    return clip_dir


def build(directory: Path, *, ar_prior: bool = False, diffusion_prior: bool = True) -> Path:
    """Writes the tiny pipeline into `directory` (with the priors asked for) and returns it."""
    clip_dir = build_clip(directory / "stages" / "clip")
    prior = DiffusionPrior(**PRIOR_MODEL)
    z = jnp.zeros((1, 16))
    prior_params = random_params(
        prior,
        z,
        jnp.zeros((1,), jnp.int32),
        z,
        jnp.zeros((1, CONTEXT, 32)),
        jnp.ones((1, CONTEXT), bool),
    )
    decoder = decoder_from_config(DECODER_MODEL)
    decoder_params = random_params(
        decoder,
        jnp.zeros((1, 8, 8, 3)),
        jnp.zeros((1,), jnp.int32),
        z,
        caption_states=jnp.zeros((1, CONTEXT, 32)),
        caption_embed=z,
        caption_mask=jnp.ones((1, CONTEXT), bool),
    )
    upsampler = upsampler_from_config(UPSAMPLER_MODEL)
    up_params = random_params(
        upsampler, jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32)
    )
    diffusion = dict(schedule="cosine", train_steps=100, sample_steps=4)
    return store.write_pipeline(
        directory / "pipeline",
        clip_dir=clip_dir,
        prior=(
            {
                "model": PRIOR_MODEL,
                "diffusion": {**diffusion, "prediction": "x0"},
                "normalizer": {"kind": "unit_norm", "mean": None, "std": None},
            },
            prior_params,
        )
        if diffusion_prior
        else None,
        ar_prior=ar_prior_stage() if ar_prior else None,
        decoder=(
            {
                "image_size": 8,
                "model": DECODER_MODEL,
                "diffusion": {**diffusion, "learned_variance": True},
            },
            decoder_params,
        ),
        upsamplers=[
            (
                {"low_res": 8, "high_res": 16, "model": UPSAMPLER_MODEL, "diffusion": diffusion},
                up_params,
            )
        ],
    )
