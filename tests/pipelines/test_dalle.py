"""The DALL·E pipeline on tiny random parts: reranking keeps the candidate of the largest CLIP
score (scores computed apart from the pipeline) whatever the chunking, completion keeps the kept
rows' codes, one program per bucket, bad input refused before compiling, and the export from a
training workdir loads back what was trained."""

import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_dalle

from unclip_jax.convert import dvae as dvae_checkpoint
from unclip_jax.convert import hf_clip
from unclip_jax.pipelines import dalle_store, store
from unclip_jax.pipelines.dalle import Dalle
from unclip_jax.pipelines.images import to_uint8, to_unit
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.storage.checkpoints import write_params
from unclip_jax.text import tokenizer as tokenizer_lib
from unclip_jax.text.tokenizer import CaptionTruncatedWarning

PROMPTS = ["a red circle", "a large blue square"]


@pytest.fixture(scope="module")
def pipe(dalle_dir) -> Dalle:
    return Dalle.load(dalle_dir, num_devices=1)


def clip_cosines(directory: Path, images: np.ndarray, captions: list[str]) -> np.ndarray:
    """cos(z_i, z_t) of each image [N, S, S, 3] in [-1, 1] and its caption under the directory's
    CLIP, computed here, apart from the pipeline's program."""
    clip = hf_clip.load_frozen_clip(directory / store.CLIP_DIR)
    tokenizer = tokenizer_lib.load_tokenizer(directory / store.CLIP_DIR / store.TOKENIZER_DIR)
    ids, mask = tokenizer(captions)
    text, _ = clip.encode_text(jnp.asarray(ids), jnp.asarray(mask).astype(bool))
    image = np.asarray(clip.encode_image(jnp.asarray(images)))
    text = np.asarray(text)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    return np.sum(unit(image) * unit(text), axis=-1)


def test_reranking_keeps_the_largest_clip_score_whatever_the_chunking(pipe, dalle_dir):
    candidates = 4
    kept = pipe.generate_float(PROMPTS, 1, seed=3, rerank_candidates=candidates)
    assert kept["images"].shape == (2, tiny_dalle.IMAGE_SIZE, tiny_dalle.IMAGE_SIZE, 3)
    # The same rows without reranking, drawn in chunks of 4 instead of one of 8.
    chunked = Dalle.load(dalle_dir, num_devices=1, max_batch=4)
    every = chunked.generate_float(PROMPTS, candidates, seed=3)
    assert len({codes.tobytes() for codes in every["codes"]}) > 1
    captions = [p for p in PROMPTS for _ in range(candidates)]
    scores = clip_cosines(dalle_dir, every["images"], captions)
    np.testing.assert_allclose(every["scores"], scores, atol=1e-5)
    rows = np.arange(len(PROMPTS)) * candidates + np.argmax(scores.reshape(-1, candidates), 1)
    np.testing.assert_array_equal(kept["codes"], every["codes"][rows])
    np.testing.assert_allclose(kept["images"], every["images"][rows], atol=1e-5)
    np.testing.assert_allclose(kept["scores"], scores.reshape(-1, candidates).max(1), atol=1e-5)


def test_completion_keeps_the_kept_rows_codes(pipe):
    image, keep, n = tiny_dalle.source_image(), 2, 4
    source = np.asarray(pipe.dvae.encode(to_unit(image)[None]))[0]  # [N], apart from the pipe
    out = pipe.complete_float(image, "a red circle", keep, n, seed=1, rerank_candidates=2)
    kept = keep * tiny_dalle.GRID
    assert out["codes"].shape == (n, tiny_dalle.GRID**2)
    np.testing.assert_array_equal(out["codes"][:, :kept], np.tile(source[:kept], (n, 1)))
    assert len({codes.tobytes() for codes in out["codes"][:, kept:]}) > 1
    counts = pipe.compiled_programs()
    again = pipe.complete(image, "a red circle", keep, n, seed=1, rerank_candidates=2)
    np.testing.assert_array_equal(again, to_uint8(out["images"]))
    assert pipe.compiled_programs() == counts


