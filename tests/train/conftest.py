"""Shared fixtures of the training-infrastructure tests: one uninterrupted reference run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_runs


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, compile_cache):
    """6 uninterrupted steps in one process (4 devices, mesh data=2 × fsdp=2): the dump."""
    workdir = tmp_path_factory.mktemp("straight")
    tiny_runs.run(workdir, "--dump", str(workdir / "out.npz"), cache_dir=compile_cache)
    return tiny_runs.load(workdir / "out.npz")
