"""Where workdirs, checkpoints and pipeline directories live: a local path or a bucket URI
(`gs://bucket/dir`), both as an `etils.epath.Path` and read and written through it (tf.io.gfile,
or fsspec where TensorFlow is missing), as orbax and TFDS take them.

    workdir = location("gs://bucket/runs/prior")   # kept as it is
    workdir = location("runs/prior")               # made absolute: /home/me/runs/prior

A URI never goes through `pathlib` or `os.path`. The few readers and writers that only take local
files (the tokenizers) get a local copy (`local_directory`) or a local folder uploaded after the
block (`writing_directory`).
"""

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

from etils import epath

SCHEME_SEPARATOR = "://"


def is_uri(path: str | os.PathLike) -> bool:
    """Whether `path` names a location by URI (gs://, s3://) rather than a local path."""
    return SCHEME_SEPARATOR in os.fspath(path)


def location(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a URI as it is, a local path made absolute."""
    path = epath.Path(path)
    return path if is_uri(path) else path.absolute()


def copy_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copies the directory `source` into `target` (made if missing), file by file; either may
    be local or a URI."""
    source, target = epath.Path(source), epath.Path(target)
    for root, _, files in source.walk():
        folder = target / epath.Path(root).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            (epath.Path(root) / name).copy(folder / name, overwrite=True)


def temporary_sibling(path: epath.Path) -> epath.Path:
    """A fresh, empty `<path>.tmp` beside `path`, to write a directory into before `commit`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.rmtree(missing_ok=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: epath.Path, path: epath.Path) -> epath.Path:
    """Replaces `path` by the directory `tmp` (`temporary_sibling`) and returns `path`. Local: one
    rename. In a bucket the rename copies object by object: an interruption can leave `tmp`
    whole and `path` missing, never `path` half-written."""
    path.rmtree(missing_ok=True)
    tmp.rename(path)
    return path


@contextlib.contextmanager
def local_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """`path` as a local directory, for readers of local files only: itself where it is local,
    else a temporary copy (removed after the block)."""
    if not is_uri(path):
        yield pathlib.Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="unclip-copy-") as tmp:
        copy_tree(path, tmp)
        yield pathlib.Path(tmp)


@contextlib.contextmanager
def writing_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local directory for writers of local files only, whose files end up in `path`: `path`
    itself where it is local, else a temporary folder copied there after the block."""
    if not is_uri(path):
        yield pathlib.Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="unclip-upload-") as tmp:
        yield pathlib.Path(tmp)
        copy_tree(tmp, path)
