"""Ahead-of-time compilation of the Karlo-size cascade's sampling chains for one TPU chip, without
a TPU.

libtpu compiles, for a described single-chip host (`tpu_aot`'s target `v5e-1`, or `v6e-1` with
`--chip v6e`),
the three jitted programs a converted Karlo v1-alpha checkpoint samples with in bfloat16, built as
`load_karlo_stages(directory, "bfloat16")` builds them (`computing_in`, then `karlo_chains`): the
prior chain, the decoder chain with classifier-free guidance (2·B rows through the U-Net per step)
and the super-resolution chain (`super_res_first` at every step but the last, `super_res_last` at
t = 0; 64 → 256 px), at batch 4 over abstract parameters of Karlo's full sizes. Per program: bytes
per chip (XLA's memory analysis: arguments + outputs − aliases + temporaries) against the chip's
HBM, and the whole chain's roofline by `hlo_cost` (`chain_roofline`: the sampling loop's traced
step count given as `unknown_trip_count`), by XLA's cost analysis and at a floor
(`xla_chain_roofline`); for the cascade, images/s = batch / the chains' seconds.

    JAX_PLATFORMS=cpu nice -n 10 .venv/bin/python -m experiments.karlo_aot --programs prior
    JAX_PLATFORMS=cpu nice -n 10 .venv/bin/python -m experiments.karlo_aot --programs decoder
    JAX_PLATFORMS=cpu nice -n 10 .venv/bin/python -m experiments.karlo_aot --programs super_res

Each run merges its programs into `experiments/results/karlo_aot/karlo_<chip>.json`. Needs the
`tpu` extra (libtpu). With `--hlo-dir DIR` each program's compiled HLO text is saved there, and
`--from-hlo DIR` re-estimates the `hlo_cost` figures of the results file's programs from those
texts, without compiling (memory figures and XLA's estimates kept as compiled):

    JAX_PLATFORMS=cpu .venv/bin/python -m experiments.karlo_aot --from-hlo /tmp/karlo_hlo
 `--smoke` compiles the same programs at tiny sizes for the first local
device (seconds; the roofline read against the chip's figures; writes nothing):

    JAX_PLATFORMS=cpu .venv/bin/python -m experiments.karlo_aot --smoke

Where the full sizes come from:
- decoder and super-res U-Nets, cross-attention width 1536, sides 64 and 256:
  `tests/convert/karlo_full_size.py` (imported), which `tests/convert/test_diffusers_unclip.py`
  and `test_diffusers_unet.py` check against diffusers' `UNet2DConditionModel` / `UNet2DModel`.
- prior: Karlo v1-alpha's `prior/config.json` (20 layers, 32 heads of 64, embedding_dim 768, 77
  embeddings, 4 additional): diffusers' `PriorTransformer` defaults, which
  `convert.diffusers_prior.prior_from_diffusers_config` also falls back to; it makes width
  2048 = 32 × 64, token and z_t width 768 (no embedding_proj_dim), Karlo's empty-caption null.
- caption inputs: CLIP ViT-L/14's text encoder, 77 token states of width 768 and a 768-wide
  projection z_t, float32 as `KarloTextEncoder` returns them; text_proj: 4 extra context tokens
  from 768-wide embeddings (`UnCLIPTextProjModel` defaults, the converter's fallbacks).
- schedulers: Karlo's `UnCLIPScheduler` configs, as `tests/diffusion/test_karlo_scheduler.py`
  lists them; steps: `KarloSampling` of the checkpoint (`KARLO_SAMPLING`: 25, 25, 7).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Run as a file, `experiments` and `tests` import from the repository root.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import bench_common as common
from experiments import tpu_aot
from tests.convert import karlo_full_size
from unclip_jax import hlo_cost
from unclip_jax.convert.diffusers_prior import prior_from_diffusers_config
from unclip_jax.convert.karlo_checkpoint import (
    KarloCheckpoint,
    decoder_shapes,
    prior_shapes,
    upsampler_shapes,
)
from unclip_jax.diffusion.karlo import KarloScheduler
from unclip_jax.models.clip import TextConfig, TextTransformer
from unclip_jax.models.prior import EmbeddingNormalizer
from unclip_jax.models.unet import Decoder, UNetConfig, Upsampler
from unclip_jax.pipelines.karlo import KarloPriorStage, KarloSampling, computing_in
from unclip_jax.sampling.karlo import karlo_chains, karlo_schedule

PROGRAMS = ("prior", "decoder", "super_res")
TARGETS = {"v5e": "v5e-1", "v6e": "v6e-1"}  # tpu_aot's one-chip targets, by chip
KARLO_PRIOR = dict(  # Karlo v1-alpha's prior/config.json
    num_layers=20,
    num_attention_heads=32,
    attention_head_dim=64,
    embedding_dim=768,
    num_embeddings=77,
    additional_embeddings=4,
)
SCHEDULERS = {  # Karlo's, as tests/diffusion/test_karlo_scheduler.py lists them
    "prior": dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0),
    "decoder": dict(
        variance_type="learned_range", prediction_type="epsilon", clip_sample_range=1.0
    ),
    "super_res": dict(
        variance_type="fixed_small_log", prediction_type="epsilon", clip_sample_range=1.0
    ),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """A Karlo-layout cascade: the prior's diffusers config, both U-Nets, the image sides."""

    prior: dict[str, int]
    decoder_unet: UNetConfig
    super_res_unet: UNetConfig
    context_dim: int  # the decoder's cross-attention width
    decoder_size: int  # px
    super_res_size: int  # px
    text: TextConfig  # the CLIP text encoder (token count and width of its states)
    image_tokens: int = 4  # text_proj's clip_extra_context_tokens


