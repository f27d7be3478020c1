"""The pipeline's decoder stage samples through the same chain as the decoder's training
preview: given the same z_i, caption, key and settings, the two agree."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_pipeline

from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.pipelines import karlo, protocol, stages, store
from unclip_jax.sampling.decoder import DecoderChain
from unclip_jax.train.decoder_task import DecoderTask


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    directory = tiny_pipeline.build(tmp_path_factory.mktemp("tiny"))
    encoder = stages.TextImageEncoder(directory / "clip")
    files = store.read_stage(directory / "decoder", "decoder")
    return encoder, stages.DecoderStage(files, encoder.example_caption())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_training_preview_equals_the_pipeline_decoder_stage(loaded, sampler):
    encoder, decoder = loaded
    settings = decoder.diffusion.__class__(**{**vars(decoder.diffusion), "sampler": sampler})
    decoder.diffusion, decoder.chain = settings, DecoderChain(decoder.model, settings)
    ids, mask = encoder.tokenize(["a red circle", "a small blue square"])
    z_i = jax.random.normal(jax.random.key(3), (2, 16))
    key, steps, scale = jax.random.key(11), 3, 2.5

    task = DecoderTask(
        decoder.model,
        make_schedule(settings.schedule, settings.train_steps),
        decoder.image_size,
        mean_type=settings.prediction,
        var_type=settings.var_type,
        clip=encoder.clip,
        sampler=DecoderChain(decoder.model, settings),
        sample_embeddings=np.asarray(z_i),
        sample_captions={"tokens": ids, "mask": mask},
        sample_steps=steps,
        guidance_scale=scale,
    )
    preview = task.sample(decoder.params, key, 2)

    text_embed, states = encoder.encode_text(ids, mask)
    caption = {"ids": ids, "mask": mask, "states": states, "text_embed": text_embed}
    cond = decoder.conditioning(z_i, caption, jnp.zeros((2,), bool))
    noise_key, chain_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (2, *decoder.shape), jnp.float32)
    stage = decoder.sample(x_T, cond, steps, scale, 0.0, chain_key)
    assert np.abs(np.asarray(stage)).max() > 0.05
    np.testing.assert_allclose(np.asarray(preview), np.asarray(stage), atol=1e-6)


def test_stages_implement_the_protocol(loaded):
    encoder, decoder = loaded
    assert isinstance(encoder, protocol.TextEncoder) and isinstance(encoder, protocol.ImageEncoder)
    assert isinstance(decoder, protocol.InvertibleDecoder)
    # Karlo's stages lack what a Karlo checkpoint cannot do, rather than raising when asked.
    assert not hasattr(karlo.KarloTextEncoder, "encode_image")
    assert not hasattr(karlo.KarloDecoderStage, "invert")
    for stage in (karlo.KarloPriorStage, karlo.KarloDecoderStage, karlo.KarloSuperResStage):
        assert callable(stage.sample) and callable(stage.compiled_programs)
