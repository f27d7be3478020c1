"""A roofline cost model read from a compiled program's HLO text, counting every executed step.

XLA's own `cost_analysis()` counts a loop body once, so a program whose work sits in a `while`
(micro-batch scans, layer scans, sampling loops) is undercounted by the trip count, and its
`optimal_seconds` can come out negative. Here each instruction is costed where it runs:

- FLOPs: 2·M·N·K for `dot` (output elements × contracted size); for `convolution`, 2 × the
  multiply-adds that read real input: input features / feature_group_count × output features ×
  batch / batch_group_count × the product over spatial dimensions of the (output position, kernel
  tap) pairs that land on an input element, not on padding nor on a hole of `lhs_dilate` (TPU
  lowers attention's batched dots to such dilated convolutions); one per output element for
  elementwise arithmetic and one per input element for reductions; inside fusions, summed over
  the fused body. The oneDNN convolutions of `nn/conv.py` (FFI custom calls) count as the
  `convolution`s they replace.
- HBM bytes: operands + result of each top-level instruction (a fusion's traffic is its operands
  and result; what it computes inside stays on chip), counting only arrays in the default memory
  space (a TPU layout's `S(n)`, n ≥ 1, is on-chip memory: prefetched weights, activations and
  scalars held there move no HBM bytes). A `slice` or `dynamic-slice` reads only its slice, also
  where slices are all a fusion does with a parameter; a `dynamic-update-slice` reads and writes
  only its update (in place), also as a fusion's output (its buffer parameter then read for
  nothing); an async prefetch (`copy-start`, `slice-start`) reads its destination's bytes (a
  copy, or a slice of its operand) and writes them, each side where it is in HBM (not its whole
  operand, nor the tuple that echoes it). Tuples, bitcasts, `ConcatBitcast` custom-calls
  (prefetched slices joined in place), optimisation barriers, parameters, constants,
  get-tuple-element and the `-done` of async ops move nothing.
- Collective bytes: the larger of operands and result of all-reduce, all-gather, reduce-scatter,
  all-to-all and collective-permute (their -start forms).
- A `while` multiplies its body by its `known_trip_count`, or by the count its shape shows
  (`counter < N` from a constant start); a loop without either (a traced trip count) is
  multiplied by `unknown_trip_count` where given, else counted once, and either way reported in
  `unknown_trip_counts`. A `conditional` counts its costliest branch (by time), the
  one that runs at worst; `call` and async wrappers are entered.

An instruction takes max(FLOPs / peak, bytes / HBM bandwidth) + collective bytes / ICI bandwidth,
so the estimated utilisation FLOPs / (time × peak) is at most 1 and never negative.

    python -m unclip_jax.hlo_cost program.hlo --chip v5p   # HLO text of `compiled.as_text()`
    python -m unclip_jax.hlo_cost chain.hlo --chip v5e --unknown-trip-count 25
"""

import argparse
import collections
import dataclasses
import functools
import json
import math
import pathlib
import re
from typing import Any

from unclip_jax.hlo_text import (
    Instruction,
    array_list,
    arrays,
    called,
    elements,
    hbm_size,
    parse,
    size_in_bytes,
    trip_count,
)


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

ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "exponential",
    "log", "tanh", "logistic", "sqrt", "rsqrt", "power", "compare", "select", "clamp", "and",
    "or", "xor", "not", "sign", "floor", "ceil", "round-nearest-even", "round-nearest-afz", "sine",
    "cosine", "exponential-minus-one", "log-plus-one", "atan2", "remainder", "erf", "cbrt", "tan",
}  # fmt: skip
REDUCTIONS = {"reduce", "reduce-window"}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"}
FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}
FREE |= {"opt-barrier"}
PREFETCHES = {"copy-start", "slice-start"}  # async copies: (operand echo, destination, context)
SLICES = {"slice", "dynamic-slice"}
FREE_CUSTOM_CALLS = {"ConcatBitcast"}  # TPU: prefetched slices, contiguous, joined in place


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


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    lhs = arrays(shapes.get(instruction.operands[0], ""))
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attributes)
    if not lhs or not dims:
        return 0.0
    contracted = math.prod(lhs[0][1][int(d)] for d in dims.group(1).split(",") if d)
    return 2.0 * elements(instruction.shape) * contracted


