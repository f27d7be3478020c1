"""The console: the package's own log lines and every warning show, the libraries' INFO lines
(orbax, TFDS, absl) only at `--log_level=info`, and a workdir's `run.log` holds everything."""

import logging
import re

import pytest
from absl import logging as absl_logging
from reliability.test_training import child, finish

from unclip_jax import console

LIBRARY_FILES = r"(checkpoint_manager|async_checkpointer|atomicity)\.py"
LIBRARY_INFO = re.compile(rf"^I\d{{4}} .*{LIBRARY_FILES}", re.M)  # absl's console format
LOGGED_INFO = re.compile(rf"^\S+ \S+ INFO {LIBRARY_FILES}", re.M)  # the log file's


def record(level: int, pathname: str) -> logging.LogRecord:
    return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


@pytest.fixture
def restored():
    yield
    console.configure("info")


def test_library_info_is_kept_out_of_the_console_and_the_package_lines_are_not(restored):
    console.configure("warning")
    handler = absl_logging.get_absl_handler()
    own = str(console.PACKAGE_DIR / "train" / "loop.py")
    assert handler.filter(record(logging.INFO, own))
    assert not handler.filter(record(logging.INFO, "/site-packages/orbax/checkpoint/x.py"))
    assert handler.filter(record(logging.WARNING, "/site-packages/orbax/checkpoint/x.py"))
    console.configure("info")
    assert handler.filter(record(logging.INFO, "/site-packages/orbax/checkpoint/x.py"))
    console.configure("error")
    assert not handler.filter(record(logging.WARNING, "/site-packages/orbax/checkpoint/x.py"))
    assert handler.filter(record(logging.WARNING, own))  # below `error`, but the package's


def test_configure_replaces_the_last_setup_and_refuses_unknown_levels(restored):
    handler = absl_logging.get_absl_handler()
    for _ in range(3):
        console.configure("warning")
    assert sum(isinstance(f, console._LibraryLevel) for f in handler.filters) == 1
    with pytest.raises(ValueError, match=r"log_level must be one of .* got 'loud'"):
        console.configure("loud")


def test_a_log_file_takes_every_level_inside_its_block_only(tmp_path):
    path = tmp_path / "a" / console.LOG_FILE
    library = logging.getLogger("orbax.test")
    library.setLevel(logging.DEBUG)
    with console.log_file(path):
        library.debug("inside")
    library.debug("after")
    assert "DEBUG" in path.read_text() and "inside" in path.read_text()
    assert "after" not in path.read_text()


def test_a_training_run_is_quiet_and_its_log_file_holds_the_rest(tmp_path, cache_dir):
    workdir = tmp_path / "quiet"
    code, err = finish(child(workdir, cache_dir=cache_dir), timeout=300)
    assert code == 0, err[-3000:]
    assert not LIBRARY_INFO.search(err), err[-3000:]
    assert "step 2" in err  # the loop's own line per logged step
    assert LOGGED_INFO.search((workdir / console.LOG_FILE).read_text())

    code, err = finish(child(tmp_path / "loud", "--log_level=info", cache_dir=cache_dir), 300)
    assert code == 0, err[-3000:]
    assert LIBRARY_INFO.search(err)
