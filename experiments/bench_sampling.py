"""Text-conditioned sampling of the whole cascade (prior → decoder → super-resolution), ours against
diffusers' `UnCLIPPipeline`, on the same architecture and weights (`bench_common.SIZES`), with
Karlo's steps (25 / 25 / 7) and guidance (4 / 8), at batches 1, 4 and 16.

Both implementations run in one process, alternately, so that they share the machine's load;
the first call of each (compilation, allocator warm-up) is excluded. Text encodings are given to
both (no text encoder runs). Prints images/s, the ratio, FLOPs per image from XLA's cost analysis
(one denoiser call × steps, × 2 with guidance: a loop body is counted once) and achieved FLOP/s,
and writes `experiments/results/bench_sampling/sampling_<tag>.json`.

    .venv/bin/python -m experiments.bench_sampling --sizes tiny,small --batches 1,4,16 --reps 3
    JAX_NUM_CPU_DEVICES=2 .venv/bin/python -m experiments.bench_sampling --tag cpu_2dev
    XLA_FLAGS=... .venv/bin/python -m experiments.bench_sampling --tag xla_flags_x
"""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments import bench_common as common
from unclip_jax.convert.diffusers_prior import convert_prior_state_dict, prior_from_diffusers_config
from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.nn.precision import COMPUTE_DTYPES
from unclip_jax.pipelines.batches import RowBatches
from unclip_jax.sampling.decoder import DecoderChain, UpsamplerChain
from unclip_jax.sampling.prior import EncodedCaption, make_prior_sampler
from unclip_jax.sampling.settings import DiffusionSettings

MAX_STEPS = 64  # step counts up to this share each stage's compiled program


