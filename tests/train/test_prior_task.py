"""Diffusion prior task: one step through the real loop from embedding shards, a loss that falls
on a fixed batch, caption dropout to the null conditioning, normalisers saved with the run."""

import importlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers

from unclip_jax.data.embedding_shards import EmbeddingShardWriter
from unclip_jax.diffusion.analytic import AnalyticTable
from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.train import prior_task, trainers

D, L, N = 64, 16, 48


def write_shards(directory, count=N, seed=0, token_states=True):
    """Synthetic embedding shards: image = text + noise, token states, ragged masks."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(count, D)).astype(np.float32)
    fields = {
        "image_embedding": (text + 0.3 * rng.normal(size=(count, D))).astype(np.float16),
        "text_embedding": text.astype(np.float16),
        "text_tokens": rng.integers(0, 100, size=(count, L)).astype(np.int32),
        "text_mask": np.arange(L)[None] < rng.integers(3, L, size=(count, 1)),
        "caption": np.array([f"caption {i}" for i in range(count)]),
    }
    if token_states:
        fields["token_states"] = rng.normal(size=(count, L, D)).astype(np.float16)
    with EmbeddingShardWriter(directory, shard_size=20) as writer:
        writer.add(fields)
    return fields


def smoke_config(train_dir, eval_dir):
    config = importlib.import_module("configs.prior_demo").get_config("smoke")
    config.data.train_dir = str(train_dir)
    config.data.eval_dir = str(eval_dir)
    return config


def test_one_step_through_the_loop(tmp_path):
    """The demo config sampling with the analytic variance: one step, the normaliser, and the Γ
    table the trainer ends with."""
    fields = write_shards(tmp_path / "train")
    write_shards(tmp_path / "eval", count=8, seed=1)
    config = smoke_config(tmp_path / "train", tmp_path / "eval")
    config.diffusion.variance = "analytic"
    workdir = tmp_path / "work"
    state = trainers.get_trainer(config.trainer)(config, str(workdir))
    assert int(state.step) == 1
    leaves = jax.tree.leaves(state.params)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert (workdir / "checkpoints" / "1").is_dir()
    # The demo's per-dimension statistics, fitted on the training image embeddings and saved.
    saved = prior_task.load_normalizer(workdir / prior_task.NORMALIZER_FILE)
    assert saved.kind == "mean_std"
    image = np.asarray(fields["image_embedding"], np.float64)
    np.testing.assert_allclose(saved.mean, image.mean(0), atol=1e-4)
    np.testing.assert_allclose(saved.std, image.std(0), rtol=1e-4)
    check_gamma_table(config, workdir, state.ema_params)


def check_gamma_table(config, workdir, ema_params):
    """The saved Γ table is the EMA prior's estimate on the first training batch, as a plain
    jitted call of the task computes it; where ᾱ → 0 the x0 prediction's ε is x_t, so Γ ≈ 1."""
    table = AnalyticTable.from_dict(json.loads((workdir / prior_task.ANALYTIC_FILE).read_text()))
    assert table.train_steps == 1000 and table.examples == config.train.batch_size
    assert abs(table.eps_sq_norm[-1] - 1.0) < 0.3
    normalizer = prior_task.load_normalizer(workdir / prior_task.NORMALIZER_FILE)
    task = prior_task.build_task(config, normalizer)
    data = prior_task.train_batches(config)
    batch = next(data)
    data.close()
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 2), 0)
    eps_sq_norm, variance = jax.jit(task.analytic_statistics)(ema_params, batch, key)
    np.testing.assert_allclose(table.eps_sq_norm, np.asarray(eps_sq_norm), rtol=1e-5)
    np.testing.assert_allclose(table.data_variance, float(variance), rtol=1e-5)


def test_batches_read_shards_and_cast(tmp_path):
    fields = write_shards(tmp_path / "train")
    it = prior_task.embedding_batches(tmp_path / "train", batch_size=8, seed=0, shuffle=False)
    batch = next(it)
    it.close()
    assert sorted(batch) == sorted(prior_task.BATCH_FIELDS)
    assert batch["token_states"].shape == (8, L, D) and batch["token_states"].dtype == np.float32
    assert batch["text_mask"].dtype == bool
    np.testing.assert_array_equal(batch["text_mask"], fields["text_mask"][:8])
    # Caption positions past the longest caption are cut; cutting a real token is an error.
    longest = int(fields["text_mask"][:8].sum(1).max())
    cut = prior_task.cast_batch(batch, num_tokens=longest)
    assert cut["token_states"].shape == (8, longest, D)
    np.testing.assert_array_equal(cut["token_states"], batch["token_states"][:, :longest])
    with pytest.raises(ValueError, match=f"num_tokens={longest - 1}"):
        prior_task.cast_batch(batch, num_tokens=longest - 1)


