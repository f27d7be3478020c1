"""`folder_captions`: a TFDS builder over a user's directory of captioned images.

Four layouts are read, the first found at the root winning:

- a `captions.jsonl`, one `{"file": "sub/cat.jpg", "caption": "..."}` per line (`"captions":
  [...]` for several), paths relative to the root;
- a `captions.tsv`, one `sub/cat.jpg<TAB>caption` per line (a file on several lines has several
  captions; a first line `file<TAB>caption` is a header);
- COCO-style `captions_*.json` files (at the root or in `annotations/`, as COCO ships them:
  `{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}`), each image
  found at `<root>/<file_name>` or `<root>/<split>/<file_name>` for `captions_<split>.json`;
- images with same-name `.txt` captions beside them (`cat.jpg` + `cat.txt`; one caption per
  non-empty line), searched recursively.

Images are resized (shorter side to `image_size`, bicubic) and centre-cropped to a square, stored
as PNG in ArrayRecord. What cannot be used is skipped, never a crash: unreadable or corrupt
images, files that are not images, images without a caption or with an empty one, bad jsonl
lines. The skips are counted by reason, logged, and kept in `builder.info.metadata["skipped"]`.

    builder = build("/data/my_images", image_size=256, data_dir="/tmp/tfds")
    source = builder.as_data_source("train")
"""

import collections
import dataclasses
import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from unclip_jax.data.image_files import read_image
from unclip_jax.data.tf_setup import SourceFileBuilderMixin, hide_accelerators_from_tf

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTIONS_FILE = "captions.jsonl"
TSV_FILE = "captions.tsv"
COCO_GLOB = "captions_*.json"


@dataclasses.dataclass(frozen=True)
class FolderScan:
    records: tuple[tuple[pathlib.Path, tuple[str, ...]], ...]  # (image path, captions)
    skipped: dict[str, int]  # reason -> count


def _caption_lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _scan_jsonl(root: pathlib.Path, skipped: collections.Counter) -> list:
    records = []
    for line in (root / CAPTIONS_FILE).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            name = entry["file"]
            captions = entry.get("captions", [entry.get("caption", "")])
            captions = tuple(str(c).strip() for c in captions if str(c).strip())
        except (ValueError, KeyError, TypeError, AttributeError):
            skipped["bad_jsonl_line"] += 1
            continue
        _add_listed(records, skipped, root / name, captions)
    return records


def _add_listed(
    records: list, skipped: collections.Counter, path: pathlib.Path, captions: tuple[str, ...]
) -> None:
    """Appends (path, captions) of an image named by a captions file, or counts why not."""
    if not path.is_file():
        skipped["missing_image"] += 1
    elif path.suffix.lower() not in IMAGE_SUFFIXES:
        skipped["not_an_image"] += 1
    elif not captions:
        skipped["empty_caption"] += 1
    else:
        records.append((path, captions))


def _scan_tsv(root: pathlib.Path, skipped: collections.Counter) -> list:
    captions: dict[str, list[str]] = {}
    lines = (root / TSV_FILE).read_text(errors="replace").splitlines()
    if lines and lines[0].strip().lower() == "file\tcaption":
        lines = lines[1:]
    for line in lines:
        if not line.strip():
            continue
        name, tab, caption = line.partition("\t")
        if not tab or not name.strip():
            skipped["bad_tsv_line"] += 1
            continue
        captions.setdefault(name.strip(), []).append(caption.strip())
    records: list = []
    for name, texts in captions.items():
        _add_listed(records, skipped, root / name, tuple(t for t in texts if t))
    return records


def _coco_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted([*root.glob(COCO_GLOB), *(root / "annotations").glob(COCO_GLOB)])


