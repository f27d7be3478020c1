"""Upsampler task: a smoke run through the real loop (crops, corruption, sample grid at full
size), crops aligned between target and conditioning, corruptions by name, noise augmentation."""

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
from PIL import Image

from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.train import trainers, upsampler_task

demo_config = functools.partial(task_helpers.config_file, "upsampler_demo")
rendered = functools.partial(task_helpers.rendered, "large_64px")  # (split, count)


def test_registered_as_upsampler_trainer():
    assert trainers.get_trainer("upsampler").__wrapped__ is upsampler_task.train_and_evaluate


def test_smoke_run_through_the_loop(tmp_path):
    config = demo_config("smoke")
    state = upsampler_task.run(config, tmp_path, rendered("train", 16), rendered("test", 8))
    assert int(state.step) == 1 and int(state.nonfinite_total) == 0
    leaves = jax.tree.leaves(nn.unbox(state.params))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    # Trained on 16 px crops, sampled at the full 64 px: the grid holds 2 images of 64².
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_1.png"))
    assert grid.shape[:2] == (64, 128)


def test_random_crops_take_the_same_window():
    images = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    a, b = upsampler_task.random_crops(jax.random.key(0), (images, images + 1000.0), 3)
    assert a.shape == (2, 3, 3, 1)
    np.testing.assert_array_equal(b, a + 1000.0)
    # A crop is a contiguous window: rows step by 8, columns by 1.
    np.testing.assert_array_equal(np.diff(a[..., 0], axis=1), 8.0)
    np.testing.assert_array_equal(np.diff(a[..., 0], axis=2), 1.0)


@pytest.mark.parametrize("name", sorted(upsampler_task.CORRUPTIONS))
def test_corruptions_end_at_the_low_resolution(name):
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    low = upsampler_task.CORRUPTIONS[name](jax.random.key(2), images, 8)
    assert low.shape == (2, 8, 8, 3)
    assert float(jnp.abs(low).max()) <= 1.0


def test_noise_augmentation_needs_level_conditioning_and_noises_the_input():
    config = demo_config("smoke")
    model = upsampler_task.upsampler_from_config(config.model)
    schedule = make_schedule("cosine", 1000)
    common = dict(high_res=32, low_res=8, crop_size=8)
    with pytest.raises(ValueError, match="noise_level_conditioning"):
        upsampler_task.UpsamplerTask(model, schedule, noise_aug_max_level=200, **common)
    with pytest.raises(ValueError, match="corruption"):
        upsampler_task.UpsamplerTask(model, schedule, corruption="jpeg", **common)
    config.model.noise_level_conditioning = True
    model = upsampler_task.upsampler_from_config(config.model)
    task = upsampler_task.UpsamplerTask(model, schedule, noise_aug_max_level=999, **common)
    high = jnp.zeros((64, 32, 32, 3))
    low, level = task.conditioning(jax.random.key(0), high)
    assert level.shape == (64,) and int(level.max()) <= 999 and int(level.min()) >= 0
    # Clean zeros become noise whose variance grows with the level.
    variance = jnp.var(low, axis=(1, 2, 3))
    order = jnp.argsort(level)
    assert float(variance[order[-8:]].mean()) > float(variance[order[:8]].mean())
    params = task.init(jax.random.key(1), {})
    loss, _ = task.loss(nn.unbox(params), {"image": high}, jax.random.key(2), train=True)
    assert np.isfinite(float(loss))


@pytest.mark.slow
def test_upsampler_learning_gate(tmp_path):
    """The 16→64 demo upsampler on held-out clean 16 px inputs (256 cases): the oracle reads the
    low-res input's objects in ≥ 98%; edge energy within 20% of the ground truth while bicubic's
    is ≥ 30% below; lower MSE to the ground truth than bicubic."""
    root = pathlib.Path(__file__).parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.decoder_learning",
            "--stage=upsampler",
            f"--workdir={tmp_path / 'runs'}",
            f"--data_dir={tmp_path / 'tfds'}",
            f"--results_dir={tmp_path}",
        ],
        cwd=root,
        check=True,
    )
    result = json.loads((tmp_path / "decoder_learning_upsampler.json").read_text())["clean"]
    assert result["oracle_same_as_low_res"] >= 0.98
    edges = result["edge_energy"]
    assert abs(edges["upsampler_relative"]) <= 0.2 and edges["bicubic_relative"] <= -0.3
    mse = result["mse_to_ground_truth"]
    assert mse["upsampler"] < mse["bicubic"]
