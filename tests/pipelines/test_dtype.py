"""Sampling in bfloat16 (`UnCLIP.load(dtype=)`, `Dalle.load(dtype=)`, `--dtype`): every stage's
parameters held in it, the images those of float32 within bfloat16's rounding, the same programs
reused for new prompts, and a dtype that is not one refused by name before anything is read."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_dalle
import tiny_pipeline

from unclip_jax.pipelines.dalle import Dalle
from unclip_jax.pipelines.unclip import UnCLIP

PROMPTS = ["a red circle", "a large blue square"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny"), ar_prior=True)


def _float_dtypes(tree) -> set[str]:
    return {
        leaf.dtype.name
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


@pytest.mark.parametrize("prior", ["diffusion", "ar"])
def test_bfloat16_unclip_holds_bfloat16_and_draws_the_float32_images(pipeline_dir, prior):
    full = UnCLIP.load(pipeline_dir, prior=prior, num_devices=1)
    half = UnCLIP.load(pipeline_dir, prior=prior, num_devices=1, dtype=jnp.bfloat16)
    for stage in (half.clip, half.prior, half.decoder, *half.upsamplers):
        assert _float_dtypes(stage.params) == {"bfloat16"}, type(stage).__name__
    assert _float_dtypes(full.decoder.params) == {"float32"}
    want = full.generate_float(PROMPTS, 2, seed=0)
    got = half.generate_float(PROMPTS, 2, seed=0)
    assert got["images"].dtype == np.float32 and got["images"].shape == want["images"].shape
    assert np.all(np.isfinite(got["images"]))
    # bfloat16 keeps 8 bits of mantissa: the chains drift apart by its rounding, no more.
    error = np.abs(got["images"] - want["images"])
    print(f"{prior}: mean |bf16 − f32| = {error.mean():.4f}, max {error.max():.4f}")
    assert error.mean() < 0.05
    counts = half.compiled_programs()
    half.generate_float(["a small green triangle", ""], 2, seed=3, decoder_guidance=2.0)
    assert half.compiled_programs() == counts


def test_a_dtype_that_is_not_one_is_refused_before_reading(tmp_path):
    missing = tmp_path / "no_pipeline"
    for dtype in ("float16", np.int32, "bf16"):
        with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float32'\]"):
            UnCLIP.load(missing, dtype=dtype)
        with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float32'\]"):
            Dalle.load(missing, dtype=dtype)


def test_bfloat16_dalle_holds_bfloat16_and_draws_valid_codes(dalle_dir):
    full = Dalle.load(dalle_dir, num_devices=1)
    half = Dalle.load(dalle_dir, num_devices=1, dtype="bfloat16")
    assert _float_dtypes(half.models["transformer"]) == {"bfloat16"}
    assert _float_dtypes(half.models["clip"].params) == {"bfloat16"}
    assert half.model.dtype == jnp.bfloat16 and full.model.dtype == jnp.float32
    # The same draws where the logits agree: greedy (top_k = 1) codes of the two precisions.
    want = full.generate_float(PROMPTS, 2, seed=0, top_k=1)
    got = half.generate_float(PROMPTS, 2, seed=0, top_k=1)
    vocab = tiny_dalle.DVAE.vocab_size
    assert got["codes"].shape == want["codes"].shape and got["codes"].max() < vocab
    agree = np.mean(got["codes"] == want["codes"])
    print(f"greedy codes agreeing between bf16 and f32: {agree:.2f}")
    assert agree >= 0.75
    image = tiny_dalle.source_image()
    completed = half.complete(image, PROMPTS[0], 1, 2, seed=1)
    assert completed.shape == (2, tiny_dalle.IMAGE_SIZE, tiny_dalle.IMAGE_SIZE, 3)


@pytest.mark.parametrize("kind", ["unclip", "dalle"])
def test_generate_takes_dtype(unclip, pipeline_dir, dalle_dir, tmp_path, kind):
    directory = pipeline_dir if kind == "unclip" else dalle_dir
    out = tmp_path / "out"
    code, stdout, err = unclip(
        "generate",
        "a red circle",
        "--num_images=1",
        "--dtype=bfloat16",
        f"--checkpoint={directory}",
        f"--out={out}",
    )
    assert code == 0, err[-2000:]
    assert "wrote 1 image" in stdout
    assert np.asarray(Image.open(out / "000_00.png")).ndim == 3


def test_generate_refuses_an_unknown_dtype(unclip, pipeline_dir, tmp_path):
    out = tmp_path / "out"
    code, _, err = unclip(
        "generate",
        "a red circle",
        "--dtype=float16",
        f"--checkpoint={pipeline_dir}",
        f"--out={out}",
    )
    assert code == 2 and "Traceback" not in err
    assert "--dtype" in err and "float16" in err
    assert not out.exists()
