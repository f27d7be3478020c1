"""Checks of a training run's config and workdir, made before anything is read, written or
compiled (`trainers.get_trainer` and the loop call them): each failure is one ValueError that
names the field or the path and what was expected.
"""

import math
import os
import uuid
from collections.abc import Iterator

import ml_collections
from etils import epath

from unclip_jax.storage.locations import location

# config.train fields -> their least allowed value.
TRAIN_MINIMUMS = {
    "total_steps": 1,
    "batch_size": 1,
    "grad_accum_steps": 1,
    "max_nonfinite_steps": 1,
}


def _floats(value: object, name: str) -> Iterator[tuple[str, float]]:
    """(dotted name, value) of every float in a config (sections, lists and tuples walked)."""
    if isinstance(value, ml_collections.ConfigDict | dict):
        for key, item in value.items():
            yield from _floats(item, f"{name}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _floats(item, f"{name}[{index}]")
    elif isinstance(value, float):
        yield name, value


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every float finite (learning rate, β, weight decay, EMA decay, ...) and the training
    length, batch and skip limit at least 1."""
    for name, value in _floats(config, "config"):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    train = config.get("train")
    if train is None:
        raise ValueError("config has no train section (total_steps, batch_size, ...)")
    for field, least in TRAIN_MINIMUMS.items():
        value = train.get(field, least)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"config.train.{field} must be an integer >= {least}, got {value!r}")


def check_workdir(workdir: str | os.PathLike) -> epath.Path:
    """The workdir (absolute, or a URI such as gs://bucket/run), created if missing and checked
    writable by writing a file in it (a permission check alone passes for root on a read-only
    mount)."""
    path = location(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"workdir {path} is not a writable directory: {reason}") from error
    return path
