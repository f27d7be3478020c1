"""The demo's AR-prior figure runs on a tiny random pipeline holding both priors and reports the
oracle's accuracies beside the diffusion prior's; a pipeline without the AR prior gives none."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_pipeline

from unclip_jax.demo import evaluate

DECODE = dict(decoder_steps=2, upsampler_steps=2, decoder_guidance=2.0)


def test_ar_prior_figures(tmp_path, pipeline_dir):
    directory = tiny_pipeline.build(tmp_path, ar_prior=True)
    captions = evaluate.single_captions(4)
    figures = evaluate.ar_prior_figures(directory, captions, seed=1, decode=DECODE)
    assert 0.0 <= figures["ar_prior_oracle_colour_shape"] <= figures["ar_prior_oracle_colour"]
    assert figures["ar_prior_oracle_colour"] <= 1.0
    assert figures["ar_prior_sampling"] == {
        "guidance_scale": 2.0,
        "candidates": 1,
        "dot_sampling": "top_half",
        "codes": tiny_pipeline.AR_PRIOR_MODEL["num_codes"],
    }
    assert evaluate.ar_prior_figures(pipeline_dir, captions, seed=1, decode=DECODE) == {}