def _scan_coco(root: pathlib.Path, skipped: collections.Counter) -> list:
    records: list = []
    for file in _coco_files(root):
        split = file.stem.removeprefix("captions_")
        try:
            coco = json.loads(file.read_text(errors="replace"))
            names = {image["id"]: image["file_name"] for image in coco["images"]}
            annotations = coco["annotations"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{file} is not a COCO captions file ({{'images': [{{'id', 'file_name'}}], "
                f"'annotations': [{{'image_id', 'caption'}}]}}): {error!r}"
            ) from error
        captions: dict[int, list[str]] = {image_id: [] for image_id in names}
        for annotation in annotations:
            image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
            if image_id not in captions:
                skipped["bad_annotation"] += 1
                continue
            captions[image_id].append(str(annotation.get("caption", "")).strip())
        for image_id, name in names.items():
            path = root / name
            if not path.is_file() and (root / split / name).is_file():
                path = root / split / name
            _add_listed(records, skipped, path, tuple(c for c in captions[image_id] if c))
    return records


def _scan_text_files(root: pathlib.Path, skipped: collections.Counter) -> list:
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix == ".txt":
            continue
        if suffix not in IMAGE_SUFFIXES:
            skipped["not_an_image"] += 1
            continue
        caption_path = path.with_suffix(".txt")
        if not caption_path.is_file():
            skipped["missing_caption"] += 1
            continue
        captions = _caption_lines(caption_path.read_text(errors="replace"))
        if not captions:
            skipped["empty_caption"] += 1
            continue
        records.append((path, captions))
    return records


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Finds the (image, captions) pairs under `root` and counts what it has to skip."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"source_dir must be a directory, got {str(root)!r}")
    skipped: collections.Counter = collections.Counter()
    if (root / CAPTIONS_FILE).is_file():
        records = _scan_jsonl(root, skipped)
    elif (root / TSV_FILE).is_file():
        records = _scan_tsv(root, skipped)
    elif _coco_files(root):
        records = _scan_coco(root, skipped)
    else:
        records = _scan_text_files(root, skipped)
    return FolderScan(tuple(records), dict(skipped))


def load_square(path: pathlib.Path, size: int) -> np.ndarray:
    """The image at `path` as uint8 [size, size, 3]: shorter side resized, centre-cropped.

    Read by `image_files.read_image` (every Pillow mode to 8-bit RGB, EXIF orientation);
    raises FileNotFoundError / ValueError naming the file when it cannot be used.
    """
    image = Image.fromarray(read_image(path))
    width, height = image.size
    if min(width, height) == 0:
        raise ValueError(f"empty image {path}")
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


@dataclasses.dataclass(kw_only=True)
class FolderCaptionsConfig(tfds.core.BuilderConfig):
    image_size: int = 256
    validation_fraction: float = 0.0  # of the images, chosen by a hash of their path


def _in_validation(path: pathlib.Path, root: pathlib.Path, fraction: float) -> bool:
    digest = hashlib.sha256(str(path.relative_to(root)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class FolderCaptions(SourceFileBuilderMixin, tfds.core.GeneratorBasedBuilder):
    """Image–caption pairs read from a local directory (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS: ClassVar[list[FolderCaptionsConfig]] = [
        FolderCaptionsConfig(name="256px", image_size=256)
    ]

    def __init__(self, *, source_dir: str | os.PathLike, file_format="array_record", **kwargs):
        hide_accelerators_from_tf()
        self._source_dir = pathlib.Path(source_dir).resolve()
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                    "file": tfds.features.Text(doc="path relative to the source directory"),
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files
        scan = scan_folder(self._source_dir)
        self._skipped = collections.Counter(scan.skipped)
        fraction = self.builder_config.validation_fraction
        splits = {"train": [], "validation": []}
        for path, captions in scan.records:
            in_validation = _in_validation(path, self._source_dir, fraction)
            splits["validation" if in_validation else "train"].append((path, captions))
        names = ("train", "validation") if fraction > 0 else ("train",)
        for name in names:
            if not splits[name]:
                raise ValueError(
                    f"validation_fraction {fraction} leaves split {name!r} of {self._source_dir} "
                    f"empty ({len(scan.records)} captioned images); choose a fraction that "
                    "gives both splits images"
                )
        return {name: self._generate_examples(splits[name]) for name in names}

    def _generate_examples(self, records) -> Iterator[tuple[str, dict]]:
        size = self.builder_config.image_size
        for path, captions in records:
            try:
                image = load_square(path, size)
            except (OSError, ValueError):
                self._skipped["unreadable_image"] += 1
                continue
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="png", compress_level=1)
            relative = str(path.relative_to(self._source_dir))
            yield (
                relative,
                {"image": buffer.getvalue(), "captions": list(captions), "file": relative},
            )
        self.info.metadata["skipped"] = dict(sorted(self._skipped.items()))
        logging.info(
            "folder_captions %s: skipped %d (%s)",
            self._source_dir,
            sum(self._skipped.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(self._skipped.items())) or "none",
        )


def build(
    source_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    validation_fraction: float = 0.0,
    data_dir: str | None = None,
) -> FolderCaptions:
    """Builds (or reopens) the data set of `source_dir` under `data_dir`; returns its builder.

    The config name carries the image size, the validation fraction and a hash of the source
    path, so several folders (and splittings of one) can share one `data_dir`.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    resolved = pathlib.Path(source_dir).resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    held_out = f"_val{validation_fraction:g}" if validation_fraction > 0 else ""
    config = FolderCaptionsConfig(
        name=f"{image_size}px{held_out}_{tag}",
        description=f"images of {resolved}",
        image_size=image_size,
        validation_fraction=validation_fraction,
    )
    builder = FolderCaptions(source_dir=resolved, config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return builder
