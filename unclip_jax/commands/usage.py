"""A subcommand's usage, checked when it runs rather than when its module is imported: its
positional arguments and its required flags.

absl's `mark_flags_as_required` registers a validator on the process-wide flag registry, so it
would also fire for every other subcommand imported into the same process (tests, notebooks).
"""

from absl import app, flags


def check_usage(
    argv: list[str], *required: str, positional: int = 0, usage: str | None = None
) -> list[str]:
    """The `positional` arguments after the program name; a usage error (`usage`, or one naming
    the unexpected arguments) for any other count, and one naming every flag in `required` that
    was not given."""
    given = argv[1:]
    if len(given) != positional:
        raise app.UsageError(usage or f"unexpected arguments: {' '.join(given)}")
    missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
    if missing:
        raise app.UsageError(f"missing required flag(s): {', '.join(missing)}")
    return given
