"""A roofline cost model read from a compiled program's HLO text, counting every executed step.

XLA's own `cost_analysis()` counts a loop body once, so a program whose work sits in a `while`
(micro-batch scans, layer scans, sampling loops) is undercounted by the trip count, and its
`optimal_seconds` can come out negative. Here each instruction is costed where it runs:

- FLOPs: 2·M·N·K for `dot` (output elements × contracted size), 2 × output elements × kernel
  window × input features per group for `convolution`, one per output element for elementwise
  arithmetic and one per input element for reductions; inside fusions, summed over the fused body.
- HBM bytes: operands + result of each top-level instruction (a fusion's traffic is its operands
  and result; what it computes inside stays on chip); tuples, bitcasts, parameters, constants and
  get-tuple-element move nothing.
- Collective bytes: the larger of operands and result of all-reduce, all-gather, reduce-scatter,
  all-to-all and collective-permute (their -start forms).
- A `while` multiplies its body by its `known_trip_count` (loops without one are counted once and
  reported in `unknown_trip_counts`); `call`, `conditional` (each branch, as an upper bound) and
  async wrappers are entered.

An instruction takes max(FLOPs / peak, bytes / HBM bandwidth) + collective bytes / ICI bandwidth,
so the estimated utilisation FLOPs / (time × peak) is at most 1 and never negative.

    python -m unclip_jax.hlo_cost program.hlo --chip v5p   # HLO text of `compiled.as_text()`
"""

import argparse
import dataclasses
import json
import math
import pathlib
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures of a TPU generation (Cloud TPU documentation): bf16 dense peak FLOP/s,
    HBM bytes and bandwidth (bytes/s), and inter-chip interconnect bandwidth (bytes/s)."""

    peak_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    ici_bandwidth: float


CHIPS: dict[str, Chip] = {
    "v5p": Chip(peak_flops=459e12, hbm_bytes=95e9, hbm_bandwidth=2765e9, ici_bandwidth=600e9),
    "v5e": Chip(peak_flops=197e12, hbm_bytes=16e9, hbm_bandwidth=819e9, ici_bandwidth=200e9),
    "v6e": Chip(peak_flops=918e12, hbm_bytes=32e9, hbm_bandwidth=1640e9, ici_bandwidth=400e9),
}

BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4}
BYTES |= {"u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
BYTES |= {"f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "exponential",
    "log", "tanh", "logistic", "sqrt", "rsqrt", "power", "compare", "select", "clamp", "and",
    "or", "xor", "not", "sign", "floor", "ceil", "round-nearest-even", "round-nearest-afz", "sine",
    "cosine", "exponential-minus-one", "log-plus-one", "atan2", "remainder", "erf", "cbrt", "tan",
}  # fmt: skip
REDUCTIONS = {"reduce", "reduce-window"}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"}
FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str  # the result type text, e.g. "f32[8,64]{1,0}" or a tuple of them
    opcode: str
    operands: list[str]
    attributes: str


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    hbm_bytes: float = 0.0
    collective_bytes: float = 0.0
    seconds: float = 0.0
    unknown_trip_counts: int = 0

    def add(self, other: "Cost", times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.hbm_bytes += times * other.hbm_bytes
        self.collective_bytes += times * other.collective_bytes
        self.seconds += times * other.seconds
        self.unknown_trip_counts += other.unknown_trip_counts


def arrays(shape: str) -> list[tuple[str, list[int]]]:
    """(element type, dims) of every array in a type text (tuples flattened)."""
    return [
        (dtype, [int(d) for d in dims.split(",") if d])
        for dtype, dims in _ARRAY.findall(shape)
        if dtype in BYTES
    ]


def size_in_bytes(shape: str) -> int:
    return sum(BYTES[t] * math.prod(dims) for t, dims in arrays(shape))


def elements(shape: str) -> int:
    return sum(math.prod(dims) for _, dims in arrays(shape))


def parse(text: str) -> tuple[dict[str, dict[str, Instruction]], str]:
    """({computation: {instruction name: Instruction}} in order, the entry computation's name)."""
    computations: dict[str, dict[str, Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), {})
            entry = header.group(1) if line.startswith("ENTRY") else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if match:
            name, shape, opcode, operands, attributes = match.groups()
            names = [o.strip().split(" ")[-1].lstrip("%") for o in operands.split(",") if o.strip()]
            current[name] = Instruction(name, shape, opcode, names, attributes)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _called(attributes: str, key: str) -> list[str]:
    match = re.search(rf"\b{key}=\{{?([^}},]+(?:, ?%[^}},]+)*)\}}?", attributes)
    return [c.strip().lstrip("%") for c in match.group(1).split(",")] if match else []


def _trip_count(attributes: str) -> int | None:
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"', attributes)
    return int(match.group(1)) if match else None


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    lhs = arrays(shapes.get(instruction.operands[0], ""))
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attributes)
    if not lhs or not dims:
        return 0.0
    contracted = math.prod(lhs[0][1][int(d)] for d in dims.group(1).split(",") if d)
    return 2.0 * elements(instruction.shape) * contracted


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    kernel = arrays(shapes.get(instruction.operands[1], ""))
    labels = re.search(r"dim_labels=\w+_(\w+)->", instruction.attributes)
    if not kernel or not labels:
        return 0.0
    per_output = math.prod(
        size for label, size in zip(labels.group(1), kernel[0][1], strict=True) if label != "o"
    )  # the window and the input features of one group
    return 2.0 * elements(instruction.shape) * per_output


