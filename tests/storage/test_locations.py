"""Locations: local paths made absolute and URIs kept as they are; directories copied, read and
written across a local folder and a bucket (the stand-in of `conftest.py`)."""

from pathlib import Path

from unclip_jax.storage import locations


def test_a_local_path_is_made_absolute_and_a_uri_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(locations.location("runs/a")) == str(tmp_path / "runs" / "a")
    assert str(locations.location("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert locations.is_uri("gs://bucket/a") and not locations.is_uri(tmp_path / "a")


def tree(directory: Path) -> dict[str, bytes]:
    """{relative path: contents} of every file under a local directory."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_a_directory_goes_to_a_bucket_and_back_whole(bucket, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.json").write_text("{}")
    (source / "sub" / "b.bin").write_bytes(bytes(range(256)))
    locations.copy_tree(source, "gs://models/x")
    assert tree(bucket.root / "models" / "x") == tree(source)
    with locations.local_directory("gs://models/x") as local:
        assert tree(local) == tree(source) and bucket.root not in local.parents
    assert not local.exists()  # the copy is gone after the block
    with locations.writing_directory("gs://models/y") as local:
        (local / "c.txt").write_text("c")
        assert not (bucket.root / "models" / "y").exists()  # uploaded after the block
    assert tree(bucket.root / "models" / "y") == {"c.txt": b"c"}


def test_commit_replaces_the_directory_with_its_temporary_sibling(bucket):
    target = locations.location("gs://models/z")
    (target / "old").mkdir(parents=True)
    tmp = locations.temporary_sibling(target)
    assert str(tmp) == "gs://models/z.tmp" and not list(tmp.iterdir())
    (tmp / "new.txt").write_text("new")
    assert locations.commit(tmp, target) == target
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and not tmp.exists()


def test_a_local_directory_is_read_and_written_in_place(tmp_path):
    with locations.local_directory(tmp_path) as read, locations.writing_directory(tmp_path) as out:
        assert read == out == tmp_path
