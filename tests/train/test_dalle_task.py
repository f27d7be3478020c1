"""DALL·E transformer task: a smoke run through the registered "dalle" trainer over a random
dVAE (real loop, image folder source, sample grid, the run's BPE saved), the sizes taken from
the tokenizer and the dVAE, and an image size off the dVAE's grid refused by name."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers
from PIL import Image

from unclip_jax.convert import dvae as dvae_checkpoint
from unclip_jax.models.dvae import DVAEConfig, DVAEDecoder, DVAEEncoder, FrozenDVAE
from unclip_jax.train import dalle_task, trainers

smoke_config = functools.partial(task_helpers.config_file, "dalle_shapes", "smoke")
DVAE = DVAEConfig(group_count=2, n_hid=8, n_blk_per_group=1, vocab_size=16, n_init=8)


def random_dvae(directory) -> None:
    images, codes = jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 1, 1), jnp.int32)
    variables = {
        "encoder": DVAEEncoder(DVAE).init(jax.random.key(0), images),
        "decoder": DVAEDecoder(DVAE).init(jax.random.key(1), codes),
    }
    dvae_checkpoint.save_dvae(directory, DVAE, jax.device_get(nn.unbox(variables)))


def test_registered_as_dalle_trainer():
    assert trainers.get_trainer("dalle").__wrapped__ is dalle_task.train_and_evaluate


def test_smoke_run_through_the_registered_trainer(tmp_path):
    captions = [f"a {['red', 'blue'][index % 2]} picture" for index in range(32)]
    source = task_helpers.captioned_folder(tmp_path / "images", captions)
    random_dvae(tmp_path / "dvae")
    config = smoke_config()
    config.dvae_dir = str(tmp_path / "dvae")
    config.data.update(source=source, data_dir=str(tmp_path / "tfds"))
    config.data.update(validation_fraction=0.5, eval_split="validation")
    workdir = tmp_path / "work"
    state = trainers.get_trainer("dalle")(config, str(workdir))
    assert int(state.step) == 2 and int(state.nonfinite_total) == 0
    grid = np.asarray(Image.open(workdir / "samples" / "step_2.png"))
    assert grid.shape[:2] == (16, 32)  # two 16 px images decoded from sampled codes
    assert (workdir / dalle_task.TOKENIZER_DIR / "bpe.json").is_file()


def test_sizes_come_from_the_tokenizer_and_the_dvae():
    config = smoke_config()
    tokenizer = types.SimpleNamespace(vocab_size=50, context_length=7)
    model = dalle_task.model_config(config, tokenizer, FrozenDVAE(DVAE))
    assert (model.text_vocab_size, model.text_length) == (50, 7)
    assert (model.image_vocab_size, model.grid) == (16, 8)  # 16 px / factor 2
    config.data.image_size = 15
    with pytest.raises(ValueError, match=r"image_size 15 is not a multiple of .* factor 2"):
        dalle_task.model_config(config, tokenizer, FrozenDVAE(DVAE))


def test_a_missing_dvae_is_named():
    with pytest.raises(ValueError, match=r"config\.dvae_dir must name a dVAE checkpoint"):
        dalle_task.load_dvae("")
