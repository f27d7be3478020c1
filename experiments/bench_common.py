"""Sizes and builders shared by the benchmarks: one Karlo-layout cascade per size, built in
diffusers (PyTorch) with PyTorch's default random initialisation and carried over to our modules
by the converters, so both implementations run the same architecture with the same weights.

    size = SIZES["small"]
    pipe = diffusers_pipeline(size)            # UnCLIPPipeline, random weights
    ours = our_cascade(pipe, size)             # our modules + converted parameters
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import flop_meter, hlo_cost

RESULTS = pathlib.Path(__file__).parent / "results"  # one folder per script


@dataclasses.dataclass(frozen=True)
class CascadeSize:
    """Widths of one prior + decoder + super-resolution cascade in Karlo's layout."""

    clip_dim: int  # CLIP embedding width (prior tokens, text projection input)
    text_length: int  # caption tokens
    prior_layers: int
    prior_heads: int
    prior_head_dim: int
    decoder_size: int  # px
    decoder_channels: tuple[int, ...]
    decoder_layers: int  # residual blocks per level (down path)
    decoder_attention: tuple[int, ...]  # levels with SimpleCrossAttn blocks
    context_dim: int  # decoder cross-attention width
    head_dim: int
    groups: int
    super_res_size: int  # px
    super_res_channels: tuple[int, ...]
    super_res_layers: int
    super_res_groups: int
    gpu_only: bool = False


SIZES: dict[str, CascadeSize] = {
    "tiny": CascadeSize(
        clip_dim=32,
        text_length=8,
        prior_layers=2,
        prior_heads=2,
        prior_head_dim=16,
        decoder_size=16,
        decoder_channels=(32, 64),
        decoder_layers=1,
        decoder_attention=(1,),
        context_dim=64,
        head_dim=16,
        groups=16,
        super_res_size=32,
        super_res_channels=(16, 32),
        super_res_layers=1,
        super_res_groups=8,
    ),
    "small": CascadeSize(  # decoder ≈ 14M parameters, 32 → 64 px
        clip_dim=128,
        text_length=16,
        prior_layers=4,
        prior_heads=4,
        prior_head_dim=32,
        decoder_size=32,
        decoder_channels=(64, 128, 192),
        decoder_layers=2,
        decoder_attention=(1, 2),
        context_dim=256,
        head_dim=32,
        groups=32,
        super_res_size=64,
        super_res_channels=(32, 64, 96),
        super_res_layers=1,
        super_res_groups=32,
    ),
    "base": CascadeSize(  # Karlo's widths, 64 → 256 px
        clip_dim=768,
        text_length=77,
        prior_layers=20,
        prior_heads=32,
        prior_head_dim=64,
        decoder_size=64,
        decoder_channels=(320, 640, 960, 1280),
        decoder_layers=3,
        decoder_attention=(1, 2, 3),
        context_dim=1536,
        head_dim=64,
        groups=32,
        super_res_size=256,
        super_res_channels=(320, 640, 960, 1280),
        super_res_layers=3,
        super_res_groups=32,
        gpu_only=True,
    ),
}

# Karlo's defaults (diffusers' UnCLIPPipeline).
STEPS = {"prior": 25, "decoder": 25, "super_res": 7}
GUIDANCE = {"prior": 4.0, "decoder": 8.0}


def _block_types(size: CascadeSize) -> tuple[list[str], list[str]]:
    down = [
        "SimpleCrossAttnDownBlock2D"
        if level in size.decoder_attention
        else "ResnetDownsampleBlock2D"
        for level in range(len(size.decoder_channels))
    ]
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return down, up


def seeded(seed: int) -> None:
    """PyTorch's default initialisation, reproducibly (the weights are random either way)."""
    import torch

    torch.manual_seed(seed)