FULL = Sizes(
    prior=KARLO_PRIOR,
    decoder_unet=karlo_full_size.DECODER_UNET,
    super_res_unet=karlo_full_size.SUPER_RES_UNET,
    context_dim=karlo_full_size.DECODER["cross_attention_dim"],
    decoder_size=karlo_full_size.DECODER["sample_size"],
    super_res_size=karlo_full_size.SUPER_RES["sample_size"],
    text=TextConfig(width=768, layers=12, heads=12, mlp_dim=3072),  # ViT-L/14's text tower
)
_TINY = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, head_dim=8, groups=8)
SMOKE = Sizes(
    prior=dict(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        embedding_dim=16,
        num_embeddings=8,
    ),
    decoder_unet=UNetConfig(out_channels=6, attention_levels=(1,), **_TINY),
    super_res_unet=UNetConfig(
        out_channels=3, attention_levels=(), mid_attention=False, scale_shift=False, **_TINY
    ),
    context_dim=32,
    decoder_size=16,
    super_res_size=64,
    text=TextConfig(width=16, layers=1, heads=2, mlp_dim=32, context_length=8),
)


def abstract_checkpoint(sizes: Sizes, dtype: str = "bfloat16") -> KarloCheckpoint:
    """A converted Karlo checkpoint of `sizes` whose parameters are `jax.ShapeDtypeStruct`s (the
    loader's expected shapes), put through `computing_in(·, dtype)` as the pipeline loads one."""
    prior = prior_from_diffusers_config(sizes.prior)
    decoder = Decoder(
        sizes.decoder_unet,
        context_dim=sizes.context_dim,
        num_image_tokens=sizes.image_tokens,
        caption_source="clip",
    )
    super_res = Upsampler(sizes.super_res_unet)
    clip_dim = prior.embed_dim
    upsampler = upsampler_shapes(super_res, sizes.super_res_unet.out_channels, sizes.super_res_size)
    params = nn.meta.unbox(
        {
            "prior": prior_shapes(prior),
            "decoder": decoder_shapes(decoder, clip_dim, sizes.decoder_size),
            "super_res_first": upsampler,
            "super_res_last": upsampler,
        }
    )
    checkpoint = KarloCheckpoint(
        text_encoder=TextTransformer(sizes.text, clip_dim),
        prior=prior,
        decoder=decoder,
        super_res=super_res,
        params=params,
        normalizer=EmbeddingNormalizer.create(
            "mean_std", clip_dim, jnp.zeros((clip_dim,)), jnp.ones((clip_dim,))
        ),
        schedulers={k: KarloScheduler.from_diffusers(v) for k, v in SCHEDULERS.items()},
        decoder_size=sizes.decoder_size,
        super_res_size=sizes.super_res_size,
    )
    cast = {}

    def cast_params(params):  # computing_in's modules kept, its parameters abstract
        cast["checkpoint"] = computing_in(dataclasses.replace(checkpoint, params=params), dtype)
        return cast["checkpoint"].params

    abstract = jax.eval_shape(cast_params, params)
    return dataclasses.replace(cast["checkpoint"], params=abstract)


