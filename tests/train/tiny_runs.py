"""Runs `run_tiny.py` in subprocesses: one process, or two joined by jax.distributed."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parent / "run_tiny.py"
REPO = Path(__file__).parents[2]


def env(cache_dir: Path) -> dict:
    """The child environment: a shared persistent compilation cache speeds repeated runs."""
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        "PYTHONPATH": str(REPO),
    }


def start(workdir: Path, *args: str, cache_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--workdir", str(workdir), *args],
        env=env(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(
            f"run_tiny.py did not finish in {timeout}s:\n{output[-3000:]}"
        ) from None
    return process.returncode, output


def run(workdir: Path, *args: str, cache_dir: Path, expect: int = 0) -> str:
    code, output = finish(start(workdir, *args, cache_dir=cache_dir))
    assert code == expect, f"exit code {code}, expected {expect}:\n{output[-3000:]}"
    return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_pair(workdir: Path, *args: str, cache_dir: Path) -> list[subprocess.Popen]:
    """Two processes × 2 devices, process 0 coordinating on a free local port."""
    port = str(free_port())
    common = ["--devices", "2", "--num_processes", "2", "--port", port, *args]
    return [start(workdir, *common, "--process_id", str(i), cache_dir=cache_dir) for i in range(2)]


def wait_for_progress(workdir: Path, process_index: int, step: int, timeout: float = 90) -> None:
    """Until the slowed-down run of `process_index` has finished `step` steps."""
    path = workdir / f"progress_{process_index}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip() and int(path.read_text()) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach step {step} in {timeout}s")


def progress(workdir: Path, process_index: int = 0) -> int:
    return int((workdir / f"progress_{process_index}").read_text())


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every saved array equal (bitwise when atol = 0), start_step aside."""
    assert sorted(a) == sorted(b)
    for key in a:
        if key == "start_step":
            continue
        if atol == 0.0:
            assert np.array_equal(a[key], b[key]), f"{key} differs"
        else:
            np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def complete_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
