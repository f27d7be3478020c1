"""Where results go: the output directory (checked before any compute, filled all at once) and
the persistent compilation cache, for the sampling commands and the demo alike."""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def _writable_parent(path: Path, what: str) -> None:
    """ValueError naming `path` unless its nearest existing ancestor is a writable directory."""
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} is not writable ({existing} is not)")


def enable_compilation_cache(directory: str) -> None:
    """Compiled programs are kept in `directory` across runs (off when it is empty); ValueError
    naming it when it cannot be created or written."""
    if not directory:
        return
    path = Path(directory).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"compilation cache {str(path)!r} exists and is not a directory")
    _writable_parent(path, "compilation cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"compilation cache {str(path)!r}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"compilation cache {str(path)!r} is not writable")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_output_dir(path: str | None, overwrite: bool | None = None) -> Path:
    """The output directory, after checking that it can be created and written (no compute yet).

    The sampling commands' policy (`overwrite` False or True): a directory already holding files
    is refused unless `overwrite`, and then `write_outputs(..., replace=True)` swaps the whole
    directory for the new results, so no earlier file is left among them. `overwrite=None` is
    for directories a run resumes into (the demo's), whose contents are kept.
    ValueError naming the directory when it is a file, not writable, or (not `overwrite`) not
    empty; `overwrite` also refuses a directory holding folders (no run writes them: it is not
    an earlier output, and would be deleted).
    """
    if not path:
        raise ValueError("--out must name an output directory")
    out = Path(path).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory")
    _writable_parent(out, "output directory")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {str(out)!r} is not writable")
    held = sorted(out.iterdir()) if overwrite is not None and out.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(p.name for p in held[:3]) + (", ..." if len(held) > 3 else "")
        raise ValueError(
            f"output directory {str(out)!r} already holds {len(held)} entries ({shown}); "
            "choose an empty or new directory, or pass --overwrite to replace them"
        )
    folders = [p.name for p in held if p.is_dir()]
    if folders:  # results are flat: a folder inside is no earlier run's, so nothing is deleted
        raise ValueError(
            f"--overwrite replaces only a directory of earlier results; {str(out)!r} holds the "
            f"folder {folders[0]!r}: choose another --out"
        )
    return out


def check_output_file(path: str) -> Path:
    """A file that will be written after the compute, checked now: ValueError naming it when it
    is a directory or cannot be created or written."""
    target = Path(path).absolute()
    if target.is_dir():
        raise ValueError(f"output file {str(target)!r} is a directory")
    _writable_parent(target, "output file")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"output file {str(target)!r} is not writable")
    return target


def write_file(path: Path, value: np.ndarray | str) -> None:
    """One file; an OSError (full disk, ...) names the file, which a write() error does not."""
    try:
        if isinstance(value, str):
            path.write_text(value)
        else:
            Image.fromarray(value).save(path)
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def write_outputs(out: Path, files: dict[str, np.ndarray | str], replace: bool = False) -> None:
    """Writes PNGs (uint8 arrays) and text files into a temporary directory next to `out`, then
    moves them in: an interruption leaves no partial set. `replace`: the directory becomes
    exactly `files`, its earlier contents removed only once the new set is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, value in files.items():
            write_file(staging / name, value)
        if replace and out.exists():
            shutil.copymode(out, staging)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            try:
                os.replace(staging, out)
            except OSError:
                os.replace(old / out.name, out)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
            return
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