@dataclasses.dataclass(frozen=True)
class Program:
    """One chain's jitted function, its abstract arguments and its step count."""

    name: str
    jitted: Callable
    args: tuple
    kwargs: dict[str, Any]
    params: Any  # the parameter tree among `args`
    steps: int


def _on(device: jax.Device, tree: Any) -> Any:
    """Every array leaf of `tree` as a `jax.ShapeDtypeStruct` placed on `device`."""
    place = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=place), tree)


def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def chain_programs(checkpoint: KarloCheckpoint, batch: int, device: jax.Device) -> dict:
    """{name: Program} of the three chains at `batch` rows, their inputs as the pipeline passes
    them: caption z_t [B, P], token states [B, L, Dt], mask [B, L]; x_T of each stage's side."""
    chains, params, prior = karlo_chains(checkpoint), checkpoint.params, checkpoint.prior
    steps = {k: KarloSampling.of(checkpoint, k).sample_steps for k in PROGRAMS}
    length, width = prior.num_tokens, prior.token_dim or prior.embed_dim
    embed, clip_dim = prior.text_embed_dim or prior.embed_dim, prior.embed_dim
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    null = dict(
        embed=_f32(1, embed),
        states=_f32(1, length, width),
        mask=jax.ShapeDtypeStruct((1, length), jnp.bool_),
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    schedule = {k: karlo_schedule(checkpoint.schedulers[k], steps[k]) for k in PROGRAMS}
    side, high = checkpoint.decoder_size, checkpoint.super_res_size
    cond = dict(
        image_embed=_f32(batch, clip_dim),
        caption_states=_f32(batch, length, width),
        caption_embed=_f32(batch, embed),
        caption_mask=mask,
    )
    arguments = {
        "prior": (
            chains.prior.compiled,
            {"model": params["prior"], "null": null},
            (
                key,
                _f32(batch, embed),
                _f32(batch, length, width),
                mask,
                schedule["prior"],
                _f32(batch),
                None,
                None,
            ),
            {"candidates": KarloPriorStage.default_candidates},
        ),
        "decoder": (
            chains.decoder.compiled,
            {"model": params["decoder"], "null": null},
            (_f32(batch, side, side, 3), cond, schedule["decoder"], _f32(), key, None),
            {},
        ),
        "super_res": (
            chains.super_res.compiled,
            {"first": params["super_res_first"], "last": params["super_res_last"]},
            (
                _f32(batch, high, high, 3),
                _f32(batch, side, side, 3),
                schedule["super_res"],
                key,
                None,
            ),
            {},
        ),
    }
    return {
        name: Program(name, jitted, _on(device, (tree, *rest)), kwargs, tree, steps[name])
        for name, (jitted, tree, rest, kwargs) in arguments.items()
    }


def chain_roofline(text: str, chip: hlo_cost.Chip, steps: int) -> dict[str, Any]:
    """The roofline of a whole chain of `steps` steps from its compiled HLO `text`.

    The chain's `fori_loop` runs a traced step count (one program for every count), so its
    `while` has no known trip count: `hlo_cost` runs it `steps` times (`unknown_trip_count`),
    with a `conditional` in it (super-res: `super_res_first` or `super_res_last`) at its
    costlier branch.
    """
    model = hlo_cost.CostModel(text, chip, unknown_trip_count=steps)
    loops = model.loops_without_trip_count()
    if len(loops) != 1:
        return dict(sampling_loops=len(loops), estimated_chain_s=None)
    chain, step = model.cost(), model.cost(loops[0])
    return dict(
        sampling_loops=1,
        conditionals_in_loop=sum(
            i.opcode == "conditional" for i in model.computations[loops[0]].values()
        ),
        steps=steps,
        estimated_loop_step_s=step.seconds,
        loop_step_flops=step.flops,
        loop_step_hbm_bytes=step.hbm_bytes,
        estimated_chain_s=chain.seconds,
        chain_flops=chain.flops,
        estimated_chain_utilisation=(
            chain.flops / chain.seconds / chip.peak_flops if chain.seconds else None
        ),
    )


def xla_chain_roofline(compiled, chip: hlo_cost.Chip, steps: int) -> dict[str, Any]:
    """XLA's own cost analysis read as a roofline of the whole chain, beside `chain_roofline`: it
    counts the loop body once and a `conditional` at its costlier branch, so one step is about
    the whole program; the chain, `steps` × max(FLOPs / peak, bytes accessed / HBM bandwidth).
    And a floor no estimate can go under: each step at XLA's FLOPs at peak, or reading every
    argument (the weights) once from HBM, whichever takes longer."""
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list | tuple) else xla
    flops, moved = float(xla.get("flops", 0.0)), float(xla.get("bytes accessed", 0.0))
    weights = compiled.memory_analysis().argument_size_in_bytes
    step_s = max(flops / chip.peak_flops, moved / chip.hbm_bandwidth)
    floor_s = max(flops / chip.peak_flops, weights / chip.hbm_bandwidth)
    return dict(
        xla_step_flops=flops,
        xla_step_bytes_accessed=moved,
        xla_estimated_chain_s=steps * step_s,
        floor_chain_s=steps * floor_s,
    )


