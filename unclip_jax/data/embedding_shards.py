"""Precomputed CLIP embeddings on disk (written by `unclip embed`, read to train the prior).

Shard format: a directory holds shards `shard-<tag>-<index:05d>/`, each a directory of `.npy`
files, one per field, all with the same leading length N:

    image_embedding.npy   float16/float32 [N, D]    CLIP image embedding z_i
    text_embedding.npy    float16/float32 [N, D]    CLIP text embedding z_t
    text_tokens.npy       int32 [N, L]              optional: caption token ids
    text_mask.npy         bool [N, L]               optional: caption token mask
    token_states.npy      float16/float32 [N, L, W] optional: text encoder's last hidden states
    caption.npy           unicode [N]               optional: the caption text

Shards are written under a temporary name and renamed when complete, so readers never see a
partial shard; each writing process uses its own `tag` (e.g. its process index), so several
processes can write into one directory. Readers memory-map the arrays: random access is cheap,
and `embedding_iterator` reads them per process with the pipeline's checkpointable iterator.
"""

import bisect
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from unclip_jax.data.input_pipeline import DataIterator

REQUIRED_FIELDS = ("image_embedding", "text_embedding")
OPTIONAL_FIELDS = ("text_tokens", "text_mask", "token_states", "caption")
SHARD_GLOB = "shard-*"


class EmbeddingShardWriter:
    """Buffers examples and writes a shard every `shard_size` of them (and the rest on close).

    with EmbeddingShardWriter(directory, tag=f"p{jax.process_index():05d}") as writer:
        writer.add({"image_embedding": zi, "text_embedding": zt, "caption": captions})
    """

    def __init__(
        self, directory: str | os.PathLike, *, tag: str = "p00000", shard_size: int = 4096
    ):
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        if not tag or "/" in tag:
            raise ValueError(f"tag must be a non-empty file-name part, got {tag!r}")
        self._directory = pathlib.Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._tag = tag
        self._shard_size = shard_size
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._written = 0

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Adds a batch: a dict of arrays with the same leading length (fields as above)."""
        unknown = set(batch) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
        missing = set(REQUIRED_FIELDS) - set(batch)
        if unknown or missing:
            raise ValueError(
                f"fields must include {REQUIRED_FIELDS} and may include {OPTIONAL_FIELDS}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        if self._buffer and set(batch) != set(self._buffer):
            raise ValueError(f"fields changed from {sorted(self._buffer)} to {sorted(batch)}")
        arrays = {k: np.asarray(v) for k, v in batch.items()}
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"fields must share their leading length, got {lengths}")
        for key, value in arrays.items():
            self._buffer.setdefault(key, []).append(value)
        self._buffered += next(iter(lengths.values()))
        while self._buffered >= self._shard_size:
            self._flush(self._shard_size)

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)

    def __enter__(self) -> "EmbeddingShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flush(self, count: int) -> None:
        joined = {k: np.concatenate(v) for k, v in self._buffer.items()}
        name = f"shard-{self._tag}-{self._written:05d}"
        partial = self._directory / f".{name}.partial"
        partial.mkdir(exist_ok=True)
        for key, value in joined.items():
            np.save(partial / f"{key}.npy", value[:count])
        partial.rename(self._directory / name)
        self._written += 1
        self._buffer = {k: [v[count:]] for k, v in joined.items()}
        self._buffered -= count


class EmbeddingShards(Sequence):
    """All shards of a directory as one random-access sequence of example dicts.

    `fields` selects what to read (default: every field the shards have).
    """

    def __init__(self, directory: str | os.PathLike, fields: Sequence[str] | None = None):
        directory = pathlib.Path(directory)
        shards = sorted(p for p in directory.glob(SHARD_GLOB) if p.is_dir())
        if not shards:
            raise ValueError(f"no embedding shards ({SHARD_GLOB}) in {str(directory)!r}")
        present = sorted(p.stem for p in shards[0].glob("*.npy"))
        self._fields = tuple(present if fields is None else fields)
        if not self._fields:
            raise ValueError("fields must name at least one field, got none")
        absent = set(self._fields) - set(present)
        if absent or not set(REQUIRED_FIELDS) <= set(present):
            raise ValueError(
                f"shards of {str(directory)!r} have fields {present}; asked for "
                f"{list(self._fields)}, which needs {sorted(absent)}, and {REQUIRED_FIELDS}"
            )
        self._shards = [
            {f: np.load(shard / f"{f}.npy", mmap_mode="r") for f in self._fields}
            for shard in shards
        ]
        trailing = {f: self._shards[0][f].shape[1:] for f in self._fields}
        for shard, arrays in zip(shards, self._shards, strict=True):
            lengths = {len(a) for a in arrays.values()}
            shapes = {f: a.shape[1:] for f, a in arrays.items()}
            if len(lengths) != 1 or any(
                f != "caption" and shapes[f] != trailing[f] for f in self._fields
            ):
                raise ValueError(f"shard {shard.name} is inconsistent: {shapes}, lengths {lengths}")
        self._names = [shard.name for shard in shards]
        first = self._fields[0]
        self._starts = np.cumsum([0] + [len(a[first]) for a in self._shards])

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index must be in [0, {len(self)}), got {index}")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - int(self._starts[shard])

    def location(self, index: int) -> tuple[str, int]:
        """(shard directory name, row in it) of example `index`, for messages about bad rows."""
        shard, row = self._locate(index)
        return self._names[shard], row

    def __getitem__(self, index: int) -> dict:
        shard, row = self._locate(index)
        return {f: np.array(a[row]) for f, a in self._shards[shard].items()}


def embedding_iterator(
    directory: str | os.PathLike,
    *,
    batch_size: int,
    seed: int,
    fields: Sequence[str] | None = None,
    **iterator_kwargs,
) -> DataIterator:
    """Checkpointable batches of embeddings: `image_embedding` [B, D], `text_embedding`
    [B, D], and the optional fields present (`caption` as str [B]), this process's slice only.

    `iterator_kwargs` go to `input_pipeline.DataIterator` (shuffle, num_epochs, process_index, ...).
    """
    source = EmbeddingShards(directory, fields)
    return DataIterator(source, batch_size=batch_size, seed=seed, **iterator_kwargs)
