"""Checkpoints that survive preemption: orbax CheckpointManager with async saves, resume from the
latest complete step, the data iterator's state saved with the model, restore onto any mesh, EMA
parameters alone for sampling, and a SIGTERM watcher agreed across processes.

Layout: `<workdir>/checkpoints/<step>/{state, ema, data}`. `state` holds step, params, optimiser
state and non-finite counters; `ema` the EMA parameters (what samplers load); `data` the JSON
states of every process's data iterator. A save interrupted by a kill stays a
`<step>.orbax-checkpoint-tmp-*` directory: resume ignores it,
`storage.checkpoints.restore_ema_params` refuses it.
"""

import json
import signal
from pathlib import Path
from types import FrameType

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from unclip_jax.storage.checkpoints import DATA, EMA, STATE
from unclip_jax.train.state import TrainState


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


class Checkpoints:
    """Saves and restores train states under `directory` (one subdirectory per step)."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, EMA, DATA)
        )

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
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict]:
        """(state, this process's data iterator state) at `step`, laid out as `target` says
        (ShapeDtypeStructs with shardings: any mesh, any number of devices)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardRestore(_state_fields(target)),
                    EMA: ocp.args.StandardRestore(target.ema_params),
                    DATA: ocp.args.JsonRestore(),
                }
            ),
        )
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


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
