"""The registry of training stages: `config.trainer` names one, `unclip train` runs it.

Entries are "module:function" strings imported on use, so choosing one stage does not import the
others. Each function has the signature `train_and_evaluate(config, workdir) -> None`;
`get_trainer` returns it behind the checks of `run_config` (config values, a writable workdir),
so that bad input is refused before a stage reads data, writes files or compiles.
"""

import functools
import importlib
from collections.abc import Callable

import ml_collections

from unclip_jax.train import run_config

TRAINERS: dict[str, str] = {
    "diffusion_prior": "unclip_jax.train.prior_task:train_and_evaluate",
    "ar_prior": "unclip_jax.train.ar_prior_task:train_and_evaluate",
    "clip": "unclip_jax.train.clip_task:train_and_evaluate",
    "decoder": "unclip_jax.train.decoder_task:train_and_evaluate",
    "upsampler": "unclip_jax.train.upsampler_task:train_and_evaluate",
    "dvae": "unclip_jax.train.dvae_task:train_and_evaluate",
    "dalle": "unclip_jax.train.dalle_task:train_and_evaluate",
}

Trainer = Callable[[ml_collections.ConfigDict, str], None]


def get_trainer(name: str) -> Trainer:
    """The training function registered under `name`; ValueError listing the known names."""
    if name not in TRAINERS:
        known = ", ".join(sorted(TRAINERS)) or "(none registered)"
        raise ValueError(f"config.trainer must be one of: {known}; got {name!r}")
    module_name, function_name = TRAINERS[name].split(":")
    trainer = getattr(importlib.import_module(module_name), function_name)

    @functools.wraps(trainer)
    def checked(config: ml_collections.ConfigDict, workdir: str) -> object:
        run_config.check_config(config)
        return trainer(config, str(run_config.check_workdir(workdir)))

    return checked