def diffusers_decoder(size: CascadeSize):
    """(UNet2DConditionModel, UnCLIPTextProjModel) in Karlo's decoder layout."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    seeded(1)
    down, up = _block_types(size)
    unet = UNet2DConditionModel(
        sample_size=size.decoder_size,
        layers_per_block=size.decoder_layers,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=size.decoder_channels,
        in_channels=3,
        out_channels=6,
        cross_attention_dim=size.context_dim,
        attention_head_dim=size.head_dim,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=size.groups,
    )
    text_proj = UnCLIPTextProjModel(
        clip_embeddings_dim=size.clip_dim,
        time_embed_dim=4 * size.decoder_channels[0],
        cross_attention_dim=size.context_dim,
    )
    return unet.eval(), text_proj.eval()


def diffusers_super_res(size: CascadeSize, seed: int = 3):
    """UNet2DModel in Karlo's super-resolution layout (Resnet blocks only)."""
    from diffusers import UNet2DModel

    seeded(seed)
    levels = len(size.super_res_channels)
    model = UNet2DModel(
        sample_size=size.super_res_size,
        layers_per_block=size.super_res_layers,
        down_block_types=("ResnetDownsampleBlock2D",) * levels,
        up_block_types=("ResnetUpsampleBlock2D",) * levels,
        block_out_channels=size.super_res_channels,
        in_channels=6,
        out_channels=3,
        add_attention=False,
        norm_num_groups=size.super_res_groups,
    )
    return model.eval()


def diffusers_prior(size: CascadeSize):
    from diffusers import PriorTransformer

    seeded(0)
    prior = PriorTransformer(
        num_attention_heads=size.prior_heads,
        attention_head_dim=size.prior_head_dim,
        num_layers=size.prior_layers,
        embedding_dim=size.clip_dim,
        num_embeddings=size.text_length,
    )
    return prior.eval()


def diffusers_pipeline(size: CascadeSize):
    """Karlo's UnCLIPPipeline at `size` (no tokenizer / text encoder: callers pass encodings)."""
    from diffusers import UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline

    unet, text_proj = diffusers_decoder(size)
    pipe = UnCLIPPipeline(
        prior=diffusers_prior(size),
        decoder=unet,
        text_encoder=None,
        tokenizer=None,
        text_proj=text_proj,
        super_res_first=diffusers_super_res(size, 3),
        super_res_last=diffusers_super_res(size, 4),
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon"
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet_config(channels: tuple[int, ...], overrides: dict[str, Any], **fields: Any):
    """A UNetConfig with diffusers' level widths `channels` (`block_out_channels`) and `fields`,
    then `overrides` over both."""
    from unclip_jax.models.unet import UNetConfig

    base = channels[0]
    widths = dict(base_channels=base, channel_mults=tuple(c // base for c in channels))
    return UNetConfig(**{**widths, **fields, **overrides})


def our_decoder_config(size: CascadeSize, **overrides: Any):
    return _unet_config(
        size.decoder_channels,
        overrides,
        out_channels=6,
        num_res_blocks=size.decoder_layers,
        attention_levels=size.decoder_attention,
        mid_attention=True,
        head_dim=size.head_dim,
        groups=size.groups,
        scale_shift=True,
    )


def our_super_res_config(size: CascadeSize, **overrides: Any):
    return _unet_config(
        size.super_res_channels,
        overrides,
        out_channels=3,
        num_res_blocks=size.super_res_layers,
        attention_levels=(),
        mid_attention=False,
        groups=size.super_res_groups,
        scale_shift=False,
    )


def our_decoder(size: CascadeSize, dtype=jnp.float32, **overrides: Any):
    from unclip_jax.models.unet import Decoder

    return Decoder(
        our_decoder_config(size, **overrides),
        context_dim=size.context_dim,
        num_image_tokens=4,
        caption_source="clip",
        dtype=dtype,
    )


def our_super_res(size: CascadeSize, dtype=jnp.float32, **overrides: Any):
    from unclip_jax.models.unet import Upsampler

    return Upsampler(our_super_res_config(size, **overrides), dtype=dtype)


def decoder_inputs(size: CascadeSize, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random decoder inputs (NHWC) at `batch`: x, t, image_embed, caption_states/embed/mask."""
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.standard_normal((batch, size.decoder_size, size.decoder_size, 3), np.float32),
        t=rng.integers(0, 1000, (batch,)),
        image_embed=rng.standard_normal((batch, size.clip_dim), np.float32),
        caption_states=rng.standard_normal((batch, size.text_length, size.clip_dim), np.float32),
        caption_embed=rng.standard_normal((batch, size.clip_dim), np.float32),
        caption_mask=np.ones((batch, size.text_length), bool),
    )


def decoder_params(size: CascadeSize, model, unet, text_proj):
    """Our decoder parameters from the diffusers decoder's state dicts."""
    from unclip_jax.convert.diffusers_unet import decoder_params_from_diffusers

    inputs = decoder_inputs(size, 1)
    expected = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            inputs["x"],
            inputs["t"],
            inputs["image_embed"],
            caption_states=inputs["caption_states"],
            caption_embed=inputs["caption_embed"],
        )
    )["params"]
    return decoder_params_from_diffusers(unet.state_dict(), text_proj.state_dict(), expected)


def super_res_params(size: CascadeSize, model, torch_model):
    from unclip_jax.convert.diffusers_unet import upsampler_params_from_diffusers

    high = jnp.zeros((1, size.super_res_size, size.super_res_size, 3))
    low = jnp.zeros((1, size.decoder_size, size.decoder_size, 3))
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), high, low, jnp.zeros((1,))))
    return upsampler_params_from_diffusers(torch_model.state_dict(), expected["params"])


