"""Reading and writing parameter trees with orbax, and finding the complete step of a training
checkpoint: what the trainers write and the pipelines read, below both.

A training checkpoint is `<workdir>/checkpoints/<step>/{state, ema, data}` (`train.checkpoints`);
a save interrupted by a kill stays a `<step>.orbax-checkpoint-tmp-*` directory, which
`resolve_step_dir` refuses by name; in a bucket (gs://), where orbax writes the step directory in
place and commits it with a `commit_success.txt`, a step directory without it is refused likewise.
A file that cannot be read (corrupt, truncated) is one `ValueError` naming its directory
(`unreadable`), not orbax's traceback. Directories may be local or URIs (`storage.locations`).
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from unclip_jax.storage.locations import location

STATE, EMA, DATA = "state", "ema", "data"
TMP_MARKER = ".orbax-checkpoint-tmp"


def unreadable(directory: str | os.PathLike, error: BaseException) -> ValueError:
    """The one-line error of a checkpoint or parameter directory that cannot be read."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
    return ValueError(
        f"cannot read the checkpoint at {location(directory)} (corrupt or truncated?): {cause}"
    )


def write_params(directory: str | os.PathLike, params: Any) -> None:
    """Parameters (a pytree of arrays) as an orbax checkpoint at `directory`."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(location(directory), jax.tree.map(np.asarray, params), force=True)


def read_params(directory: str | os.PathLike, shardings: Any | None = None) -> Any:
    """The parameter tree at `directory` (`write_params`, or a checkpoint's `ema` item).

    `shardings`: a tree of shardings matching the parameters, for arrays placed on a mesh;
    default: numpy arrays on the host.
    """
    path = location(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"no parameter directory at {path}")
    on_host = shardings is None
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(path).item_metadata
            if on_host:
                device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
                shardings = jax.tree.map(lambda _: device, metadata)
            target = jax.tree.map(
                lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                metadata,
                shardings,
            )
            params = checkpointer.restore(path, target)
    except Exception as error:
        raise unreadable(path, error) from error
    return jax.device_get(params) if on_host else params


def committed(step_dir: epath.Path) -> bool:
    """Whether the save of a step directory was committed (orbax's own test: no temporary name
    locally, a `commit_success.txt` in a bucket)."""
    return ocp.path.step.is_path_finalized(step_dir)


def complete_steps(directory: epath.Path) -> list[int]:
    """The steps of `directory` whose saves were committed, in order."""
    return sorted(
        int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir() and committed(p)
    )


def resolve_step_dir(path: str | os.PathLike, step: int | None = None) -> epath.Path:
    """The directory of one complete checkpoint: `path` itself if it is a step directory, else
    step `step` (default: the latest) under `path`. ValueError for an interrupted save."""
    path = location(path)
    if TMP_MARKER in path.name or ((path / EMA).is_dir() and not committed(path)):
        parent = path.parent
        raise ValueError(
            f"checkpoint {path} is incomplete: its save was interrupted before it was committed; "
            f"complete steps in {parent}: {complete_steps(parent) if parent.is_dir() else []}"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    if (path / EMA).is_dir():
        return path
    steps = complete_steps(path)
    if step is None:
        if not steps:
            pending = sorted(
                p.name
                for p in path.iterdir()
                if TMP_MARKER in p.name or (p.name.isdigit() and not committed(p))
            )
            raise FileNotFoundError(
                f"no complete checkpoint in {path}"
                + (f"; incomplete (interrupted) saves: {pending}" if pending else "")
            )
        step = steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no complete checkpoint for step {step} in {path}; have {steps}")
    return path / str(step)


def restore_ema_params(
    path: str | os.PathLike, step: int | None = None, shardings: Any | None = None
) -> Any:
    """The EMA parameters alone (for sampling) from a checkpoint directory or one step of it.

    `shardings`: a tree of shardings matching the parameters; default: numpy arrays on the host.
    """
    return read_params(resolve_step_dir(path, step) / EMA, shardings)


def check_save_target(directory: str | os.PathLike, marker: str, kind: str) -> epath.Path:
    """Where a converter may write a `kind` checkpoint: a new or empty directory, or an earlier
    one of that kind (holding `marker`, which the write replaces); ValueError naming anything
    else. Converters check it before converting too."""
    path = location(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not (path / marker).is_file():
        raise ValueError(f"{path} exists and is not a {kind} checkpoint; not overwriting it")
    return path
