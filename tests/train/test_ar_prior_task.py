"""AR prior task: one step through the real loop (quantizers fitted once and saved), the
quantizers' file round trip, and a loss that falls on a fixed batch."""

import importlib
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import task_helpers

from unclip_jax.models.ar_prior import ARPrior
from unclip_jax.train import ar_prior_task, trainers

sys.path.insert(0, str(Path(__file__).parent))
from test_prior_task import tiny_batch, write_shards


def test_one_step_through_the_loop_fits_and_keeps_the_quantizers(tmp_path):
    fields = write_shards(tmp_path / "train")
    write_shards(tmp_path / "eval", count=8, seed=1)
    config = importlib.import_module("configs.ar_prior_demo").get_config("smoke")
    config.data.train_dir = str(tmp_path / "train")
    config.data.eval_dir = str(tmp_path / "eval")
    workdir = tmp_path / "work"
    state = trainers.get_trainer(config.trainer)(config, str(workdir))
    assert int(state.step) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    saved = ar_prior_task.load_quantizers(workdir / ar_prior_task.QUANTIZERS_FILE)
    assert saved.pca.num_components == 4 and saved.pca.num_buckets == 16
    # Fitted on the training image embeddings, made unit-norm.
    image = np.asarray(fields["image_embedding"], np.float64)
    image /= np.linalg.norm(image, axis=-1, keepdims=True)
    np.testing.assert_allclose(saved.pca.mean, image.mean(0), atol=1e-3)


def test_quantizers_round_trip_and_high_dot_bucket(tmp_path):
    rng = np.random.default_rng(0)
    text = rng.normal(size=(400, 16))
    image = text + rng.normal(size=(400, 16))
    quantizers = ar_prior_task.fit_quantizers(
        image, text, variance_fraction=0.999, num_buckets=64, num_dot_buckets=8
    )
    ar_prior_task.save_quantizers(quantizers, tmp_path / "q.npz")
    loaded = ar_prior_task.load_quantizers(tmp_path / "q.npz")
    for a, b in zip(jax.tree.leaves(quantizers), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    dots = np.asarray(quantizers.dot_bucket(jnp.asarray(image), jnp.asarray(text)))
    assert dots.min() == 0 and dots.max() == 7
    # Sampling conditions on the bucket of the 90th percentile of training cosines.
    assert np.mean(dots <= int(quantizers.sample_dot_bucket)) > 0.8
    codes = quantizers.codes(jnp.asarray(image))
    decoded = np.asarray(quantizers.pca.decode(codes))
    unit = image / np.linalg.norm(image, axis=-1, keepdims=True)
    assert np.mean(np.sum(decoded * unit, axis=-1)) > 0.99


def test_loss_decreases_on_a_fixed_batch():
    batch = tiny_batch()
    image, text = batch["image_embedding"], batch["text_embedding"]
    quantizers = ar_prior_task.fit_quantizers(
        image, text, num_components=4, num_buckets=16, num_dot_buckets=4
    )
    model = ARPrior(
        num_codes=4,
        num_buckets=16,
        num_dot_buckets=4,
        text_embed_dim=8,
        token_dim=8,
        num_tokens=4,
        width=32,
        depth=2,
        num_heads=2,
    )
    task = ar_prior_task.ARPriorTask(model, quantizers)
    spec = task_helpers.batch_spec(batch)
    params = nn.unbox(jax.jit(lambda key: task.init(key, spec))(jax.random.key(0)))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    losses, _ = task_helpers.adam_on_fixed_batch(task, params, batch, jax.random.key(1), steps=40)
    print(f"AR prior cross-entropy on a fixed batch: {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[0] > 0.9 * np.log(16)  # near uniform at initialisation
    assert losses[-1] < 0.5 * losses[0]
