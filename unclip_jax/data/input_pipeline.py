"""The input pipeline: random-access examples → deterministic host-local batches → global arrays.

Design (chosen over tf.data and grain): a per-epoch seeded permutation plus a position, so
that the iterator is deterministic and checkpointable without TensorFlow in the loop. A source
is any random-access sequence of example dicts (`len(source)`, `source[i]`), e.g. a TFDS ArrayRecord
split (`builder.as_data_source("train")`, decoded by TFDS with PIL) or embedding shards
(`embedding_shards.py`). Each process takes a contiguous, disjoint slice of the source (the
same slices as `tfds.even_splits(split, process_count)`); every epoch visits its slice in a
permutation seeded by `(seed, epoch)`; per-example randomness (caption choice, crop, flip) comes
from a generator seeded by `(seed, epoch, index)`. A background thread prefetches batches.

Iterator-state protocol (the training loop saves it with each checkpoint):

    it = image_text_iterator(source, batch_size=..., tokenize=..., seed=...)
    batch = next(it)          # dict of numpy arrays, leading dim = host-local batch size
    state = it.get_state()    # small JSON-serialisable dict {"epoch", "position", "seed"}
    fresh = image_text_iterator(source, ...same arguments...)
    fresh.set_state(state)
    next(fresh) == next(it)   # the identical next batch, array for array

`position` counts the examples of epoch `epoch` already delivered in batches; the stream runs
on across epoch boundaries (a batch may hold the end of one epoch and the start of the next)
unless `num_epochs` is set. Batches of `image_text_iterator` hold `image` float32
[B, H, W, 3] in [-1, 1], `tokens` int32 [B, L], `mask` bool [B, L], `caption` str [B],
`flipped` bool [B], and the source's numeric ground-truth fields (e.g. `object_x` [B, 2]).
`to_global(batch, mesh)` turns the numeric arrays into global `jax.Array`s sharded over the
batch axes of the mesh.
"""

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from unclip_jax.data import preprocess
from unclip_jax.sharding import batch_sharding

Example = dict[str, Any]
ExampleFn = Callable[[Example, np.random.Generator], Example]
BatchFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


