"""Ahead-of-time compilation of the paper-size stages for TPU pod slices, without a TPU.

libtpu compiles for a described topology (`jax.experimental.topologies`): the train step of each
paper-size stage (prior, decoder, 64→256 and 256→1024 upsamplers; DALL·E's 12B transformer) at
its paper batch on v5p-128 and v5e-256, with the mesh, per-block remat and micro-batches its
config names for that slice (`SLICES`, applied by `get_config("<slice>")`), and one guided decoder
sampling step on v5e-8. Per compiled program: per-chip memory from XLA's memory analysis
(arguments + outputs − donated aliases + temporaries) against the chip's HBM, and `hlo_cost`'s
roofline (FLOPs, HBM and collective bytes, every loop trip counted) → estimated step time and
utilisation. With `--hlo-dir DIR` each program's compiled HLO text is saved there
(`<results name>.hlo`), and `--from-hlo DIR` re-estimates the roofline of the results files it
names from those texts, without compiling again.

    JAX_PLATFORMS=cpu .venv/bin/python -m experiments.tpu_aot --stages decoder --targets v5p-128
    # a probe of other settings than the config's (recorded as ..._<remat>_accum<n>):
    JAX_PLATFORMS=cpu .venv/bin/python -m experiments.tpu_aot --stages decoder --targets v5e-256 \
        --mesh data=16,fsdp=16 --remat full --grad-accum 4

Needs the `tpu` extra (libtpu); nothing in the test suite does. Results go to
`experiments/results/tpu_aot/tpu_aot_<stage>_<target>.json`. Without libtpu, the same programs at
the configs' CPU size compile for the local devices (a check of the code paths, seconds per stage):

    JAX_PLATFORMS=cpu .venv/bin/python -m experiments.tpu_aot --smoke --targets local
"""

import argparse
import dataclasses
import importlib
import json
import os
import pathlib
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# Run as a file (`python experiments/tpu_aot.py`), `experiments` and `configs` import from the
# repository root.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import base
from experiments import bench_common as common
from unclip_jax import hlo_cost, sharding
from unclip_jax.diffusion import guidance
from unclip_jax.models.dvae import DVAEConfig, DVAEEncoder, FrozenDVAE
from unclip_jax.models.prior import EmbeddingNormalizer
from unclip_jax.train import dalle_task, decoder_task, prior_task, upsampler_task
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import setup as setup_lib
from unclip_jax.train import step as step_lib

# Deviceless compilation only: other processes on the machine may hold libtpu too.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@dataclasses.dataclass(frozen=True)
class Target:
    topology: str  # jax.experimental.topologies name; "" for this process's own devices
    chip: hlo_cost.Chip | None  # None: the local devices, no roofline
    # The chips of one host, where libtpu's default host (2x2 chips) does not fit the topology:
    # (1, 1, 1) for a single chip.
    chips_per_host_bounds: tuple[int, int, int] | None = None


TARGETS: dict[str, Target] = {
    "v5p-128": Target("v5p:4x4x4", hlo_cost.CHIPS["v5p"]),  # 64 chips
    "v5e-256": Target("v5e:16x16", hlo_cost.CHIPS["v5e"]),  # 256 chips
    "v5e-8": Target("v5e:2x4", hlo_cost.CHIPS["v5e"]),  # 8 chips
    "v5e-1": Target("v5e:1x1", hlo_cost.CHIPS["v5e"], (1, 1, 1)),  # one chip on a one-chip host
    "v6e-1": Target("v6e:1x1", hlo_cost.CHIPS["v6e"], (1, 1, 1)),
    # The local devices (e.g. CPU, no libtpu): a quick check of the code paths with --smoke.
    "local": Target("", None),
}


def target_devices(target: Target) -> list:
    """The target's devices: described TPU chips (deviceless), or this process's own."""
    if not target.topology:
        return jax.devices()
    from jax.experimental import topologies

    bounds = target.chips_per_host_bounds
    host = {} if bounds is None else dict(chips_per_host_bounds=list(bounds))
    return topologies.get_topology_desc(target.topology, "tpu", **host).devices


