"""Test-wide environment (JAX on the CPU with 8 simulated devices, TensorFlow off accelerators)
and the fixtures of the tests that drive the CLI: tiny random pipeline directories (unCLIP's and
DALL·E's) and an in-process `unclip` runner (flags reset before each call)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    import tiny_pipeline

    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny_pipeline"))


@pytest.fixture(scope="session")
def dalle_dir(tmp_path_factory) -> Path:
    import tiny_dalle

    return tiny_dalle.build(tmp_path_factory.mktemp("tiny_dalle"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture
def unclip(capsys, cache_dir):
    """unclip(*args) -> (exit code, stdout, stderr) of `unclip ARGS --compilation_cache=...`."""

    from absl import flags

    from unclip_jax import cli

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
