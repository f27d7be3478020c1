"""`unclip train --config configs/X.py --workdir DIR [--config.a.b=value ...]`.

Parses flags, joins the other hosts of a multi-host run (`--distributed`, e.g. every worker of a
TPU pod slice runs the same command), keeps TensorFlow off accelerators, and hands off to the
trainer that `config.trainer` names.
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from unclip_jax.commands.usage import check_usage
from unclip_jax.train import trainers

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


def main(argv: list[str]) -> None:
    check_usage(argv, "config", "workdir")
    train_and_evaluate = trainers.get_trainer(FLAGS.config.trainer)
    if FLAGS.distributed:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
