"""`unclip` in a child process with the tiny trainer registered, for the reliability tests that
signal the process or must end within a time limit.

    python tests/reliability/training_cli.py train --config tests/reliability/training_tiny.py ...

`UNCLIP_TEST_ENOSPC=events:N` makes the N-th TensorBoard event write fail with ENOSPC;
`UNCLIP_TEST_ENOSPC=checkpoint:S` makes the commit of checkpoint step S fail with ENOSPC.
"""

import errno
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import training_tiny


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_event_write(n: int) -> None:
    from unclip_jax.train import run_log

    write = run_log.EventFile.write
    count = [0]

    def failing(self, event):
        count[0] += 1
        if count[0] >= n:
            raise no_space()
        return write(self, event)

    run_log.EventFile.write = failing


def fail_checkpoint_commit(step: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def failing(self, *args, **kwargs):
        if self._final_path.name == str(step):
            raise no_space()
        return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = failing


def main() -> None:
    fault = os.environ.get("UNCLIP_TEST_ENOSPC", "")
    if fault:
        where, count = fault.split(":")
        {"events": fail_event_write, "checkpoint": fail_checkpoint_commit}[where](int(count))
    training_tiny.register()
    from unclip_jax import cli

    cli.run(["unclip", *sys.argv[1:]])


if __name__ == "__main__":
    main()
