"""What a run prints: the package's own lines (one per stage, checkpoint or logged step), every
warning and error, and progress bars; the INFO chatter of libraries (orbax, TFDS, absl) only with
`--log_level=info`. While a log file is open (a workdir's `run.log`), every line of every level
also goes there; the file may be in a bucket (gs://, through epath).

    console.configure(FLAGS.log_level)
    with console.log_file(workdir / console.LOG_FILE):
        ...
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from absl import flags
from absl import logging as absl_logging
from etils import epath

LOG_FILE = "run.log"
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
PACKAGE_DIR = Path(__file__).resolve().parent

flags.DEFINE_enum(
    "log_level",
    "warning",
    list(LEVELS),
    "Lowest level of the libraries' log lines shown (the package's own lines always show; "
    "info: everything).",
)


class _LibraryLevel(logging.Filter):
    """Passes the package's own records and other records at `level` or above."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        return Path(record.pathname).resolve().is_relative_to(PACKAGE_DIR)


_installed: list[logging.Filter] = []


def configure(level: str = "warning") -> None:
    """Library records below `level` leave the console. Calling it again replaces the last
    call's setting."""
    if level not in LEVELS:
        raise ValueError(f"log_level must be one of {sorted(LEVELS)}, got {level!r}")
    console = absl_logging.get_absl_handler()
    for installed in _installed:
        console.removeFilter(installed)
    _installed[:] = [_LibraryLevel(LEVELS[level])]
    console.addFilter(_installed[0])


class _FileStream(logging.StreamHandler):
    """Records to an open file, flushed after a record at most every `flush_seconds` (0: after
    each) and when the file closes."""

    def __init__(self, stream: object, flush_seconds: float):
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self._flushed = time.monotonic()

    def flush(self) -> None:
        now = time.monotonic()
        if now - self._flushed >= self.flush_seconds:
            super().flush()
            self._flushed = now


@contextlib.contextmanager
def log_file(path: str | os.PathLike, flush_seconds: float = 0.0) -> Iterator[None]:
    """Every record of every level also goes to `path` (local or a URI; appended; its folder
    made) inside the block. `flush_seconds` > 0 spaces the flushes: a file in a bucket is
    uploaded whole at each one."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        handler = _FileStream(stream, flush_seconds)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(filename)s:%(lineno)d] %(message)s")
        )
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()
