"""A tiny trainer for the reliability tests of `unclip train`: the tiny regression task of
`tests/train/tiny_task.py` through the real loop, as a config file (`get_config`) and a trainer
(`train_and_evaluate`) that `register()` adds to `trainers.TRAINERS` under "tiny".

`config.step_sleep` slows each step and writes the last finished step to `<workdir>/progress`.
"""

import importlib.util
import sys
import time
from pathlib import Path

import ml_collections

TESTS = Path(__file__).parents[1]
BASE_CONFIG = TESTS.parent / "configs" / "base.py"
NAME = "tiny"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    spec = importlib.util.spec_from_file_location("training_base_config", BASE_CONFIG)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    config = base.get_config()
    config.trainer = NAME
    config.train.update(total_steps=2, batch_size=8, log_every=1, eval_every=0, sample_every=0)
    config.optimizer.update(peak_lr=1e-2, warmup_steps=1)
    config.ema.decay = 0.9
    config.checkpoint.update(every_steps=1, max_to_keep=3)
    config.step_sleep = 0.0
    return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> None:
    sys.path.insert(0, str(TESTS / "train"))
    import tiny_task

    from unclip_jax.train import loop

    def hook(step: int, state: object) -> None:
        if config.step_sleep:
            (Path(workdir) / "progress").write_text(str(step))
            time.sleep(config.step_sleep)

    data = tiny_task.TinyIterator(config.train.batch_size)
    loop.train_and_evaluate(config, workdir, tiny_task.TinyTask(), data, hooks=[hook])


def register() -> None:
    from unclip_jax.train import trainers

    trainers.TRAINERS[NAME] = f"{__name__}:train_and_evaluate"
