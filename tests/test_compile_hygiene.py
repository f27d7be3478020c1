"""Compile hygiene of the cascade's stage samplers (prior, decoder, upsampler) on tiny models:
after one call per stage, new captions and image embeddings, seeds, guidance scales and step
counts up to each sampler's maximum trace and compile nothing (XLA's compile and trace events are
counted, not just the samplers' own caches)."""

import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import dispatch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipeline import DECODER_MODEL, UPSAMPLER_MODEL, random_params

from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.models.unet import decoder_from_config, upsampler_from_config
from unclip_jax.sampling.decoder import DecoderChain, UpsamplerChain
from unclip_jax.sampling.prior import EncodedCaption, make_prior_sampler
from unclip_jax.sampling.settings import DiffusionSettings

B, DIM, LENGTH, SIZE, HIGH, MAX_STEPS = 2, 16, 6, 8, 16, 8
EVENTS = (dispatch.BACKEND_COMPILE_EVENT, dispatch.JAXPR_TRACE_EVENT)


class CompileCounter:
    """Counts XLA compilations and jaxpr traces while registered."""

    def __init__(self):
        self.events: list[str] = []

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event in EVENTS:
            self.events.append(event)

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self)


def _captions(seed: int) -> dict[str, np.ndarray]:
    """A new batch of caption encodings (text embedding, token states, lengths)."""
    rng = np.random.default_rng(seed)
    return dict(
        embed=rng.standard_normal((B, DIM), np.float32),
        states=rng.standard_normal((B, LENGTH, DIM), np.float32),
        mask=np.arange(LENGTH)[None] < rng.integers(1, LENGTH + 1, (B, 1)),
    )


@pytest.fixture(scope="module")
def cascade():
    """The three stage samplers with tiny random models, and a function running all three."""
    prior = DiffusionPrior(embed_dim=DIM, num_tokens=LENGTH, width=16, depth=1, num_heads=2)
    caption = _captions(0)
    prior_params = random_params(
        prior, jnp.zeros((B, DIM)), jnp.zeros((B,)), caption["embed"], caption["states"], seed=0
    )
    normalizer = EmbeddingNormalizer.create("unit_norm", DIM)
    decoder = decoder_from_config(DECODER_MODEL)
    decoder_params = random_params(
        decoder,
        jnp.zeros((B, SIZE, SIZE, 3)),
        jnp.zeros((B,)),
        caption["embed"],
        caption_states=caption["states"],
        caption_embed=caption["embed"],
        seed=0,
    )
    upsampler = upsampler_from_config(UPSAMPLER_MODEL)
    upsampler_params = random_params(
        upsampler,
        jnp.zeros((B, HIGH, HIGH, 3)),
        jnp.zeros((B, SIZE, SIZE, 3)),
        jnp.zeros((B,)),
        seed=0,
    )
    samplers = dict(
        prior=make_prior_sampler(prior, num_candidates=2),
        decoder=DecoderChain(
            decoder, DiffusionSettings(sampler="ddpm", learned_variance=True, max_steps=MAX_STEPS)
        ),
        upsampler=UpsamplerChain(upsampler, DiffusionSettings(max_steps=MAX_STEPS)),
    )

    def generate(caption: dict, seed: int, prior_scale: float, decoder_scale: float, steps: int):
        keys = jax.random.split(jax.random.key(seed), 3)
        schedule = make_schedule("cosine", 1000, steps, max_steps=MAX_STEPS)
        image_embed, _ = samplers["prior"](
            prior_params,
            keys[0],
            EncodedCaption(caption["embed"], caption["states"], caption["mask"]),
            schedule,
            prior_scale,
            normalizer,
        )
        small = samplers["decoder"](
            decoder_params,
            image_embed,
            keys[1],
            image_size=SIZE,
            caption=dict(
                caption_states=caption["states"],
                caption_embed=caption["embed"],
                caption_mask=caption["mask"],
            ),
            steps=steps,
            guidance_scale=decoder_scale,
        )
        return samplers["upsampler"](upsampler_params, small, keys[2], size=HIGH, steps=steps)

    return samplers, generate


def test_new_captions_seeds_guidance_and_steps_compile_nothing(cascade):
    samplers, generate = cascade
    with CompileCounter() as warm_up:
        first = np.asarray(generate(_captions(0), 0, 4.0, 3.0, 3))
    assert warm_up.events.count(dispatch.BACKEND_COMPILE_EVENT) >= 3  # the counter sees compiles
    assert first.shape == (B, HIGH, HIGH, 3) and np.isfinite(first).all()
    outputs = [first]
    with CompileCounter() as counter:
        for seed, (prior_scale, decoder_scale, steps) in enumerate(
            [(1.0, 8.0, 5), (0.0, 1.0, MAX_STEPS), (7.5, 2.0, 1)], start=1
        ):
            outputs.append(
                np.asarray(generate(_captions(seed), seed, prior_scale, decoder_scale, steps))
            )
    assert counter.events == [], f"recompiled or retraced: {counter.events}"
    assert {name: s.compiled_programs() for name, s in samplers.items() if name != "prior"} == {
        "decoder": 1,
        "upsampler": 1,
    }
    assert samplers["prior"].compiled._cache_size() == 1
    # The calls really differ (the programs were reused, not their results).
    assert min(np.abs(a - b).max() for a, b in itertools.pairwise(outputs)) > 1e-3


def test_a_step_count_past_the_maximum_is_refused_before_compiling(cascade):
    _, generate = cascade
    with CompileCounter() as counter, pytest.raises(ValueError, match=str(MAX_STEPS)):
        generate(_captions(0), 0, 4.0, 3.0, MAX_STEPS + 1)
    assert dispatch.BACKEND_COMPILE_EVENT not in counter.events
