"""CLIP embeddings of a data set written as embedding shards (`data/embedding_shards.py`), for
prior training; the work behind `unclip embed`.

Every caption of an image gives one row (the image embedding is computed once). Examples are cut
into fixed shards of `shard_size` images; a re-run skips the shards already complete, so an
interrupted run resumes.
"""

import pathlib
import sys
from collections.abc import Sequence

import numpy as np


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _captions(example: dict) -> list[str]:
    if "captions" in example:
        return [_text(c) for c in example["captions"] if _text(c)]
    return [_text(example.get("caption", ""))]


def shard_name(index: int) -> str:
    """Directory name of shard `index` (as `EmbeddingShardWriter` names it with tag index)."""
    return f"shard-{index:05d}-00000"


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
    """Writes the shards of `source` missing from `out`; returns how many it wrote."""
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
    clip = load_frozen_clip(checkpoint)
    tokenizer = load_tokenizer(pathlib.Path(checkpoint) / TOKENIZER_DIR)
    image_fn, text_fn = jax.jit(type(clip).encode_image), jax.jit(type(clip).encode_text)
    encode_images = lambda images: image_fn(clip, images)  # uint8 [B, H, W, 3] -> [B, P]
    encode_texts = lambda ids, mask: text_fn(clip, ids, mask)  # [B, L] -> [B, P], [B, L, W]

    out = pathlib.Path(out)
    num_shards = -(-len(source) // shard_size)
    todo = [k for k in range(num_shards) if not (out / shard_name(k)).is_dir()]
    store = np.dtype(dtype)
    progress = tqdm(total=len(todo) * shard_size, desc="embed", unit="image")
    for k in todo:
        # One shard per writer, renamed into place only once complete.
        writer = EmbeddingShardWriter(out, tag=f"{k:05d}", shard_size=sys.maxsize)
        stop = min((k + 1) * shard_size, len(source))
        for start in range(k * shard_size, stop, batch_size):
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
