"""Training the decoder (Ramesh et al. 2022, §2.1): p(x | z_i, y), a U-Net inverting CLIP image
embeddings, with the hybrid loss of a learned variance (Nichol & Dhariwal 2021).

Each step resizes the batch's images to the decoder's size, noises them at a uniform timestep,
and regresses the configured target (eps, x0 or v) plus λ·T·L_vlb for the variance channels. The
image embedding is replaced by the learned null embedding 10% of the time and the caption 50%
of the time (classifier-free guidance, §2.1). The conditioning z_i is the batch's
`image_embedding` when present, else computed on the fly by a frozen CLIP (`FrozenCLIP`) from
the batch's images at their source resolution.

Batches (host-local numpy):

    image            float [B, S, S, 3]  in [-1, 1], any S (resized to the decoder's size)
    image_embedding  float [B, D]        optional: CLIP image embeddings
    tokens, mask     int [B, L]          the caption (caption_source "transformer" or "clip")

    unclip train --config=configs/decoder_demo.py --workdir=workdirs/decoder_demo \
        --config.clip_dir=workdirs/clip_demo/clip
"""

import os
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from unclip_jax.convert import hf_clip
from unclip_jax.data.image_batches import first_rows, held_out_batches, image_batches
from unclip_jax.diffusion import gaussian
from unclip_jax.diffusion.schedules import Schedule, make_schedule
from unclip_jax.models.frozen_clip import FrozenCLIP
from unclip_jax.models.unet import Decoder, decoder_from_config
from unclip_jax.nn.resize import resize_images
from unclip_jax.sampling.decoder import DecoderChain
from unclip_jax.sampling.settings import DiffusionSettings
from unclip_jax.storage.tokenizers import load_tokenizer
from unclip_jax.train import denoising, loop
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Params, Task, check_probability

Array = jax.Array


