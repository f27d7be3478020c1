"""`python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo --demo_out demo`."""

from pathlib import Path

from absl import app, flags

from unclip_jax import console
from unclip_jax.demo.run import define_flags, main


def quiet_main(argv: list[str]) -> None:
    """`main` with the libraries' INFO lines kept out of the console and in the workdir's log."""
    console.configure(flags.FLAGS.log_level)
    with console.log_file(Path(flags.FLAGS.workdir) / console.LOG_FILE):
        main(argv)


define_flags()
app.run(quiet_main)