def test_mean_std_normalizer_round_trip(tmp_path):
    embeddings = np.random.default_rng(0).normal(3.0, 2.0, size=(500, D))
    normalizer = prior_task.fit_normalizer("mean_std", embeddings)
    normalized = np.asarray(normalizer.normalize(embeddings))
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalized.std(0), 1.0, atol=1e-4)
    prior_task.save_normalizer(normalizer, tmp_path / "n.json")
    loaded = prior_task.load_normalizer(tmp_path / "n.json")
    np.testing.assert_allclose(loaded.denormalize(normalized), embeddings, rtol=1e-5, atol=1e-4)


MODEL = DiffusionPrior(embed_dim=8, num_tokens=4, width=32, depth=2, num_heads=2)


def tiny_batch(seed=0, size=16):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(size, 8)).astype(np.float32)
    return {
        "image_embedding": text + 0.1 * rng.normal(size=(size, 8)).astype(np.float32),
        "text_embedding": text,
        "token_states": rng.normal(size=(size, 4, 8)).astype(np.float32),
        "text_mask": np.ones((size, 4), bool),
    }


@pytest.fixture(scope="module")
def task_and_params():
    task = prior_task.DiffusionPriorTask(
        MODEL, EmbeddingNormalizer.create("unit_norm", 8), make_schedule("cosine", 1000)
    )
    spec = task_helpers.batch_spec(tiny_batch())
    params = nn.unbox(jax.jit(lambda key: task.init(key, spec))(jax.random.key(0)))
    return task, params


def test_loss_decreases_on_a_fixed_batch(task_and_params):
    task, params = task_and_params
    batch = {k: jnp.asarray(v) for k, v in tiny_batch().items()}
    key = jax.random.key(1)
    losses, params = task_helpers.adam_on_fixed_batch(task, params, batch, key, steps=60)
    first = losses[0]
    final = float(task.loss(params, batch, key, True)[0])
    print(f"prior loss on a fixed batch and key: {first:.4f} -> {final:.4f}")
    assert final < 0.5 * first


def test_caption_dropout_uses_the_null_conditioning(task_and_params):
    """With drop probability 1 the loss ignores the caption; with 0 it depends on it."""
    task, params = task_and_params
    batch = {k: jnp.asarray(v) for k, v in tiny_batch().items()}
    other = dict(batch, text_embedding=batch["text_embedding"] + 1.0)
    key = jax.random.key(2)
    always = prior_task.DiffusionPriorTask(MODEL, task.normalizer, task.schedule, 1.0)
    never = prior_task.DiffusionPriorTask(MODEL, task.normalizer, task.schedule, 0.0)
    a, b = (always.loss(params, x, key, True)[0] for x in (batch, other))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    a, b = (never.loss(params, x, key, True)[0] for x in (batch, other))
    assert abs(float(a) - float(b)) > 1e-4


def test_min_snr_weight_is_snr_capped_at_gamma():
    schedule = make_schedule("cosine", 1000)
    index = jnp.arange(1000)
    weight = np.asarray(prior_task.min_snr_weight(5.0)(schedule, index))
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)
    np.testing.assert_allclose(weight, np.minimum(alpha_bar / (1 - alpha_bar), 5.0), rtol=1e-4)
    assert weight[0] == 5.0 and weight[-1] < 1e-3


def test_evaluate_samples_and_compares_with_the_text_embedding(task_and_params):
    task, params = task_and_params
    sampling = prior_task.DiffusionPriorTask(
        MODEL, task.normalizer, task.schedule, sample_schedule=make_schedule("cosine", 1000, 2)
    )
    batch = {k: jnp.asarray(v) for k, v in tiny_batch(size=4).items()}
    metrics = jax.jit(sampling.evaluate)(params, batch, jax.random.key(3))
    text = batch["text_embedding"] / jnp.linalg.norm(batch["text_embedding"], axis=-1)[:, None]
    image = batch["image_embedding"] / jnp.linalg.norm(batch["image_embedding"], axis=-1)[:, None]
    np.testing.assert_allclose(metrics["text_cosine"], jnp.mean(jnp.sum(text * image, -1)), 1e-5)
    assert -1.0 <= float(metrics["sample_cosine"]) <= 1.0
    assert sorted(metrics) == ["loss", "sample_cosine", "text_cosine", "x0_cosine"]


def test_bad_settings_raise():
    schedule = make_schedule("cosine", 10)
    normalizer = EmbeddingNormalizer.create("unit_norm", 8)
    with pytest.raises(ValueError, match="text_drop_prob"):
        prior_task.DiffusionPriorTask(MODEL, normalizer, schedule, 1.5)
    with pytest.raises(ValueError, match="null"):
        prior_task.DiffusionPriorTask(MODEL, normalizer, schedule, null=(1, 2, 3))
    with pytest.raises(ValueError, match="loss_weight"):
        prior_task.DiffusionPriorTask(MODEL, normalizer, schedule, loss_weight="snr")
    config = importlib.import_module("configs.prior_demo").get_config("smoke")
    config.diffusion.prediction = "eps"
    with pytest.raises(ValueError, match="x0"):
        prior_task.build_task(config, normalizer)


