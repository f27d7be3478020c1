"""The folder builder skips and counts what it cannot use, and never crashes on it."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from unclip_jax.data import folder_captions


def _image(path, seed, size=(40, 30)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        _image(root / f"ok{i}.png", i)
        (root / f"ok{i}.txt").write_text(f"caption number {i}\nanother caption {i}\n")
    _image(root / "sub" / "nested.jpg", 7, size=(30, 50))
    (root / "sub" / "nested.txt").write_text("a nested image")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "corrupt.txt").write_text("a caption for a broken file")
    _image(root / "empty.png", 9)
    (root / "empty.txt").write_text("  \n\n")
    _image(root / "uncaptioned.png", 10)
    (root / "notes.md").write_text("not an image")
    return root


def test_folder_builds_skipping_and_counting(folder, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        builder = folder_captions.build(folder, image_size=16, data_dir=str(tmp_path / "tfds"))
    assert builder.info.splits["train"].num_examples == 4
    skipped = builder.info.metadata["skipped"]
    assert skipped == {
        "empty_caption": 1,
        "missing_caption": 1,
        "not_an_image": 1,
        "unreadable_image": 1,
    }
    assert "skipped 4" in caplog.text
    source = builder.as_data_source("train")
    examples = {source[i]["file"].decode(): source[i] for i in range(len(source))}
    assert set(examples) == {"ok0.png", "ok1.png", "ok2.png", "sub/nested.jpg"}
    assert [c.decode() for c in examples["ok1.png"]["captions"]] == [
        "caption number 1",
        "another caption 1",
    ]
    assert examples["sub/nested.jpg"]["image"].shape == (16, 16, 3)
    # Centre crop of the shorter-side resize.
    want = folder_captions.load_square(folder / "ok2.png", 16)
    np.testing.assert_array_equal(examples["ok2.png"]["image"], want)


def test_jsonl_layout(tmp_path):
    root = tmp_path / "jsonl"
    root.mkdir()
    _image(root / "a.png", 1)
    _image(root / "b.png", 2)
    lines = [
        json.dumps({"file": "a.png", "caption": "first"}),
        json.dumps({"file": "b.png", "captions": ["second", "other"]}),
        "{not json",
        json.dumps({"file": "gone.png", "caption": "missing"}),
        json.dumps({"file": "a.png", "caption": ""}),
    ]
    (root / "captions.jsonl").write_text("\n".join(lines))
    scan = folder_captions.scan_folder(root)
    assert [(p.name, c) for p, c in scan.records] == [
        ("a.png", ("first",)),
        ("b.png", ("second", "other")),
    ]
    assert scan.skipped == {"bad_jsonl_line": 1, "missing_image": 1, "empty_caption": 1}


def test_not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="source_dir"):
        folder_captions.scan_folder(tmp_path / "absent")


def test_a_fraction_that_empties_a_split_is_named(folder, tmp_path):
    with pytest.raises(ValueError, match="validation_fraction 1e-09 leaves split 'validation'"):
        folder_captions.build(
            folder, image_size=16, validation_fraction=1e-9, data_dir=str(tmp_path / "tfds")
        )


def test_tsv_layout(tmp_path):
    root = tmp_path / "tsv"
    (root / "sub").mkdir(parents=True)
    _image(root / "a.png", 1)
    _image(root / "sub" / "b.jpg", 2)
    _image(root / "unlisted.png", 3)
    rows = [
        "file\tcaption",
        "a.png\tfirst",
        "sub/b.jpg\tsecond",
        "a.png\tagain",
        "no tab here",
        "gone.png\tmissing",
        "sub/b.jpg\t ",
    ]
    (root / "captions.tsv").write_text("\n".join(rows) + "\n")
    scan = folder_captions.scan_folder(root)
    assert [(str(p.relative_to(root)), c) for p, c in scan.records] == [
        ("a.png", ("first", "again")),
        ("sub/b.jpg", ("second",)),
    ]
    assert scan.skipped == {"bad_tsv_line": 1, "missing_image": 1}


def test_coco_layout(tmp_path):
    """COCO ships `annotations/captions_<split>.json` beside a `<split>/` image folder."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    _image(root / "val2017" / "000001.jpg", 1)
    _image(root / "val2017" / "000002.jpg", 2)
    coco = {
        "images": [
            {"id": 1, "file_name": "000001.jpg"},
            {"id": 2, "file_name": "000002.jpg"},
            {"id": 3, "file_name": "000003.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "caption": "A dog on a sofa."},
            {"image_id": 1, "caption": "A sleeping dog."},
            {"image_id": 2, "caption": "  "},
            {"image_id": 3, "caption": "an image that is not there"},
            {"image_id": 99, "caption": "an annotation of no image"},
        ],
    }
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(coco))
    scan = folder_captions.scan_folder(root)
    assert [(p.name, c) for p, c in scan.records] == [
        ("000001.jpg", ("A dog on a sofa.", "A sleeping dog.")),
    ]
    assert scan.skipped == {"bad_annotation": 1, "empty_caption": 1, "missing_image": 1}


def test_coco_file_of_another_shape_is_named(tmp_path):
    (tmp_path / "captions_train.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"captions_train\.json is not a COCO captions file"):
        folder_captions.scan_folder(tmp_path)
