"""`python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo --demo_out demo`."""

from unclip_jax.demo import run, stages

stages.launch(run.DEMO, "configs/demo.py", "workdirs/demo")
