"""Random-access sources by name, for configs: `open_source("shapes_captions/64px", "train")`.

Names: `shapes_captions/<config>` (built on first use), `folder_captions:<directory>` (built
on first use, images stored at `image_size`; a `validation` split holds `validation_fraction`
of the images, chosen by a hash of their path), `embeddings:<directory>` (shards as written by
`unclip embed`; no splits). Builders import TensorFlow only when their source is opened.
"""

from collections.abc import Callable, Sequence


def _shapes(
    spec: str, split: str, data_dir: str | None, image_size: int, validation_fraction: float
) -> Sequence:
    from unclip_jax.data import shapes_captions

    del image_size, validation_fraction  # the config fixes the size and the splits
    return shapes_captions.build(spec or "64px", data_dir=data_dir).as_data_source(split)


def _require(spec: str, kind: str) -> str:
    if not spec:
        raise ValueError(f"source {kind!r} needs a directory: '{kind}:<directory>'")
    return spec


def _folder(
    spec: str, split: str, data_dir: str | None, image_size: int, validation_fraction: float
) -> Sequence:
    from unclip_jax.data import folder_captions

    spec = _require(spec, "folder_captions")
    splits = ("train", "validation") if validation_fraction > 0 else ("train",)
    if split not in splits:
        raise ValueError(
            f"folder_captions has splits {splits} with validation_fraction "
            f"{validation_fraction}, got split {split!r} (a held-out split needs "
            "validation_fraction > 0, e.g. --config.data.validation_fraction=0.001)"
        )
    builder = folder_captions.build(
        spec, image_size=image_size, validation_fraction=validation_fraction, data_dir=data_dir
    )
    return builder.as_data_source(split)


def _embeddings(
    spec: str, split: str, data_dir: str | None, image_size: int, validation_fraction: float
) -> Sequence:
    from unclip_jax.data import embedding_shards

    del split, data_dir, image_size, validation_fraction
    return embedding_shards.EmbeddingShards(_require(spec, "embeddings"))


# kind -> (separator, opener(spec, split, data_dir, image_size, validation_fraction))
SOURCES: dict[str, tuple[str, Callable[..., Sequence]]] = {
    "shapes_captions": ("/", _shapes),
    "folder_captions": (":", _folder),
    "embeddings": (":", _embeddings),
}


def open_source(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    image_size: int = 256,
    validation_fraction: float = 0.0,
) -> Sequence:
    """The random-access source `name` (see the module docstring) for `split`."""
    for kind, (separator, opener) in SOURCES.items():
        if name == kind or name.startswith(kind + separator):
            spec = name[len(kind) + 1 :]
            return opener(spec, split, data_dir, image_size, validation_fraction)
    raise ValueError(
        f"source must start with one of {sorted(SOURCES)} "
        f"(e.g. 'shapes_captions/64px', 'folder_captions:/data', 'embeddings:/emb'), got {name!r}"
    )


def open_train_and_eval(data) -> tuple[Sequence, Sequence]:
    """The `train` and `eval_split` sources of a config's `data` section (`source`, `data_dir`,
    `image_size`, `eval_split`, optional `validation_fraction`)."""
    held_out = data.get("validation_fraction", 0.0)
    return tuple(
        open_source(data.source, split, data.data_dir, data.image_size, held_out)
        for split in ("train", data.eval_split)
    )
