"""Reading a compiled program's HLO text (`compiled.as_text()`): its computations and
instructions, the arrays of a type text (element type, dims, memory space) and their bytes, the
computations an instruction calls, and a `while` loop's trip count.

    computations, entry = parse(text)   # {computation: {name: Instruction}}, the ENTRY's name
"""

import dataclasses
import math
import re

BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4}
BYTES |= {"u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
BYTES |= {"f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_COMMENT = re.compile(r"/\*.*?\*/")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str  # the result type text, e.g. "f32[8,64]{1,0}" or a tuple of them
    opcode: str
    operands: list[str]
    attributes: str
    root: bool = False  # its computation's ROOT


Computations = dict[str, dict[str, Instruction]]  # {computation: {instruction name: Instruction}}


@dataclasses.dataclass(frozen=True)
class Array:
    """One array of a type text: element type, dims, and whether its layout puts it in an
    on-chip memory space (`S(n)`, n ≥ 1) rather than HBM."""

    dtype: str
    dims: tuple[int, ...]
    on_chip: bool

    @property
    def nbytes(self) -> int:
        return BYTES[self.dtype] * math.prod(self.dims)


def array_list(shape: str) -> list[Array]:
    """The arrays of a type text, tuples flattened."""
    found = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype in BYTES:
            space = _MEMORY_SPACE.search(layout)
            on_chip = bool(space) and int(space.group(1)) != 0
            found.append(Array(dtype, tuple(int(d) for d in dims.split(",") if d), on_chip))
    return found


def arrays(shape: str) -> list[tuple[str, list[int]]]:
    """(element type, dims) of every array in a type text (tuples flattened)."""
    return [(a.dtype, list(a.dims)) for a in array_list(shape)]


def size_in_bytes(shape: str) -> int:
    return sum(a.nbytes for a in array_list(shape))


def hbm_size(shape: str) -> int:
    """The bytes of the arrays of a type text that sit in HBM (the default memory space)."""
    return sum(a.nbytes for a in array_list(shape) if not a.on_chip)


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
            root, name, shape, opcode, operands, attributes = match.groups()
            operands = _COMMENT.sub("", operands)  # e.g. /*index=5*/ before every fifth
            names = [o.strip().split(" ")[-1].lstrip("%") for o in operands.split(",") if o.strip()]
            current[name] = Instruction(name, shape, opcode, names, attributes, bool(root))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def called(attributes: str, key: str) -> list[str]:
    """The computations an instruction names under `key` (calls, to_apply, body, condition…)."""
    match = re.search(rf"\b{key}=\{{?([^}},]+(?:, ?%[^}},]+)*)\}}?", attributes)
    return [c.strip().lstrip("%") for c in match.group(1).split(",")] if match else []


def known_trip_count(attributes: str) -> int | None:
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"', attributes)
    return int(match.group(1)) if match else None


def _resolve(computations: Computations, computation: str, name: str) -> Instruction | None:
    """The instruction `name` of `computation`, looked through copies and bitcasts."""
    instruction = computations[computation].get(name)
    while instruction is not None and instruction.opcode in ("copy", "bitcast", "convert"):
        instruction = computations[computation].get(instruction.operands[0])
    return instruction


def _root_compare(computations: Computations, condition: str) -> list[str] | None:
    """The two operands (in `condition`) of the `<` its ROOT computes, directly or as a
    fusion of one compare of its parameters; None for any other condition."""
    root = next((i for i in computations[condition].values() if i.root), None)
    if root is None:
        return None
    if root.opcode == "compare" and "direction=LT" in root.attributes:
        return root.operands[:2]
    if root.opcode != "fusion":
        return None
    fused = computations.get(next(iter(called(root.attributes, "calls")), ""), {})
    inner = next((i for i in fused.values() if i.root), None)
    if inner is None or inner.opcode != "compare" or "direction=LT" not in inner.attributes:
        return None
    params = {i.name: int(i.operands[0]) for i in fused.values() if i.opcode == "parameter"}
    if not all(o in params for o in inner.operands[:2]):
        return None
    return [root.operands[params[o]] for o in inner.operands[:2]]


def trip_count(computations: Computations, loop: Instruction, caller: str) -> int | None:
    """A `while`'s trip count: its `known_trip_count`, else read from a counted loop's shape
    (XLA's TPU passes drop the annotation from some scans): the condition is `counter < N`
    on a tuple element whose initial value is a constant c, stepping by one → N − c."""
    known = known_trip_count(loop.attributes)
    if known is not None:
        return known
    [condition] = called(loop.attributes, "condition") or [None]
    if condition not in computations or not loop.operands:
        return None
    compare = _root_compare(computations, condition)
    if compare is None:
        return None
    counter, bound = (_resolve(computations, condition, o) for o in compare)
    init = _resolve(computations, caller, loop.operands[0])
    if not (counter and bound and init) or counter.opcode != "get-tuple-element":
        return None
    index = re.search(r"index=(\d+)", counter.attributes)
    if bound.opcode != "constant" or init.opcode != "tuple" or not index:
        return None
    start = _resolve(computations, caller, init.operands[int(index.group(1))])
    if start is None or start.opcode != "constant":
        return None
    try:
        trips = int(bound.operands[0]) - int(start.operands[0])
    except ValueError:
        return None
    return trips if trips > 0 else None
