"""Every experiment config loads the way `unclip train --config` loads it, and a mistyped
`--config.` override is rejected with the key named."""

from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from unclip_jax.train import trainers

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.py"))


def parse(argv: list[str]):
    """Parses argv with a fresh flag set, as absl does for `unclip train`."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_a_known_trainer(path):
    config = parse(["unclip train", f"--config={path}"])
    assert config.trainer == "" or config.trainer in trainers.TRAINERS, config.trainer
    assert config.train.total_steps > 0 and config.train.batch_size > 0


def test_override_is_applied_and_typo_names_the_key():
    base = CONFIGS[[p.name for p in CONFIGS].index("base.py")]
    config = parse(["unclip train", f"--config={base}", "--config.optimizer.peak_lr=3e-4"])
    assert config.optimizer.peak_lr == 3e-4
    with pytest.raises(AttributeError, match=r"peak_lrr.*Did you mean \"peak_lr\""):
        parse(["unclip train", f"--config={base}", "--config.optimizer.peak_lrr=3e-4"])