def compile_program(
    program: Program, target: tpu_aot.Target, hlo_dir: pathlib.Path | None = None
) -> dict[str, Any]:
    """Compiles one chain; its memory against the chip's HBM (`tpu_aot.analyse`) and the whole
    chain's rooflines, or the compiler's error (a program that does not fit fails to compile).
    `hlo_dir`: where to write the compiled HLO text (`<name>.hlo`, for `python -m
    unclip_jax.hlo_cost`)."""
    row: dict[str, Any] = dict(program=program.name, params=common.num_params(program.params))
    start = time.perf_counter()
    try:
        compiled = program.jitted.lower(*program.args, **program.kwargs).compile()
    except Exception as error:
        return dict(row, compile_s=time.perf_counter() - start, error=str(error)[:2000])
    row["compile_s"] = time.perf_counter() - start
    text = compiled.as_text()
    if hlo_dir is not None:
        hlo_dir.mkdir(parents=True, exist_ok=True)
        (hlo_dir / f"{program.name}.hlo").write_text(text)
    row.update(tpu_aot.analyse(compiled, target))
    row.update(chain_roofline(text, target.chip, program.steps))
    row.update(xla_chain_roofline(compiled, target.chip, program.steps))
    return row


def _images_per_s(rows: dict[str, dict], batch: int, field: str) -> dict[str, Any]:
    seconds = {name: rows.get(name, {}).get(field) for name in PROGRAMS}
    total = sum(seconds.values()) if all(seconds.values()) else None
    return dict(chain_s=seconds, total_s=total, images_per_s=batch / total if total else None)


def cascade(rows: dict[str, dict], batch: int) -> dict[str, Any]:
    """Images/s of prior → decoder → super-res at `batch`: batch / the chains' estimated seconds,
    by `hlo_cost`, by XLA's cost analysis and at the floor (an upper bound on images/s); and the
    bytes of every chain's arguments (all weights on the chip, as `UnCLIP` keeps them) plus the
    largest chain's outputs and temporaries."""
    complete = all(name in rows and "error" not in rows[name] for name in PROGRAMS)
    resident = None
    if complete:
        resident = sum(rows[n]["argument_bytes"] for n in PROGRAMS) + max(
            rows[n]["bytes_per_chip"] - rows[n]["argument_bytes"] for n in PROGRAMS
        )
    return dict(
        batch=batch,
        hlo_cost=_images_per_s(rows, batch, "estimated_chain_s"),
        xla_cost_analysis=_images_per_s(rows, batch, "xla_estimated_chain_s"),
        floor=_images_per_s(rows, batch, "floor_chain_s"),
        every_chain_fits_with_10pct_headroom=complete
        and all(rows[n]["fits_with_10pct_headroom"] for n in PROGRAMS),
        all_weights_plus_largest_chain_bytes=resident,
    )


def run(
    names: list[str],
    chip: str,
    batch: int,
    smoke: bool = False,
    hlo_dir: pathlib.Path | None = None,
) -> dict[str, Any]:
    """Compiles the chains `names` at `batch` in bfloat16 for one `chip` (`smoke`: tiny sizes on
    the first local device, the rooflines read against `chip`'s figures); the payload."""
    target = tpu_aot.Target("", hlo_cost.CHIPS[chip]) if smoke else tpu_aot.TARGETS[TARGETS[chip]]
    device = tpu_aot.target_devices(target)[0]
    programs = chain_programs(abstract_checkpoint(SMOKE if smoke else FULL), batch, device)
    rows = {}
    for name in names:
        rows[name] = compile_program(programs[name], target, hlo_dir)
        _report(rows[name])
    return dict(
        topology=target.topology or "local",
        device_kind=device.device_kind,
        chip=chip,
        dtype="bfloat16",
        sizes="smoke" if smoke else "karlo-v1-alpha",
        programs=rows,
        cascade=cascade(rows, batch),
    )


