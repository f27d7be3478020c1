"""`unclip train --config configs/X.py --workdir DIR [--config.a.b=value ...]`.

Parses flags, joins the other hosts of a multi-host run (`--distributed`, e.g. every worker of a
TPU pod slice runs the same command), keeps TensorFlow off accelerators, and hands off to the
trainer that `config.trainer` names.

Exit codes (for job scripts):
  0    finished: the last step is saved.
  1    error, one line on stderr naming the value or path: bad config values (checked before
       anything is compiled), an unwritable workdir, a full disk, a corrupt checkpoint, too many
       non-finite steps. Checkpoints saved before are kept.
  2    usage: a missing flag, a `--config.` override naming no field.
  143  preempted: SIGTERM received, the current step saved; re-queue the same command to resume.
"""

import sys
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from unclip_jax.commands.usage import check_usage
from unclip_jax.train import trainers
from unclip_jax.train.checkpoints import PREEMPTED_EXIT_CODE, Preempted

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment configuration file (a get_config(arg) module).", lock_config=True
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (auto-detected on Cloud TPU, SLURM and MPI; "
    "elsewhere give --coordinator_address, --num_processes and --process_id).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")


def load_config() -> ml_collections.ConfigDict:
    """`--config`, loaded; FileNotFoundError or ValueError naming the file when it cannot be."""
    try:
        config = FLAGS.config
        config.get("trainer")  # the flag loads lazily: this raises an earlier failure to load
    except OSError as error:
        path = FLAGS["config"].config_filename
        if not Path(path.split(":")[0]).is_file():
            raise FileNotFoundError(f"--config: no config file at {path}") from None
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError(f"--config {path} cannot be loaded: {lines[-1]}") from None
    return config


def main(argv: list[str]) -> None:
    check_usage(argv, "config", "workdir")
    config = load_config()
    train_and_evaluate = trainers.get_trainer(config.get("trainer", ""))
    if FLAGS.distributed:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    try:
        train_and_evaluate(config, FLAGS.workdir)
    except Preempted as preempted:
        print(f"unclip train: {preempted}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except FloatingPointError as error:
        # Too many non-finite steps: one line, exit 1 (a full disk or an unwritable path, an
        # OSError, is named by the dispatcher as `PATH: reason`).
        raise ValueError(str(error)) from None


if __name__ == "__main__":
    app.run(main)