def _spec(shape: tuple[int, ...], dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def prior_stage(config: ml_collections.ConfigDict, arg: str | None = None) -> tuple[Any, dict]:
    m = config.model
    normalizer = EmbeddingNormalizer.create(config.embedding_norm, m.embed_dim)
    example = dict(
        image_embedding=_spec((1, m.embed_dim)),
        text_embedding=_spec((1, m.text_embed_dim)),
        token_states=_spec((1, m.num_tokens, m.token_dim)),
        text_mask=_spec((1, m.num_tokens), jnp.bool_),
    )
    return prior_task.build_task(config, normalizer), example


def decoder_stage(config: ml_collections.ConfigDict, arg: str | None = None) -> tuple[Any, dict]:
    length = config.model.caption_transformer.max_length
    size = config.image_size
    example = dict(
        image=_spec((1, size, size, 3)),
        image_embedding=_spec((1, config.image_embed_dim)),
        tokens=_spec((1, length), jnp.int32),
        mask=_spec((1, length), jnp.int32),
    )
    return decoder_task.build_task(config, clip=None), example


def upsampler_stage(config: ml_collections.ConfigDict, arg: str | None = None) -> tuple[Any, dict]:
    example = dict(image=_spec((1, config.high_res, config.high_res, 3)))
    return upsampler_task.build_task(config), example


def dalle_stage(config: ml_collections.ConfigDict, arg: str | None = None) -> tuple[Any, dict]:
    """The transformer's step, which encodes the batch's images with the frozen paper dVAE
    (`configs/dvae_paper.py` at the same `arg`) inside it. The dVAE's weights are constants of
    the program, here all one value (a splat: the program stays small)."""
    from configs import dvae_paper

    dvae_arg = "smoke" if arg == "smoke" else None  # the dVAE has no slice settings
    fields = {k: v for k, v in dvae_paper.get_config(dvae_arg).model.items() if k != "dtype"}
    dvae_config = DVAEConfig(**fields)
    side = dvae_config.downsample_factor
    shapes = jax.eval_shape(
        DVAEEncoder(dvae_config).init, jax.random.key(0), _spec((1, side, side, 3))
    )["params"]
    encoder = jax.tree.map(lambda leaf: jnp.full(leaf.shape, 0.01, leaf.dtype), shapes)
    tokenizer = types.SimpleNamespace(
        vocab_size=config.tokenizer.vocab_size, context_length=config.tokenizer.context_length
    )
    task = dalle_task.build_task(config, tokenizer, FrozenDVAE(dvae_config, encoder, None))
    size, length = config.data.image_size, config.tokenizer.context_length
    example = dict(
        image=_spec((1, size, size, 3)),
        tokens=_spec((1, length), jnp.int32),
        mask=_spec((1, length), jnp.int32),
    )
    return task, example


# name: (config module, (config, config arg) -> (task, one example row))
STAGES: dict[str, tuple[str, Callable[..., tuple[Any, dict]]]] = {
    "prior": ("configs.prior_paper", prior_stage),
    "decoder": ("configs.decoder_paper", decoder_stage),
    "upsampler256": ("configs.upsampler256_paper", upsampler_stage),
    "upsampler1024": ("configs.upsampler1024_paper", upsampler_stage),
    "dalle": ("configs.dalle_paper", dalle_stage),
}


def paper_config(stage: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The stage's paper config at `arg`: None as written, "smoke" its CPU-size variant, or a TPU
    slice of its `SLICES` (that slice's mesh, remat and micro-batches)."""
    return importlib.import_module(STAGES[stage][0]).get_config(arg)


def slices(stage: str) -> dict[str, dict]:
    """The TPU slices the stage's config names settings for (`SLICES`)."""
    return importlib.import_module(STAGES[stage][0]).SLICES


def parse_mesh(text: str | None) -> dict[str, int] | None:
    """'data=-1,fsdp=8' -> {'data': -1, 'fsdp': 8}."""
    if not text:
        return None
    pairs = [item.split("=") for item in text.split(",")]
    bad = [
        p
        for p in pairs
        if len(p) != 2 or p[0] not in sharding.MESH_AXES or not p[1].lstrip("-").isdigit()
    ]
    if bad:
        raise ValueError(f"mesh must be axis=size pairs over {sharding.MESH_AXES}, got {text!r}")
    return {axis: int(size) for axis, size in pairs}


def analyse(compiled, target: Target, hlo_path: pathlib.Path | None = None) -> dict[str, Any]:
    """Per-chip memory from XLA's memory analysis against the chip's HBM, and the roofline of
    `hlo_cost` (every loop step counted); XLA's own FLOPs and optimal seconds beside them.
    `hlo_path`: where to write the compiled HLO text (for `--from-hlo`)."""
    text = compiled.as_text()
    if hlo_path is not None:
        hlo_path.parent.mkdir(parents=True, exist_ok=True)
        hlo_path.write_text(text)
    memory = compiled.memory_analysis()
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list | tuple) else xla
    per_chip = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    hbm = target.chip.hbm_bytes if target.chip else float("inf")
    roofline = hlo_cost.estimate(text, target.chip) if target.chip else {}
    return dict(
        bytes_per_chip=per_chip,
        argument_bytes=memory.argument_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        hbm_bytes=hbm,
        headroom=1.0 - per_chip / hbm,
        fits_with_10pct_headroom=per_chip <= 0.9 * hbm,
        xla_flops_per_chip=float(xla.get("flops", 0.0)),
        xla_optimal_seconds=float(xla.get("optimal_seconds", float("nan"))),
        **roofline,
    )


def compile_train_step(
    stage: str,
    target_name: str,
    config_arg: str | None = None,
    mesh_shape: dict | None = None,
    remat: str | None = None,
    accum: int | None = None,
    hlo_path: pathlib.Path | None = None,
) -> dict[str, Any]:
    """Compiles the stage's train step for the target at the config's global batch
    (`config.train.batch_size`), with the mesh, remat and micro-batches of the config at
    `config_arg` unless given; returns the analysis (`hlo_path`: see `analyse`)."""
    target = TARGETS[target_name]
    config = paper_config(stage, config_arg)
    if remat is not None:
        base.set_remat(config, remat)
    accum = accum or config.train.grad_accum_steps
    devices = target_devices(target)
    mesh_shape = mesh_shape or dict(config.mesh)
    mesh = sharding.make_mesh(mesh_shape, devices)
    batch = config.train.batch_size
    task, example = STAGES[stage][1](config, config_arg)
    setup = setup_lib.build(
        task,
        example,
        batch,
        mesh,
        sharding.normalize_rules(config.sharding.rules),
        optimizer_lib.OptimizerConfig.from_config(config),
        dataclasses.replace(step_lib.StepConfig.from_config(config), grad_accum_steps=accum),
        jax.random.key(0),
    )
    state, global_batch, key = setup.abstract_inputs()
    start = time.perf_counter()
    compiled = setup.lower(state, global_batch, key).compile()
    params = common.num_params(state.params)
    return dict(
        stage=stage,
        target=target_name,
        program="train_step",
        mesh={k: int(v) for k, v in mesh.shape.items()},
        remat=base.block_remat(config),
        grad_accum_steps=accum,
        global_batch=batch,
        params=params,
        compile_s=time.perf_counter() - start,
        **analyse(compiled, target, hlo_path),
    )


def compile_decoder_sampling_step(
    target_name: str, batch: int, config_arg: str | None = None
) -> dict[str, Any]:
    """One guided decoder step (2 × batch rows through the U-Net, guidance on the mean) with
    bfloat16 weights replicated over a data-parallel mesh."""
    target = TARGETS[target_name]
    config = paper_config("decoder", config_arg)
    config.model.param_dtype = "bfloat16"
    task, example = decoder_stage(config)
    model = task.model
    devices = target_devices(target)
    mesh = sharding.make_mesh({"data": -1}, devices)
    rules = sharding.normalize_rules(config.sharding.rules)
    size, length = config.image_size, config.model.caption_transformer.max_length
    rows = dict(
        x=_spec((batch, size, size, 3)),
        t=_spec((batch,), jnp.int32),
        image_embed=_spec((batch, config.image_embed_dim)),
        caption_ids=_spec((batch, length), jnp.int32),
        caption_mask=_spec((batch, length), jnp.bool_),
    )
    repl = sharding.replicated(mesh)
    boxed = jax.eval_shape(task.init, jax.random.key(0), example)
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), nn.unbox(boxed)
    )

    def guided_step(params, x, t, image_embed, caption_ids, caption_mask, scale):
        cond = dict(
            image_embed=image_embed,
            caption_ids=caption_ids,
            caption_mask=caption_mask,
            drop=jnp.zeros((batch,), bool),
        )
        model_fn = lambda x, t, c: model.apply(
            {"params": params},
            x,
            t,
            c["image_embed"],
            caption_ids=c["caption_ids"],
            caption_mask=c["caption_mask"],
            drop_image=c["drop"],
            drop_caption=c["drop"],
        )
        null = {**cond, "drop": jnp.ones((batch,), bool)}
        denoise = guidance.classifier_free_guidance(model_fn, cond, null, scale, mean_channels=3)
        return denoise(x, t)

    data = sharding.batch_sharding(mesh)
    inputs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data) for k, v in rows.items()}
    scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=repl)
    start = time.perf_counter()
    with sharding.activation_rules(mesh, rules):
        compiled = jax.jit(guided_step).lower(params, **inputs, scale=scale).compile()
    analysis = analyse(compiled, target)
    return dict(
        stage="decoder",
        target=target_name,
        program="guided_sampling_step",
        mesh={k: int(v) for k, v in mesh.shape.items()},
        batch_images=batch,
        params=common.num_params(params),
        compile_s=time.perf_counter() - start,
        estimated_images_per_s_250_steps=(
            batch / (250 * analysis["estimated_step_s"]) if "estimated_step_s" in analysis else None
        ),
        **analysis,
    )


