"""What one training stage supplies to the generic loop, and the data iterator protocol it reads.

A stage (CLIP contrastive, diffusion prior, decoder, upsamplers, ...) writes one `Task` subclass
in `unclip_jax/train/<stage>.py` and a `train_and_evaluate(config, workdir)` that builds the task
and its data and calls `loop.train_and_evaluate`; that function is registered in
`train/trainers.py`. Everything else (sharding, optimiser, EMA, checkpoints, logging) is shared.

All `Task` methods are pure and traced under `jax.jit`: no Python side effects, randomness only
from the `key` argument. Parameters are the Flax `params` collection.

Data iterator protocol: a Python iterator of host-local batches (dicts of numpy arrays whose
leading dimension is this process's share of the global batch, `[B / process_count, ...]`) with
`get_state() -> dict` (JSON-serialisable) and `set_state(dict)`; the state taken after a batch is
consumed restores the iterator to yield the next batch. It is saved with every checkpoint.
"""

import abc
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np

Params = Any  # a pytree of arrays (the `params` collection)
Batch = dict[str, Any]  # name -> array, leading dimension the batch
Metrics = dict[str, jax.Array]  # name -> scalar


class DataIterator(Protocol):
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


def check_probability(name: str, p: float) -> None:
    """Refuse a probability argument outside [0, 1] (NaN included), by name."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


class Task(abc.ABC):
    """One training stage: its model's parameters, its loss and optional eval and sample hooks."""

    @abc.abstractmethod
    def init(self, key: jax.Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        """Parameters as `Module.init(...)["params"]` returns them, boxed with logical axis names
        (`nn.with_logical_partitioning`). `batch_spec` has the shapes of a batch of one example
        (`[1, ...]`); build dummy inputs from it with `jnp.zeros`. Traced by `jax.eval_shape` and
        `jax.jit`, so parameters are never materialised whole on one device."""

    @abc.abstractmethod
    def loss(
        self, params: Params, batch: Batch, key: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        """(scalar float32 loss averaged over the batch, dict of scalar metrics).

        The loss must be a mean over examples so that gradient accumulation over equal
        micro-batches equals one step on the whole batch.
        """

    def evaluate(self, params: Params, batch: Batch, key: jax.Array) -> Metrics:
        """Scalar metrics on one eval batch; the loop averages them over the eval set."""
        loss, metrics = self.loss(params, batch, key, train=False)
        return {"loss": loss, **metrics}

    def sample(self, params: Params, key: jax.Array, num: int) -> jax.Array | None:
        """Generated images `[num, H, W, C]` in [-1, 1] for the sample grid, or None for stages
        that do not generate images (the default)."""
        del params, key, num
        return None

    @property
    def generates_images(self) -> bool:
        """Whether `sample` is overridden; the loop only calls it then."""
        return type(self).sample is not Task.sample
