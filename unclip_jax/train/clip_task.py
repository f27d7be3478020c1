"""The contrastive CLIP stage (Radford et al. 2021): trains a CLIP from scratch on image-caption
data, or fine-tunes a converted one, with the symmetric InfoNCE loss of `contrastive.py`.

    unclip train --config configs/clip_shapes.py --workdir /tmp/clip_shapes

Writes, besides the loop's checkpoints, `<workdir>/tokenizer/` (the BPE trained on the training
captions, or the loaded CLIP's tokenizer) and at the end `<workdir>/clip/`, the EMA parameters
as a CLIP checkpoint (`convert.hf_clip.load_clip`) with the tokenizer in `clip/tokenizer/`.
On the shapes data, evaluation is image→caption retrieval: top-1 over the 48 captions
"a {size} {colour} {shape}" for the held-out single-object test images.
"""

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from unclip_jax.convert import hf_clip
from unclip_jax.data import input_pipeline, preprocess, shapes_render
from unclip_jax.models.clip import CLIP, CLIPConfig, clip_config, normalize
from unclip_jax.models.clip_preprocessing import clip_preprocess
from unclip_jax.storage.locations import location
from unclip_jax.storage.tokenizers import save_tokenizer
from unclip_jax.train import loop
from unclip_jax.train.contrastive import contrastive_loss, same_caption
from unclip_jax.train.run_tokenizer import run_tokenizer
from unclip_jax.train.task import Batch, Metrics, Params, Task

TOKENIZER_DIR = hf_clip.TOKENIZER_DIR
EXPORT_DIR = "clip"
TRAIN_KEYS = ("image", "tokens", "mask")


def shapes_candidates() -> list[str]:
    """The 48 single-object captions "a {size} {colour} {shape}" of the shapes set."""
    return [
        f"a {size} {colour} {shape}"
        for size in shapes_render.SIZES
        for colour in shapes_render.COLOURS
        for shape in shapes_render.SHAPES
    ]


def shapes_target(example: dict) -> int:
    """Index in `shapes_candidates()` of a single-object example's caption."""
    size = int(example["object_size"][0])
    colour = int(example["object_colour"][0])
    shape = int(example["object_shape"][0])
    return (size * len(shapes_render.COLOURS) + colour) * len(shapes_render.SHAPES) + shape