def test_empty_caption_null_needs_its_encoding(tmp_path):
    config = importlib.import_module("configs.prior_demo").get_config("smoke")
    config.model.null_conditioning = "empty_caption"
    with pytest.raises(ValueError, match=r"needs config\.data\.null_caption"):
        prior_task.config_null_caption(config, "empty_caption")
    assert prior_task.config_null_caption(config, "learned") is None
    path = tmp_path / "null.npz"
    np.savez(
        path,
        text_embedding=np.ones(4),
        token_states=np.zeros((3, 2)),
        text_mask=np.array([True, False, False]),
    )
    config.data.null_caption = str(path)
    embed, states, mask = prior_task.config_null_caption(config, "empty_caption")
    assert embed.shape == (4,) and states.shape == (3, 2) and mask.dtype == bool
    assert mask.tolist() == [True, False, False]


@pytest.mark.slow
def test_learning_gate(tmp_path):
    """The priors' learning gate (experiments/prior_learning.py) on the captioned shapes."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    results = tmp_path / "prior_learning.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    command = [sys.executable, "-m", "experiments.prior_learning", "--workdir", str(tmp_path)]
    subprocess.run([*command, "--results", str(results)], cwd=root, env=env, check=True)
    figures = json.loads(results.read_text())
    failed = [name for name, ok in figures["gate"].items() if not ok]
    assert not failed, f"learning gate checks failed: {failed}"


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--ar_top_p", "1.5"], r"--ar_top_p must be in \[0, 1\], got 1.5"),
        (["--ar_candidates", "0"], "--ar_candidates must be >= 1, got 0"),
        (["--sample_steps", "5000"], r"--sample_steps must be in \[0, 1000\], got 5000"),
        (["--prior_set", "model.widht=128"], "KEY a field of the config, got 'model.widht=128'"),
        (["--prior_set", "model.width=wide"], "model.width takes a value of type int, got 'wide'"),
        (["--prior_set", "model=3"], "model is a group of fields"),
    ],
)
def test_learning_gate_rejects_bad_settings_before_training(tmp_path, flag, message):
    import re
    import subprocess
    import sys
    from pathlib import Path

    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "experiments.prior_learning", "--workdir", str(workdir)]
    run = subprocess.run(
        [*command, *flag], cwd=Path(__file__).parents[2], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert re.search(message, run.stderr), run.stderr
    assert not workdir.exists()


def test_nonfinite_embeddings_do_not_poison_the_normaliser(tmp_path, caplog):
    """One NaN image embedding: statistics over the finite rows, the bad row counted and named by
    shard and row; all rows bad: refused before anything is saved; a poisoned saved normaliser
    (older versions) is refused by name."""
    fields = write_shards(tmp_path / "train")  # shards of 20 rows: row 23 is shard 1, row 3
    image = np.load(tmp_path / "train" / "shard-p00000-00001" / "image_embedding.npy")
    image[3, 5] = np.nan
    np.save(tmp_path / "train" / "shard-p00000-00001" / "image_embedding.npy", image)
    workdir = tmp_path / "work"
    with caplog.at_level("WARNING"):
        normalizer = prior_task.workdir_normalizer("mean_std", tmp_path / "train", workdir)
    assert "1 of 48" in caplog.text and "shard-p00000-00001 row 3" in caplog.text
    good = np.delete(np.asarray(fields["image_embedding"], np.float64), 23, axis=0)
    np.testing.assert_allclose(normalizer.mean, good.mean(0), atol=1e-4)
    saved = prior_task.load_normalizer(workdir / prior_task.NORMALIZER_FILE)
    assert np.isfinite(saved.mean).all() and np.isfinite(saved.std).all()

    nan_dir = tmp_path / "all_nan"
    write_shards(nan_dir, count=4)
    np.save(nan_dir / "shard-p00000-00000" / "image_embedding.npy", np.full((4, D), np.nan))
    with pytest.raises(ValueError, match=r"4 of 4 .* shard-p00000-00000 row 0"):
        prior_task.workdir_normalizer("mean_std", nan_dir, tmp_path / "work2")
    assert not (tmp_path / "work2" / prior_task.NORMALIZER_FILE).exists()

    poisoned = tmp_path / "poisoned.json"
    poisoned.write_text('{"kind": "mean_std", "mean": [NaN, 0.0], "std": [1.0, 1.0]}')
    with pytest.raises(ValueError, match=r"poisoned\.json holds non-finite statistics"):
        prior_task.load_normalizer(poisoned)
