"""What a run prints: the package's own lines (one per stage, checkpoint or logged step), every
warning and error, and progress bars; the INFO chatter of libraries (orbax, TFDS, absl) only with
`--log_level=info`. While a log file is open (a workdir's `run.log`), every line of every level
also goes there.

    console.configure(FLAGS.log_level)
    with console.log_file(workdir / console.LOG_FILE):
        ...
"""

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from absl import flags
from absl import logging as absl_logging

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


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Every record of every level also goes to `path` (appended; its folder made) inside the
    block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
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