def _report(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['program']:9s} error after {row['compile_s']:.0f}s: {row['error'][:300]}")
        return
    gib, nan = 2**30, float("nan")
    print(
        f"{row['program']:9s} {row['params'] / 1e6:7.1f}M params  "
        f"{row['bytes_per_chip'] / gib:6.2f} GiB/chip of {row['hbm_bytes'] / gib:5.1f} "
        f"(headroom {100 * row['headroom']:5.1f}%)  est. chain "
        f"{row.get('estimated_chain_s') or nan:.3f} s "
        f"(XLA {row.get('xla_estimated_chain_s', nan):.3f} s) "
        f"({row.get('steps')} steps)  compile {row['compile_s']:.0f}s",
        flush=True,
    )


def record(payload: dict[str, Any], tag: str = "") -> pathlib.Path:
    """Merges `payload`'s programs into `karlo_<chip><tag>.json` (same topology and batch), so
    that one chain per run builds up the cascade's figures."""
    name = f"karlo_{payload['chip']}{tag}"
    path = common.results_dir("karlo_aot") / f"{name}.json"
    if path.exists():
        old = json.loads(path.read_text())
        same = all(old.get(k) == payload[k] for k in ("topology", "dtype", "sizes"))
        if same and old["cascade"]["batch"] == payload["cascade"]["batch"]:
            rows = {**old["programs"], **payload["programs"]}
            payload = dict(payload, programs=rows, cascade=cascade(rows, old["cascade"]["batch"]))
    return common.write_results("karlo_aot", name, payload)


def reestimate(payload: dict[str, Any], hlo_dir: pathlib.Path) -> dict[str, Any]:
    """`payload` (a results file's) with the `hlo_cost` figures of each program whose HLO text
    `hlo_dir` holds (`<name>.hlo`, as `--hlo-dir` writes it) estimated again from that text: the
    whole program's (`hlo_cost.estimate`, the loop body once) and the chain's; the memory
    figures and XLA's estimates stay as compiled."""
    chip, rows = hlo_cost.CHIPS[payload["chip"]], dict(payload["programs"])
    for name, row in payload["programs"].items():
        path = hlo_dir / f"{name}.hlo"
        if "error" in row or not path.exists():
            continue
        text = path.read_text()
        rows[name] = {**row, **hlo_cost.estimate(text, chip)}
        rows[name].update(chain_roofline(text, chip, row["steps"]))
        _report(rows[name])
    return dict(payload, programs=rows, cascade=cascade(rows, payload["cascade"]["batch"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="chains to compile")
    parser.add_argument("--chip", default="v5e", choices=sorted(TARGETS))
    parser.add_argument("--batch", type=int, default=4, help="images per chain")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, local CPU, no file")
    parser.add_argument("--hlo-dir", type=pathlib.Path, help="write each program's HLO text here")
    parser.add_argument(
        "--from-hlo",
        type=pathlib.Path,
        help="re-estimate the results file's programs from the HLO texts here (no compiling)",
    )
    args = parser.parse_args()
    if args.from_hlo:
        path = common.results_dir("karlo_aot") / f"karlo_{args.chip}{args.tag}.json"
        payload = reestimate(json.loads(path.read_text()), args.from_hlo)
        print(json.dumps(payload["cascade"], indent=1))
        print(f"wrote {record(payload, args.tag)}")
        return
    names = args.programs.split(",")
    unknown = sorted(set(names) - set(PROGRAMS))
    if unknown:
        parser.error(f"--programs must name entries of {PROGRAMS}, got {unknown}")
    payload = run(names, args.chip, args.batch, smoke=args.smoke, hlo_dir=args.hlo_dir)
    print(json.dumps(payload["cascade"], indent=1))
    if not args.smoke:
        print(f"wrote {record(payload, args.tag)}")


if __name__ == "__main__":
    main()
