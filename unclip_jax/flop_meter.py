"""The FLOPs of the compiled programs a piece of code runs: sampling cost measured, not modelled.

The sampling programs are jitted with `flop_meter.jit` (a `jax.jit` that can be metered). While a
`metering()` block is open, each call first lowers and compiles its program for the call's
arguments (JAX's compilation cache hands back the executable the call then runs: nothing is
compiled twice) and adds the program's FLOPs, every loop trip counted (`hlo_cost`), times the
devices it runs on; a later call with arguments of the same shapes, dtypes and shardings reuses
that count. Outside such a block a call is a plain jitted call.

    with flop_meter.metering() as meter:
        pipe.generate(captions, 4, seed=0)
    meter.flops, meter.calls  # over every program the generation ran
"""

import contextlib
import dataclasses
import re
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import jax

from unclip_jax import hlo_cost

_OPEN: list["Meter"] = []  # the meters of the open `metering()` blocks
_DEVICES = re.compile(r"\b(?:num_partitions|replica_count)=(\d+)")


@dataclasses.dataclass
class Meter:
    """FLOPs and calls of the programs run while it was open, in total and per program (the
    jitted function's qualified name, e.g. `DecoderChain._run_sample`)."""

    flops: float = 0.0
    calls: int = 0
    per_program: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, name: str, flops: float) -> None:
        self.flops += flops
        self.calls += 1
        self.per_program[name] = self.per_program.get(name, 0.0) + flops


@contextlib.contextmanager
def metering() -> Iterator[Meter]:
    """A meter of the metered programs called inside the block (blocks may nest)."""
    meter = Meter()
    _OPEN.append(meter)
    try:
        yield meter
    finally:
        _OPEN.remove(meter)


def program_devices(text: str) -> int:
    """Devices an SPMD program runs on, from its HLO module's header (1 if unpartitioned)."""
    header = text.split("\n", 1)[0]
    return max([1, *(int(n) for n in _DEVICES.findall(header))])


def _signature(args: tuple, kwargs: dict) -> tuple:
    """What selects the compiled program: the arguments' tree, each array's shape, dtype and
    sharding, and any other leaf itself (a static argument) where hashable."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    keys = []
    for leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            keys.append((tuple(leaf.shape), str(leaf.dtype), getattr(leaf, "sharding", None)))
        else:
            keys.append(leaf if isinstance(leaf, Hashable) else type(leaf))
    return tree, tuple(keys)


class Metered:
    """A jitted function whose calls a `metering()` block counts; otherwise passed through.
    Each program is costed once (per argument signature) and its FLOPs reused."""

    def __init__(self, jitted: jax.stages.Wrapped, name: str):
        self.jitted = jitted
        self.name = name
        self._flops: dict[tuple, float] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _OPEN:
            signature = _signature(args, kwargs)
            if signature not in self._flops:
                text = self.jitted.lower(*args, **kwargs).compile().as_text()
                self._flops[signature] = hlo_cost.program_flops(text) * program_devices(text)
            for meter in _OPEN:
                meter.add(self.name, self._flops[signature])
        return self.jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> jax.stages.Lowered:
        return self.jitted.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self.jitted._cache_size()


def jit(fn: Callable, **jit_kwargs: Any) -> Metered:
    """`jax.jit(fn, **jit_kwargs)`, counted inside `metering()` blocks."""
    return Metered(jax.jit(fn, **jit_kwargs), getattr(fn, "__qualname__", repr(fn)))
