"""Decoder task: a bfloat16, caption-conditioned smoke run through the real loop (finite loss,
float32 master weights, sample grid), conditioning from the batch or the frozen CLIP, condition
dropout in training."""

import functools
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers

from unclip_jax.convert import hf_clip
from unclip_jax.data import shapes_captions
from unclip_jax.models.clip import CLIP, clip_config
from unclip_jax.train import clip_task, decoder_task, trainers

demo_config = functools.partial(task_helpers.config_file, "decoder_demo")
rendered = functools.partial(task_helpers.rendered, "large_64px")  # (split, count)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP checkpoint (16 px images, 32-d embeddings)."""
    config = clip_config("tiny-shapes")
    config = config.__class__(
        text=config.text,
        vision=config.vision.__class__(
            image_size=16, patch_size=8, width=32, layers=1, heads=2, mlp_dim=64
        ),
        projection_dim=32,
    )
    model = CLIP(config)
    params = model.init(
        jax.random.key(0),
        jnp.zeros((1, config.text.context_length), jnp.int32),
        jnp.zeros((1, 16, 16, 3)),
    )
    directory = tmp_path_factory.mktemp("clip")
    hf_clip.save_clip(directory, config, {"params": nn.unbox(params["params"])})
    return directory


@pytest.fixture(scope="module")
def smoke_task(clip_dir):
    config = demo_config("smoke")
    clip = hf_clip.load_frozen_clip(clip_dir)
    task = decoder_task.build_task(config, clip)
    batch = {"image": np.stack([e["image"] for e in rendered("test", 4)]) / 127.5 - 1.0}
    batch["image"] = batch["image"].astype(np.float32)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(1), task_helpers.batch_spec(batch)))
    kernel = params["unet"]["conv_out"]["kernel"]  # zero-initialised: give the output signal
    params["unet"]["conv_out"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(4), kernel.shape)
    return task, params, batch


def test_registered_as_decoder_trainer():
    assert trainers.get_trainer("decoder").__wrapped__ is decoder_task.train_and_evaluate


