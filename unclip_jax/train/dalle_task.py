"""Training DALL·E's transformer (Ramesh et al. 2021, §2.2): p(caption tokens, image codes) by
teacher forcing, loss 1/8 × text cross-entropy + 7/8 × image cross-entropy (`models.dalle`).

The image codes are the argmax codes of a trained, frozen dVAE (`config.dvae_dir`, as the "dvae"
trainer exports it or `unclip convert-dvae` writes it), computed inside the step from the batch's
images; the caption is the run's BPE (`train.run_tokenizer`: trained on the training captions,
`config.tokenizer.vocab_size` tokens, the model's `text_length` positions). The model's text
vocabulary, grid and image vocabulary follow from the tokenizer and the dVAE; `config.model`
holds the rest of `DalleConfig`. Sample grids decode codes sampled for held-out captions at
temperature 1.

Batches: `image` [B, S, S, 3] in [-1, 1] (S the dVAE's input size), `tokens`, `mask` [B, L].

    unclip train --config=configs/dalle_shapes.py --workdir=workdirs/dalle_shapes \
        --config.dvae_dir=workdirs/dvae_shapes/dvae
"""

import os
import pathlib
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unclip_jax.convert import dvae as dvae_checkpoint
from unclip_jax.data.image_batches import first_rows, held_out_batches, image_batches
from unclip_jax.models.dalle import (
    DalleConfig,
    DalleTransformer,
    dalle_loss,
    padded_text,
    sized_config,
)
from unclip_jax.models.dvae import FrozenDVAE
from unclip_jax.nn.precision import compute_dtype
from unclip_jax.sampling.dalle import make_dalle_sampler
from unclip_jax.storage.locations import location
from unclip_jax.train import loop
from unclip_jax.train.run_tokenizer import run_tokenizer
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Params, Task

Array = jax.Array
TOKENIZER_DIR = "tokenizer"


class DalleTask(Task):
    """The joint text–image loss of a `DalleTransformer` over a frozen dVAE's codes; sample
    grids from held-out captions (`sample_captions`: `tokens`, `mask` [N, L])."""

    def __init__(
        self,
        model: DalleTransformer,
        dvae: FrozenDVAE,
        sample_captions: dict[str, np.ndarray] | None = None,
    ):
        if dvae.config.vocab_size != model.config.image_vocab_size:
            raise ValueError(
                f"the dVAE has {dvae.config.vocab_size} codes, the model's image vocabulary "
                f"{model.config.image_vocab_size}"
            )
        self.model, self.dvae = model, dvae
        self.sample_captions = sample_captions
        self.sampler = make_dalle_sampler(model) if sample_captions is not None else None

    @property
    def image_size(self) -> int:
        """The side of the images whose codes fill the model's grid."""
        return self.model.config.grid * self.dvae.config.downsample_factor

    def codes(self, images: Array) -> Array:  # [B, S, S, 3] -> [B, N]
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size} px for a {self.model.config.grid}×"
                f"{self.model.config.grid} grid, got {images.shape[1:3]}"
            )
        return self.dvae.encode(images)

    def init(self, key: Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        config = self.model.config
        tokens = jnp.zeros((1, config.text_length), jnp.int32)
        codes = jnp.zeros((1, config.num_codes), jnp.int32)
        return self.model.init(key, tokens, jnp.ones_like(tokens, bool), codes)["params"]

    def loss(self, params: Params, batch: Batch, key: Array, train: bool) -> tuple[Array, Metrics]:
        del key, train  # no dropout
        codes = self.codes(batch["image"])
        mask = jnp.asarray(batch["mask"]).astype(bool)
        text_logits, image_logits = self.model.apply(
            {"params": params}, batch["tokens"], mask, codes
        )
        targets = padded_text(self.model.config, batch["tokens"], mask)[:, 1:]
        return dalle_loss(text_logits, image_logits, targets, codes)

    def sample(self, params: Params, key: Array, num: int) -> Array | None:
        if self.sampler is None:
            return None
        held = {k: jnp.asarray(v[:num]) for k, v in self.sample_captions.items()}
        if held["tokens"].shape[0] < num:
            raise ValueError(f"{num} samples asked, {held['tokens'].shape[0]} captions held")
        codes = self.sampler.program(params, held["tokens"], held["mask"].astype(bool), key)
        return self.dvae.decode(codes)

    @property
    def generates_images(self) -> bool:
        return self.sampler is not None


def model_config(config: ml_collections.ConfigDict, tokenizer, dvae: FrozenDVAE) -> DalleConfig:
    """`config.model` (DalleConfig fields but the sizes, and `dtype`) with the text vocabulary
    and length of the tokenizer, the grid and codes of the dVAE at `config.data.image_size`
    (`models.dalle.sized_config`), and `config.remat`."""
    fields = {k: v for k, v in config.model.items() if k != "dtype"}
    return sized_config(
        dict(fields, remat_policy=config.remat),
        tokenizer.vocab_size,
        tokenizer.context_length,
        dvae.config,
        config.data.image_size,
    )


def build_task(
    config: ml_collections.ConfigDict,
    tokenizer,
    dvae: FrozenDVAE,
    sample_captions: dict[str, np.ndarray] | None = None,
) -> DalleTask:
    dtype = compute_dtype(config.model.dtype, "model.dtype")
    model = DalleTransformer(model_config(config, tokenizer, dvae), dtype=dtype)
    return DalleTask(model, dvae, sample_captions)


def load_dvae(directory: str | pathlib.Path) -> FrozenDVAE:
    """The frozen dVAE of a dVAE checkpoint directory."""
    if not directory:
        raise ValueError("config.dvae_dir must name a dVAE checkpoint (unclip convert-dvae or "
                         "the dvae trainer's <workdir>/dvae)")  # fmt: skip
    config, variables = dvae_checkpoint.load_dvae(directory)
    return FrozenDVAE(config, variables["encoder"]["params"], variables["decoder"]["params"])


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_source: Sequence,
    eval_source: Sequence,
    dvae: FrozenDVAE,
    hooks: Sequence[loop.Hook] = (),
) -> TrainState:
    """Trains on `train_source`; evaluates on, and samples for the captions of, the first
    `config.eval.num_batches` batches of `eval_source`."""
    workdir = location(workdir)
    tokenizer = run_tokenizer(config.tokenizer, workdir / TOKENIZER_DIR, train_source)
    common = dict(image_size=config.data.image_size, seed=config.seed, tokenize=tokenizer)
    held_out = held_out_batches(
        eval_source, batch_size=config.eval.batch_size, count=config.eval.num_batches, **common
    )
    captions = None
    if config.train.sample_every:
        count = config.train.num_samples
        captions = {k: first_rows(held_out, k, count) for k in ("tokens", "mask")}
    task = build_task(config, tokenizer, dvae, captions)
    local_batch = config.train.batch_size // jax.process_count()
    train_data = image_batches(train_source, batch_size=local_batch, **common)
    eval_data: Callable[[], Iterable[Batch]] = lambda: iter(held_out)
    return loop.train_and_evaluate(config, workdir, task, train_data, eval_data, hooks)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """`unclip train` entry point (trainer "dalle")."""
    from unclip_jax.data.sources import open_train_and_eval

    dvae = load_dvae(config.dvae_dir)
    train_source, eval_source = open_train_and_eval(config.data)
    return run(config, workdir, train_source, eval_source, dvae)
