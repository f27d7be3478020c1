"""Fixtures of the sampling-command tests: a tiny random pipeline directory and an in-process
`unclip` runner (flags reset before each call)."""

import sys
from pathlib import Path

import pytest
from absl import flags

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_pipeline

from unclip_jax import cli


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny_pipeline"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture
def unclip(capsys, cache_dir):
    """unclip(*args) -> (exit code, stdout, stderr) of `unclip ARGS --compilation_cache=...`."""

    def run(*args: str) -> tuple[int, str, str]:
        flags.FLAGS.unparse_flags()
        argv = ["unclip", *args, f"--compilation_cache={cache_dir}", "--num_devices=1"]
        code = 0
        try:
            cli.run(argv)
        except SystemExit as exit_:
            code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
