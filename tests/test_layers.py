"""Imports point down the layers of DESIGN.md: a walk over every module of the package (imports
inside functions included) fails on an edge to a higher layer, on `models/` → `diffusion/`,
`pipelines/` → `train/`, and on anything outside the entry points importing them; and the
package's modules and functions stay small."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "unclip_jax"

# Layer of each top-level part of the package, lowest first; a module may import its own part
# and any part of a lower layer.
LAYERS = [
    {"console", "hlo_text", "hlo_cost", "flop_meter"},
    {"text"},
    {"diffusion"},
    {"sharding"},
    {"nn"},
    {"models"},
    {"data", "storage"},
    {"convert"},
    {"sampling"},
    {"evals"},
    {"train"},
    {"pipelines"},
    {"commands", "demo", "cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
ENTRY_POINTS = {"commands", "demo", "cli"}
FORBIDDEN = {("models", "diffusion"), ("pipelines", "train")}


def part_of(module: str) -> str | None:
    """'unclip_jax.models.unet' → 'models'; None outside the package or for the package root."""
    names = module.split(".")
    return names[1] if names[0] == "unclip_jax" and len(names) > 1 else None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing part, imported part) for imports across parts."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        source = part_of(".".join(relative.with_suffix("").parts))
        for line, module in imports(path):
            target = part_of(module)
            if source and target and target != source and target in RANK:
                out.append((str(relative), line, source, target))
    return out


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts -= {"__init__", "__pycache__"}
    assert parts <= set(RANK), f"parts without a layer: {sorted(parts - set(RANK))}"


def test_imports_point_down_the_layers():
    upward = [
        f"{file}:{line}: {source} → {target}"
        for file, line, source, target in edges()
        if RANK[target] > RANK[source] or (source, target) in FORBIDDEN
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_entry_point_imports_another():
    crossing = [
        f"{file}:{line}: {source} → {target}"
        for file, line, source, target in edges()
        if target in {"commands", "demo"} and source != "cli"
    ]
    assert not crossing, "imports of an entry point:\n" + "\n".join(crossing)


def test_the_walk_sees_nested_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from unclip_jax.train import loop\n")
    assert imports(module) == [(2, "unclip_jax.train"), (2, "unclip_jax.train.loop")]


def test_files_and_functions_stay_small():
    """No module of the package over 500 lines, no function outside tests over 80."""
    root = PACKAGE.parent
    long_files = [
        f"{p.relative_to(root)}: {n} lines"
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 500
    ]
    long_functions = []
    for folder in ("unclip_jax", "configs", "experiments"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        long_functions.append(f"{path.relative_to(root)}:{node.name}: {length}")
    assert not long_files and not long_functions, long_files + long_functions
