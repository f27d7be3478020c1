"""The sampling chains of a converted Karlo checkpoint (diffusers' `UnCLIPPipeline` rule):
ancestral steps of each stage's `KarloScheduler` (its variance type and clipping as the
checkpoint's scheduler configs set them), guidance against the empty caption's CLIP encoding,
the decoder's output clamped to [-1, 1] before super-resolution, and `super_res_first` at every
super-resolution step but the last (t = 0), where `super_res_last` runs.

Per-step noise is drawn from the key, or fed as `noise` [B, steps − 1, …] (the noise added after
each step, in sampling order; the last step adds none), and the prior's x_T as `latents`
[B, D], to reproduce another implementation's chain. Each chain is one jitted program per batch
shape; step counts, scales and keys are traced.
"""

import dataclasses

import jax
import jax.numpy as jnp

from unclip_jax import flop_meter, sharding
from unclip_jax.convert.karlo_checkpoint import KarloCheckpoint
from unclip_jax.diffusion import guidance, samplers
from unclip_jax.diffusion.karlo import KarloScheduler
from unclip_jax.diffusion.schedules import Schedule
from unclip_jax.models.prior import EmbeddingNormalizer
from unclip_jax.sampling.prior import rerank_by_dot_product

Array = jax.Array


def karlo_schedule(scheduler: KarloScheduler, steps: int) -> Schedule:
    """Karlo's respaced schedule padded to T steps: one program for every step count."""
    return scheduler.schedule(int(steps), max_steps=scheduler.num_train_steps)


def _chain_noise(noise: Array) -> Array:
    """Fed noise [B, S−1, …] in sampling order → the samplers' [S, B, …] by schedule index."""
    steps_first = jnp.moveaxis(noise.astype(jnp.float32), 1, 0)[::-1]
    return jnp.concatenate([jnp.zeros_like(steps_first[:1]), steps_first])


def ancestral(
    scheduler: KarloScheduler,
    denoise: samplers.DenoiseFn,
    schedule: Schedule,
    x_T: Array,
    key: Array,
    noise: Array | None,
) -> Array:
    """Karlo's chain: per-step noise fed ([B, S−1, …]) or drawn from `key`."""
    return samplers.ddpm_sample(
        scheduler.wrap(denoise),
        schedule,
        x_T,
        None if noise is not None else key,
        noise=None if noise is None else _chain_noise(noise),
        **scheduler.sampler_kwargs(),
    )


def with_null(cond: Array, null: Array) -> Array:
    """[B, …] conditional rows and the null row broadcast to B, paired (`guidance.pair`)."""
    return guidance.pair(cond, jnp.asarray(null, cond.dtype))


class KarloPriorChain:
    """`chain(params, key, text_embed [B, Dz], states [B, L, Dt], mask [B, L], schedule,
    scales [B], latents, noise, candidates) -> z_i [B, Dz]`; params = {"model", "null"}."""

    def __init__(self, model, scheduler: KarloScheduler, normalizer: EmbeddingNormalizer):
        self.model, self.scheduler, self.normalizer = model, scheduler, normalizer
        self.compiled = flop_meter.jit(self._run, static_argnames="candidates")

    def _run(self, params, key, text_embed, states, mask, schedule, scales, latents, noise,
             candidates):  # fmt: skip
        embed, states, mask, scales = (
            jnp.repeat(a, candidates, axis=0) for a in (text_embed, states, mask, scales)
        )
        null = params["null"]
        both = sharding.spread_rows(
            [
                with_null(a, null[k])
                for a, k in ((embed, "embed"), (states, "states"), (mask, "mask"))
            ]
        )
        denoise = guidance.guided_denoiser(
            lambda x, t: self.model.apply(
                {"params": params["model"]}, *sharding.spread_rows((x, t)), *both
            ),
            scales[:, None],
        )
        if latents is None:
            latents = jax.random.normal(jax.random.fold_in(key, 0), embed.shape, jnp.float32)
        x0 = ancestral(
            self.scheduler, denoise, schedule, latents, jax.random.fold_in(key, 1), noise
        )
        z_i = self.normalizer.denormalize(x0).reshape(len(text_embed), candidates, -1)
        return rerank_by_dot_product(z_i, text_embed)[0]

    def __call__(self, *args, candidates: int) -> Array:
        return self.compiled(*args, candidates=candidates)


class KarloDecoderChain:
    """`chain(params, x_T [B, S, S, 3], cond, schedule, scale, key, noise) -> [B, S, S, 3]`,
    cond: image_embed, caption_states, caption_embed, caption_mask (and optionally drop_image [B]:
    rows that see the learned null image embedding); params = {"model", "null"}."""

    def __init__(self, model, scheduler: KarloScheduler):
        self.model, self.scheduler = model, scheduler
        self.compiled = flop_meter.jit(self._run)

    def _run(self, params, x_T, cond, schedule, scale, key, noise):
        null = params["null"]
        batch = len(x_T)
        image_embed = cond["image_embed"]
        caption = sharding.spread_rows(
            {
                "caption_states": with_null(cond["caption_states"], null["states"]),
                "caption_embed": with_null(cond["caption_embed"], null["embed"]),
                "caption_mask": with_null(cond["caption_mask"], null["mask"]),
                # the learned null image embedding: the unconditional half, and conditional rows
                # given none (`drop_image`)
                "drop_image": guidance.pair(
                    cond.get("drop_image", jnp.zeros((batch,), bool)), jnp.ones((batch,), bool)
                ),
            }
        )
        denoise = guidance.guided_denoiser(
            lambda x, t: self.model.apply(
                {"params": params["model"]},
                *sharding.spread_rows((x, t, guidance.pair(image_embed, image_embed))),
                **caption,
            ),
            scale,
            x_T.shape[-1],
        )
        images = ancestral(self.scheduler, denoise, schedule, x_T, key, noise)
        return jnp.clip(images, -1.0, 1.0)

    def __call__(self, *args) -> Array:
        return self.compiled(*args)


class KarloSuperResChain:
    """`chain(params, x_T [B, H, W, 3], low_res [B, h, w, 3], schedule, key, noise)`, unguided;
    params = {"first", "last"}."""

    def __init__(self, model, scheduler: KarloScheduler):
        self.model, self.scheduler = model, scheduler
        self.compiled = flop_meter.jit(self._run)

    def _run(self, params, x_T, low_res, schedule, key, noise):
        def denoise(x, t):
            def run(name):
                return lambda: self.model.apply({"params": params[name]}, x, low_res, t)

            return jax.lax.cond(t[0] == 0, run("last"), run("first"))

        images = ancestral(self.scheduler, denoise, schedule, x_T, key, noise)
        return jnp.clip(images, -1.0, 1.0)

    def __call__(self, *args) -> Array:
        return self.compiled(*args)


@dataclasses.dataclass(frozen=True)
class KarloChains:
    """The three chains of one converted Karlo checkpoint."""

    prior: KarloPriorChain
    decoder: KarloDecoderChain
    super_res: KarloSuperResChain


def karlo_chains(checkpoint: KarloCheckpoint) -> KarloChains:
    """Each stage's chain, on the checkpoint's modules and schedulers."""
    schedulers = checkpoint.schedulers
    return KarloChains(
        KarloPriorChain(checkpoint.prior, schedulers["prior"], checkpoint.normalizer),
        KarloDecoderChain(checkpoint.decoder, schedulers["decoder"]),
        KarloSuperResChain(checkpoint.super_res, schedulers["super_res"]),
    )
