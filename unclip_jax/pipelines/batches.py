"""Rows of a pipeline's work over the local devices: cut into chunks of at most `max_batch` rows,
each padded to a bucketed size (a power of two, a multiple of the device count) and sharded along
its leading axis, parameters replicated; so each program of a pipeline compiles once per bucket,
whatever the number of prompts, images or candidates. A chunk with fewer rows than devices whose
guided steps' doubled batch fills them (one image on two devices) is copied to every device
instead, and each guided step splits its conditional and unconditional rows over them
(`sharding.spread_rows`, under the mesh the chunk's programs trace in)."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from unclip_jax.pipelines.arguments import bucket_size, check_count

Array = jax.Array


class RowBatches:
    """The chunks, their padding and their layout over `num_devices` local devices."""

    def __init__(
        self,
        num_devices: int | None = None,  # local devices to shard over (default: all)
        max_batch: int = 64,  # rows per compiled batch (rounded up to a bucket)
        progress: bool = False,  # a progress bar over chunks
    ):
        devices = jax.local_devices()
        count = len(devices) if num_devices is None else num_devices
        if not 1 <= count <= len(devices):
            raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
        self.num_devices = count
        self.max_batch = bucket_size(check_count("max_batch", max_batch), count)
        self.progress = progress
        self.mesh = Mesh(np.asarray(devices[:count]), ("data",))
        self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())

    def layout(self, count: int) -> tuple[int, NamedSharding]:
        """The rows a chunk of `count` is padded to and their layout: split over the devices, or
        copied to each where fewer than the devices fill them once doubled by guidance."""
        rows = bucket_size(count, 1)
        if not (rows < self.num_devices and (2 * rows) % self.num_devices == 0):
            rows = bucket_size(count, self.num_devices)
        return rows, self._sharding(rows)

    def _sharding(self, rows: int) -> NamedSharding:
        """A padded chunk of `rows`: copied to each device when fewer than them, else split."""
        return self._replicated if rows < self.num_devices else self._rows

    def place(self, rows: dict[str, np.ndarray]) -> dict[str, Array]:
        """A chunk padded to its bucket (by repeating its last row) and laid out (`layout`)."""
        count = len(next(iter(rows.values())))
        size, layout = self.layout(count)
        pad = size - count
        padded = {
            k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) if pad else v
            for k, v in rows.items()
        }
        return jax.device_put(padded, layout)

    def shard(self, tree: Any) -> Any:
        """Arrays of a chunk (leading axis: its padded rows) laid out as the chunk is (`layout`)."""
        return jax.device_put(tree, self._sharding(len(jax.tree.leaves(tree)[0])))

    def replicate(self, tree: Any) -> Any:
        """Arrays (parameters) copied to every device."""
        return jax.device_put(tree, self._replicated)

    def map(
        self, fn: Callable[[dict, int], dict], rows: dict[str, np.ndarray], desc: str
    ) -> dict[str, np.ndarray]:
        """fn(chunk, chunk index) over chunks of `rows` (`place`d; fn's programs trace under the
        devices' mesh); the results' rows unpadded and joined on the host."""
        total = len(next(iter(rows.values())))
        outputs: list[dict] = []
        starts = range(0, total, self.max_batch)
        for index, start in enumerate(tqdm(starts, desc=desc, disable=not self.progress)):
            chunk = {k: v[start : start + self.max_batch] for k, v in rows.items()}
            count = len(next(iter(chunk.values())))
            with jax.set_mesh(self.mesh):
                result = fn(self.place(chunk), index)
            outputs.append({k: np.asarray(jax.device_get(v))[:count] for k, v in result.items()})
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