def process_range(
    num_examples: int, process_index: int | None = None, process_count: int | None = None
) -> range:
    """This process's contiguous slice of `num_examples`: sizes differ by at most one, the
    first `num_examples % process_count` processes taking one more (as `tfds.even_splits`)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}), got {index}")
    if num_examples < count:
        raise ValueError(f"{num_examples} examples cannot feed {count} processes")
    base, extra = divmod(num_examples, count)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def collate(examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """Stacks equal-keyed examples into arrays with a leading batch dimension."""
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """What a `DataIterator` reads and how; its batches are a pure function of plan and state."""

    source: Sequence[Example]
    indices: range  # this process's source indices
    batch_size: int
    seed: int
    example_fn: ExampleFn | None
    batch_fn: BatchFn | None
    shuffle: bool
    num_epochs: int | None
    drop_remainder: bool
    num_threads: int

    def permutation(self, epoch: int) -> np.ndarray:
        n = len(self.indices)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def load(self, key: tuple[int, int]) -> Example:
        epoch, index = key
        example = dict(self.source[index])
        if self.example_fn is None:
            return example
        return self.example_fn(example, np.random.default_rng([self.seed, epoch, index]))


def read_batches(plan: ReadPlan, state: Mapping[str, int]) -> Iterator[tuple[dict, dict]]:
    """(batch, state after it) from `state` on."""
    epoch, position = int(state["epoch"]), int(state["position"])
    n = len(plan.indices)
    order = (epoch, plan.permutation(epoch))
    with ThreadPoolExecutor(plan.num_threads) as pool:
        while True:
            keys = []  # (epoch, source index)
            while len(keys) < plan.batch_size:
                if position == n:
                    if plan.num_epochs is not None and epoch + 1 >= plan.num_epochs:
                        break
                    epoch, position = epoch + 1, 0
                if order[0] != epoch:
                    order = (epoch, plan.permutation(epoch))
                take = min(plan.batch_size - len(keys), n - position)
                keys.extend(
                    (epoch, plan.indices[int(i)]) for i in order[1][position : position + take]
                )
                position += take
            if not keys or (len(keys) < plan.batch_size and plan.drop_remainder):
                return
            batch = collate(list(pool.map(plan.load, keys)))
            if plan.batch_fn is not None:
                batch = plan.batch_fn(batch)
            yield batch, {"epoch": epoch, "position": position, "seed": plan.seed}


class DataIterator(Iterator[dict[str, np.ndarray]]):
    """Deterministic batches of `source[i]` passed through `example_fn` and `batch_fn`.

    `batch_size` is the host-local batch. With `num_epochs=None` the stream never ends; with a
    number of epochs, the last partial batch is dropped when `drop_remainder`, else delivered.
    `example_fn(example, rng)` gets a generator seeded by (seed, epoch, source index).
    """

    def __init__(
        self,
        source: Sequence[Example],
        *,
        batch_size: int,
        seed: int,
        example_fn: ExampleFn | None = None,
        batch_fn: BatchFn | None = None,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
        num_threads: int = 4,
    ):
        self._producer: _Producer | None = None  # first: __del__ runs after a refused argument
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
        self._plan = ReadPlan(
            source=source,
            indices=process_range(len(source), process_index, process_count),
            batch_size=batch_size,
            seed=seed,
            example_fn=example_fn,
            batch_fn=batch_fn,
            shuffle=shuffle,
            num_epochs=num_epochs,
            drop_remainder=drop_remainder,
            num_threads=max(num_threads, 1),
        )
        self._prefetch = max(prefetch, 1)
        self._state = {"epoch": 0, "position": 0, "seed": seed}

    @property
    def indices(self) -> range:
        """The source indices this process reads."""
        return self._plan.indices

    def get_state(self) -> dict:
        return dict(self._state)

    def set_state(self, state: Mapping[str, Any]) -> None:
        seed = self._plan.seed
        if state.get("seed", seed) != seed:
            raise ValueError(f"state was saved with seed {state['seed']}, iterator has {seed}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self.indices):
            raise ValueError(
                f"state must have epoch >= 0 and position in [0, {len(self.indices)}], "
                f"got {dict(state)}"
            )
        self._stop()
        self._state = {"epoch": epoch, "position": position, "seed": seed}

    def __next__(self) -> dict[str, np.ndarray]:
        if self._producer is None:
            self._producer = _Producer(read_batches(self._plan, self._state), self._prefetch)
        batch, state = self._producer.get()
        self._state = state
        return batch

    def close(self) -> None:
        """Stops the prefetching thread (also done when the iterator is collected)."""
        self._stop()

    def __del__(self):
        # No join here: at interpreter exit the threading module may be gone already.
        if self._producer is not None:
            self._producer.halt()

    def _stop(self) -> None:
        if self._producer is not None:
            self._producer.stop()
            self._producer = None


class _Producer:
    """Runs a batch generator on a daemon thread, `depth` batches ahead of the consumer."""

    _END = object()

    def __init__(self, batches: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator) -> None:
        try:
            for item in batches:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)
        finally:
            batches.close()

    def _put(self, item) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def halt(self) -> None:
        self._halt.set()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)


def image_text_iterator(
    source: Sequence[Example],
    *,
    batch_size: int,
    image_size: int,
    tokenize: Tokenize,
    seed: int,
    resize_size: int | None = None,
    random_crop: bool = True,
    random_flip: bool = False,
    **iterator_kwargs,
) -> DataIterator:
    """Image–caption batches for training: caption choice, tokenisation, resize, crop, flip.

    Images are resized so that their shorter side is `resize_size` (default `image_size`), then
    cropped to `image_size` (at random, or centred). Horizontal flips (probability 1/2 when
    `random_flip`) are skipped for captions that name left or right, and mirror `object_x`.
    `tokenize(captions) -> (ids int32 [B, L], mask bool [B, L])`.
    """
    example_fn = preprocess.ImageTextExample(
        image_size=image_size,
        resize_size=resize_size or image_size,
        random_crop=random_crop,
        random_flip=random_flip,
    )

    def batch_fn(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = tokenize([str(c) for c in batch["caption"]])
        batch["tokens"] = np.asarray(ids, dtype=np.int32)
        batch["mask"] = np.asarray(mask, dtype=bool)
        return batch

    return DataIterator(
        source,
        batch_size=batch_size,
        seed=seed,
        example_fn=example_fn,
        batch_fn=batch_fn,
        **iterator_kwargs,
    )


def to_global(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Host-local numpy batch → global `jax.Array`s split over the mesh's batch axes.

    Numeric arrays become global arrays whose leading dimension is the sum of all processes'
    local batches; string arrays (captions) stay host-local numpy.
    """
    sharding = batch_sharding(mesh)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUS":
            out[key] = value
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


class GlobalIterator(Iterator[dict[str, Any]]):
    """Wraps a host-local iterator: yields `to_global` batches, forwards the iterator state."""

    def __init__(self, local: DataIterator, mesh: jax.sharding.Mesh):
        self._local = local
        self._mesh = mesh

    def __next__(self) -> dict[str, Any]:
        return to_global(next(self._local), self._mesh)

    def get_state(self) -> dict:
        return self._local.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._local.set_state(state)

    def close(self) -> None:
        self._local.close()
