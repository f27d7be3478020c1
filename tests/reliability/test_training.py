"""`unclip train` on bad input and faults: one line on stderr naming the value or the path, the
documented exit code (1 error, 2 usage, 143 preempted), no traceback, nothing saved before lost,
and a full disk or a SIGTERM ending the run within seconds.

Runs the tiny trainer of `training_tiny.py` (registered as "tiny") in-process, and in a child
process (`training_cli.py`) where a signal or a time limit is needed.
"""

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from absl import flags

sys.path.insert(0, str(Path(__file__).parent))
import training_tiny

from unclip_jax import cli
from unclip_jax.storage import checkpoints as storage

HERE = Path(__file__).parent
CONFIG = str(HERE / "training_tiny.py")
CLI = HERE / "training_cli.py"
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training_cache")


@pytest.fixture
def train(capsys, monkeypatch):
    """train(workdir, *overrides) -> (exit code, stderr) of `unclip train` in this process."""
    training_tiny.register()

    def run(workdir: Path | str, *args: str, config: str = CONFIG) -> tuple[int, str]:
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # a config file's override flags, defined when parsed
        argv = ["unclip", "train", f"--config={config}", f"--workdir={workdir}", *args]
        monkeypatch.setattr(sys, "argv", argv)  # config_flags finds `--config.` overrides there
        code = 0
        try:
            cli.run(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        return code, capsys.readouterr().err

    return run


def child(workdir: Path, *args: str, cache_dir: Path, fault: str = "") -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "UNCLIP_TEST_ENOSPC": fault,
    }
    command = [sys.executable, str(CLI), "train", f"--config={CONFIG}", f"--workdir={workdir}"]
    return subprocess.Popen(
        [*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"no exit within {timeout} s:\n{err[-2000:]}") from None
    return process.returncode, err


def snapshot(directory: Path) -> dict[str, str]:
    """Hash of every file under `directory` (the saved files a failed call must not change)."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def error_line(err: str, code: int, expected: int, *needles: str) -> str:
    """The `unclip train:` line of stderr, checked: exit code, no traceback, names `needles`."""
    assert code == expected, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("unclip train")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workdir with complete checkpoints of steps 1 and 2 of the tiny trainer."""
    workdir = tmp_path_factory.mktemp("trained")
    training_tiny.train_and_evaluate(training_tiny.get_config(), str(workdir))
    assert storage.complete_steps(workdir / "checkpoints") == [1, 2]
    return workdir


def test_missing_config_file_is_named(train, tmp_path):
    code, err = train(tmp_path / "w", config=str(tmp_path / "nope.py"))
    error_line(err, code, 1, "nope.py", "no config file")


def test_misspelt_config_field_is_a_usage_error(train, tmp_path):
    code, err = train(tmp_path / "w", "--config.optimizer.peak_lrr=1")
    error_line(err, code, 2, "peak_lrr")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, named",
    [
        ("--config.train.batch_size=0", "config.train.batch_size"),
        ("--config.train.total_steps=0", "config.train.total_steps"),
        ("--config.train.total_steps=-3", "config.train.total_steps"),
        ("--config.optimizer.peak_lr=nan", "config.optimizer.peak_lr"),
        ("--config.optimizer.b2=inf", "config.optimizer.b2"),
        ("--config.optimizer.weight_decay=nan", "config.optimizer.weight_decay"),
        ("--config.ema.decay=nan", "config.ema.decay"),
    ],
)
def test_bad_config_value_is_refused_by_name_before_anything_is_written(
    train, trained, override, named
):
    before = snapshot(trained)
    started = time.monotonic()
    code, err = train(trained, override)
    error_line(err, code, 1, named, override.split("=")[1])
    assert snapshot(trained) == before
    assert time.monotonic() - started < 5  # refused before compiling


def test_unwritable_workdir_is_refused_before_compiling(train, tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: a path no one can create
        workdir = Path("/sys/unclip_reliability_workdir")
    else:
        workdir = tmp_path / "read_only"
        workdir.mkdir()
        workdir.chmod(0o555)
    code, err = train(workdir)
    error_line(err, code, 1, str(workdir), "not a writable directory")


def test_corrupt_checkpoint_is_one_error_naming_it(train, trained, tmp_path):
    workdir = tmp_path / "w"
    os.system(f"cp -r {trained} {workdir}")
    for path in (workdir / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    before = snapshot(workdir / "checkpoints")
    code, err = train(workdir, "--config.train.total_steps=4")
    error_line(err, code, 1, "cannot read the checkpoint", str(workdir / "checkpoints" / "2"))
    assert snapshot(workdir / "checkpoints") == before


def test_corrupt_parameter_file_is_one_error_naming_it(trained, tmp_path):
    ema = tmp_path / "ema"
    os.system(f"cp -r {trained / 'checkpoints' / '2' / 'ema'} {ema}")
    for path in ema.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    with pytest.raises(ValueError, match=f"cannot read the checkpoint at {ema}") as info:
        storage.read_params(ema)
    assert "\n" not in str(info.value)


def test_os_error_is_restated_on_one_line_naming_the_path():
    from unclip_jax.train import run_log

    error = run_log.os_error(OSError(errno.ENOSPC, "No space left on device"), "/w/x", "saving")
    assert error.errno == errno.ENOSPC
    assert str(error) == "[Errno 28] No space left on device (saving): '/w/x'"


@pytest.mark.parametrize(
    "fault, path",
    [("events:15", "tensorboard"), ("checkpoint:3", "checkpoints")],
    ids=["metrics_writer", "checkpoint_writer"],
)
def test_full_disk_fails_fast_and_keeps_the_last_checkpoint(tmp_path, cache_dir, fault, path):
    """ENOSPC at a writer: exit 1 within 30 s, one line naming the path and "no space left";
    the last complete checkpoint stays complete and the latest."""
    workdir = tmp_path / "w"
    started = time.monotonic()
    process = child(
        workdir, "--config.train.total_steps=4", "--config.checkpoint.async_save=true",
        cache_dir=cache_dir, fault=fault,
    )  # fmt: skip
    code, err = finish(process, timeout=60)
    elapsed = time.monotonic() - started
    error_line(err, code, 1, "no space left", str(workdir / path))
    steps = storage.complete_steps(workdir / "checkpoints")
    assert steps == [1, 2] if path == "checkpoints" else steps, steps
    assert storage.read_params(workdir / "checkpoints" / str(steps[-1]) / "ema")
    assert elapsed < 30, elapsed


def test_sigterm_saves_and_exits_143(tmp_path, cache_dir):
    workdir = tmp_path / "w"
    process = child(
        workdir, "--config.train.total_steps=50", "--config.step_sleep=0.3",
        "--config.checkpoint.every_steps=100", cache_dir=cache_dir,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (workdir / "progress").exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.1)
    assert (workdir / "progress").exists(), "the run never finished a step"
    process.terminate()
    code, err = finish(process, timeout=30)
    stopped = int((workdir / "progress").read_text())
    error_line(err, code, 143, "preempted", f"saved step {stopped}")
    assert storage.complete_steps(workdir / "checkpoints") == [stopped]
