"""`python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo --demo_out demo`."""

from absl import app

from unclip_jax.demo.run import define_flags, main

define_flags()
app.run(main)