def _window(attributes: str) -> list[dict[str, int]]:
    """Per spatial dimension of a convolution's `window={...}`: stride, low padding and the lhs
    (base) and rhs (window) dilations, XLA's defaults where absent."""
    match = re.search(r"window=\{([^}]*)\}", attributes)
    if not match:
        return []
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    rank = len(fields["size"].split("x"))
    keys = dict(stride="stride", pad="pad", lhs="lhs_dilate", rhs="rhs_dilate")
    columns = {
        key: [int(v.split("_")[0]) for v in fields[name].split("x")] if name in fields else None
        for key, name in keys.items()
    }
    defaults = dict(stride=1, pad=0, lhs=1, rhs=1)
    return [
        {key: values[d] if values else defaults[key] for key, values in columns.items()}
        for d in range(rank)
    ]


@functools.cache
def _window_taps(inputs: int, outputs: int, size: int, stride=1, pad=0, lhs=1, rhs=1) -> int:
    """The (output position, kernel tap) pairs of one spatial dimension whose tap reads an input
    element: position o·stride + k·rhs − pad of the input dilated by `lhs` (its holes between
    elements) must hold an element, not a hole nor padding."""
    total, last = 0, (inputs - 1) * lhs  # the dilated input's last element
    for tap in range(size):
        offset = tap * rhs - pad  # output o reads dilated position o·stride + offset
        first, end = max(0, -(offset // stride)), min(outputs - 1, (last - offset) // stride)
        if lhs == 1:
            total += max(0, end - first + 1)
        else:
            total += sum((o * stride + offset) % lhs == 0 for o in range(first, end + 1))
    return total


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    lhs = arrays(shapes.get(instruction.operands[0], ""))
    rhs = arrays(shapes.get(instruction.operands[1], ""))
    out = arrays(instruction.shape)
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.attributes)
    if not (lhs and rhs and out and labels):
        return 0.0
    (lhs_labels, lhs_dims), (rhs_labels, rhs_dims), (out_labels, out_dims) = zip(
        labels.groups(), (lhs[0][1], rhs[0][1], out[0][1]), strict=True
    )
    pairs = 1
    for d, window in enumerate(_window(instruction.attributes)):
        inputs, outputs = lhs_dims[lhs_labels.index(str(d))], out_dims[out_labels.index(str(d))]
        size = rhs_dims[rhs_labels.index(str(d))]
        pairs *= _window_taps(inputs, outputs, size, **window)
    groups = [
        int(m.group(1)) if (m := re.search(rf"{key}=(\d+)", instruction.attributes)) else 1
        for key in ("feature_group_count", "batch_group_count")
    ]
    features = lhs_dims[lhs_labels.index("f")] // groups[0] * out_dims[out_labels.index("f")]
    return 2.0 * features * (lhs_dims[lhs_labels.index("b")] // groups[1]) * pairs


# The FFI convolutions of `nn/conv.py` (same-padded, stride 1, NHWC / HWIO): where each finds the
# convolution's input x and kernel among its operands (0, 1) and result ("out").
NATIVE_CONVOLUTIONS = {
    "unclip_conv_forward": (0, 1),
    "unclip_conv_backward_input": ("out", 1),
    "unclip_conv_backward_kernel": (0, "out"),
}


def _native_convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 × the multiply-adds on real input of a same-padded convolution (as for `convolution`);
    its two gradients cost the same."""
    target = re.search(r'custom_call_target="([^"]*)"', instruction.attributes)
    places = NATIVE_CONVOLUTIONS.get(target.group(1)) if target else None
    if places is None:
        return 0.0
    arrays_of = [arrays(shapes.get(o, "")) for o in instruction.operands[:2]]
    (n, h, w, ci), (kh, kw, _, co) = (
        (arrays(instruction.shape) if p == "out" else arrays_of[p])[0][1] for p in places
    )
    taps = _window_taps(h, h, kh, pad=(kh - 1) // 2) * _window_taps(w, w, kw, pad=(kw - 1) // 2)
    return 2.0 * n * ci * co * taps


class CostModel:
    """The cost of a compiled program's HLO text on one chip; loops without a known trip count
    run `unknown_trip_count` times (None: once)."""

    def __init__(self, text: str, chip: Chip, unknown_trip_count: int | None = None):
        self.computations, self.entry = parse(text)
        self.chip = chip
        self.unknown_trip_count = unknown_trip_count
        self._costs: dict[str, Cost] = {}

    def shapes(self, computation: str) -> dict[str, str]:
        return {name: i.shape for name, i in self.computations[computation].items()}

    def loops_without_trip_count(self) -> list[str]:
        """The bodies of the `while` loops whose trip count is unknown (traced)."""
        return [
            body
            for name, computation in self.computations.items()
            for instruction in computation.values()
            if instruction.opcode == "while"
            and trip_count(self.computations, instruction, name) is None
            for body in called(instruction.attributes, "body")
        ]

    def compute_flops(self, computation: str) -> float:
        """FLOPs of a fused body (nested fusions and calls entered)."""
        shapes, total = self.shapes(computation), 0.0
        for instruction in self.computations[computation].values():
            total += self._own_flops(instruction, shapes)
            for key in ("calls", "to_apply"):
                if instruction.opcode in ("fusion", "call"):
                    total += sum(self.compute_flops(c) for c in called(instruction.attributes, key))
        return total

    def _own_flops(self, instruction: Instruction, shapes: dict[str, str]) -> float:
        if instruction.opcode == "dot":
            return _dot_flops(instruction, shapes)
        if instruction.opcode == "convolution":
            return _convolution_flops(instruction, shapes)
        if instruction.opcode == "custom-call":
            return _native_convolution_flops(instruction, shapes)
        if instruction.opcode in ELEMENTWISE:
            return float(elements(instruction.shape))
        if instruction.opcode in REDUCTIONS:
            return float(sum(elements(shapes.get(o, "")) for o in instruction.operands[:1]))
        return 0.0

    def cost(self, computation: str | None = None) -> Cost:
        """The cost of running `computation` (the entry by default) once."""
        computation = computation or self.entry
        if computation not in self._costs:
            shapes, total = self.shapes(computation), Cost()
            for instruction in self.computations[computation].values():
                total.add(self._instruction_cost(instruction, shapes, computation))
            self._costs[computation] = total
        return dataclasses.replace(self._costs[computation])

    def _instruction_cost(
        self, instruction: Instruction, shapes: dict[str, str], computation: str
    ) -> Cost:
        opcode, attributes = instruction.opcode, instruction.attributes
        if opcode == "while":
            trips = trip_count(self.computations, instruction, computation)
            times = trips if trips is not None else self.unknown_trip_count
            body = Cost(unknown_trip_counts=int(trips is None))
            for name in called(attributes, "body"):
                body.add(self.cost(name), times=1 if times is None else times)
            return body
        if opcode == "conditional":
            branches = [self.cost(n) for n in called(attributes, "branch_computations")]
            costliest = max(branches, key=lambda c: (c.seconds, c.flops), default=Cost())
            costliest.unknown_trip_counts = sum(b.unknown_trip_counts for b in branches)
            return costliest
        if opcode in ("call", "async-start"):
            inner = Cost()
            for key in ("to_apply", "calls"):
                for name in called(attributes, key):
                    inner.add(self.cost(name))
            return inner
        if _moves_nothing(instruction):
            return Cost()
        if opcode.removesuffix("-start") in COLLECTIVES:
            operands = sum(size_in_bytes(shapes.get(o, "")) for o in instruction.operands)
            traffic = max(operands, size_in_bytes(instruction.shape))
            return Cost(collective_bytes=traffic, seconds=traffic / self.chip.ici_bandwidth)
        flops = self._own_flops(instruction, shapes)
        if opcode == "fusion":
            flops = sum(self.compute_flops(c) for c in called(attributes, "calls"))
        moved = self._moved_bytes(instruction, shapes)
        seconds = max(flops / self.chip.peak_flops, moved / self.chip.hbm_bandwidth)
        return Cost(flops=flops, hbm_bytes=moved, seconds=seconds)

    def _moved_bytes(self, instruction: Instruction, shapes: dict[str, str]) -> float:
        """The HBM bytes an instruction reads and writes."""
        opcode, result = instruction.opcode, instruction.shape
        operands = [shapes.get(o, "") for o in instruction.operands]
        if opcode in PREFETCHES:
            return float(_prefetch_bytes(result, operands))
        if opcode in SLICES and operands:  # reads its slice of operand 0, and the indices
            read = size_in_bytes(result) if hbm_size(operands[0]) else 0
            return float(read + hbm_size(result) + sum(map(hbm_size, operands[1:])))
        if opcode == "dynamic-update-slice" and len(operands) > 1:  # the update, in place
            written = size_in_bytes(operands[1]) if hbm_size(operands[0]) else 0
            return float(written + sum(map(hbm_size, operands[1:])))
        if opcode == "fusion":
            return float(self._fusion_bytes(instruction, operands))
        return float(hbm_size(result) + sum(map(hbm_size, operands)))

    def _fusion_bytes(self, instruction: Instruction, operands: list[str]) -> int:
        """A fusion's operands and outputs in HBM, where a parameter only sliced reads its
        slices, and an output that is a `dynamic-update-slice` writes its update in place (its
        buffer parameter read for nothing)."""
        fused = called(instruction.attributes, "calls")
        if not fused:
            return hbm_size(instruction.shape) + sum(map(hbm_size, operands))
        body = self.computations[fused[0]]
        users: dict[str, list[Instruction]] = collections.defaultdict(list)
        for inner in body.values():
            for name in inner.operands:
                users[name].append(inner)
        roots = [i for i in body.values() if i.root][:1]
        if roots and roots[0].opcode == "tuple":
            roots = [body[name] for name in roots[0].operands if name in body]
        outputs = array_list(instruction.shape)
        if len(outputs) != len(roots):
            written = hbm_size(instruction.shape)
        else:
            written = sum(
                0 if out.on_chip else
                size_in_bytes(body[root.operands[1]].shape) if root.opcode == "dynamic-update-slice"
                else out.nbytes
                for out, root in zip(outputs, roots, strict=True)
            )  # fmt: skip
        parameters = {int(i.operands[0]): i.name for i in body.values() if i.opcode == "parameter"}
        read = 0
        for index, shape in enumerate(operands):
            uses = users.get(parameters.get(index, ""), [])
            read += _parameter_read(shape, parameters.get(index, ""), uses, roots)
        return read + written


def _moves_nothing(instruction: Instruction) -> bool:
    opcode = instruction.opcode
    if opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]*)"', instruction.attributes)
        return bool(target) and target.group(1) in FREE_CUSTOM_CALLS
    return opcode in FREE or opcode.endswith("-done")


def _parameter_read(shape: str, name: str, uses: list[Instruction], roots: list) -> int:
    """The HBM bytes a fusion reads of its parameter `name` (type text `shape`), given its uses
    inside the fusion: only slices of it, or only the buffer of an in-place output update."""
    full = hbm_size(shape)
    if not full or not uses or any(use.operands[:1] != [name] for use in uses):
        return full
    if all(use.opcode in SLICES for use in uses):
        return min(full, sum(size_in_bytes(use.shape) for use in uses))
    if all(use.opcode == "dynamic-update-slice" and any(use is r for r in roots) for use in uses):
        return 0
    return full


def _prefetch_bytes(result: str, operands: list[str]) -> int:
    """An async copy's HBM bytes: its result tuple echoes the operand(s), then holds the
    destination (a copy, or a slice of operand 0) and a context scalar; the destination's bytes
    are read from the source and written, each where that side is in HBM."""
    echoed = sum(len(array_list(shape)) for shape in operands)
    arrays_out = array_list(result)
    if not operands or len(arrays_out) <= echoed:
        return hbm_size(result) + sum(map(hbm_size, operands))
    destination = arrays_out[echoed]
    source_in_hbm = bool(hbm_size(operands[0]))
    return destination.nbytes * (int(source_in_hbm) + int(not destination.on_chip))


def estimate(text: str, chip: Chip, unknown_trip_count: int | None = None) -> dict[str, Any]:
    """The program's per-chip FLOPs, HBM and collective bytes, estimated step time and
    utilisation (FLOPs / time / peak, in [0, 1]); loops without a known trip count (reported in
    `unknown_trip_counts`) run `unknown_trip_count` times (None: once)."""
    return summary(CostModel(text, chip, unknown_trip_count).cost(), chip)


def summary(cost: Cost, chip: Chip) -> dict[str, Any]:
    """`estimate`'s fields of a `Cost` on `chip`."""
    return dict(
        flops_per_chip=cost.flops,
        hbm_bytes_per_step=cost.hbm_bytes,
        collective_bytes_per_step=cost.collective_bytes,
        estimated_step_s=cost.seconds,
        estimated_utilisation=cost.flops / cost.seconds / chip.peak_flops if cost.seconds else None,
        unknown_trip_counts=cost.unknown_trip_counts,
    )


def program_flops(text: str, unknown_trip_count: int | None = None) -> float:
    """The FLOPs of one run of the program (per device of an SPMD program), every loop trip
    counted (`unknown_trip_count` for loops without a known count; None: once); the same on any
    chip."""
    return CostModel(text, CHIPS["v5p"], unknown_trip_count).cost().flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hlo", type=pathlib.Path, help="HLO text (compiled.as_text())")
    parser.add_argument("--chip", choices=sorted(CHIPS), default="v5p")
    parser.add_argument(
        "--unknown-trip-count", type=int, default=None, help="trips of loops without a known one"
    )
    args = parser.parse_args()
    text = args.hlo.read_text()
    print(json.dumps(estimate(text, CHIPS[args.chip], args.unknown_trip_count), indent=2))


if __name__ == "__main__":
    main()