def test_bf16_caption_conditioned_smoke_run_through_the_loop(tmp_path, clip_dir):
    """Two bfloat16 steps (the first at the warm-up's zero learning rate) of a decoder that reads
    captions through its own transformer: finite, float32 master weights that moved, a
    checkpoint, and a sample grid whose held-out captions came through the tokenizer."""
    config = demo_config("smoke")
    config.clip_dir = str(clip_dir)
    config.train.compute_dtype = "bfloat16"
    config.train.total_steps = 2
    config.model.caption_source = "transformer"
    config.model.caption_transformer = dict(
        vocab_size=64, max_length=8, width=16, layers=1, heads=2
    )
    clip = hf_clip.load_frozen_clip(clip_dir)
    seen = []

    def tokenize(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        seen.extend(captions)
        ids = np.array([[1 + len(c) % 60] * 8 for c in captions], np.int32)
        return ids, np.ones_like(ids)

    state = decoder_task.run(
        config, tmp_path, rendered("train", 16), rendered("test", 8), clip, tokenize
    )
    assert int(state.step) == 2
    assert int(state.nonfinite_total) == 0  # both bfloat16 steps had a finite loss and grads
    leaves = jax.tree.leaves(nn.unbox(state.params))
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    out = nn.unbox(state.params)["unet"]["conv_out"]["kernel"]
    assert np.abs(np.asarray(out)).max() > 0  # the step moved the zero-initialised output layer
    assert (tmp_path / "samples" / "step_1.png").is_file()
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert seen  # the grid's captions came through the tokenizer


def test_caption_conditioned_samples_need_captions(clip_dir):
    config = demo_config("smoke")
    config.model.caption_source = "transformer"
    config.model.caption_transformer = dict(
        vocab_size=64, max_length=8, width=16, layers=1, heads=2
    )
    clip = hf_clip.load_frozen_clip(clip_dir)
    with pytest.raises(ValueError, match="sample_captions with 'tokens' and 'mask'"):
        decoder_task.build_task(config, clip, np.zeros((4, 32), np.float32))


def test_embedding_from_batch_equals_frozen_clip(smoke_task):
    task, params, batch = smoke_task
    key = jax.random.key(2)
    loss_clip, _ = task.loss(params, batch, key, train=False)
    with_embed = {**batch, "image_embedding": task.clip.encode_image(batch["image"])}
    loss_batch, _ = task.loss(params, with_embed, key, train=False)
    np.testing.assert_allclose(loss_batch, loss_clip, rtol=1e-6)
    shuffled = {**with_embed, "image_embedding": with_embed["image_embedding"][::-1]}
    loss_other, _ = task.loss(params, shuffled, key, train=False)
    assert abs(float(loss_other) - float(loss_clip)) > 0  # the embedding reaches the model


def test_image_embedding_dropped_in_training_only(smoke_task):
    """With drop probability 1 the training loss ignores the embedding; evaluation never drops."""
    task, params, batch = smoke_task
    params = jax.tree.map(lambda x: x, params)
    cond = params["conditioning"]
    cond["null_image_embed"] = jnp.ones_like(cond["null_image_embed"])
    embed = task.clip.encode_image(batch["image"])
    always = decoder_task.DecoderTask(
        task.model, task.schedule, task.image_size, image_drop_prob=1.0, clip=task.clip
    )
    key = jax.random.key(3)
    a = {**batch, "image_embedding": embed}
    b = {**batch, "image_embedding": embed[::-1] * 3.0}
    train_a, _ = always.loss(params, a, key, train=True)
    train_b, _ = always.loss(params, b, key, train=True)
    np.testing.assert_allclose(train_a, train_b, rtol=1e-6)
    eval_a, _ = always.loss(params, a, key, train=False)
    eval_b, _ = always.loss(params, b, key, train=False)
    assert abs(float(eval_a) - float(eval_b)) > 1e-6


def test_bad_settings_named_before_compiling(smoke_task):
    task = smoke_task[0]
    with pytest.raises(ValueError, match="image_drop_prob"):
        decoder_task.DecoderTask(task.model, task.schedule, 16, image_drop_prob=1.5)
    with pytest.raises(ValueError, match="output channels"):
        decoder_task.DecoderTask(task.model, task.schedule, 16, var_type="fixed_small")


def run_stage(stage: str, tmp_path, *flags: str) -> dict:
    """One stage of experiments/decoder_learning.py; its JSON result."""
    root = pathlib.Path(__file__).parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.decoder_learning",
            f"--stage={stage}",
            f"--workdir={tmp_path / 'runs'}",
            f"--data_dir={tmp_path / 'tfds'}",
            f"--results_dir={tmp_path / 'results'}",
            *flags,
        ],
        cwd=root,
        check=True,
    )
    return json.loads((tmp_path / "results" / f"decoder_learning_{stage}.json").read_text())


@pytest.mark.slow
def test_decoder_learning_gate(tmp_path):
    """A small CLIP on the large-object shapes (~3 min), the 16→64 upsampler, the 16 px decoder
    (≤ 14 min of training), then 256 held-out cases: samples from TRUE CLIP image embeddings,
    upsampled to 64 px, read by the oracle as the source's colour ≥ 90%, colour+shape ≥ 70%."""
    clip_config = task_helpers.config_file("clip_shapes")
    clip_config.data.source = "shapes_captions/large_64px"
    builder = shapes_captions.build("large_64px", data_dir=str(tmp_path / "tfds"))
    train, test = builder.as_data_source("train"), builder.as_data_source("test")
    clip_task.run(clip_config, tmp_path / "clip", train, test)
    clip_dir = f"--clip_dir={tmp_path / 'clip' / clip_task.EXPORT_DIR}"
    run_stage("upsampler", tmp_path)
    curve = run_stage("decoder", tmp_path, clip_dir, "--minutes=14", "--steps=3000")
    gate = run_stage("gate", tmp_path, clip_dir)
    assert curve["curve_oracle_16px"][-1]["colour"] >= 0.9
    scores = gate["oracle_64px_after_upsampler"]
    assert gate["cases"] == 256
    assert scores["colour"] >= 0.9 and scores["colour_shape"] >= 0.7, scores
