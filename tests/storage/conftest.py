"""The storage tests' local stand-in for a cloud bucket (`bucket`): what etils.epath and orbax
would keep at `gs://NAME/KEY` goes to the file `<tmp>/bucket/NAME/KEY`."""

import os
import types
from pathlib import Path

import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

SCHEME = "gs://"


class Bucket:
    """`gs://` URIs as files under `root`."""

    def __init__(self, root: Path):
        self.root = root

    def local(self, path: os.PathLike | str) -> str:
        path = os.fspath(path)
        return str(self.root / path.removeprefix(SCHEME)) if path.startswith(SCHEME) else path

    def uri(self, path: os.PathLike | str) -> str:
        path = os.fspath(path)
        inside = path.removeprefix(str(self.root) + "/")
        return SCHEME + inside if inside != path else path

    def mocks(self) -> dict:
        """epath backend functions with `gs://` arguments mapped, and results mapped back."""
        one = lambda fn, path, *args, **kwargs: fn(self.local(path), *args, **kwargs)
        two = lambda fn, path, dst, **kwargs: fn(self.local(path), self.local(dst), **kwargs)
        singles = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree", "remove")
        return {
            **{name: one for name in (*singles, "stat")},
            "rename": two,
            "replace": two,
            "copy": two,
            "glob": lambda fn, path: [self.uri(p) for p in fn(self.local(path))],
            "walk": lambda fn, top, **kwargs: (
                (self.uri(root), dirs, files) for root, dirs, files in fn(self.local(top), **kwargs)
            ),
        }


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A local stand-in for a bucket at `gs://` (what it exercises and what it does not:
    `test_cloud_paths.py`), with the working directory moved to an empty folder to catch URIs
    taken for local paths."""
    fake = Bucket(tmp_path / "bucket")
    fake.root.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # gs:// by the table below
    monkeypatch.setattr(
        gcs_utils,
        "get_kvstore_for_gcs",
        lambda path: {"driver": "file", "path": fake.local(path)},
    )
    no_namespace = types.SimpleNamespace(hierarchical_namespace_enabled=False)
    monkeypatch.setattr(gcs_utils, "get_bucket", lambda name: no_namespace)
    with epath_testing.mock_epath(**fake.mocks()):
        yield fake
    assert not (tmp_path / "gs:").exists(), "a gs:// URI was taken for a local path"
