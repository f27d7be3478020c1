"""The one writer of a run's logs: scalars and sample grids to TensorBoard
(`<workdir>/tensorboard`), grids as PNG (`<workdir>/samples/step_<N>.png`), scalars to the console.

Everything is written by the calling thread and flushed at each call, so that a failure (a full
disk, a path made read-only) is raised at the call that hit it as an `OSError` naming the file,
instead of killing a background writer thread and leaving the loop blocked behind its queue.
The workdir may be a bucket (gs://): files go through epath, and a flush there uploads the file.
"""

import contextlib
import errno
import os
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
from absl import logging
from etils import epath
from tensorboardX import summary
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from unclip_jax.train import images as images_lib


def os_error(error: OSError, path: str | os.PathLike, doing: str) -> OSError:
    """`error` restated in one line naming `path` and what was being done, e.g.
    "[Errno 28] No space left on device (writing checkpoint step 3): '/w/checkpoints'"."""
    code = error.errno if error.errno is not None else errno.EIO
    reason = error.strerror or str(error) or type(error).__name__
    return OSError(code, f"{reason} ({doing})", str(path))


@contextlib.contextmanager
def naming(path: str | os.PathLike, doing: str) -> Iterator[None]:
    """Re-raises an OSError of the block as `os_error(error, path, doing)`."""
    try:
        yield
    except OSError as error:
        raise os_error(error, path, doing) from error


class EventFile:
    """A TensorBoard event file, `events.out.tfevents.<time>.<host>` in `directory` (local or a
    URI), its events framed as TFRecords as tensorboardX's `RecordWriter` frames them."""

    def __init__(self, directory: epath.Path):
        self.path = directory / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._files = contextlib.ExitStack()
        self._file = self._files.enter_context(self.path.open("wb"))
        self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: event_pb2.Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        crcs = struct.pack("<I", masked_crc32c(header)), struct.pack("<I", masked_crc32c(data))
        self._file.write(header + crcs[0] + data + crcs[1])

    def flush(self) -> None:
        """Flushed to the disk (fsync) or, in a bucket, uploaded."""
        self._file.flush()
        if hasattr(self._file, "fileno"):
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._files.close()


class RunLog:
    """Scalars and images of one run; `enabled=False` (processes other than 0) writes nothing."""

    def __init__(self, workdir: epath.Path, enabled: bool):
        self.enabled = enabled
        self.directory = workdir / "tensorboard"
        self.samples = workdir / "samples"
        self._events: EventFile | None = None
        if enabled:
            with naming(self.directory, "creating the TensorBoard log"):
                self.directory.mkdir(parents=True, exist_ok=True)
                self._events = EventFile(self.directory)

    def _write(self, step: int, *values: object) -> None:
        """One event per summary `values`, then one flush (one upload in a bucket)."""
        with naming(self.directory, f"writing the TensorBoard log at step {step}"):
            for value in values:
                self._events.write(event_pb2.Event(wall_time=time.time(), step=step, summary=value))
            self._events.flush()

    def scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write(
            step, *(summary.scalar(f"{prefix}/{name}", float(v)) for name, v in values.items())
        )
        text = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        logging.info("step %d %s: %s", step, prefix, text)

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        """grid: uint8 [H, W, C], written as `<workdir>/samples/step_<step>.png` and an event."""
        if not self.enabled:
            return
        path = self.samples / f"step_{step}.png"
        with naming(path, f"writing the sample grid of step {step}"):
            images_lib.save_png(grid, path)
        self._write(step, summary.image(name, grid, dataformats="HWC"))

    def close(self) -> None:
        """Closes the event file; an error closing it is logged, never raised (the run's own
        outcome, or its first error, is what the caller reports)."""
        events, self._events = self._events, None
        if events is None:
            return
        try:
            events.close()
        except OSError as error:
            logging.warning("closing %s: %s", self.directory, error)
