"""What a run prints: the package's own lines (one per stage, checkpoint or logged step), every
warning and error, and progress bars; the INFO chatter of libraries (orbax, TFDS, absl) only with
`--log_level=info`. With a log file (a workdir's `run.log`), every line of every level goes there.

    console.configure(FLAGS.log_level, log_file=Path(FLAGS.workdir) / console.LOG_FILE)
"""

import logging
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


_installed: list[tuple[logging.Handler | logging.Filterer, object]] = []


def configure(level: str = "warning", log_file: Path | None = None) -> None:
    """Library records below `level` leave the console; all records also go to `log_file` (its
    folder made) when given. Calling it again replaces what the last call set up."""
    if level not in LEVELS:
        raise ValueError(f"log_level must be one of {sorted(LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for owner, item in _installed:
        if isinstance(item, logging.Filter):
            owner.removeFilter(item)
        else:
            root.removeHandler(item)
            item.close()
    _installed.clear()
    console = absl_logging.get_absl_handler()
    library_filter = _LibraryLevel(LEVELS[level])
    console.addFilter(library_filter)
    _installed.append((console, library_filter))
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(filename)s:%(lineno)d] %(message)s")
        )
        root.addHandler(to_file)
        _installed.append((root, to_file))
