"""Trains the tiny task through `loop.train_and_evaluate` in its own process, for the tests that
kill, signal or run several processes.

    python tests/train/run_tiny.py --workdir DIR --devices 4 [--dump out.npz] [--kill_at K]
        [--hang_save_at S] [--step_sleep SECONDS] [--num_processes 2 --process_id I --port P]
        [--total_steps 6 --checkpoint_every 1 --sync_save --poison 1,2 --max_nonfinite_steps K]

`--dump` writes the final state (params, EMA, optimiser state, step, counters), the next batch
of the iterator and the step the run started from (0 or the resumed checkpoint) to an .npz file.
`--kill_at K` SIGKILLs the process after step K; `--hang_save_at S` stops the checkpoint of step S
just before it is committed (the parent then kills the process mid-save); `--step_sleep` slows
each step and writes the last finished step to `<workdir>/progress`. A SIGTERM saves and exits
with 143, as `unclip train` does.
"""

import argparse
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path


def parse() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--dump", default="")
    parser.add_argument("--kill_at", type=int, default=0)
    parser.add_argument("--hang_save_at", type=int, default=0)
    parser.add_argument("--step_sleep", type=float, default=0.0)
    parser.add_argument("--poison", default="")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--total_steps", type=int, default=6)
    parser.add_argument("--checkpoint_every", type=int, default=1)
    parser.add_argument("--sync_save", action="store_true")
    parser.add_argument("--max_nonfinite_steps", type=int, default=10)
    return parser.parse_args()


args = parse()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if args.num_processes > 1:
    jax.distributed.initialize(
        coordinator_address=f"localhost:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        heartbeat_timeout_seconds=10,
        initialization_timeout=60,
    )

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import tiny_task  # noqa: E402

from unclip_jax.train import checkpoints, loop  # noqa: E402

BASE_CONFIG = Path(__file__).parents[2] / "configs" / "base.py"


def make_config():
    spec = importlib.util.spec_from_file_location("base_config", BASE_CONFIG)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    config = base.get_config()
    config.mesh = {"data": 2, "fsdp": 2, "tensor": 1}
    config.train.total_steps = args.total_steps
    config.train.max_nonfinite_steps = args.max_nonfinite_steps
    config.train.batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 0
    config.train.sample_every = 0
    config.optimizer.peak_lr = 1e-2
    config.optimizer.warmup_steps = 2
    config.optimizer.weight_decay = 0.1
    config.ema.decay = 0.9
    config.checkpoint.every_steps = args.checkpoint_every
    config.checkpoint.async_save = not args.sync_save
    return config


def hang_commit_of(step: int, marker: Path) -> None:
    """Makes the save of `step` write `marker` and wait forever just before its commit."""
    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def hanging_finalize(self):
        if self._final_path.name == str(step):
            marker.write_text(str(step))
            while True:
                time.sleep(1.0)
        return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = hanging_finalize


def main() -> None:
    logging.set_verbosity(logging.WARNING)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = make_config()
    poison = {int(i) for i in args.poison.split(",") if i}
    data = tiny_task.TinyIterator(
        config.train.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        poison=poison,
    )
    checkpoint_dir = workdir / "checkpoints"
    done = sorted(int(p.name) for p in checkpoint_dir.glob("*") if p.name.isdigit())
    start_step = done[-1] if done else 0
    if args.hang_save_at:
        hang_commit_of(args.hang_save_at, workdir / "hanging")

    def hook(step: int, state) -> None:
        if args.step_sleep:
            (workdir / f"progress_{jax.process_index()}").write_text(str(step))
            time.sleep(args.step_sleep)
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        state = loop.train_and_evaluate(
            config, workdir, tiny_task.TinyTask(), data, eval_data=None, hooks=[hook]
        )
    except checkpoints.Preempted:
        sys.exit(checkpoints.PREEMPTED_EXIT_CODE)
    next_batch = next(data)
    state = multihost_utils.process_allgather(state, tiled=True)
    next_batch = multihost_utils.process_allgather(next_batch, tiled=True)
    if args.dump and jax.process_index() == 0:
        leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        arrays = {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}
        arrays.update({f"next_batch/{k}": np.asarray(v) for k, v in next_batch.items()})
        arrays["start_step"] = np.asarray(start_step)
        np.savez(args.dump, **arrays)


if __name__ == "__main__":
    main()