def _report(row: dict[str, Any]) -> None:
    gib, nan = 2**30, float("nan")
    print(
        f"{row['stage']:13s} {row['target']:8s} {row['program']:20s} mesh {row['mesh']} "
        f"{row['bytes_per_chip'] / gib:6.2f} GiB/chip of {row['hbm_bytes'] / gib:5.1f} "
        f"(headroom {100 * row['headroom']:5.1f}%)  "
        f"est. step {row.get('estimated_step_s', nan):.4f} s  "
        f"util {row.get('estimated_utilisation') or nan:.2f}  compile {row['compile_s']:.0f}s",
        flush=True,
    )


def _result_name(stage: str, target: str, args, probe: dict | None) -> str:
    """`tpu_aot_<stage>_<target>`, a probe's `_<remat>_accum<n>`, `_smoke`, then `--tag`."""
    suffix = ""
    if probe:
        config = paper_config(stage, "smoke" if args.smoke else None)
        remat = probe["remat"] or base.block_remat(config)
        suffix = f"_{remat}_accum{probe['accum'] or config.train.grad_accum_steps}"
    suffix += "_smoke" if args.smoke else ""
    return f"tpu_aot_{stage}_{target}{suffix}{args.tag}"


def _run_plan(stage: str, target: str, args, probe: dict | None = None) -> None:
    """Compiles and records one stage on one target: with the config's settings for that slice
    (`tpu_aot_<stage>_<target>.json`), or a `probe` of mesh / remat / micro-batches from the
    command line (named `..._<remat>_accum<n><tag>`)."""
    config_arg = "smoke" if args.smoke else (None if probe else target)
    name = _result_name(stage, target, args, probe)
    hlo_path = args.hlo_dir / f"{name}.hlo" if args.hlo_dir else None
    try:
        row = compile_train_step(stage, target, config_arg, **(probe or {}), hlo_path=hlo_path)
    except Exception as error:  # a program that does not fit fails to compile: record why
        row = dict(stage=stage, target=target, probe=probe, error=str(error)[:2000])
        print(f"{stage} {target} {probe or 'slice settings'}: {row['error'][:300]}", flush=True)
    else:
        _report(row)
    common.write_results("tpu_aot", name, row)


