"""The `unclip` console script: help, subcommand dispatch, clear errors."""

import pathlib
import subprocess
import sys

import pytest

from unclip_jax import cli
from unclip_jax.train import trainers


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "unclip_jax.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def run_train(workdir, override):
    """`unclip train` of configs/base.py into `workdir` with one `--config.` override."""
    return run_cli("train", "--config", "configs/base.py", "--workdir", str(workdir), override)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in cli.SUBCOMMANDS:
        assert name in result.stdout


def test_unknown_subcommand_is_named():
    result = run_cli("paint")
    assert result.returncode == 2
    assert "'paint'" in result.stderr


def test_train_with_unknown_trainer_names_it_and_the_choices(tmp_path):
    result = run_train(tmp_path, "--config.trainer=nope")
    assert result.returncode == 1
    assert "config.trainer must be one of" in result.stderr and "'nope'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_has_help(name):
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--" in result.stdout + result.stderr


def test_unknown_trainer_error():
    with pytest.raises(ValueError, match="'missing'"):
        trainers.get_trainer("missing")


def test_config_override_typo_names_the_key_without_traceback(tmp_path):
    result = run_train(tmp_path, "--config.seeed=3")
    assert result.returncode == 2
    assert "seeed" in result.stderr and 'Did you mean "seed"' in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_required_flag_is_named(tmp_path):
    result = run_cli("train", "--config", "configs/base.py")
    assert result.returncode == 2
    assert "--workdir" in result.stderr and "Traceback" not in result.stderr


def test_configs_importing_siblings_load_from_any_directory(tmp_path):
    config = pathlib.Path(__file__).parents[1] / "configs" / "clip_shapes.py"
    result = run_cli(
        "train",
        f"--config={config}:smoke",
        "--workdir",
        str(tmp_path),
        "--config.trainer=nope",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "'nope'" in result.stderr and "ModuleNotFoundError" not in result.stderr


def test_subcommands_imported_together_keep_their_own_errors(tmp_path):
    """Every subcommand module loads into one process (tests, notebooks); a missing flag of one
    subcommand is reported by that subcommand only, not by every other one."""
    script = f"""
import importlib, sys
from unclip_jax import cli
for module, _ in cli.SUBCOMMANDS.values():
    importlib.import_module(module)
cli.run(["unclip", "generate", "--out={tmp_path / "o"}"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "at least one prompt" in result.stderr, result.stderr[-2000:]
    assert "diffusers-dir" not in result.stderr and "hf-dir" not in result.stderr


def test_missing_required_flag_of_a_converter_is_named(tmp_path):
    result = run_cli("convert-karlo", f"--out={tmp_path}")
    assert result.returncode == 2
    assert "--diffusers-dir" in result.stderr and "Traceback" not in result.stderr
