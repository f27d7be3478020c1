"""The autoregressive prior as a pipeline stage: it round-trips through a pipeline directory
(quantizers beside its parameters), `UnCLIP.load(prior="ar")` generates with it, its z_i·z_t
token is drawn from the top half of the training distribution, and a directory without it is
refused in one line naming what the directory holds."""

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_pipeline

from unclip_jax.models.ar_prior import ARPrior
from unclip_jax.pipelines import protocol, store
from unclip_jax.pipelines.ar_prior_stage import ARPriorStage
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.sampling.ar_prior import (
    dot_log_probs,
    make_ar_prior_sampler,
    one_bucket_log_probs,
    top_half_log_probs,
)
from unclip_jax.sampling.prior import EncodedCaption

PROMPTS = ["a red circle", ""]


@pytest.fixture(scope="module")
def both_dir(tmp_path_factory) -> Path:
    """A tiny pipeline holding the diffusion and the AR prior."""
    return tiny_pipeline.build(tmp_path_factory.mktemp("both"), ar_prior=True)


@pytest.fixture(scope="module")
def ar_pipe(both_dir) -> UnCLIP:
    return UnCLIP.load(both_dir, prior="ar", num_devices=1)


def test_the_ar_stage_round_trips_through_a_pipeline_directory(both_dir):
    settings, params, quantizers = tiny_pipeline.ar_prior_stage()
    assert json.loads((both_dir / store.AR_PRIOR / store.STAGE_FILE).read_text()) == settings
    manifest = json.loads((both_dir / store.MANIFEST).read_text())
    assert manifest["priors"] == [store.PRIOR, store.AR_PRIOR]
    assert (both_dir / store.AR_PRIOR / store.QUANTIZERS_FILE).is_file()
    files = store.read_pipeline(both_dir, "ar")
    assert files.prior_kind == "ar" and files.prior.directory == both_dir / store.AR_PRIOR
    assert store.read_pipeline(both_dir).prior_kind == "diffusion"  # the default where held
    stage = ARPriorStage(files.prior)
    assert isinstance(stage, protocol.PriorStage)
    jax.tree.map(np.testing.assert_array_equal, stage.params, params)
    for a, b in zip(jax.tree.leaves(stage.quantizers), jax.tree.leaves(quantizers), strict=True):
        np.testing.assert_array_equal(a, b)
    assert stage.model == ARPrior(**tiny_pipeline.AR_PRIOR_MODEL)
    assert stage.default_guidance == 2.0 and stage.default_candidates == 1
    # Its steps are its codes: K, and no other count.
    k = stage.model.num_codes
    assert (stage.diffusion.sample_steps, stage.diffusion.min_steps) == (k, k)


def test_a_directory_with_the_ar_prior_alone_loads_it_by_default(tmp_path):
    directory = tiny_pipeline.build(tmp_path, ar_prior=True, diffusion_prior=False)
    assert not (directory / store.PRIOR).exists()
    assert store.read_pipeline(directory).prior_kind == "ar"
    with pytest.raises(ValueError, match=r"holds no 'diffusion' prior; it holds: 'ar'$"):
        store.read_pipeline(directory, "diffusion")


def test_unclip_generates_with_the_ar_prior(ar_pipe):
    out = ar_pipe.generate_float(PROMPTS, 2, seed=0)
    assert out["images"].shape == (4, 16, 16, 3)
    assert out["image_embed"].shape == (4, 16)
    assert np.all(np.abs(out["images"]) <= 1.0)
    # Decoded at the training embeddings' norm (the decoder reads raw CLIP embeddings).
    norms = np.linalg.norm(out["image_embed"], axis=-1)
    np.testing.assert_allclose(norms, float(ar_pipe.prior.quantizers.image_norm), rtol=0.35)
    counts = ar_pipe.compiled_programs()
    again = ar_pipe.generate_float(["a blue square", "a green star"], 2, seed=3, prior_guidance=5)
    assert ar_pipe.compiled_programs() == counts and counts["prior"] == 1
    assert not np.allclose(again["image_embed"], out["image_embed"])
    same = ar_pipe.generate_float(PROMPTS, 2, seed=0)
    np.testing.assert_array_equal(same["image_embed"], out["image_embed"])


def test_ar_prior_steps_are_its_code_count_and_candidates_rerank(ar_pipe):
    k = ar_pipe.prior.model.num_codes
    with pytest.raises(ValueError, match=rf"prior_steps must be in \[{k}, {k}\], got 2"):
        ar_pipe.generate(PROMPTS, 1, prior_steps=2)
    # An empty prompt samples with guidance 0 whatever the scale asked for.
    low = ar_pipe.generate_float(["", "a red circle"], seed=5, prior_guidance=1.0, prior_steps=k)
    high = ar_pipe.generate_float(["", "a red circle"], seed=5, prior_guidance=8.0)
    np.testing.assert_array_equal(low["image_embed"][0], high["image_embed"][0])
    # Best of 4 by z_i·z_t: on average larger than the one sample it replaces.
    text = ar_pipe.clip.encode_text(*ar_pipe.clip.tokenize(["a red circle"] * 32))[0]
    dots = {}
    for n in (1, 4):
        z = ar_pipe.generate_float(["a red circle"] * 32, seed=9, prior_candidates=n)
        dots[n] = float(np.mean(np.sum(z["image_embed"] * np.asarray(text), axis=-1)))
    assert dots[4] > dots[1]