def reestimate(name: str, hlo_dir: pathlib.Path) -> bool:
    """Rewrites results file `name` with `hlo_cost`'s roofline estimated again from its HLO text
    in `hlo_dir` (as `--hlo-dir` wrote it); memory and XLA's figures stay as compiled. False
    when the file or its HLO text is missing, or the target is the local devices."""
    path, hlo = common.results_dir("tpu_aot") / f"{name}.json", hlo_dir / f"{name}.hlo"
    if not (path.exists() and hlo.exists()):
        return False
    row = json.loads(path.read_text())
    chip = TARGETS[row["target"]].chip
    if chip is None:  # the local devices: no roofline
        return False
    row.update(hlo_cost.estimate(hlo.read_text(), chip))
    _report(row)
    common.write_results("tpu_aot", name, row)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=None, help="default: every stage")
    parser.add_argument("--targets", default="v5p-128,v5e-256")
    parser.add_argument(
        "--mesh",
        default=None,
        help="a probe, e.g. data=-1,fsdp=8; without --mesh, --remat and --grad-accum, each "
        "config's settings for the slice (its SLICES)",
    )
    parser.add_argument("--remat", default=None, choices=sorted(sharding.REMAT_POLICIES))
    parser.add_argument("--grad-accum", type=int, default=0, help="micro-batches per step")
    parser.add_argument("--sampling", action="store_true", help="the v5e-8 decoder sampling step")
    parser.add_argument("--sampling-batch", type=int, default=64)
    parser.add_argument("--tag", default="")
    parser.add_argument("--hlo-dir", type=pathlib.Path, help="write each program's HLO text here")
    parser.add_argument(
        "--from-hlo",
        type=pathlib.Path,
        help="re-estimate the named results files from the HLO texts here (no compiling)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the configs' CPU-size variants, e.g. with --targets local (no libtpu needed)",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.targets.split(",")) - set(TARGETS))
    if unknown:
        parser.error(f"--targets must name entries of {sorted(TARGETS)}, got {unknown}")
    stages = args.stages.split(",") if args.stages else list(STAGES)
    if sorted(set(stages) - set(STAGES)):
        parser.error(f"--stages must name entries of {sorted(STAGES)}, got {args.stages!r}")
    config_arg = "smoke" if args.smoke else None
    if args.sampling:
        target = "local" if args.targets == "local" else "v5e-8"
        row = compile_decoder_sampling_step(target, args.sampling_batch, config_arg)
        _report(row)
        common.write_results("tpu_aot", f"tpu_aot_decoder_sampling_{target}{args.tag}", row)
        return
    try:
        mesh_shape = parse_mesh(args.mesh)
    except ValueError as error:
        parser.error(str(error))
    flags = dict(mesh_shape=mesh_shape, remat=args.remat, accum=args.grad_accum or None)
    probe = flags if any(v is not None for v in flags.values()) else None
    for stage in stages:
        for target in args.targets.split(","):
            if not (probe or args.smoke or target in slices(stage)):
                continue
            if args.from_hlo:
                name = _result_name(stage, target, args, probe)
                if not reestimate(name, args.from_hlo):
                    print(f"{name}: no results file or HLO text in {args.from_hlo}")
            else:
                _run_plan(stage, target, args, probe)


if __name__ == "__main__":
    main()