class DecoderTask(Task):
    """Hybrid (or plain) diffusion loss of a `Decoder` with condition dropout; sample grids from
    fixed held-out image embeddings (`sample_embeddings` [N, D]) and, for a decoder that reads
    captions, their captions (`sample_captions`: `tokens`, `mask` [N, L]) through the guided
    sampler."""

    def __init__(
        self,
        model: Decoder,
        schedule: Schedule,
        image_size: int,
        *,
        mean_type: str = "eps",  # or "x0", "v"
        var_type: str = "learned_range",  # or "fixed_small", "fixed_large"
        image_drop_prob: float = 0.1,
        caption_drop_prob: float = 0.5,
        clip: FrozenCLIP | None = None,
        sampler: DecoderChain | None = None,
        sample_embeddings: np.ndarray | None = None,
        sample_captions: dict[str, np.ndarray] | None = None,
        sample_steps: int | str = 250,
        guidance_scale: float = 1.0,
    ):
        gaussian.check_prediction(mean_type)
        gaussian.check_variance(var_type)
        check_probability("image_drop_prob", image_drop_prob)
        check_probability("caption_drop_prob", caption_drop_prob)
        expected = gaussian.output_channels(3, var_type)
        if model.unet.out_channels != expected:
            raise ValueError(
                f"var_type {var_type!r} needs {expected} output channels, the decoder has "
                f"{model.unet.out_channels}"
            )
        if model.caption_source == "clip" and clip is None:
            raise ValueError('caption_source "clip" needs a FrozenCLIP to encode the captions')
        if sample_embeddings is not None and model.caption_source != "none":
            held = sorted(sample_captions or {})
            if held != ["mask", "tokens"]:
                raise ValueError(
                    f"caption_source {model.caption_source!r} samples need sample_captions "
                    f"with 'tokens' and 'mask', got {held or 'none'}"
                )
        self.model = model
        self.schedule = schedule
        self.image_size = image_size
        self.mean_type = mean_type
        self.var_type = var_type
        self.image_drop_prob = image_drop_prob
        self.caption_drop_prob = caption_drop_prob
        self.clip = clip
        self.sampler = sampler
        self.sample_embeddings = sample_embeddings
        self.sample_captions = sample_captions
        self.sample_steps = sample_steps
        self.guidance_scale = guidance_scale

    def image_embedding(self, batch: Batch) -> Array:
        """z_i [B, D]: the batch's `image_embedding`, else the frozen CLIP's of `image`."""
        if "image_embedding" in batch:
            return jnp.asarray(batch["image_embedding"], jnp.float32)
        if self.clip is None:
            raise ValueError("batches without image_embedding need a FrozenCLIP in the task")
        return self.clip.encode_image(batch["image"])

    def caption_inputs(self, batch: Batch) -> dict[str, Array]:
        """The decoder's caption keyword arguments for its `caption_source`."""
        source = self.model.caption_source
        if source == "none":
            return {}
        mask = jnp.asarray(batch["mask"]).astype(bool)
        if source == "transformer":
            return {"caption_ids": batch["tokens"], "caption_mask": mask}
        embed, states = self.clip.encode_text(batch["tokens"], mask)
        return {"caption_states": states, "caption_embed": embed, "caption_mask": mask}

    def init(self, key: Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        return self.model.init(
            key,
            x,
            jnp.zeros((1,), jnp.int32),
            self.image_embedding(zeros),
            **self.caption_inputs(zeros),
        )["params"]

    def loss(self, params: Params, batch: Batch, key: Array, train: bool) -> tuple[Array, Metrics]:
        x0 = resize_images(batch["image"], self.image_size)  # [B, s, s, 3]
        size = x0.shape[0]
        noise_key, image_key, caption_key, dropout_key = jax.random.split(key, 4)
        caption = self.caption_inputs(batch)
        image_embed = self.image_embedding(batch)
        drop_image = drop_caption = None
        if train:
            drop_image = jax.random.bernoulli(image_key, self.image_drop_prob, (size,))
            if caption:
                drop_caption = jax.random.bernoulli(caption_key, self.caption_drop_prob, (size,))

        def denoise(x_t: Array, t: Array) -> Array:
            return self.model.apply(
                {"params": params},
                x_t,
                t,
                image_embed,
                drop_image=drop_image,
                drop_caption=drop_caption,
                **denoising.dropout(train, dropout_key),
                **caption,
            )

        return denoising.image_loss(
            self.schedule, noise_key, x0, denoise, self.mean_type, self.var_type
        )

    def sample(self, params: Params, key: Array, num: int) -> Array | None:
        if self.sampler is None or self.sample_embeddings is None:
            return None
        embeds = jnp.asarray(self.sample_embeddings[:num], jnp.float32)
        if embeds.shape[0] < num:
            raise ValueError(f"{num} samples asked, {embeds.shape[0]} sample embeddings held")
        caption = None
        if self.model.caption_source != "none":
            caption = self.caption_inputs({k: v[:num] for k, v in self.sample_captions.items()})
        return self.sampler(
            params,
            embeds,
            key,
            image_size=self.image_size,
            caption=caption,
            steps=self.sample_steps,
            guidance_scale=self.guidance_scale,
        )

    @property
    def generates_images(self) -> bool:
        return self.sampler is not None and self.sample_embeddings is not None


def build_task(
    config: ml_collections.ConfigDict,
    clip: FrozenCLIP | None,
    sample_embeddings: np.ndarray | None = None,
    sample_captions: dict[str, np.ndarray] | None = None,
) -> DecoderTask:
    """The task of a decoder config (`model`, `image_size`, `diffusion`, `guidance`); samples
    are drawn from `sample_embeddings` [N, D] (and `sample_captions` [N, L] when the decoder
    reads captions)."""
    diffusion = config.diffusion
    model = decoder_from_config(config.model)
    settings = DiffusionSettings.from_dict(diffusion)
    return DecoderTask(
        model,
        make_schedule(diffusion.schedule, diffusion.train_steps),
        config.image_size,
        mean_type=diffusion.prediction,
        var_type=settings.var_type,
        image_drop_prob=config.guidance.image_drop_prob,
        caption_drop_prob=config.guidance.caption_drop_prob,
        clip=clip,
        sampler=DecoderChain(model, settings),
        sample_embeddings=sample_embeddings,
        sample_captions=sample_captions,
        sample_steps=diffusion.sample_steps,
        guidance_scale=config.guidance.scale,
    )


def load_conditioning(config: ml_collections.ConfigDict):
    """(FrozenCLIP or None, tokenizer or None) named by `config.clip_dir`."""
    if not config.clip_dir:
        return None, None
    clip = hf_clip.load_frozen_clip(config.clip_dir)
    tokenizer = None
    if config.model.caption_source != "none":
        tokenizer = load_tokenizer(epath.Path(config.clip_dir) / hf_clip.TOKENIZER_DIR)
    return clip, tokenizer


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_source: Sequence,
    eval_source: Sequence,
    clip: FrozenCLIP,
    tokenizer: Callable | None = None,
    hooks: Sequence[loop.Hook] = (),
) -> TrainState:
    """Trains the decoder on `train_source`; evaluates the loss on, and draws sample grids from,
    the first `config.eval.num_batches` batches of `eval_source`. Returns the final state."""
    common = dict(image_size=config.data.image_size, tokenize=tokenizer)
    held_out = held_out_batches(
        eval_source,
        batch_size=config.eval.batch_size,
        count=config.eval.num_batches,
        seed=config.seed,
        **common,
    )
    num_samples = config.train.num_samples
    sample_images = first_rows(held_out, "image", num_samples)
    sample_embeddings = np.asarray(jax.jit(FrozenCLIP.encode_image)(clip, sample_images))
    sample_captions = None
    if tokenizer is not None:
        sample_captions = {
            k: np.concatenate([b[k] for b in held_out])[:num_samples] for k in ("tokens", "mask")
        }
    task = build_task(config, clip, sample_embeddings, sample_captions)
    train_data = image_batches(
        train_source,
        batch_size=config.train.batch_size // jax.process_count(),
        seed=config.seed,
        **common,
    )
    eval_data: Callable[[], Iterable[Batch]] = lambda: iter(held_out)
    return loop.train_and_evaluate(config, workdir, task, train_data, eval_data, hooks)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """`unclip train` entry point (trainer "decoder"): the decoder of `config` on
    `config.data.source`, conditioned through the CLIP of `config.clip_dir`."""
    from unclip_jax.data.sources import open_train_and_eval

    if not config.clip_dir:
        raise ValueError("config.clip_dir must name a CLIP checkpoint (the conditioning encoder)")
    clip, tokenizer = load_conditioning(config)
    train_source, eval_source = open_train_and_eval(config.data)
    return run(config, workdir, train_source, eval_source, clip, tokenizer)