def text_inputs(size: common.CascadeSize, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random caption encodings: conditional rows and the empty caption's (null) rows."""
    rng = np.random.default_rng(seed)
    length, dim = size.text_length, size.clip_dim
    return dict(
        embed=rng.standard_normal((batch, dim), np.float32),
        states=rng.standard_normal((batch, length, dim), np.float32),
        mask=np.arange(length)[None] < rng.integers(2, length + 1, (batch, 1)),
        null_embed=rng.standard_normal((dim,), np.float32),
        null_states=rng.standard_normal((length, dim), np.float32),
        null_mask=np.arange(length) < 2,
    )


class OurCascade:
    """The three stage samplers of unclip_jax, each one compiled program per batch shape; the
    caption rows laid out over the local devices as `UnCLIP` lays them out (parameters
    replicated)."""

    def __init__(self, pipe, size: common.CascadeSize, dtype=jnp.float32):
        self.size = size
        self.prior_model = prior_from_diffusers_config(pipe.prior.config, dtype=dtype)
        self.prior_params, self.normalizer = convert_prior_state_dict(
            pipe.prior.state_dict(), self.prior_model
        )
        self.decoder_model = common.our_decoder(size, dtype)
        self.decoder_params = common.decoder_params(
            size, self.decoder_model, pipe.decoder, pipe.text_proj
        )
        self.super_res_model = common.our_super_res(size, dtype)
        self.super_res_params = common.super_res_params(
            size, self.super_res_model, pipe.super_res_first
        )
        self.prior = make_prior_sampler(self.prior_model, num_candidates=1, sampler="ddpm")
        self.decoder = DecoderChain(
            self.decoder_model,
            DiffusionSettings(sampler="ddpm", learned_variance=True, max_steps=MAX_STEPS),
        )
        self.super_res = UpsamplerChain(
            self.super_res_model, DiffusionSettings(sampler="ddpm", max_steps=MAX_STEPS)
        )
        self.batches = RowBatches()  # every local device
        self.params = self.batches.replicate(
            (self.prior_params, self.decoder_params, self.super_res_params)
        )

    def _placed(self, text: dict) -> dict:
        """The caption rows laid out as the pipeline lays them out (`RowBatches.place`: split over
        the devices, or one image copied to both, its guided rows then split)."""
        placed = self.batches.place({k: v for k, v in text.items() if not k.startswith("null")})
        return placed | {k: v for k, v in text.items() if k.startswith("null")}

    def __call__(self, text: dict, key, steps=common.STEPS, guidance=common.GUIDANCE) -> np.ndarray:
        with jax.set_mesh(self.batches.mesh):
            return self._run(self._placed(text), key, steps, guidance)

    def _run(self, text: dict, key, steps: dict, guidance: dict) -> np.ndarray:
        prior_key, decoder_key, super_res_key = jax.random.split(key, 3)
        prior_params, decoder_params, super_res_params = self.params
        schedule = make_schedule("cosine", 1000, steps["prior"], max_steps=MAX_STEPS)
        null = (text["null_embed"], text["null_states"], text["null_mask"])
        image_embed, _ = self.prior(
            prior_params,
            prior_key,
            EncodedCaption(text["embed"], text["states"], text["mask"]),
            schedule,
            guidance["prior"],
            self.normalizer,
            null,
        )
        caption = dict(
            caption_states=text["states"], caption_embed=text["embed"], caption_mask=text["mask"]
        )
        small = self.decoder(
            decoder_params,
            image_embed,
            decoder_key,
            image_size=self.size.decoder_size,
            caption=caption,
            steps=steps["decoder"],
            guidance_scale=guidance["decoder"],
        )
        images = self.super_res(
            super_res_params,
            jnp.clip(small, -1.0, 1.0),
            super_res_key,
            size=self.size.super_res_size,
            steps=steps["super_res"],
        )
        return np.asarray(jnp.clip(images * 0.5 + 0.5, 0.0, 1.0))

    def flops_per_image(self) -> dict[str, float]:
        """Per image: one denoiser call's FLOPs × steps (× 2 rows with guidance)."""
        size, text = self.size, text_inputs(self.size, 2)
        prior_flops = common.flops(
            lambda p, x, t: self.prior_model.apply(
                {"params": p}, x, t, text["embed"], text["states"], text["mask"]
            ),
            self.prior_params,
            jnp.zeros((2, size.clip_dim)),
            jnp.zeros((2,), jnp.int32),
        )
        inputs = common.decoder_inputs(size, 2)
        decoder_flops = common.flops(
            lambda p, x, t: self.decoder_model.apply(
                {"params": p},
                x,
                t,
                inputs["image_embed"],
                caption_states=inputs["caption_states"],
                caption_embed=inputs["caption_embed"],
                caption_mask=inputs["caption_mask"],
            ),
            self.decoder_params,
            jnp.asarray(inputs["x"]),
            jnp.asarray(inputs["t"]),
        )
        low = jnp.zeros((1, size.decoder_size, size.decoder_size, 3))
        super_res_flops = common.flops(
            lambda p, x, t: self.super_res_model.apply({"params": p}, x, low, t),
            self.super_res_params,
            jnp.zeros((1, size.super_res_size, size.super_res_size, 3)),
            jnp.zeros((1,), jnp.int32),
        )
        per_image = dict(
            prior=prior_flops * common.STEPS["prior"],  # 2 rows = 1 guided image
            decoder=decoder_flops * common.STEPS["decoder"],
            super_res=super_res_flops * common.STEPS["super_res"],
        )
        per_image["total"] = sum(per_image.values())
        return per_image


class DiffusersCascade:
    """diffusers' UnCLIPPipeline with the caption encodings given (its text encoder not run)."""

    def __init__(self, pipe, size: common.CascadeSize):
        self.pipe, self.size = pipe, size

    def decoder_probe(self, batch: int):
        """One guided decoder U-Net call at `batch` images (2 × batch rows)."""
        size, pipe = self.size, self.pipe
        x = torch.randn(2 * batch, 3, size.decoder_size, size.decoder_size)
        context = torch.randn(2 * batch, size.text_length + 4, size.context_dim)
        added = torch.randn(2 * batch, 4 * size.decoder_channels[0])
        mask = torch.ones(2 * batch, size.text_length + 4, dtype=torch.bool)

        def probe():
            with torch.no_grad():
                pipe.decoder(
                    x, 500, encoder_hidden_states=context, class_labels=added, attention_mask=mask
                )

        return probe

    def __call__(self, text: dict, generator) -> np.ndarray:
        batch = text["embed"].shape[0]
        cond = [torch.from_numpy(text[k]) for k in ("embed", "states", "mask")]
        null = [
            torch.from_numpy(np.repeat(text[f"null_{k}"][None], batch, 0))
            for k in ("embed", "states", "mask")
        ]
        doubled = tuple(torch.cat([n, c]) for n, c in zip(null, cond, strict=True))
        self.pipe._encode_prompt = lambda *args, **kwargs: doubled
        return self.pipe(
            text_model_output=(cond[0], cond[1]),
            text_attention_mask=cond[2],
            prior_num_inference_steps=common.STEPS["prior"],
            decoder_num_inference_steps=common.STEPS["decoder"],
            super_res_num_inference_steps=common.STEPS["super_res"],
            prior_guidance_scale=common.GUIDANCE["prior"],
            decoder_guidance_scale=common.GUIDANCE["decoder"],
            generator=generator,
            output_type="np",
        ).images


def bench_size(name: str, batches: list[int], reps: int, dtype) -> list[dict]:
    size = common.SIZES[name]
    pipe = common.diffusers_pipeline(size)
    ours = OurCascade(pipe, size, dtype)
    theirs = DiffusersCascade(pipe, size)
    per_image = ours.flops_per_image()
    params = dict(
        prior=common.num_params(ours.prior_params),
        decoder=common.num_params(ours.decoder_params),
        super_res=common.num_params(ours.super_res_params),
    )
    rows = []
    for batch in batches:
        text = text_inputs(size, batch, seed=batch)
        generator = torch.Generator().manual_seed(0)
        compile_s = common.seconds(ours, text, jax.random.key(0))
        threads = common.pick_torch_threads(theirs.decoder_probe(batch))
        common.seconds(theirs, text, generator)
        load_before = common.load_average()
        times = {"ours": [], "diffusers": []}
        for rep in range(reps):
            times["ours"].append(common.seconds(ours, text, jax.random.key(rep + 1)))
            times["diffusers"].append(common.seconds(theirs, text, generator))
        ours_ips = batch / statistics.median(times["ours"])
        theirs_ips = batch / statistics.median(times["diffusers"])
        row = dict(
            size=name,
            batch=batch,
            dtype=jnp.dtype(dtype).name,
            ours_images_per_s=ours_ips,
            diffusers_images_per_s=theirs_ips,
            ratio=ours_ips / theirs_ips,
            times_s=times,
            first_call_s=compile_s,
            flops_per_image=per_image,
            ours_flops_per_s=per_image["total"] * ours_ips,
            diffusers_flops_per_s=per_image["total"] * theirs_ips,
            params=params,
            torch_threads=threads,
            devices=ours.batches.num_devices,
            rows_layout="split" if batch % ours.batches.num_devices == 0 else "guided rows split",
            load_average=[load_before, common.load_average()],
        )
        rows.append(row)
        print(
            f"{name:6s} batch {batch:3d}  ours {ours_ips:8.3f} img/s  diffusers {theirs_ips:8.3f} "
            f"img/s ({threads} thr)  {row['devices']} dev  ratio {row['ratio']:5.2f}  "
            f"{per_image['total'] / 1e9:8.2f} GFLOP/img  "
            f"ours {row['ours_flops_per_s'] / 1e9:6.1f} GFLOP/s  diffusers "
            f"{row['diffusers_flops_per_s'] / 1e9:6.1f} GFLOP/s  load {row['load_average']}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = common.argument_parser(
        __doc__, sizes="tiny,small", batches="1,4,16", reps=3, dtype="float32", tag=None
    )
    args = parser.parse_args()
    sizes = common.split_names(parser, "--sizes", args.sizes, common.SIZES)
    gpu_only = [s for s in sizes if common.SIZES[s].gpu_only and jax.default_backend() == "cpu"]
    if gpu_only:
        raise SystemExit(f"sizes {gpu_only} are measured on a GPU only (backend is cpu)")
    batches = [int(b) for b in args.batches.split(",")]
    info = common.machine()
    print(info, flush=True)
    rows = []
    for name in sizes:
        rows += bench_size(name, batches, args.reps, COMPUTE_DTYPES[args.dtype])
    tag = args.tag or jax.default_backend()
    path = common.write_results("bench_sampling", f"sampling_{tag}", dict(machine=info, rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
