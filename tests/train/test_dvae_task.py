"""dVAE task: a smoke run through the registered "dvae" trainer (real loop, image folder source,
exported checkpoint), the relaxation schedules' values, the KL and perplexity of uniform codes,
and the step-numbered batches' state."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers
from PIL import Image

from unclip_jax.convert import dvae as dvae_checkpoint
from unclip_jax.train import dvae_task, trainers

smoke_config = functools.partial(task_helpers.config_file, "dvae_shapes", "smoke")


def test_registered_as_dvae_trainer():
    assert trainers.get_trainer("dvae").__wrapped__ is dvae_task.train_and_evaluate


def test_smoke_run_through_the_registered_trainer(tmp_path):
    captions = [f"picture {index}" for index in range(32)]
    source = task_helpers.captioned_folder(tmp_path / "images", captions)
    config = smoke_config()
    config.data.update(source=source, data_dir=str(tmp_path / "tfds"))
    config.data.update(validation_fraction=0.5, eval_split="validation")
    workdir = tmp_path / "work"
    state = trainers.get_trainer("dvae")(config, str(workdir))
    assert int(state.step) == 2 and int(state.nonfinite_total) == 0
    leaves = jax.tree.leaves(nn.unbox(state.params))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    grid = np.asarray(Image.open(workdir / "samples" / "step_2.png"))
    assert grid.shape[:2] == (16, 32)  # two 16 px reconstructions
    exported_config, variables = dvae_checkpoint.load_dvae(workdir / dvae_task.EXPORT_DIR)
    assert exported_config.vocab_size == 16 and exported_config.group_count == 2
    ema = jax.device_get(nn.unbox(state.ema_params))
    np.testing.assert_array_equal(
        variables["decoder"]["params"]["input"]["kernel"], ema["decoder"]["input"]["kernel"]
    )


def test_schedules_follow_the_paper():
    schedule = dvae_task.RelaxationSchedule()
    steps = jnp.asarray([0, 2_500, 5_000, 10_000])
    np.testing.assert_allclose(schedule.beta(steps), [0.0, 3.3, 6.6, 6.6], atol=1e-5)
    steps = jnp.asarray([0, 75_000, 150_000, 1_000_000])
    np.testing.assert_allclose(
        schedule.temperature(steps), [1.0, (1 + 1 / 16) / 2, 1 / 16, 1 / 16], atol=1e-6
    )
    np.testing.assert_allclose(dvae_task.cosine_ramp(jnp.asarray(5), 2.0, 1.0, 0), 1.0)
    with pytest.raises(ValueError, match=r"temperature_end must be > 0, got 0\.0"):
        dvae_task.RelaxationSchedule(temperature_end=0.0)


def test_uniform_codes_have_zero_kl_and_full_perplexity():
    task = dvae_task.build_task(smoke_config(), None)
    params = nn.unbox(jax.jit(task.init, static_argnums=1)(jax.random.key(0), None))
    params["encoder"]["output"] = jax.tree.map(jnp.zeros_like, params["encoder"]["output"])
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    batch = {"image": images, "step": jnp.full((2,), 1, jnp.int32)}
    loss_fn = jax.jit(task.loss, static_argnames="train")
    loss, metrics = loss_fn(params, batch, jax.random.key(2), train=True)
    assert abs(float(metrics["kl_per_code"])) < 1e-5
    np.testing.assert_allclose(metrics["perplexity"], 16.0, rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["nll_per_dim"], atol=1e-6)
    _, hard = loss_fn(params, {"image": images}, jax.random.key(2), train=False)
    np.testing.assert_allclose(hard["beta"], smoke_config().relaxation.kl_weight, rtol=1e-6)


def test_straight_through_decodes_the_hard_sample_and_trains_the_encoder():
    """With `straight_through`, the decoder reads the one-hot of argmax(logits + Gumbel noise)
    (what evaluation and the transformer decode) and the encoder still gets a gradient."""
    task = dvae_task.build_task(smoke_config(), None)
    params = nn.unbox(jax.jit(task.init, static_argnums=1)(jax.random.key(0), None))
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    key, beta, tau = jax.random.key(2), jnp.float32(0.0), jnp.float32(0.5)
    loss = functools.partial(dvae_task.dvae_loss, task.encoder, task.decoder)

    @jax.jit
    def figures(params):
        """NLL per dim of the hard Gumbel sample decoded, with straight_through, and relaxed;
        the encoder's gradient with straight_through."""
        logits = task.encoder.apply({"params": params["encoder"]}, images)
        hard = jnp.argmax(logits + jax.random.gumbel(key, logits.shape), axis=-1)
        stats = task.decoder.apply({"params": params["decoder"]}, hard)
        nll = jnp.mean(dvae_task.logit_laplace_nll(dvae_task.map_pixels(images), stats))
        straight = lambda p: loss(p, images, key, beta, tau, straight_through=True)
        grads, metrics = jax.grad(straight, has_aux=True)(params)
        relaxed = loss(params, images, key, beta, tau)[1]
        return nll, metrics["nll_per_dim"], relaxed["nll_per_dim"], grads["encoder"]

    expected, straight, relaxed, grads = figures(params)
    np.testing.assert_allclose(straight, expected, rtol=1e-5)
    assert abs(float(relaxed) - float(expected)) > 1e-4
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_numbered_batches_resume_their_count():
    class Batches:
        def __init__(self):
            self.position = 0

        def __next__(self):
            self.position += 1
            return {"image": np.zeros((3, 4, 4, 3), np.float32)}

        def get_state(self):
            return {"position": self.position}

        def set_state(self, state):
            self.position = state["position"]

    numbered = dvae_task.NumberedBatches(Batches())
    assert [int(next(numbered)["step"][0]) for _ in range(3)] == [0, 1, 2]
    state = numbered.get_state()
    resumed = dvae_task.NumberedBatches(Batches())
    resumed.set_state(state)
    batch = next(resumed)
    np.testing.assert_array_equal(batch["step"], [3, 3, 3])
    assert resumed.batches.position == 4


def test_code_usage_term_is_the_kl_of_the_average_code_distribution_from_uniform():
    """Every position's q the softmax of logits (8, 0, …, 0): the batch's average code
    distribution is that softmax, and the loss adds usage_weight × (log V − its entropy)."""
    config = smoke_config()
    config.relaxation.usage_weight = 0.5
    task = dvae_task.build_task(config, None)
    params = nn.unbox(jax.jit(task.init, static_argnums=1)(jax.random.key(0), None))
    output = jax.tree.map(jnp.zeros_like, params["encoder"]["output"])
    output["bias"] = output["bias"].at[0].set(8.0)
    params["encoder"]["output"] = output
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    batch = {"image": images, "step": jnp.full((2,), 10, jnp.int32)}  # β and τ at their ends
    loss, metrics = jax.jit(task.loss, static_argnames="train")(
        params, batch, jax.random.key(2), train=True
    )
    q = jax.nn.softmax(jnp.zeros(16).at[0].set(8.0))
    entropy = -float(jnp.sum(q * jnp.log(q)))
    np.testing.assert_allclose(metrics["perplexity"], np.exp(entropy), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl_per_code"], np.log(16) - entropy, rtol=1e-5)
    codes_per_dim = 8 * 8 / (16 * 16 * 3)
    expected = (
        metrics["nll_per_dim"]
        + config.relaxation.kl_weight * metrics["kl_per_code"] * codes_per_dim
        + 0.5 * (np.log(16) - entropy)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"usage_weight must be >= 0, got -1"):
        dvae_task.RelaxationSchedule(usage_weight=-1)