@pytest.mark.parametrize("keep_rows", [-1, 4, 2.0, True])
def test_keep_rows_outside_the_grid_is_refused_before_compiling(pipe, keep_rows):
    counts = pipe.compiled_programs()
    message = rf"keep_rows must be .*\[0, 4\).*got {re.escape(repr(keep_rows))}$"
    with pytest.raises(ValueError, match=message):
        pipe.complete(tiny_dalle.source_image(), "a red circle", keep_rows=keep_rows)
    assert pipe.compiled_programs() == counts


def test_new_prompts_seeds_and_settings_reuse_the_program(pipe):
    first = pipe.generate(PROMPTS, 4, seed=0)
    counts = pipe.compiled_programs()
    with pytest.warns(CaptionTruncatedWarning):
        again = pipe.generate(
            ["a small green triangle " * 4, ""], 4, seed=5, temperature=0.7, top_k=3, top_p=0.9
        )
    assert again.dtype == np.uint8 and again.shape == first.shape == (8, 8, 8, 3)
    np.testing.assert_array_equal(pipe.generate(PROMPTS, 4, seed=0), first)
    assert pipe.compiled_programs() == counts


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=0.0), "temperature must be a finite number > 0, got 0.0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_k=17), r"top_k must be an integer in \[0, 16\] \(0: off\), got 17"),
        (dict(rerank_candidates=0), "rerank_candidates must be an integer >= 1, got 0"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1"),
        (dict(seed=1.5), "seed must be an integer, got 1.5"),
    ],
)
def test_bad_arguments_are_refused_before_compiling(pipe, options, message):
    counts = pipe.compiled_programs()
    with pytest.raises(ValueError, match=message):
        pipe.generate(PROMPTS, **options)
    assert pipe.compiled_programs() == counts


def test_export_from_the_training_workdir_loads_what_was_trained(dalle_dir, tmp_path):
    text = tiny_dalle.tokenizer()
    config = tiny_dalle.model_config(text)
    workdir = tmp_path / "dalle_run"
    text.save(workdir / "tokenizer")
    trained = tiny_dalle.transformer_params(config, seed=7)
    for step, params in ((3, tiny_dalle.transformer_params(config, seed=1)), (5, trained)):
        (workdir / "checkpoints" / str(step)).mkdir(parents=True)
        write_params(workdir / "checkpoints" / str(step) / "ema", params)  # 5: the latest
    dvae_dir = tmp_path / "dvae"
    dvae_variables = tiny_dalle.dvae_variables()
    dvae_checkpoint.save_dvae(dvae_dir, tiny_dalle.DVAE, dvae_variables)
    training = ml_collections.ConfigDict(
        dict(
            model=dict(tiny_dalle.MODEL, dtype="float32"),
            data=dict(image_size=tiny_dalle.IMAGE_SIZE),
            dvae_dir=str(dvae_dir),
            sampling=dict(temperature=0.9),
        )
    )
    out = tmp_path / "pipeline"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier export")
    clip_dir = dalle_dir / store.CLIP_DIR
    dalle_store.export_dalle_pipeline(out, clip_dir=clip_dir, dalle=(training, workdir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dalle_run", "dvae", "pipeline"]
    assert not (out / "earlier.txt").exists()
    assert json.loads((out / store.MANIFEST).read_text()) == {"format": 1, "kind": "dalle"}

    loaded = Dalle.load(out, num_devices=1)
    assert loaded.model.config == config and loaded.image_size == tiny_dalle.IMAGE_SIZE
    assert loaded.sampling == {"temperature": 0.9, "top_k": 0, "top_p": 1.0}
    same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), b)
    jax.tree.map(same, loaded.models["transformer"], trained)
    jax.tree.map(same, loaded.dvae.decoder_params, dvae_variables["decoder"]["params"])
    with pytest.raises(ValueError, match=r"holds a DALL·E pipeline .* not an unCLIP one"):
        UnCLIP.load(out)

    training.dvae_dir = ""
    with pytest.raises(ValueError, match="names no dVAE"):
        dalle_store.export_dalle_pipeline(out, clip_dir=clip_dir, dalle=(training, workdir))
