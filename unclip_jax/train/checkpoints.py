"""Checkpoints that survive preemption: orbax CheckpointManager with async saves, resume from the
latest complete step, the data iterator's state saved with the model, restore onto any mesh, EMA
parameters alone for sampling, and a SIGTERM watcher agreed across processes.

Layout: `<workdir>/checkpoints/<step>/{state, ema, data}`, local or in a bucket (gs://). `state`
holds step, params, optimiser state and non-finite counters; `ema` the EMA parameters (what
samplers load); `data` the JSON states of every process's data iterator. A save interrupted by a
kill stays a `<step>.orbax-checkpoint-tmp-*` directory (in a bucket: a step directory without
orbax's `commit_success.txt`): resume ignores it, `storage.checkpoints.restore_ema_params`
refuses it.

Faults end the run with one line: a save that fails (a full disk) raises an `OSError` naming the
checkpoint directory and the step, and the step before stays the latest complete one; a
checkpoint that cannot be read (corrupt, truncated) raises a `ValueError` naming its directory.
After a preemption notice the loop saves and raises `Preempted`, which entry points turn into
exit code 143 (128 + SIGTERM) so that a scheduler can tell it from a finished run.
"""

import errno
import json
import logging as std_logging
import os
import signal
from collections.abc import Callable
from types import FrameType

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from unclip_jax.storage.checkpoints import DATA, EMA, STATE, unreadable
from unclip_jax.storage.locations import location
from unclip_jax.train.run_log import os_error
from unclip_jax.train.state import TrainState

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: saved, re-queue the job


class Preempted(Exception):
    """Training stopped at a preemption notice after saving `step` in `directory`."""

    def __init__(self, step: int, directory: epath.Path):
        super().__init__(
            f"preempted (SIGTERM): saved step {step} in {directory}; run the same command again "
            "to resume"
        )
        self.step = step
        self.directory = directory


def _state_fields(state: TrainState) -> dict:
    """The `state` item: everything but the EMA parameters (saved as their own item)."""
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "nonfinite_streak": state.nonfinite_streak,
        "nonfinite_total": state.nonfinite_total,
    }


def _gather_json(value: dict) -> list[dict]:
    """Every process's `value`, in process order (a collective when there are several)."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([encoded.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(n)]).decode())
        for row, n in zip(gathered, np.ravel(lengths), strict=True)
    ]


class _OrbaxTracebacks(std_logging.Filter):
    """Cuts the traceback from orbax's log of a failed background save: `Checkpoints` raises
    that error itself and the entry point reports it in one line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.exc_info and "orbax" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


_ORBAX_FILTER = _OrbaxTracebacks()


class Checkpoints:
    """Saves and restores train states under `directory` (one subdirectory per step)."""

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ):
        self.directory = location(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.failed = False  # a save failed (its error was raised)
        std_logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # once: filters are a set
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, EMA, DATA)
        )

    def _writing(self, doing: str, write: Callable[[], object]) -> object:
        """write() with its failure restated as one OSError naming the directory (orbax raises
        a background save's error at the next save or wait)."""
        try:
            return write()
        except OSError as error:
            self.failed = True
            raise os_error(error, self.directory, doing) from error
        except Exception as error:
            if "no space left" not in str(error).lower():
                raise
            self.failed = True
            full = OSError(errno.ENOSPC, "No space left on device")
            raise os_error(full, self.directory, doing) from error

    def latest_step(self) -> int | None:
        """The newest complete step (interrupted saves are never listed), or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving `state` at its step (asynchronously when enabled). All processes call
        this; `data_state` is this process's iterator state after the step's batch."""
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(_state_fields(state)),
                EMA: ocp.args.StandardSave(state.ema_params),
                DATA: ocp.args.JsonSave({"processes": _gather_json(data_state)}),
            }
        )
        return self._writing(
            f"saving checkpoint step {step}",
            lambda: self.manager.save(step, args=args, force=force),
        )

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict]:
        """(state, this process's data iterator state) at `step`, laid out as `target` says
        (ShapeDtypeStructs with shardings: any mesh, any number of devices)."""
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardRestore(_state_fields(target)),
                EMA: ocp.args.StandardRestore(target.ema_params),
                DATA: ocp.args.JsonRestore(),
            }
        )
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as error:
            raise unreadable(self.directory / str(step), error) from error
        fields = restored[STATE]
        state = TrainState(ema_params=restored[EMA], **fields)
        processes = restored[DATA]["processes"]
        if len(processes) != jax.process_count():
            raise ValueError(
                f"checkpoint step {step} in {self.directory} holds data states of "
                f"{len(processes)} processes; this run has {jax.process_count()}"
            )
        return state, processes[jax.process_index()]

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._writing("committing the last checkpoint", self.manager.wait_until_finished)

    def close(self) -> None:
        """Waits for pending saves and closes; after a failed save (already raised) it only logs,
        so that the first error is the one reported."""
        try:
            self._writing("closing the checkpoints", self.manager.close)
        except Exception as error:
            if not self.failed:
                raise
            logging.warning("closing %s after a failed save: %s", self.directory, error)


class PreemptionWatcher:
    """Tells the loop when to save and stop after a preemption notice (SIGTERM).

    One process: a SIGTERM handler sets a flag, read at the next step boundary. Several
    processes: the JAX preemption sync manager (which catches SIGTERM in any process and agrees on
    a step) answers via `multihost_utils.reached_preemption_sync_point`, so every process saves
    the same step. `close()` puts the previous handler back.
    """

    def __init__(self) -> None:
        self.notified = False
        self.multiprocess = jax.process_count() > 1
        self._previous = None
        if not self.multiprocess:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.notified = True

    def should_stop(self, step: int) -> bool:
        """Called by every process after each step with the same `step`."""
        if self.multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.notified

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
