"""`shapes_captions`: a TFDS builder of captioned shapes whose ground truth is known.

Built locally with no download: every example is drawn from its own seed
`(config.seed, split, index)`, so the same config gives the same bytes. Splits: `train`,
`validation`, `test`, and `test_unseen`, whose images each hold a colour–shape pair of
`shapes_render.HELD_OUT` that never occurs in the other splits. Stored as ArrayRecord, so that
`builder.as_data_source(split)` gives random access (see `input_pipeline.py`).

    builder = build("64px", data_dir="/tmp/tfds")   # ~26k examples
    source = builder.as_data_source("train")
"""

import dataclasses
import io
import os
import pathlib
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from unclip_jax.data import shapes_render
from unclip_jax.data.tf_setup import SourceFileBuilderMixin, hide_accelerators_from_tf

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2, "test_unseen": 3}
CAPTIONS_PER_IMAGE = 4


@dataclasses.dataclass(kw_only=True)
class ShapesCaptionsConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_examples: tuple[int, int, int, int] = (20_000, 2_000, 2_000, 2_000)  # per SPLIT_IDS
    scene: shapes_render.SceneSpec = dataclasses.field(default_factory=shapes_render.SceneSpec)
    seed: int = 0


def _config(
    name: str,
    size: int,
    counts: tuple[int, int, int, int],
    scene: shapes_render.SceneSpec | None = None,
    description: str = "",
) -> ShapesCaptionsConfig:
    return ShapesCaptionsConfig(
        name=name,
        description=description or f"one or two shapes at {size}x{size}",
        image_size=size,
        num_examples=counts,
        scene=scene or shapes_render.SceneSpec(),
    )


# The first config is the default.
CONFIGS = (
    _config("64px", 64, (20_000, 2_000, 2_000, 2_000)),
    _config("32px", 32, (20_000, 2_000, 2_000, 2_000)),
    _config("256px", 256, (8_000, 1_000, 1_000, 1_000)),
    _config(
        "large_64px",
        64,
        (20_000, 2_000, 2_000, 2_000),
        shapes_render.SceneSpec(extents=(0.62, 0.78), max_objects=1),
        "one large shape (62% or 78% of the side) at 64x64, readable by a 16 px base decoder",
    ),
)


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def make_example(config: ShapesCaptionsConfig, split: str, index: int) -> dict:
    """The example `index` of `split`, as numpy values before TFDS encoding."""
    rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
    scene = shapes_render.sample_scene(rng, config.scene, unseen=split == "test_unseen")
    pad = shapes_render.MAX_OBJECTS - len(scene.objects)

    def field(values, fill, dtype):
        return np.asarray(list(values) + [fill] * pad, dtype=dtype)

    objects = scene.objects
    return {
        "image": shapes_render.render(scene, config.image_size),
        "captions": shapes_render.captions(scene, rng, CAPTIONS_PER_IMAGE),
        "index": index,
        "num_objects": len(objects),
        "relation": shapes_render.RELATIONS.index(scene.relation),
        "object_shape": field((shapes_render.SHAPES.index(o.shape) for o in objects), -1, np.int32),
        "object_colour": field(
            (shapes_render.COLOURS.index(o.colour) for o in objects), -1, np.int32
        ),
        "object_size": field((shapes_render.SIZES.index(o.size) for o in objects), -1, np.int32),
        "object_x": field((o.x for o in objects), -1.0, np.float32),
        "object_y": field((o.y for o in objects), -1.0, np.float32),
        "object_extent": field((o.extent for o in objects), 0.0, np.float32),
    }


def scene_of(example: dict) -> shapes_render.Scene:
    """The ground-truth scene of a decoded example (one without a batch dimension)."""
    objects = tuple(
        shapes_render.ShapeObject(
            shape=shapes_render.SHAPES[int(example["object_shape"][i])],
            colour=shapes_render.COLOURS[int(example["object_colour"][i])],
            size=shapes_render.SIZES[int(example["object_size"][i])],
            x=float(example["object_x"][i]),
            y=float(example["object_y"][i]),
            extent=float(example["object_extent"][i]),
        )
        for i in range(int(example["num_objects"]))
    )
    return shapes_render.Scene(objects, shapes_render.RELATIONS[int(example["relation"])])


class ShapesCaptions(SourceFileBuilderMixin, tfds.core.GeneratorBasedBuilder):
    """Procedurally drawn, anti-aliased shapes with template captions and full ground truth."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS: ClassVar[list[ShapesCaptionsConfig]] = list(CONFIGS)

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        hide_accelerators_from_tf()
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        m = shapes_render.MAX_OBJECTS
        pad = "padded with -1 beyond num_objects"
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "captions": tfds.features.Sequence(
                        tfds.features.Text(), length=CAPTIONS_PER_IMAGE
                    ),
                    "index": tfds.features.Scalar(np.int64, doc="position in its split"),
                    "num_objects": tfds.features.Scalar(np.int32),
                    "relation": tfds.features.Scalar(
                        np.int32, doc=f"index in {shapes_render.RELATIONS}"
                    ),
                    "object_shape": tfds.features.Tensor(
                        shape=(m,), dtype=np.int32, doc=f"index in {shapes_render.SHAPES}, {pad}"
                    ),
                    "object_colour": tfds.features.Tensor(
                        shape=(m,), dtype=np.int32, doc=f"index in {shapes_render.COLOURS}, {pad}"
                    ),
                    "object_size": tfds.features.Tensor(
                        shape=(m,), dtype=np.int32, doc=f"index in {shapes_render.SIZES}, {pad}"
                    ),
                    "object_x": tfds.features.Tensor(
                        shape=(m,), dtype=np.float32, doc="centre / width"
                    ),
                    "object_y": tfds.features.Tensor(
                        shape=(m,), dtype=np.float32, doc="centre / height, downwards"
                    ),
                    "object_extent": tfds.features.Tensor(
                        shape=(m,), dtype=np.float32, doc="object width / image side"
                    ),
                }
            ),
            homepage="https://arxiv.org/abs/2204.06125",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # drawn locally
        return {split: self._generate_examples(split) for split in SPLIT_IDS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        for index in range(config.num_examples[SPLIT_IDS[split]]):
            example = make_example(config, split, index)
            example["image"] = encode_png(example["image"])
            yield index, example


def build(
    config: str | ShapesCaptionsConfig = "64px", data_dir: str | None = None
) -> ShapesCaptions:
    """Builds (or reopens) the data set under `data_dir` and returns its builder."""
    builder = ShapesCaptions(config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def export_folder(name: str, split: str, out: str | os.PathLike, count: int | None = None) -> int:
    """The first `count` examples (default: all) of `split` of the config `name` written as a
    folder of captioned images, the layout `folder_captions` reads: `<index>.png` beside
    `<index>.txt` (one caption per line). Returns the number written."""
    configs = {config.name: config for config in CONFIGS}
    if name not in configs:
        raise ValueError(f"shapes config must be one of {sorted(configs)}, got {name!r}")
    config = configs[name]
    total = config.num_examples[SPLIT_IDS[split]]
    count = total if count is None else min(count, total)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        example = make_example(config, split, index)
        (out / f"{index:06d}.png").write_bytes(encode_png(example["image"]))
        (out / f"{index:06d}.txt").write_text("\n".join(example["captions"]) + "\n")
    return count
