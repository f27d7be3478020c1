"""Helpers of the input/output reliability tests: a folder of inputs saved before a call, its
snapshot, and the check that a call was refused with one line and nothing changed."""

import importlib
from pathlib import Path

import numpy as np
from PIL import Image

from unclip_jax import cli

for _module, _ in cli.SUBCOMMANDS.values():  # every subcommand's flags known, in any test order
    importlib.import_module(_module)

EMBED_CONFIG = """import ml_collections


def get_config():
    data = {"source": "folder_captions:/nonexistent", "image_size": 32, "data_dir": None}
    return ml_collections.ConfigDict({"data": data})
"""


def io_inputs(root: Path) -> dict[str, Path]:
    """Files a user had before the call: two images, an earlier result, a captions.json of
    generate's, a CLIP checkpoint whose clip_config.json is broken, a config naming data."""
    rng = np.random.default_rng(0)
    paths = {
        "a": root / "a.png",
        "b": root / "b.png",
        "file": root / "a_file.txt",
        "earlier": root / "earlier",
        "images": root / "generated",
        "clip": root / "clip",
        "config": root / "embed_config.py",
    }
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(paths["a"])
    Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(paths["b"])
    paths["file"].write_text("not a directory")
    paths["earlier"].mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(paths["earlier"] / "000_00.png")
    (paths["earlier"] / "captions.json").write_text('{"000_00.png": "a red circle"}')
    paths["images"].mkdir()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(paths["images"] / "000_00.png")
    (paths["images"] / "captions.json").write_text('{"000_00.png": "a red circle"}')
    paths["clip"].mkdir()
    (paths["clip"] / "clip_config.json").write_text('{"text": {"width": 8,')
    paths["config"].write_text(EMBED_CONFIG)
    return paths


def io_snapshot(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def io_assert_refused(result: tuple[int, str, str], code: int, *named: str) -> str:
    """The call exited with `code` and one error line on stderr naming each of `named`, with no
    traceback; returns that line."""
    exit_code, _, err = result
    lines = [line for line in err.splitlines() if "error" in line]
    assert exit_code == code, (exit_code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("unclip "), err[-2000:]
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def io_call(capsys, *argv: str) -> tuple[int, str, str]:
    """`unclip ARGV` in process, exactly these flags (the `unclip` fixture adds its own
    --compilation_cache)."""
    from absl import flags

    flags.FLAGS.unparse_flags()
    try:
        cli.run(["unclip", *argv])
        code = 0
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
