"""A compiled sampling program behind host-side argument checks.

The checks read Python values (guidance scales, temperatures, which null caption is given) that
become traced arrays inside the program, so they run on the host before each call.
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class CheckedProgram:
    """`program(*args)` jitted as `compiled`; each call binds its arguments to `program`'s
    signature (defaults applied), lets `check(arguments)` refuse or convert them by name (it may
    replace values in the dict), then runs `compiled` with them in order."""

    program: Callable[..., Any]
    compiled: Callable[..., Any]
    check: Callable[[dict[str, Any]], None]

    def __call__(self, *args, **kwargs):
        bound = inspect.signature(self.program).bind(*args, **kwargs)
        bound.apply_defaults()
        self.check(bound.arguments)
        return self.compiled(*bound.args, **bound.kwargs)
