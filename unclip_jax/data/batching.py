"""Running a fixed-shape program over any number of rows: chunks of `batch_size`, the last one
padded by repeating its final row, so that one compiled shape serves every count."""

from collections.abc import Callable

import numpy as np


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x [N, …] with its last row repeated up to `rows` rows (N <= rows, N >= 1)."""
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)])


def map_padded(
    fn: Callable[..., object], *arrays: np.ndarray, batch_size: int
) -> np.ndarray | tuple[np.ndarray, ...]:
    """fn over chunks of `batch_size` rows of `arrays` (leading axes equal), each chunk padded to
    `batch_size`; the outputs' padding rows are dropped and the chunks concatenated. `fn` returns
    one array [batch_size, …] or a tuple of them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(arrays[0])
    if not count or any(len(a) != count for a in arrays):
        raise ValueError(
            f"arrays need the same number of rows (>= 1), got {[len(a) for a in arrays]}"
        )
    outputs = []
    for start in range(0, count, batch_size):
        chunk = [a[start : start + batch_size] for a in arrays]
        rows = len(chunk[0])
        result = fn(*(pad_rows(c, batch_size) for c in chunk))
        parts = result if isinstance(result, tuple) else (result,)
        outputs.append(tuple(np.asarray(p)[:rows] for p in parts))
    joined = tuple(np.concatenate(column) for column in zip(*outputs, strict=True))
    return joined if len(joined) > 1 else joined[0]