class CostModel:
    """The cost of a compiled program's HLO text on one chip."""

    def __init__(self, text: str, chip: Chip):
        self.computations, self.entry = parse(text)
        self.chip = chip

    def shapes(self, computation: str) -> dict[str, str]:
        return {name: i.shape for name, i in self.computations[computation].items()}

    def compute_flops(self, computation: str) -> float:
        """FLOPs of a fused body (nested fusions and calls entered)."""
        shapes, total = self.shapes(computation), 0.0
        for instruction in self.computations[computation].values():
            total += self._own_flops(instruction, shapes)
            for key in ("calls", "to_apply"):
                if instruction.opcode in ("fusion", "call"):
                    total += sum(
                        self.compute_flops(c) for c in _called(instruction.attributes, key)
                    )
        return total

    def _own_flops(self, instruction: Instruction, shapes: dict[str, str]) -> float:
        if instruction.opcode == "dot":
            return _dot_flops(instruction, shapes)
        if instruction.opcode == "convolution":
            return _convolution_flops(instruction, shapes)
        if instruction.opcode in ELEMENTWISE:
            return float(elements(instruction.shape))
        if instruction.opcode in REDUCTIONS:
            return float(sum(elements(shapes.get(o, "")) for o in instruction.operands[:1]))
        return 0.0

    def cost(self, computation: str | None = None) -> Cost:
        """The cost of running `computation` (the entry by default) once."""
        computation = computation or self.entry
        shapes, total = self.shapes(computation), Cost()
        for instruction in self.computations[computation].values():
            total.add(self._instruction_cost(instruction, shapes))
        return total

    def _instruction_cost(self, instruction: Instruction, shapes: dict[str, str]) -> Cost:
        opcode, attributes = instruction.opcode, instruction.attributes
        if opcode == "while":
            trips = _trip_count(attributes)
            body = Cost(unknown_trip_counts=int(trips is None))
            for name in _called(attributes, "body"):
                body.add(self.cost(name), times=1 if trips is None else trips)
            return body
        if opcode in ("call", "conditional", "async-start"):
            inner = Cost()
            for key in ("to_apply", "calls", "branch_computations"):
                for name in _called(attributes, key):
                    inner.add(self.cost(name))
            return inner
        if opcode in FREE or opcode.endswith("-done"):
            return Cost()
        moved = size_in_bytes(instruction.shape) + sum(
            size_in_bytes(shapes.get(o, "")) for o in instruction.operands
        )
        if opcode.removesuffix("-start") in COLLECTIVES:
            operands = sum(size_in_bytes(shapes.get(o, "")) for o in instruction.operands)
            traffic = max(operands, size_in_bytes(instruction.shape))
            return Cost(collective_bytes=traffic, seconds=traffic / self.chip.ici_bandwidth)
        flops = self._own_flops(instruction, shapes)
        if opcode == "fusion":
            flops = sum(self.compute_flops(c) for c in _called(attributes, "calls"))
        seconds = max(flops / self.chip.peak_flops, moved / self.chip.hbm_bandwidth)
        return Cost(flops=flops, hbm_bytes=moved, seconds=seconds)


def estimate(text: str, chip: Chip) -> dict[str, Any]:
    """The program's per-chip FLOPs, HBM and collective bytes, estimated step time and
    utilisation (FLOPs / time / peak, in [0, 1])."""
    cost = CostModel(text, chip).cost()
    return dict(
        flops_per_chip=cost.flops,
        hbm_bytes_per_step=cost.hbm_bytes,
        collective_bytes_per_step=cost.collective_bytes,
        estimated_step_s=cost.seconds,
        estimated_utilisation=cost.flops / cost.seconds / chip.peak_flops if cost.seconds else None,
        unknown_trip_counts=cost.unknown_trip_counts,
    )


def program_flops(text: str) -> float:
    """The FLOPs of one run of the program (per device of an SPMD program), every loop trip
    counted; the same on any chip."""
    return CostModel(text, CHIPS["v5p"]).cost().flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hlo", type=pathlib.Path, help="HLO text (compiled.as_text())")
    parser.add_argument("--chip", choices=sorted(CHIPS), default="v5p")
    args = parser.parse_args()
    print(json.dumps(estimate(args.hlo.read_text(), CHIPS[args.chip]), indent=2))


if __name__ == "__main__":
    main()