def _histogram() -> jax.Array:
    """Counts per bucket of 16: the median (cumulative 50 of 100) falls in bucket 6."""
    counts = np.zeros(16, np.float32)
    counts[[1, 3, 5, 6, 7, 9, 12, 15]] = [10, 15, 20, 10, 15, 5, 20, 5]
    return jnp.asarray(counts)


def test_top_half_draws_only_buckets_at_or_above_the_median():
    counts = _histogram()
    assert int(np.argmax(np.cumsum(counts) >= 50)) == 6
    log_probs = top_half_log_probs(counts)
    keys = jax.random.split(jax.random.key(0), 20_000)
    draws = np.asarray(jax.vmap(lambda k: jax.random.categorical(k, log_probs))(keys))
    assert draws.min() >= 6
    assert set(np.unique(draws)) == {6, 7, 9, 12, 15}  # every kept bucket, no empty one
    # In proportion to the training counts of the kept buckets (10 : 15 : 5 : 20 : 5).
    frequencies = np.bincount(draws, minlength=16)[[6, 7, 9, 12, 15]] / len(draws)
    np.testing.assert_allclose(frequencies, np.array([10, 15, 5, 20, 5]) / 55, atol=0.015)
    fixed = one_bucket_log_probs(jnp.int32(9), 16)
    assert set(np.unique(jax.vmap(lambda k: jax.random.categorical(k, fixed))(keys[:200]))) == {9}


def test_the_sampler_draws_each_candidates_dot_bucket_from_the_top_half():
    quantizers = tiny_pipeline.ar_quantizers()
    model = ARPrior(**tiny_pipeline.AR_PRIOR_MODEL)
    _, params, _ = tiny_pipeline.ar_prior_stage()
    counts = np.asarray(quantizers.dot_counts)
    median = int(np.argmax(np.cumsum(counts) >= 0.5 * counts.sum()))
    rows, n = 16, 2
    rng = np.random.default_rng(1)
    caption = EncodedCaption(
        jnp.asarray(rng.normal(size=(rows, 16)), jnp.float32),
        jnp.asarray(rng.normal(size=(rows, tiny_pipeline.CONTEXT, 32)), jnp.float32),
        jnp.ones((rows, tiny_pipeline.CONTEXT), bool),
    )
    sampler = make_ar_prior_sampler(model, num_candidates=n)
    top_half = jnp.broadcast_to(dot_log_probs(quantizers, "top_half"), (rows, 8))
    fixed = jnp.broadcast_to(dot_log_probs(quantizers, "quantile"), (rows, 8))
    drawn = []
    for seed in range(8):
        key = jax.random.key(seed)
        z, aux = sampler(params, key, caption, top_half, quantizers, 1.0)
        drawn.append(np.asarray(aux["dot_buckets"]))
        # The kept sample is the candidate of largest z_i·z_t.
        scores = np.asarray(aux["scores"])
        best = np.asarray(aux["candidates"])[np.arange(rows), scores.argmax(1)]
        np.testing.assert_array_equal(np.asarray(z), best)
    drawn = np.concatenate(drawn)  # [8 · rows, n]
    assert drawn.min() >= median
    assert len(np.unique(drawn)) > 1  # drawn, not one fixed bucket
    _, aux = sampler(params, jax.random.key(0), caption, fixed, quantizers, 1.0)
    np.testing.assert_array_equal(aux["dot_buckets"], int(quantizers.sample_dot_bucket))
    assert sampler.compiled._cache_size() == 1  # either choice of token, one program
    with pytest.raises(ValueError, match="lack; use 'quantile'"):
        dot_log_probs(quantizers.replace(dot_counts=None), "top_half")


def test_damaged_ar_stage_is_named(both_dir, tmp_path):
    copy = tmp_path / "pipeline"
    shutil.copytree(both_dir, copy)
    quantizers = copy / store.AR_PRIOR / store.QUANTIZERS_FILE
    quantizers.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=rf"^{quantizers}: not the AR prior's quantizers"):
        UnCLIP.load(copy, prior="ar", num_devices=1)
    quantizers.unlink()
    with pytest.raises(FileNotFoundError, match=r"missing stage 'ar_prior'.*quantizers\.npz"):
        UnCLIP.load(copy, prior="ar", num_devices=1)
    manifest = json.loads((copy / store.MANIFEST).read_text())
    (copy / store.MANIFEST).write_text(json.dumps({**manifest, "priors": ["prior", "dalle"]}))
    with pytest.raises(ValueError, match=r"unclip\.json: priors must be a list of distinct"):
        UnCLIP.load(copy, num_devices=1)


def test_generate_with_prior_ar(unclip, both_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--num_images=1", *tiny_pipeline.STEPS, f"--out={out}"]
    code, _, err = unclip(
        "generate", "a red circle", "--prior=ar", f"--checkpoint={both_dir}", *args
    )
    assert code == 0, err[-2000:]
    assert len(list(out.glob("000_*.png"))) == 1


def test_prior_ar_on_a_directory_without_it_is_one_line(unclip, pipeline_dir, tmp_path):
    out = tmp_path / "out"
    code, _, err = unclip(
        "generate", "a red circle", "--prior=ar", f"--checkpoint={pipeline_dir}", f"--out={out}"
    )
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines == [
        f"unclip generate: error: checkpoint directory {str(pipeline_dir)!r} holds no 'ar' "
        "prior; it holds: 'diffusion'"
    ]
    assert not out.exists() or not any(out.iterdir())
    code, _, err = unclip(
        "generate", "a red circle", "--prior=dalle", f"--checkpoint={pipeline_dir}", f"--out={out}"
    )
    assert code == 2 and "--prior" in err and "Traceback" not in err
