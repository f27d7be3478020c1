"""Where results go: the output directory (checked before any compute, filled all at once) and
the persistent compilation cache, for the sampling commands and the demo alike."""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def enable_compilation_cache(directory: str) -> None:
    """Compiled programs are kept in `directory` across runs (off when it is empty)."""
    if not directory:
        return
    import jax

    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_output_dir(path: str | None) -> Path:
    """The output directory, after checking that it can be created and written (no compute yet).

    ValueError naming the directory when it is a file or not writable.
    """
    if not path:
        raise ValueError("--out must name an output directory")
    out = Path(path).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {str(out)!r} is not writable ({existing} is not)")
    return out


def write_outputs(out: Path, files: dict[str, np.ndarray | str]) -> None:
    """Writes PNGs (uint8 arrays) and text files into a temporary directory next to `out`, then
    moves them in: an interruption leaves no partial set."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, value in files.items():
            if isinstance(value, str):
                (staging / name).write_text(value)
            else:
                Image.fromarray(value).save(staging / name)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