def num_params(tree: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def row_devices(batch: int) -> list[jax.Device]:
    """The most local devices (up to all) whose count divides `batch`: the rows a benchmark
    splits over them. On a CPU, `JAX_NUM_CPU_DEVICES=<cores>` makes one device per core, so the
    batch runs data-parallel over the cores (XLA:CPU's own intra-op threads gain little)."""
    devices = jax.local_devices()
    count = max(n for n in range(1, len(devices) + 1) if batch % n == 0)
    return devices[:count]


def flops(fn, *args, **kwargs) -> float:
    """The FLOPs of one call of `fn` on all its devices: `hlo_cost`'s count of the compiled
    program (every loop trip, the oneDNN convolutions included)."""
    text = jax.jit(fn).lower(*args, **kwargs).compile().as_text()
    return hlo_cost.program_flops(text) * flop_meter.program_devices(text)


def machine() -> dict[str, Any]:
    """Where and when: host, CPU, cores, load average, library versions, UTC time."""
    import diffusers
    import flax
    import jaxlib
    import torch

    cpu = platform.processor()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=cpu,
        cores=os.cpu_count(),
        load_average=list(os.getloadavg()),
        backend=jax.default_backend(),
        devices=[str(d.device_kind) for d in jax.local_devices()[:1]],
        device_count=jax.local_device_count(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        flax=flax.__version__,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        diffusers=diffusers.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


def seconds(fn, *args: Any, **kwargs: Any) -> float:
    """Wall seconds of one call `fn(*args, **kwargs)`."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def warm_timings(fn, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn()` after one untimed warm-up call."""
    fn()
    return [seconds(fn) for _ in range(repeats)]


def pick_torch_threads(probe, candidates: tuple[int, ...] | None = None, repeats: int = 3) -> int:
    """Sets PyTorch's intra-op threads to the fastest of `candidates` for `probe()` (best of
    `repeats`) and returns it: on a loaded machine one thread can beat all cores by 10×."""
    import torch

    candidates = candidates or tuple(sorted({1, os.cpu_count() or 1}))
    best = {}
    for threads in candidates:
        torch.set_num_threads(threads)
        best[threads] = min(warm_timings(probe, repeats))
    chosen = min(best, key=best.get)
    torch.set_num_threads(chosen)
    return chosen


FLAG_HELP = {
    "sizes": "comma-separated sizes",
    "batch": "rows per call",
    "batches": "comma-separated batch sizes",
    "reps": "alternating passes (the ratio is their median)",
    "calls": "calls in a row per timing (their mean)",
    "repeats": "timed repetitions",
    "steps": "timed steps",
    "dtype": "compute dtype",
    "tag": "results file suffix",
}


def argument_parser(doc: str, **defaults: Any) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring's first paragraph as the description and one `--NAME`
    flag per keyword, typed by its default (`dtype` limited to the compute dtypes)."""
    from unclip_jax.nn.precision import COMPUTE_DTYPES

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, default in defaults.items():
        choices = sorted(COMPUTE_DTYPES) if name == "dtype" else None
        kind = str if default is None else type(default)
        parser.add_argument(
            f"--{name}", type=kind, default=default, choices=choices, help=FLAG_HELP.get(name)
        )
    return parser


def split_names(parser, flag: str, text: str, known) -> list[str]:
    """The comma-separated names of `flag`; a parser error names those not in `known`."""
    names = text.split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; expected some of {sorted(known)}")
    return names


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def results_dir(script: str) -> pathlib.Path:
    """The results folder of the script `experiments/<script>.py`."""
    return RESULTS / script


def write_results(script: str, name: str, payload: dict[str, Any]) -> pathlib.Path:
    """Writes `payload` as `experiments/results/<script>/<name>.json`."""
    path = results_dir(script) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path
