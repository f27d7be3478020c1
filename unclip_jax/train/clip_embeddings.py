"""CLIP embeddings of a data set written as embedding shards (`data/embedding_shards.py`), for
prior training; the work behind `unclip embed`.

Every caption of an image gives one row (the image embedding is computed once). Examples are cut
into shards of at most `shard_size` images, each named by the range of examples it holds; a
re-run writes only the examples no complete shard holds (whatever `shard_size` is then), so an
interrupted run resumes without repeating or skipping an example.
"""

import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np

from unclip_jax.data.embedding_shards import SHARD_GLOB


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _captions(example: dict) -> list[str]:
    if "captions" in example:
        return [_text(c) for c in example["captions"] if _text(c)]
    return [_text(example.get("caption", ""))]


SHARD_PATTERN = re.compile(r"shard-e(\d{10})-(\d{10})-00000")


def shard_name(start: int, stop: int) -> str:
    """Directory name of the shard of examples [start, stop) (as `EmbeddingShardWriter` names
    it with tag `e<start>-<stop>`); names sort in example order."""
    return f"shard-{shard_tag(start, stop)}-00000"


def shard_tag(start: int, stop: int) -> str:
    return f"e{start:010d}-{stop:010d}"


def missing_ranges(out: pathlib.Path, total: int, shard_size: int) -> list[tuple[int, int]]:
    """The shards still to write, as example ranges [start, stop) of at most `shard_size`: the
    examples of [0, total) that no complete shard in `out` holds. Keyed by example, so a re-run
    with another shard size neither repeats nor skips one. ValueError naming a shard of `out`
    that is not one of these or does not fit a data set of `total` examples."""
    held = []
    for path in sorted(out.glob(SHARD_GLOB)) if out.is_dir() else []:
        match = SHARD_PATTERN.fullmatch(path.name)
        if not match:
            raise ValueError(
                f"{path} is not a shard of examples [start, stop) as `unclip embed` names them "
                f"({shard_name(0, shard_size)}); embed into a new --out"
            )
        start, stop = int(match[1]), int(match[2])
        if not start < stop <= total or (held and start < held[-1][1]):
            raise ValueError(
                f"{path} holds examples [{start}, {stop}), which do not fit a data set of "
                f"{total} examples beside the other shards: --out holds another data set's "
                "embeddings; embed into a new --out"
            )
        held.append((start, stop))
    todo, position = [], 0
    for start, stop in [*held, (total, total)]:
        todo += [(k, min(k + shard_size, start)) for k in range(position, start, shard_size)]
        position = stop
    return todo


def embed_source(
    checkpoint: str | pathlib.Path,
    source: Sequence[dict],
    out: str | pathlib.Path,
    *,
    batch_size: int = 64,
    shard_size: int = 4096,
    token_states: bool = False,
    dtype: str = "float16",
) -> int:
    """Writes the shards of the examples of `source` missing from `out`; returns how many."""
    import jax
    from tqdm import tqdm

    from unclip_jax.convert.hf_clip import TOKENIZER_DIR, load_frozen_clip
    from unclip_jax.data.batching import pad_rows
    from unclip_jax.data.embedding_shards import EmbeddingShardWriter
    from unclip_jax.text.tokenizer import load_tokenizer

    if batch_size <= 0 or shard_size <= 0:
        raise ValueError(
            f"batch_size and shard_size must be positive, got {batch_size}, {shard_size}"
        )
    out = pathlib.Path(out)
    todo = missing_ranges(out, len(source), shard_size)
    tokenizer = load_tokenizer(pathlib.Path(checkpoint) / TOKENIZER_DIR)
    clip = load_frozen_clip(checkpoint)
    image_fn, text_fn = jax.jit(type(clip).encode_image), jax.jit(type(clip).encode_text)
    encode_images = lambda images: image_fn(clip, images)  # uint8 [B, H, W, 3] -> [B, P]
    encode_texts = lambda ids, mask: text_fn(clip, ids, mask)  # [B, L] -> [B, P], [B, L, W]

    store = np.dtype(dtype)
    progress = tqdm(total=sum(b - a for a, b in todo), desc="embed", unit="image")
    for first, stop in todo:
        # One shard per writer, renamed into place only once complete.
        writer = EmbeddingShardWriter(out, tag=shard_tag(first, stop), shard_size=sys.maxsize)
        for start in range(first, stop, batch_size):
            examples = [source[i] for i in range(start, min(start + batch_size, stop))]
            images = np.stack([np.asarray(e["image"])[..., :3] for e in examples])
            image_embeds = np.asarray(encode_images(pad_rows(images, batch_size)))[: len(examples)]
            captions = [_captions(e) for e in examples]
            rows = np.repeat(np.arange(len(examples)), [len(c) for c in captions])
            texts = [c for group in captions for c in group]
            ids, mask = tokenizer(texts)
            rounded = -(-len(texts) // batch_size) * batch_size  # few distinct shapes to compile
            text_embeds, states = encode_texts(pad_rows(ids, rounded), pad_rows(mask, rounded))
            text_embeds, states = text_embeds[: len(texts)], states[: len(texts)]
            batch = {
                "image_embedding": image_embeds[rows].astype(store),
                "text_embedding": np.asarray(text_embeds).astype(store),
                "text_tokens": ids.astype(np.int32),
                "text_mask": mask.astype(bool),
                "caption": np.asarray(texts),
            }
            if token_states:
                batch["token_states"] = np.asarray(states).astype(store)
            writer.add(batch)
            progress.update(len(examples))
        writer.close()
    progress.close()
    return len(todo)
