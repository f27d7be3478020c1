"""Required flags, checked when a subcommand runs rather than when its module is imported.

absl's `mark_flags_as_required` registers a validator on the process-wide flag registry, so it
would also fire for every other subcommand imported into the same process (tests, notebooks).
"""

from absl import app, flags


def check_required(*names: str) -> None:
    """Raise a usage error naming every flag in `names` that was not given."""
    missing = [f"--{name}" for name in names if flags.FLAGS[name].value is None]
    if missing:
        raise app.UsageError(f"missing required flag(s): {', '.join(missing)}")