class CLIPTask(Task):
    """Contrastive loss on (image, caption) batches; retrieval top-1 on (image, target) batches.

    Train batches: image [B, S, S, 3] in [-1, 1], tokens [B, L], mask [B, L]. Eval batches:
    image [B, S, S, 3], target [B] (index in `candidates`). The loss is over the whole global
    batch (every image against every caption), so gradient accumulation changes it.
    """

    def __init__(
        self,
        config: CLIPConfig,
        candidates: tuple[np.ndarray, np.ndarray] | None = None,  # ids, mask [K, L]
        init_params: Params | None = None,  # unboxed params to start from (fine-tuning)
    ):
        self.config = config
        self.model = CLIP(config)
        self.candidates = candidates
        self.init_params = init_params

    def _dummy_inputs(self, batch_spec: dict) -> tuple[jax.Array, jax.Array]:
        vision = self.config.vision
        length = batch_spec["tokens"].shape[1] if "tokens" in batch_spec else 1
        ids = jnp.zeros((1, length), jnp.int32)
        images = jnp.zeros((1, vision.image_size, vision.image_size, vision.channels))
        return ids, images

    def init(self, key: jax.Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        params = self.model.init(key, *self._dummy_inputs(batch_spec))["params"]
        if self.init_params is None:
            return params
        return jax.tree.map(
            lambda boxed, value: boxed.replace_boxed(jnp.asarray(value)),
            params,
            self.init_params,
            is_leaf=lambda x: isinstance(x, nn.Partitioned),
        )

    def _images(self, images: jax.Array) -> jax.Array:
        return clip_preprocess(images, self.config.vision.image_size)

    def loss(
        self, params: Params, batch: Batch, key: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        del key, train
        _, aux = self.model.apply(
            {"params": params}, batch["tokens"], self._images(batch["image"]), batch["mask"]
        )
        return contrastive_loss(
            aux["image_embeds"],
            aux["text_embeds"],
            aux["logit_scale"],
            positives=same_caption(batch["tokens"]),
            max_logit_scale=self.config.max_logit_scale,
        )

    def evaluate(self, params: Params, batch: Batch, key: jax.Array) -> Metrics:
        del key
        if self.candidates is None:
            raise ValueError("CLIPTask.evaluate needs retrieval candidates")
        ids, mask = (jnp.asarray(x) for x in self.candidates)
        text, _ = self.model.apply({"params": params}, ids, mask, method=CLIP.encode_text)
        image, _ = self.model.apply(
            {"params": params}, self._images(batch["image"]), method=CLIP.encode_image
        )
        best = jnp.argmax(normalize(image) @ normalize(text).T, axis=-1)  # [B]
        return {"retrieval_top1": jnp.mean((best == batch["target"]).astype(jnp.float32))}


def _tokenizer(config: ml_collections.ConfigDict, workdir: epath.Path, source: Sequence):
    """The run's tokenizer: reloaded on resume, else the fine-tuned CLIP's, else a BPE trained on
    the training captions (and, on the shapes set, every single-object caption)."""
    given = epath.Path(config.init_from) / TOKENIZER_DIR if config.init_from else None
    extra = shapes_candidates() if config.data.source.startswith("shapes") else []
    return run_tokenizer(config.tokenizer, workdir / TOKENIZER_DIR, source, given, extra)


def _model_config(config: ml_collections.ConfigDict, tokenizer) -> CLIPConfig:
    """The variant with the tokenizer's vocabulary and context, and `config.model` overrides."""
    base = clip_config(config.model.variant)
    text = dataclasses.replace(
        base.text,
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
        eos_token_id=tokenizer.eot_id,
        **dict(config.model.text),
    )
    vision = dataclasses.replace(base.vision, **dict(config.model.vision))
    return dataclasses.replace(base, text=text, vision=vision)


def train_batches(
    source: Sequence, config: ml_collections.ConfigDict, tokenize: Callable
) -> input_pipeline.DataIterator:
    """Host-local train batches of image, tokens and mask (the numeric keys the task reads)."""

    def batch_fn(batch: dict) -> dict:
        ids, mask = tokenize([str(c) for c in batch["caption"]])
        return {"image": batch["image"], "tokens": ids, "mask": mask.astype(bool)}

    return input_pipeline.DataIterator(
        source,
        batch_size=config.train.batch_size // jax.process_count(),
        seed=config.seed,
        example_fn=preprocess.ImageTextExample(
            image_size=config.data.image_size,
            resize_size=config.data.image_size,
            random_crop=False,
            random_flip=config.data.random_flip,
        ),
        batch_fn=batch_fn,
    )


def retrieval_batches(source: Sequence, batch_size: int, limit: int) -> list[dict]:
    """Fixed eval batches (image, target) of the single-object examples among the first `limit`
    of `source`; the remainder that does not fill a batch is dropped."""
    images, targets = [], []
    for i in range(min(limit, len(source))):
        example = source[i]
        if int(example["num_objects"]) == 1:
            images.append(preprocess.to_unit_range(np.asarray(example["image"])))
            targets.append(shapes_target(example))
    count = len(images) // batch_size * batch_size
    if count == 0:
        raise ValueError(f"fewer than {batch_size} single-object examples in the eval source")
    return [
        {
            "image": np.stack(images[i : i + batch_size]).astype(np.float32),
            "target": np.asarray(targets[i : i + batch_size], np.int32),
        }
        for i in range(0, count, batch_size)
    ]


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_source: Sequence,
    eval_source: Sequence | None,
    hooks: Sequence[loop.Hook] = (),
) -> dict[str, float]:
    """Trains on `train_source`, exports `<workdir>/clip`; returns the final retrieval metrics
    on `eval_source` (shapes examples), or {} without one."""
    workdir = location(workdir)
    tokenizer = _tokenizer(config, workdir, train_source)
    init_params = None
    if config.init_from:
        model_config, loaded = hf_clip.load_clip(config.init_from)
        init_params = loaded["params"]
    else:
        model_config = _model_config(config, tokenizer)
    candidates = tokenizer(shapes_candidates()) if eval_source is not None else None
    task = CLIPTask(model_config, candidates, init_params)
    eval_data: Callable[[], Iterable[Batch]] | None = None
    evaluate = None
    if eval_source is not None:
        batches = retrieval_batches(eval_source, config.eval.batch_size, config.eval.num_examples)
        eval_data = lambda: iter(batches)
        evaluate = jax.jit(task.evaluate)
    state = loop.train_and_evaluate(
        config, workdir, task, train_batches(train_source, config, tokenizer), eval_data, hooks
    )
    params = jax.device_get(nn.unbox(state.ema_params))
    if jax.process_index() == 0:
        hf_clip.save_clip(workdir / EXPORT_DIR, model_config, {"params": params})
        save_tokenizer(tokenizer, workdir / EXPORT_DIR / TOKENIZER_DIR)
    if evaluate is None:
        return {}
    key = jax.random.key(0)
    scores = [float(evaluate(params, batch, key)["retrieval_top1"]) for batch in batches]
    metrics = {"retrieval_top1": float(np.mean(scores))}
    logging.info("final image->caption retrieval top-1: %.4f", metrics["retrieval_top1"])
    return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`unclip train` entry point (trainer "clip")."""
    from unclip_jax.data.sources import open_source

    size, held_out = config.data.image_size, config.data.get("validation_fraction", 0.0)
    train_source = open_source(config.data.source, "train", config.data.data_dir, size, held_out)
    eval_source = None
    if config.data.source.startswith("shapes_captions"):
        eval_source = open_source(config.data.source, "test", config.data.data_dir, size)
    run(config, workdir, train_source, eval_source)
